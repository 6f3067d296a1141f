"""verify and diff from the command line, on a real bundle (dpkt-written pcaps + a snapshot):
the generated policies pass, removing a rule names the denied flow, diff shows the change."""

from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import cli.verify
from analyser import graphs
from analyser.analysing import observe
from analyser.bundles import open_bundle
from analyser.policysets import load_policies
from analyser.replaying import cluster_facts, observed_from_records, verification_inputs
from analyser.verifying import verify
from cli.main import ExitStatus, main
from tests.bundle_builders import (
    API_IP,
    CART_IP,
    FRONTEND_IP,
    FRONTEND_POD,
    SYN,
    T0,
    make_bundle,
    tcp,
    write_pcap,
)

FRONTEND, CART = "web/Deployment/frontend", "shop/Deployment/cart"


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(bundle, the policies analyse wrote for it)."""
    root = tmp_path_factory.mktemp("verify")
    bundle = make_bundle(root / "bundle")
    out = root / "policies"
    assert main(["analyse", str(bundle), "--out", str(out)]) == ExitStatus.OK
    return bundle, out


def policy_files(folder: Path) -> dict[Path, dict[str, Any]]:
    return {path: yaml.safe_load(path.read_text()) for path in sorted(folder.rglob("*.yaml"))}


def copy_without_cart_ingress(source: Path, target: Path) -> Path:
    """The generated set with the cart policy's ingress rules removed."""
    for path, document in policy_files(source).items():
        if document["spec"]["podSelector"].get("matchLabels") == {"app": "cart"}:
            document["spec"]["ingress"] = []
        destination = target / path.relative_to(source)
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_text(yaml.safe_dump(document))
    return target


