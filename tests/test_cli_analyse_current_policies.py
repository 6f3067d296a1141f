"""`analyse` against the NetworkPolicies the cluster has now (the snapshot's): a same-named one
someone else wrote is refused without --force, one an earlier run wrote is updated, differently
named ones that combine with the new policies are named, on stderr, in report.md and --json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cli.main import ExitStatus, main
from tests.hostile.hostile_helpers import copy_example, snapshot, write_snapshot

FRONTEND = "default/Deployment/frontend"
REDIS = "default/Deployment/redis-cart"


def network_policy(
    name: str, app: str | None, labels: dict[str, str] | None = None, **spec: Any
) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": name,
            "namespace": "default",
            **({"labels": labels} if labels else {}),
        },
        "spec": {"podSelector": {"matchLabels": {"app": app}} if app else {}, **spec},
    }


def with_policies(bundle: Path, *policies: dict[str, Any]) -> Path:
    document = snapshot(bundle)
    items = document["items"]
    assert isinstance(items, list)
    document["items"] = [*items, *policies]
    write_snapshot(bundle, document)
    return bundle


def analyse(
    bundle: Path, out: Path, capsys: pytest.CaptureFixture[str], *extra: str
) -> tuple[int, str, str]:
    status = main(["analyse", str(bundle), "--out", str(out), "--workers", "1", *extra])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return copy_example(tmp_path / "bundle")


def test_a_same_named_policy_someone_else_wrote_is_refused_without_force(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with_policies(
        bundle, network_policy("frontend", "frontend", policyTypes=["Ingress"], ingress=[{}])
    )
    out = tmp_path / "out"
    status, _, stderr = analyse(bundle, out, capsys)
    assert status == ExitStatus.ERROR
    assert (
        "warning: NetworkPolicy default/frontend is in the cluster and was not written by "
        f"netpol-sniffer: the policy for {FRONTEND} has its name, and applying it replaces it"
    ) in stderr
    assert "would replace NetworkPolicies netpol-sniffer did not write (default/frontend)" in stderr
    assert "--force" in stderr
    assert not out.exists()

    status, stdout, stderr = analyse(bundle, out, capsys, "--force", "--json")
    assert status == ExitStatus.OK, stderr
    current = json.loads(stdout)["current_policies"]
    assert current["read"] == ["default/frontend"]
    assert current["collisions"] == [
        {"policy": "default/frontend", "workload": FRONTEND, "ours": False}
    ]
    report = (out / "report.md").read_text()
    assert "| default/frontend | default/Deployment/frontend | someone else: overwritten" in report


def test_a_policy_an_earlier_run_wrote_is_updated_without_a_word(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    earlier = network_policy(
        "frontend",
        "frontend",
        {"app.kubernetes.io/managed-by": "netpol-sniffer"},
        policyTypes=["Ingress"],
    )
    with_policies(bundle, earlier)
    status, stdout, stderr = analyse(bundle, tmp_path / "out", capsys, "--json")
    assert status == ExitStatus.OK, stderr
    assert "default/frontend" not in stderr
    assert json.loads(stdout)["current_policies"]["collisions"] == [
        {"policy": "default/frontend", "workload": FRONTEND, "ours": True}
    ]
    assert "an earlier netpol-sniffer run: updated" in (tmp_path / "out" / "report.md").read_text()


def test_differently_named_policies_that_combine_are_named_and_what_they_denied_is_shown(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    redis_open = network_policy("redis-open", "redis-cart", policyTypes=["Ingress"], ingress=[{}])
    deny_all = network_policy("deny-all", None, policyTypes=["Ingress", "Egress"])
    with_policies(bundle, redis_open, deny_all)
    out = tmp_path / "out"
    status, stdout, stderr = analyse(bundle, out, capsys, "--json")
    assert status == ExitStatus.OK, stderr
    assert (
        f"warning: {REDIS}: its policy combines with default/deny-all, default/redis-open in the "
        "cluster: it will be allowed what any of them allows"
    ) in stderr
    current = json.loads(stdout)["current_policies"]
    assert current["combined"][REDIS] == ["default/deny-all", "default/redis-open"]
    assert current["combined"][FRONTEND] == ["default/deny-all"]
    # deny-all denied everything: what was observed is newly allowed, e.g. cartservice → redis
    redis = current["workloads"][REDIS]
    gained = {(c["client"], c["server"]) for c in redis["newly_allowed"]}
    assert ("default/Deployment/cartservice", REDIS) in gained
    assert redis["pairs_gaining_ports"] == len(gained)
    report = (out / "report.md").read_text()
    assert "The snapshot holds 2 NetworkPolicies." in report
    assert f"| {REDIS} | default/deny-all, default/redis-open |" in report
    assert f"Newly allowed with {REDIS}:" in report
    assert "- default/Deployment/cartservice → default/Deployment/redis-cart: 6379/TCP" in report


def test_without_current_policies_the_report_says_applying_isolates(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, stdout, _ = analyse(bundle, tmp_path / "out", capsys, "--json")
    assert status == ExitStatus.OK
    current = json.loads(stdout)["current_policies"]
    assert (current["read"], current["workloads"]) == ([], {})
    assert (
        "The snapshot holds no NetworkPolicy: no pod is isolated now."
        in (tmp_path / "out" / "report.md").read_text()
    )


def test_past_the_pair_cap_the_report_names_the_combinations_and_says_why_no_changes(
    bundle: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("analyser.adopting.MAX_COMPARED_PAIRS", 10)
    redis_open = network_policy("redis-open", "redis-cart", policyTypes=["Ingress"], ingress=[{}])
    with_policies(bundle, redis_open)
    out = tmp_path / "out"
    status, stdout, stderr = analyse(bundle, out, capsys, "--json")
    assert status == ExitStatus.OK, stderr
    assert "note: what applying changes is not computed here: " in stderr
    assert json.loads(stdout)["current_policies"]["workloads"] == {}
    report = (out / "report.md").read_text()
    assert f"| {REDIS} | default/redis-open |\n" in report
    assert "pairs gaining ports" not in report
    assert "more than 10); netpol-sniffer diff shows it" in report
