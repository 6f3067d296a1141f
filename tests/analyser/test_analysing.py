"""The pipeline: a bundle built here (real pcaps from dpkt, a snapshot dict) → policies, graph,
report; and the output directory rules (earlier output replaced, other files protected)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from analyser import analysing
from analyser.analysing import (
    LEGACY_OUTPUT_MARKER,
    OUTPUT_MARKER,
    Analysis,
    analyse,
    write_output,
)
from analyser.bundles import open_bundle
from analyser.flows import Evidence
from analyser.policies import PolicyPlan, synthesize
from kernel.errors import OutputError, RenderError, UnsafePolicies
from tests.bundle_builders import API_IP, API_IP6, API_NAME, CART_POD, GHOST_IP, make_bundle
from tests.kubectl import kubectl


def tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): p.read_text()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


FIRST = {
    "Kustomization": "resources: [a.x.yaml, b/y.yaml]\n",
    "a.x.yaml": "x\n",
    "b/y.yaml": "y\n",
    "report.md": "# one\n",
}


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_writes_files_and_a_marker_into_a_new_directory(tmp_path: Path) -> None:
    out = tmp_path / "out"
    written = write_output(FIRST, out)
    assert sorted(p.relative_to(out).as_posix() for p in written) == sorted(FIRST)
    files = tree(out)
    marker = json.loads(files.pop(OUTPUT_MARKER))
    assert files == FIRST
    assert marker == {
        "generated_by": "netpol-sniffer",
        "files": {path: sha256(text) for path, text in sorted(FIRST.items())},
    }
    # Nothing a manifest reader (kubectl apply -f/-R, Argo CD, kubeconform) would decode.
    assert not OUTPUT_MARKER.endswith((".json", ".yaml", ".yml"))


def test_a_second_run_replaces_the_first_and_removes_its_stale_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_output(FIRST, out)
    second = {"Kustomization": "resources: [a/z.yaml]\n", "a/z.yaml": "z\n"}
    write_output(second, out)
    files = tree(out)
    files.pop(OUTPUT_MARKER)
    assert files == second
    assert not (out / "b").exists()  # the folder the stale policy left empty is gone


def test_other_files_are_protected_unless_forced(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "a").mkdir(parents=True)
    (out / "a" / "mine.yaml").write_text("keep me\n")
    (out / "notes.txt").write_text("keep me too\n")
    with pytest.raises(OutputError, match=r"did not write \(a/mine\.yaml, notes\.txt\).*--force"):
        write_output(FIRST, out)
    assert tree(out) == {"a/mine.yaml": "keep me\n", "notes.txt": "keep me too\n"}
    write_output(FIRST, out, force=True)
    files = tree(out)
    assert files["a/mine.yaml"] == "keep me\n"
    assert files["a.x.yaml"] == "x\n"
    # the forced files stay foreign: a later run without --force still refuses
    with pytest.raises(OutputError):
        write_output(FIRST, out)


def test_an_empty_existing_directory_is_fine(tmp_path: Path) -> None:
    write_output(FIRST, tmp_path)
    assert (tmp_path / "a.x.yaml").read_text() == "x\n"


def test_a_file_in_place_of_the_directory_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "out").write_text("")
    with pytest.raises(OutputError, match="not a directory"):
        write_output(FIRST, tmp_path / "out")


@pytest.mark.parametrize("path", ["../escape.yaml", "/etc/passwd", ""])
def test_paths_outside_the_directory_are_refused(tmp_path: Path, path: str) -> None:
    with pytest.raises(OutputError, match="not a path inside"):
        write_output({path: "x"}, tmp_path / "out")
    assert not (tmp_path / "escape.yaml").exists()


def test_a_hand_edited_file_is_not_overwritten_unless_forced(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_output(FIRST, out)
    (out / "a.x.yaml").write_text("x, edited by hand\n")
    edited = r"a\.x\.yaml changed since netpol-sniffer wrote it.*--force"
    with pytest.raises(OutputError, match=edited):
        write_output(FIRST, out)
    assert (out / "a.x.yaml").read_text() == "x, edited by hand\n"
    (out / "b" / "y.yaml").unlink()  # a deleted file is no edit to keep
    write_output(FIRST, out, force=True)
    assert tree(out)["a.x.yaml"] == "x\n"
    write_output(FIRST, out)  # what --force wrote is the run's own again


def test_the_marker_of_an_earlier_version_is_taken_over(tmp_path: Path) -> None:
    """Output of a version that wrote .netpol-sniffer-output.json and kustomization.yaml, with
    policies in namespace folders: replaced without --force, the old marker gone."""
    out = tmp_path / "out"
    old = {"kustomization.yaml": "resources: [a/x.yaml]\n", "a/x.yaml": "x\n"}
    for path, text in old.items():
        (out / path).parent.mkdir(parents=True, exist_ok=True)
        (out / path).write_text(text)
    (out / LEGACY_OUTPUT_MARKER).write_text(json.dumps({"files": sorted(old)}))
    write_output(FIRST, out)
    files = tree(out)
    files.pop(OUTPUT_MARKER)
    assert files == FIRST


def test_an_unreadable_marker_is_an_error(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_output(FIRST, out)
    (out / OUTPUT_MARKER).write_text("{broken")
    with pytest.raises(OutputError, match="unreadable"):
        write_output(FIRST, out)


# -- the pipeline on a bundle built here ------------------------------------------------------


def policy(analysis: Analysis, path: str) -> dict[str, Any]:
    document = yaml.safe_load(analysis.files[path])
    assert isinstance(document, dict)
    return document


def peers_and_ports(rules: list[dict[str, Any]], key: str) -> list[tuple[Any, Any]]:
    return [(rule[key], rule.get("ports")) for rule in rules]


@pytest.fixture(scope="module")
def analysis(tmp_path_factory: pytest.TempPathFactory) -> Analysis:
    bundle = make_bundle(tmp_path_factory.mktemp("bundle"), damaged=True)
    return analyse(open_bundle(bundle), workers=1)


def test_the_service_case_allows_the_target_port_not_the_service_port(analysis: Analysis) -> None:
    frontend = policy(analysis, "web.frontend.yaml")["spec"]
    cart = policy(analysis, "shop.cart.yaml")["spec"]
    cart_pods = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "shop"}},
        "podSelector": {"matchLabels": {"app": "cart"}},
    }
    frontend_pods = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "web"}},
        "podSelector": {"matchLabels": {"app": "frontend"}},
    }
    assert ([cart_pods], [{"protocol": "TCP", "port": 8080}]) in peers_and_ports(
        frontend["egress"], "to"
    )
    assert peers_and_ports(cart["ingress"], "from") == [
        ([frontend_pods], [{"protocol": "TCP", "port": 8080}])
    ]
    assert "port: 80\n" not in "".join(analysis.files.values())


def test_selectors_drop_volatile_labels(analysis: Analysis) -> None:
    assert policy(analysis, "shop.cart.yaml")["spec"]["podSelector"] == {
        "matchLabels": {"app": "cart"}
    }


def test_external_addresses_are_single_ip_blocks_with_their_dns_names(analysis: Analysis) -> None:
    cart = policy(analysis, "shop.cart.yaml")
    egress = peers_and_ports(cart["spec"]["egress"], "to")
    for cidr in (f"{API_IP}/32", f"{API_IP6}/128"):
        assert ([{"ipBlock": {"cidr": cidr}}], [{"protocol": "TCP", "port": 443}]) in egress
    names = json.loads(cart["metadata"]["annotations"]["netpol-sniffer.io/dns-names"])
    assert names == {f"{API_IP}/32": [API_NAME], f"{API_IP6}/128": [API_NAME]}
    assert f"# {API_IP6}/128: {API_NAME}\n" in analysis.files["shop.cart.yaml"]


def test_dns_egress_goes_to_the_cluster_dns_pods_only(analysis: Analysis) -> None:
    for path in ("web.frontend.yaml", "shop.cart.yaml"):
        egress = policy(analysis, path)["spec"]["egress"]
        dns = [r for r in egress if any(p.get("port") == 53 for p in r.get("ports", []))]
        assert len(dns) == 1, path
        (peer,) = dns[0]["to"]
        assert peer["namespaceSelector"] == {
            "matchLabels": {"kubernetes.io/metadata.name": "kube-system"}
        }
        assert peer["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}
        assert sorted((p["protocol"], p["port"]) for p in dns[0]["ports"]) == [
            ("TCP", 53),
            ("UDP", 53),
        ]


def test_only_captured_workloads_get_policies(analysis: Analysis) -> None:
    assert analysis.policy_files == ("shop.cart.yaml", "web.frontend.yaml")
    assert list(analysis.files) == [
        "Kustomization",
        "graph.dot",
        *(["graph.svg"] if shutil.which("dot") else []),
        "report.html",
        "report.md",
        "shop.cart.yaml",
        "web.frontend.yaml",
    ]
    # The report counts the policies, not the graph's files beside them.
    assert "| policy files | 2 |" in analysis.files["report.md"]


def test_every_policy_validates_against_the_openapi_schema(analysis: Analysis) -> None:
    for path in analysis.policy_files:
        kubernetes_validate.validate(policy(analysis, path), "1.30.0", strict=True)


def test_a_truncated_capture_is_a_problem_in_the_report_not_a_failure(analysis: Analysis) -> None:
    damaged = [p for p in analysis.problems if p.path.endswith("capture.pcap1")]
    assert len(damaged) == 1
    assert "packets before the damage were used" in damaged[0].problem
    assert f"| captures/shop/{CART_POD}/capture.pcap1 |" in analysis.files["report.md"]


def test_the_report_counts_directions_by_evidence(analysis: Analysis) -> None:
    report = analysis.files["report.md"]
    handshakes = analysis.evidence_counts[Evidence.HANDSHAKE]
    assert handshakes >= 2
    assert f"| handshake | {handshakes} |" in report
    assert f"| {API_IP} | {API_NAME} |" in report


def test_an_address_no_pod_had_is_reported_as_unresolved(analysis: Analysis) -> None:
    assert analysis.summary()["unresolved_addresses"] == [GHOST_IP]
    report = analysis.files["report.md"]
    assert f"the time of the packet:\n\n- {GHOST_IP}\n" in report


def test_the_summary_is_json(analysis: Analysis) -> None:
    summary = json.loads(json.dumps(analysis.summary()))
    assert summary["bundle"] == analysis.bundle.name
    assert summary["window"] == {"start": "2026-01-01T10:00:00Z", "end": "2026-01-01T10:01:00Z"}
    assert summary["policies"] == ["shop.cart.yaml", "web.frontend.yaml"]
    assert summary["flows"] == len(analysis.flows)
    assert summary["evidence"]["handshake"] == analysis.evidence_counts[Evidence.HANDSHAKE]


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz is not installed")
def test_the_graph_renders(analysis: Analysis) -> None:
    assert analysis.files["graph.svg"].lstrip().startswith("<?xml")
    assert "web/Deployment/frontend" in analysis.files["graph.svg"]


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz is not installed")
def test_a_graph_too_big_to_draw_costs_only_the_svg_with_a_note(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(analysing, "MAX_SVG_NODES", 2)
    big = analyse(open_bundle(make_bundle(tmp_path / "bundle")), workers=1)
    assert "graph.svg" not in big.files and "graph.dot" in big.files
    assert big.policy_files == ("shop.cart.yaml", "web.frontend.yaml")
    (note,) = big.notes
    assert note.startswith("graph.svg not drawn: the graph has ") and "graph.dot is written" in note
    assert f"Note: {note}" in big.files["report.md"]
    assert big.summary()["notes"] == [note]


def test_graphviz_failing_costs_only_the_svg(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def too_slow(dot: str) -> str:
        raise RenderError("Graphviz took longer than 120s on graph.dot")

    monkeypatch.setattr(analysing, "render_svg", too_slow)
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    result = analyse(open_bundle(make_bundle(tmp_path / "bundle")), workers=1)
    assert "graph.svg" not in result.files
    assert result.notes == (
        "graph.svg not drawn: Graphviz took longer than 120s on graph.dot; graph.dot is written",
    )


def test_output_is_byte_identical_across_runs_and_worker_counts(
    analysis: Analysis, tmp_path: Path
) -> None:
    again = analyse(open_bundle(analysis.bundle.root), workers=2)
    assert again.files == analysis.files
    write_output(analysis.files, tmp_path / "one")
    write_output(again.files, tmp_path / "two")
    assert tree(tmp_path / "one") == tree(tmp_path / "two")


def test_default_deny_adds_one_policy_per_namespace(analysis: Analysis) -> None:
    with_deny = analyse(open_bundle(analysis.bundle.root), default_deny=True, workers=1)
    assert with_deny.policy_files == (
        "shop.cart.yaml",
        "shop.default-deny-all.yaml",
        "web.default-deny-all.yaml",
        "web.frontend.yaml",
    )
    kustomization = yaml.safe_load(with_deny.files["Kustomization"])
    assert kustomization["resources"] == list(with_deny.policy_files)


@pytest.mark.kubectl
def test_kustomize_builds_the_written_directory(analysis: Analysis, tmp_path: Path) -> None:
    write_output(analysis.files, tmp_path)
    built = subprocess.run(
        [kubectl(), "kustomize", str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert built.returncode == 0, built.stderr
    names = sorted(d["metadata"]["name"] for d in yaml.safe_load_all(built.stdout) if d)
    assert names == ["cart", "frontend"]


def test_policies_that_would_deny_an_observed_flow_are_refused(
    analysis: Analysis, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = synthesize

    def forgetful(*args: Any, **kwargs: Any) -> PolicyPlan:
        plan = real(*args, **kwargs)
        without_ingress = tuple(dataclasses.replace(p, ingress=()) for p in plan.policies)
        return dataclasses.replace(plan, policies=without_ingress)

    monkeypatch.setattr(analysing, "synthesize", forgetful)
    with pytest.raises(
        UnsafePolicies,
        match=r"(?s)would deny 1 observed flow.*"
        r"web/Deployment/frontend → shop/Deployment/cart 8080/TCP",
    ):
        analyse(open_bundle(analysis.bundle.root), workers=1)
