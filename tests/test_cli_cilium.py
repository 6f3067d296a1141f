"""The command line with the Cilium format: analyse --format all writes both sets, verify
passes each and names a Cilium rule that is missing, diff compares them, and the safety check
refuses a Cilium set that would deny an observed flow (nothing written)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import analyser.cilium
from analyser.cilium import CiliumPlan, cilium_plan, selectors_bytes
from analyser.fqdnselectors import FqdnSelector
from cli.main import ExitStatus, main
from tests.bundle_builders import API_IP, API_IP6, API_NAME, make_bundle


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cilium-cli")
    bundle = make_bundle(root / "bundle")
    out = root / "out"
    assert main(["analyse", str(bundle), "--out", str(out), "--format", "all"]) == ExitStatus.OK
    return bundle, out


def test_both_sets_are_written_and_each_passes_verify(
    generated: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    bundle, out = generated
    cilium = sorted(p.name for p in (out / "cilium").iterdir())
    assert cilium == sorted(p.name for p in (out / "networkpolicy").iterdir())
    assert "Kustomization" in cilium
    assert not list(out.glob("*.yaml"))  # no policy at the top: apply one folder
    capsys.readouterr()
    for folder in ("networkpolicy", "cilium"):
        assert main(["verify", str(bundle), str(out / folder), "--json"]) == ExitStatus.OK
        assert json.loads(capsys.readouterr().out)["passed"] is True
    cart = next((out / "cilium").glob("*.cart*.yaml")).read_text()
    assert f'matchName: "{API_NAME}"' in cart


def test_a_missing_cilium_rule_is_denied_and_named(
    generated: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle, out = generated
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in (out / "cilium").glob("*.yaml"):
        document = yaml.safe_load(path.read_text())
        document["spec"]["egress"] = [
            rule for rule in document["spec"]["egress"] if "toFQDNs" not in rule
        ]
        (broken / path.name).write_text(yaml.safe_dump(document))
    capsys.readouterr()
    assert main(["verify", str(bundle), str(broken), "--json"]) == ExitStatus.DENIED
    denied = json.loads(capsys.readouterr().out)["denied"]
    assert denied and all(item["side"] == "egress" for item in denied)


def test_diff_shows_addresses_given_up_for_the_name(
    generated: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    bundle, out = generated
    snapshot = str(bundle / "snapshot.json")
    capsys.readouterr()
    old, new = str(out / "networkpolicy"), str(out / "cilium")
    assert main(["diff", old, new, "--snapshot", snapshot]) == ExitStatus.OK
    changes = [line for line in capsys.readouterr().out.splitlines() if line[:2] in ("+ ", "- ")]
    assert changes == [
        f"+ shop/Deployment/cart → fqdn:{API_NAME}: 443/TCP",
        f"- shop/Deployment/cart → ip:{API_IP6}/128: 443/TCP",
        f"- shop/Deployment/cart → ip:{API_IP}/32: 443/TCP",
    ]


def test_the_safety_check_refuses_an_unsafe_cilium_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def without_egress(*args: object, **kwargs: object) -> CiliumPlan:
        plan = cilium_plan(*args, **kwargs)  # type: ignore[arg-type]
        return CiliumPlan(
            tuple(type(p)(p.policy, p.ingress, ()) for p in plan.policies), plan.default_denies
        )

    # analysing imports it when the Cilium format is asked for (not at its top: issue 13)
    monkeypatch.setattr(analyser.cilium, "cilium_plan", without_egress)
    bundle = make_bundle(tmp_path / "bundle")
    out = tmp_path / "out"
    assert main(["analyse", str(bundle), "--out", str(out), "--format", "cilium"]) != ExitStatus.OK
    assert "would deny" in capsys.readouterr().err
    assert not out.exists()


def test_the_baseline_is_written_with_each_set_and_judged_with_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = make_bundle(tmp_path / "bundle")
    out = tmp_path / "out"
    arguments = ["analyse", str(bundle), "--out", str(out), "--format", "all"]
    assert main([*arguments, "--baseline", "cluster"]) == ExitStatus.OK
    for folder in ("networkpolicy", "cilium"):
        assert (out / folder / "ClusterNetworkPolicy.netpol-sniffer-baseline.yaml").is_file()
        assert (
            "ClusterNetworkPolicy.netpol-sniffer-baseline.yaml"
            in (out / folder / "Kustomization").read_text()
        )
    capsys.readouterr()
    assert main(["verify", str(bundle), str(out / "cilium")]) == ExitStatus.OK
    assert ", 1 ClusterNetworkPolicy)" in capsys.readouterr().out


def test_too_many_names_give_rules_by_address_and_dns_of_any_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Past the bytes a policy's names may take (here, any name at all), the rules by name go
    # back to the addresses, as the NetworkPolicy has them, and the DNS rule allows every name:
    # the policy stays a size a cluster takes, still allows what was observed, and says so.
    monkeypatch.setattr(analyser.cilium, "MAX_FQDN_BYTES", 10)
    monkeypatch.setattr(analyser.cilium, "MAX_DNS_NAME_BYTES", 10)
    bundle = make_bundle(tmp_path / "bundle")
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["analyse", str(bundle), "--out", str(out), "--format", "cilium"]) == ExitStatus.OK
    err = capsys.readouterr().err
    assert (
        "note: shop/Deployment/cart: its CiliumNetworkPolicy allows outside servers by address, "
        "not by name: its 1 name selectors would take more than 0 KiB"
    ) in err
    assert "shop/Deployment/cart: its CiliumNetworkPolicy allows DNS lookups of any name" in err
    cart = yaml.safe_load(next(out.glob("*.cart*.yaml")).read_text())
    egress = cart["spec"]["egress"]
    assert not any("toFQDNs" in rule for rule in egress)
    cidrs = {block["cidr"] for rule in egress for block in rule.get("toCIDRSet", [])}
    assert {f"{API_IP}/32", f"{API_IP6}/128"} <= cidrs
    dns = [
        port["rules"]["dns"]
        for rule in egress
        for port in rule.get("toPorts", [])
        if "rules" in port
    ]
    assert dns and all(names == [{"matchPattern": "*"}] for names in dns)
    assert main(["verify", str(bundle), str(out), "--json"]) == ExitStatus.OK


def test_selectors_bytes_is_what_they_take_in_the_policy_json() -> None:
    selectors = [FqdnSelector("api.example.com"), FqdnSelector("*.cdn.example.com", pattern=True)]
    written = [{"matchName": "api.example.com"}, {"matchPattern": "*.cdn.example.com"}]
    assert selectors_bytes(selectors) == sum(
        len(json.dumps(item, separators=(",", ":"))) + 1 for item in written
    )
