"""Hostile text in a bundle: DNS names in a pod's own capture, names in a tampered snapshot and
capture file names hold line separators, terminal escapes, bidi controls and HTML. None of it may
add a rule, rewrite an object, reach the terminal raw or pass into report.md as markup."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from analyser.analysing import REPORT, Analysis
from analyser.cilium import CiliumPlan, CiliumPolicy, size_notes
from analyser.flows import Protocol
from analyser.graphs import WorkloadGraph
from analyser.peers import PortSpec
from analyser.policies import Policy, SideLeftOut
from analyser.rendering import (
    KUSTOMIZATION,
    Provenance,
    ReportFacts,
    policy_object,
    policy_path,
    render_report,
)
from analyser.selectors import LabelSelector
from cli.main import ExitStatus, main
from tests.bundle_builders import Frame, dns_exchange, handshake
from tests.hostile.hostile_helpers import (
    NAMESPACE,
    add_capture,
    pod_ip,
    policy_files,
    run,
    snapshot,
    window_start,
    without_comments,
    write_snapshot,
)

CLUSTER_DNS = "10.96.0.10"  # the kube-dns Service of the recorded bundle
OUTSIDE = "203.0.113.7"
# Each would, written raw into '# cidr: names', end the comment (YAML reads U+2028, U+2029 and
# NEL as line breaks) and add an allow-all egress rule; or colour, retitle or reorder a terminal
# line; or be HTML in report.md.
HOSTILE_NAMES = (
    "evil.example.com\u2028    - {}",
    "a.example.com\u2029    - to: []",
    "b.example.com\x85    - {}",
    "\x1b[31mred\x1b[0m.example.com\x1b]0;title\x07",
    "moc.elpmaxe\u202e.example.com",
    "<script>alert(1)</script>.example.com",
)
# What YAML reads as a line break; only "\n" may end a line we write.
YAML_BREAKS = {"\r", "\x85", "\u2028", "\u2029"}
LOADERS: list[type[yaml.SafeLoader] | type[yaml.CSafeLoader]] = [
    yaml.SafeLoader,
    *([yaml.CSafeLoader] if hasattr(yaml, "CSafeLoader") else []),
]


def frontend_calls_outside(bundle: Path, names: tuple[str, ...]) -> list[Frame]:
    """Frontend asks the cluster DNS for each of ``names`` (every answer: OUTSIDE), then opens a
    connection to OUTSIDE:443: all of it in frontend's own capture, as frontend could send it."""
    frontend, at = pod_ip(bundle, "frontend"), window_start(bundle) + 1.0
    frames: list[Frame] = []
    for index, name in enumerate(names):
        frames += dns_exchange(frontend, CLUSTER_DNS, name, OUTSIDE, at + index * 0.01)
    return frames + handshake(frontend, 40123, OUTSIDE, 443, at + 0.5)