def test_generated_policies_pass(
    generated: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    bundle, policies = generated
    assert main(["verify", str(bundle), str(policies)]) == ExitStatus.OK
    out = capsys.readouterr().out
    assert "OK: every observed flow is allowed" in out
    assert "least-privilege score" in out


def test_generated_policies_pass_as_json(
    generated: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    bundle, policies = generated
    assert main(["verify", str(bundle), str(policies), "--json"]) == ExitStatus.OK
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] is True
    assert report["denied"] == []
    assert report["observed"] >= 2  # frontend → cart, cart → the API (and DNS)
    # The generated policies allow nothing between captured workloads beyond what was seen,
    # apart from DNS to the cluster DNS pods.
    for allowance in report["allowed_unobserved"]:
        assert allowance["server"] == "kube-system/Deployment/coredns", allowance
        assert {r["first"] for r in allowance["unobserved"]} == {53}
    assert set(report["score"]) == {"pairs", "ports", "all_ports_pairs"}


def test_removed_rule_is_denied_and_named(
    generated: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle, policies = generated
    broken = copy_without_cart_ingress(policies, tmp_path / "broken")
    assert main(["verify", str(bundle), str(broken)]) == ExitStatus.DENIED
    out = capsys.readouterr().out
    assert f"{FRONTEND} → {CART} 8080/TCP: denied by ingress at {CART}" in out
    assert main(["verify", str(bundle), str(broken), "--json"]) == ExitStatus.DENIED
    [denial] = json.loads(capsys.readouterr().out)["denied"]
    assert denial == {
        "client": FRONTEND,
        "server": CART,
        "protocol": "TCP",
        "port": 8080,
        "side": "ingress",
        "denied_by": CART,
        "policies": denial["policies"],
    }
    assert denial["policies"] and denial["policies"][0].startswith("shop/")


NOBODY = (
    "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
    "metadata: {name: nobody, namespace: shop}\n"
    "spec: {podSelector: {matchLabels: {nobody: here}}, policyTypes: [Ingress, Egress]}\n"
)


def no_isolation(folder: Path) -> Path:
    """A policy set that isolates no pod (its one policy selects none): everything allowed."""
    folder.mkdir()
    (folder / "nobody.yaml").write_text(NOBODY)
    return folder


def test_no_policies_allow_everything_and_score_worse(
    generated: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle, policies = generated
    assert main(["verify", str(bundle), str(policies), "--json"]) == ExitStatus.OK
    tight = json.loads(capsys.readouterr().out)["score"]
    none = no_isolation(tmp_path / "none")
    assert main(["verify", str(bundle), str(none), "--json"]) == ExitStatus.OK
    report = json.loads(capsys.readouterr().out)
    assert report["score"]["pairs"] > tight["pairs"]
    assert report["score"]["all_ports_pairs"] > 0
    assert any(a["server"] == f"ip:{API_IP}/32" for a in report["allowed_unobserved"])


def test_a_folder_without_policies_is_an_error_not_a_pass(
    generated: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A CI gate must not pass on a mistyped or empty folder."""
    bundle, _ = generated
    (tmp_path / "empty").mkdir()
    assert main(["verify", str(bundle), str(tmp_path / "empty")]) == ExitStatus.ERROR
    err = capsys.readouterr().err
    assert f"{tmp_path / 'empty'}: no NetworkPolicy found there, nothing to verify" in err
    assert "OK" not in err


def test_swapped_arguments_get_a_hint(
    generated: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    bundle, policies = generated
    assert main(["verify", str(policies), str(bundle)]) == ExitStatus.ERROR
    assert "the arguments are the other way round" in capsys.readouterr().err


def test_diff_shows_the_removed_rule(
    generated: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle, policies = generated
    broken = copy_without_cart_ingress(policies, tmp_path / "broken")
    args = ["diff", str(policies), str(broken), "--snapshot", str(bundle)]
    assert main(args) == ExitStatus.OK
    out = capsys.readouterr().out
    assert f"- {FRONTEND} → {CART}: 8080/TCP" in out
    assert "+ " not in out
    assert main([*args, "--json"]) == ExitStatus.OK
    changes = json.loads(capsys.readouterr().out)["changes"]
    assert [(c["client"], c["server"], c["newly_denied"]) for c in changes] == [
        (FRONTEND, CART, [{"protocol": "TCP", "first": 8080, "last": 8080}])
    ]
    assert main(["diff", str(policies), str(policies), "--snapshot", str(bundle)]) == 0
    assert "no change" in capsys.readouterr().out


def test_unparsable_policy_file_is_named(
    generated: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle, _ = generated
    (tmp_path / "bad.yaml").write_text("kind: NetworkPolicy\nspec: {podSelector: [\n")
    assert main(["verify", str(bundle), str(tmp_path)]) == ExitStatus.ERROR
    assert "bad.yaml: not valid YAML" in capsys.readouterr().err


# -- the lab's recorded microservices-demo bundle (real pcaps, truth.json) ---------------------

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "microservices-demo" / "bundle"
DNS_WORKLOAD = "kube-system/Deployment/coredns"


@pytest.fixture(scope="module")
def example_policies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("example") / "policies"
    assert main(["analyse", str(EXAMPLE), "--out", str(out)]) == ExitStatus.OK
    return out


def test_lab_bundle_generated_policies_allow_truth_and_nothing_but_dns(
    example_policies: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["verify", str(EXAMPLE), str(example_policies), "--json"]) == ExitStatus.OK
    report = json.loads(capsys.readouterr().out)
    assert report["observed"] >= 15
    assert {a["server"] for a in report["allowed_unobserved"]} == {DNS_WORKLOAD}
    # The lab's truth, replayed by name through the same evaluation: all allowed, and beyond it
    # only DNS to the cluster DNS pods.
    seen = observe(open_bundle(EXAMPLE))
    cluster = cluster_facts(seen.snapshot, seen.resolver)
    policies = load_policies(example_policies).policies
    truth = observed_from_records(json.loads((EXAMPLE / "truth.json").read_text()), cluster)
    _, universe = verification_inputs(policies, seen.graph, cluster)
    result = verify(policies, truth, universe)
    assert result.passed
    assert {(a.server, str(a.unobserved)) for a in result.allowances} <= {
        (DNS_WORKLOAD, "53/TCP"),
        (DNS_WORKLOAD, "53/UDP"),
        (DNS_WORKLOAD, "53/TCP, 53/UDP"),
    }


def test_lab_bundle_missing_email_rule_is_named(
    example_policies: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken"
    for path, document in policy_files(example_policies).items():
        if document["metadata"]["name"] == "emailservice":
            document["spec"]["ingress"] = []
        target = broken / path.relative_to(example_policies)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(yaml.safe_dump(document))
    assert main(["verify", str(EXAMPLE), str(broken)]) == ExitStatus.DENIED
    out = capsys.readouterr().out
    assert (
        "default/Deployment/checkoutservice → default/Deployment/emailservice 8080/TCP: "
        "denied by ingress at default/Deployment/emailservice" in out
    )
    assert main(["diff", str(example_policies), str(broken), "--snapshot", str(EXAMPLE)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line[:2] in ("+ ", "- ")]
    # The recorded bundle has the kubelet's readiness probes from the node's address too.
    assert lines == [
        "- default/Deployment/checkoutservice → default/Deployment/emailservice: 8080/TCP",
        "- ip:172.18.0.2/32 → default/Deployment/emailservice: 8080/TCP",
    ]


def _never_established_notes(
    tmp_path: Path, frames: list[tuple[float, bytes]], capsys: pytest.CaptureFixture[str]
) -> list[str]:
    """verify's "never established" notes on a bundle with ``frames`` as one more frontend
    capture, against policies that isolate nothing (it must pass)."""
    bundle = make_bundle(tmp_path / "bundle")
    write_pcap(bundle / "captures" / "web" / FRONTEND_POD / "capture.pcap1", frames)
    none = no_isolation(tmp_path / "none")
    assert main(["verify", str(bundle), str(none), "--json"]) == ExitStatus.OK
    notes = json.loads(capsys.readouterr().out)["notes"]
    return [note for note in notes if note.startswith("not checked, never established")]


def test_connections_never_established_are_named_as_not_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    refused = [
        (T0 + 30, tcp(FRONTEND_IP, 41001, CART_IP, 7777, SYN)),
        (T0 + 30.001, tcp(CART_IP, 7777, FRONTEND_IP, 41001, 0x14)),  # RST+ACK
    ]
    # A client retrying on another port, 5 times: one note with the count, not one per attempt.
    for n in range(5):
        refused += [
            (T0 + 31 + n, tcp(FRONTEND_IP, 41010 + n, CART_IP, 7778, SYN)),
            (T0 + 31.001 + n, tcp(CART_IP, 7778, FRONTEND_IP, 41010 + n, 0x14)),
        ]
    assert _never_established_notes(tmp_path, refused, capsys) == [
        f"not checked, never established (refused or unanswered): {FRONTEND} → {CART} TCP/7777",
        f"not checked, never established (refused or unanswered): {FRONTEND} → {CART} TCP/7778 "
        "(5 attempts, first 2026-01-01T10:00:31Z, last 2026-01-01T10:00:35Z)",
    ]


def test_attempts_past_max_attempt_groups_are_one_note(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(graphs, "MAX_ATTEMPT_GROUPS", 1)
    refused = [(T0 + 30 + n, tcp(FRONTEND_IP, 41001 + n, CART_IP, 7001 + n, SYN)) for n in range(3)]
    assert _never_established_notes(tmp_path, refused, capsys) == [
        f"not checked, never established (refused or unanswered): {FRONTEND} → {CART} TCP/7001",
        "not checked, never established (refused or unanswered): 2 more attempts of other "
        "clients, servers and ports (past the first 1), first 2026-01-01T10:00:31Z, last "
        "2026-01-01T10:00:32Z",
    ]


def test_namespace_selectors_on_labels_a_snapshot_without_namespaces_lacks_are_noted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = make_bundle(tmp_path / "bundle")
    snapshot = json.loads((bundle / "snapshot.json").read_text())
    snapshot["items"] = [o for o in snapshot["items"] if o["kind"] != "Namespace"]
    (bundle / "snapshot.json").write_text(json.dumps(snapshot))
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "cart.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": {"name": "cart", "namespace": "shop"},
                "spec": {
                    "podSelector": {"matchLabels": {"app": "cart"}},
                    "ingress": [
                        {"from": [{"namespaceSelector": {"matchLabels": {"team": "web"}}}]}
                    ],
                },
            }
        )
    )
    assert main(["verify", str(bundle), str(policies), "--json"]) == ExitStatus.DENIED
    notes = json.loads(capsys.readouterr().out)["notes"]
    assert any(
        note.startswith("the snapshot has no Namespaces") and "namespaceSelectors on team" in note
        for note in notes
    ), notes


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_steps_after_the_reading_show_with_their_times(
    generated: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle, policies = generated
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(["verify", str(bundle), str(policies)]) == ExitStatus.OK
    steps = re.findall(r"^(.*) \.\.\. \d+\.\d s$", terminal.getvalue(), flags=re.MULTILINE)
    assert [re.sub(r"\d[\d,]*", "N", step) for step in steps] == [
        "orienting N conversations",
        "building the workload graph of N flows",
        "checking the policies against the observed flows",
    ]


def test_the_terminal_gets_the_first_lines_of_a_list_and_a_count_of_the_rest(
    generated: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A capture can claim a connection on every port: a list of tens of thousands of lines
    # would bury the verdict. --json keeps every one.
    bundle, _ = generated
    none = no_isolation(tmp_path / "none")
    assert main(["verify", str(bundle), str(none), "--json"]) == ExitStatus.OK
    pairs = len(json.loads(capsys.readouterr().out)["allowed_unobserved"])
    assert pairs > 3
    monkeypatch.setattr(cli.verify, "MAX_LISTED_LINES", 2)
    assert main(["verify", str(bundle), str(none)]) == ExitStatus.OK
    lines = capsys.readouterr().out.splitlines()
    start = next(n for n, line in enumerate(lines) if line.startswith("allowed but never observed"))
    assert [line.startswith("  ") for line in lines[start + 1 : start + 4]] == [True] * 3
    assert lines[start + 3] == f"  … and {pairs - 2:,} more (--json lists every one)"
    assert not lines[start + 4].startswith("  ")