def objects(analysis: Analysis) -> dict[str, list[Any]]:
    """Every policy file as PyYAML (the C loader where built, else Python's) reads it."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return {
        path: [d for d in yaml.load_all(text, Loader=loader) if d is not None]
        for path, text in policy_files(analysis).items()
    }


def without_dns_names(documents: dict[str, list[Any]]) -> dict[str, list[Any]]:
    stripped: dict[str, list[Any]] = json.loads(json.dumps(documents))
    for path, docs in stripped.items():
        if path != KUSTOMIZATION:
            for doc in docs:
                doc["metadata"]["annotations"].pop("netpol-sniffer.io/dns-names", None)
    return stripped


def only_our_lines(text: str) -> None:
    assert not set(text) & YAML_BREAKS
    for line in text.split("\n"):
        assert line.isprintable(), repr(line)


def test_forged_dns_names_add_no_rule_and_rewrite_nothing(bundle: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    shutil.copytree(bundle, plain)
    add_capture(plain, "frontend", frontend_calls_outside(plain, ()))
    add_capture(bundle, "frontend", frontend_calls_outside(bundle, HOSTILE_NAMES))
    expected, hostile = run(plain), run(bundle)

    # PyYAML sees exactly the objects of the model
    window = hostile.window
    assert window is not None
    provenance = Provenance(window.start_text, window.end_text)
    for policy in hostile.policies:
        for loader in LOADERS:
            text = hostile.files[policy_path(policy.namespace, policy.name)]
            assert [d for d in yaml.load_all(text, Loader=loader) if d is not None] == [
                policy_object(policy, provenance=provenance)
            ]
    # the same objects as the same traffic without the DNS answers, name annotation aside
    assert list(policy_files(hostile)) == list(policy_files(expected))
    assert without_dns_names(objects(hostile)) == without_dns_names(objects(expected))
    egress = objects(hostile)[f"{NAMESPACE}.frontend.yaml"][0]["spec"]["egress"]
    assert [rule for rule in egress if rule == {} or "ipBlock" in rule["to"][0]] == [
        {
            "to": [{"ipBlock": {"cidr": f"{OUTSIDE}/32"}}],
            "ports": [{"protocol": "TCP", "port": 443}],
        }
    ]
    annotations = objects(hostile)[f"{NAMESPACE}.frontend.yaml"][0]["metadata"]["annotations"]
    if "netpol-sniffer.io/dns-names" in annotations:  # unless the decoder refused such names
        names = json.loads(annotations["netpol-sniffer.io/dns-names"])
        assert set(names) == {f"{OUTSIDE}/32"}
        assert set(names[f"{OUTSIDE}/32"]) <= {name.lower() for name in HOSTILE_NAMES}
    for path, text in hostile.files.items():
        if path != "graph.svg":
            only_our_lines(text)
    report = hostile.files[REPORT]
    assert "<" not in report and ">" not in report
    assert "\\<" not in report  # entities, not backslashes: &lt;


def test_a_hostile_owner_kind_is_ignored_said_and_reaches_no_output(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], clean_policies: dict[str, str]
) -> None:
    """The API server stores any text as an ownerReference's kind: whoever can create a
    ReplicaSet or a pod can write one. It must neither rewrite a policy nor stop the run."""
    document = snapshot(bundle)
    items: list[dict[str, Any]] = document["items"]  # type: ignore[assignment]
    (replica_set,) = (
        item
        for item in items
        if item["kind"] == "ReplicaSet" and item["metadata"]["name"].startswith("frontend-")
    )
    # would rename the frontend policy and give it a second spec, printed raw
    replica_set["metadata"]["ownerReferences"][0]["kind"] = (
        "Deployment\u2028  name: paymentservice\u2029spec: {}\x1b[2J"
    )
    write_snapshot(bundle, document)
    out = tmp_path / "out"
    status = main(["analyse", str(bundle), "--out", str(out), "--workers", "1"])
    stderr = capsys.readouterr().err
    assert status == ExitStatus.OK, stderr
    assert "Traceback" not in stderr and all(line.isprintable() for line in stderr.splitlines())
    (warning,) = (line for line in stderr.splitlines() if "ownerReference" in line)
    assert f"ReplicaSet {NAMESPACE}/{replica_set['metadata']['name']}: ownerReference" in warning
    assert "\\u2028" in warning and "\\x1b" in warning
    # The owner walk stops at the ReplicaSet, which selects the same pods as the Deployment
    # frontend still in the snapshot: no selector tells them apart, so no policy, and a warning.
    name = replica_set["metadata"]["name"]
    assert (
        f"warning: {NAMESPACE}/ReplicaSet/{name}: its selector app=frontend also selects" in stderr
    )
    assert not (out / f"{NAMESPACE}.frontend.yaml").exists()
    assert not (out / f"{NAMESPACE}.{name}.yaml").exists()
    for path in out.glob("*.yaml"):
        assert without_comments(path.read_text()) == clean_policies[path.name]


def test_a_hostile_label_is_a_clean_error(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = snapshot(bundle)
    items: list[dict[str, Any]] = document["items"]  # type: ignore[assignment]
    pod = next(i for i in items if i["kind"] == "Pod" and i["metadata"]["name"].startswith("redis"))
    pod["metadata"]["labels"]["app"] = "redis-cart\x85    - {}"
    write_snapshot(bundle, document)
    status = main(["analyse", str(bundle), "--out", str(tmp_path / "out"), "--workers", "1"])
    stderr = capsys.readouterr().err
    assert status == ExitStatus.ERROR
    (line,) = stderr.splitlines()
    assert "metadata.labels['app'] must be a label value" in line and "\\x85" in line
    assert line.isprintable()


def test_a_hostile_capture_file_name_is_shown_escaped(
    bundle: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    clean_policies: dict[str, str],
) -> None:
    name = "x\x1b[31m\nnetpol-sniffer analyse: all good <b>\u202e.pcap"
    # a call frontend really makes, in a file whose name would draw a fake line on stderr
    frontend, catalog = pod_ip(bundle, "frontend"), pod_ip(bundle, "productcatalogservice")
    frames = handshake(frontend, 40123, catalog, 3550, window_start(bundle) + 1.0)
    capture = add_capture(bundle, "frontend", frames, name=name)
    capture.write_bytes(capture.read_bytes()[:-7])  # damaged: a warning names the file
    out = tmp_path / "out"
    status = main(["analyse", str(bundle), "--out", str(out), "--workers", "1"])
    stderr = capsys.readouterr().err
    assert status == ExitStatus.OK, stderr
    shown = "x\\x1b[31m\\nnetpol-sniffer analyse: all good <b>\\u202e.pcap"
    warnings = [line for line in stderr.splitlines() if shown in line]
    assert warnings, stderr
    assert all(line.startswith("netpol-sniffer analyse: warning: ") for line in warnings)
    for line in stderr.splitlines():
        assert line.isprintable() and not line.startswith("netpol-sniffer analyse: all good")
    report = (out / REPORT).read_text(encoding="utf-8")
    assert "x\\\\x1b\\[31m\\\\nnetpol-sniffer analyse: all good &lt;b&gt;\\\\u202e.pcap" in report
    assert "<" not in report and ">" not in report
    only_our_lines(report)
    written = {p: without_comments((out / p).read_text(encoding="utf-8")) for p in clean_policies}
    assert written == clean_policies


def test_hostile_names_in_what_a_size_bound_left_out_stay_inert() -> None:
    """The report's "Rules past a policy's size" and the notes of a CiliumNetworkPolicy past its
    name bounds carry workload names (from a snapshot) and peers: each stays one escaped cell."""
    workload = f"{NAMESPACE}/{HOSTILE_NAMES[0]}/Deployment\x1b[2J"
    peer = f"{NAMESPACE}/Deployment/<b>{HOSTILE_NAMES[2]}"
    policy = Policy(NAMESPACE, "web", workload, LabelSelector((("app", "web"),)))
    notes = size_notes(
        CiliumPlan((CiliumPolicy(policy, (), (), names_left_out=3, lookups_left_out=4),))
    )
    facts = ReportFacts(
        "bundle", Provenance(), None, None, 0, 0, 0, {}, (), (), {},
        notes=notes,
        rules_left_out=(
            SideLeftOut(workload, "egress", (peer, OUTSIDE), (PortSpec(Protocol.TCP, 443),), 2),
        ),
    )  # fmt: skip
    report = render_report(facts, WorkloadGraph())
    only_our_lines(report)
    assert "<" not in report and ">" not in report
    assert report.count("| 2 | TCP/443 |") == 1
    assert len([line for line in report.splitlines() if "its CiliumNetworkPolicy" in line]) == 2
