"""collect --node-captures against an in-memory cluster: each node's capture pulled from the
node-capture DaemonSet's pod on it into captures/_node/NODE/, the pods of the namespace covered
by it instead of skipped for their missing sidecar."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from analyser.bundles import open_bundle
from collector.collecting import CollectOptions, collect
from collector.memory import MemoryCluster
from kernel.errors import CollectError
from kernel.names import NODE_CAPTURE_NAMESPACE
from tests.collector.localexec import LocalExec
from tests.collector.test_collecting import namespace, pod, sidecar_dir

NODE_META = {
    "node": "node-1",
    "ips": ["192.168.49.2"],
    "pod_networks": ["10.0.0.0/16"],
    "start_time": "2026-01-01T07:00:00Z",
    "capture_mode": "handshake",
}


def on_node(item: dict[str, Any], node: str) -> dict[str, Any]:
    item["spec"]["nodeName"] = node
    return item


def capturer(tmp_path: Path, node: str, *, running: bool = True) -> dict[str, Any]:
    """The node-capture DaemonSet's pod on ``node``, with its ring and meta.json."""
    files = {"capture.pcap0": b"\xd4\xc3\xb2\xa1" + bytes(60), "meta.json": b""}
    files["meta.json"] = json.dumps({**NODE_META, "node": node}).encode()
    directory = sidecar_dir(tmp_path, f"capture-{node}", files)
    item = pod(
        NODE_CAPTURE_NAMESPACE,
        f"netpol-sniffer-node-capture-{node}",
        captures=directory,
        owner=("DaemonSet", "netpol-sniffer-node-capture"),
        sidecar_state="running" if running else "CrashLoopBackOff",
    )
    item["spec"]["containers"] = item["spec"]["containers"][1:]  # the capture container only
    item["metadata"]["labels"] = {
        "app.kubernetes.io/name": "netpol-sniffer",
        "app.kubernetes.io/component": "node-capture",
    }
    return on_node(item, node)


@pytest.fixture
def bank(tmp_path: Path) -> MemoryCluster:
    """Namespace ``bank`` (restricted: no sidecars) with pods on node-1, node-2 and node-3; the
    node capture runs on node-1, and on node-2 it crashes."""
    return MemoryCluster(
        {
            "Namespace": [namespace("bank"), namespace(NODE_CAPTURE_NAMESPACE, labelled=False)],
            "Node": [{"metadata": {"name": name}} for name in ("node-1", "node-2", "node-3")],
            "Pod": [
                on_node(pod("bank", "ledger-1", ips=["10.0.1.5"]), "node-1"),
                on_node(pod("bank", "teller-1", ips=["10.0.1.6"]), "node-1"),
                on_node(pod("bank", "audit-1", ips=["10.0.2.7"]), "node-2"),
                on_node(pod("bank", "vault-1", ips=["10.0.3.8"]), "node-3"),
                capturer(tmp_path, "node-1"),
                capturer(tmp_path, "node-2", running=False),
            ],
        },
        exec_handler=LocalExec(),
    )


def test_node_captures_are_pulled_and_cover_the_pods_on_their_node(
    bank: MemoryCluster, tmp_path: Path
) -> None:
    out = tmp_path / "bundle"
    result = collect(bank, CollectOptions(out=out, namespaces=("bank",), node_captures=True))
    assert (result.pods_pulled, result.nodes_pulled) == (0, 1)
    assert (out / "captures/_node/node-1/capture.pcap0").is_file()
    assert json.loads((out / "captures/_node/node-1/meta.json").read_text())["node"] == "node-1"
    document = json.loads((out / "bundle.json").read_text())
    assert document["format_version"] == 2
    assert [(e["path"], e["node"]) for e in document["captures"]] == [
        ("captures/_node/node-1/capture.pcap0", "node-1")
    ]
    # the window starts when the node's capture did, as its meta.json says
    assert document["window"]["start"] == "2026-01-01T07:00:00.000000Z"
    reasons = {entry["pod"]: entry["reason"] for entry in document["skipped"]}
    assert reasons == {
        "netpol-sniffer-node-capture-node-2": "sidecar not running: waiting (CrashLoopBackOff)",
        "audit-1": "no sidecar, and no node capture runs on its node node-2",
        "vault-1": "no sidecar, and no node capture runs on its node node-3",
    }
    bundle = open_bundle(out)
    assert bundle.problems == ()
    assert bundle.manifest is not None and bundle.manifest.namespaces == ("bank",)
    lines = [json.loads(line) for line in (out / "pod-ips.jsonl").read_text().splitlines()]
    assert {line["pod"]: line.get("node") for line in lines}["ledger-1"] == "node-1"


def test_without_node_captures_the_pods_without_a_sidecar_are_skipped(
    bank: MemoryCluster, tmp_path: Path
) -> None:
    result = collect(bank, CollectOptions(out=tmp_path / "b", namespaces=("bank",)))
    assert result.nodes_pulled == 0
    assert {s.pod for s in result.skipped} == {"ledger-1", "teller-1", "audit-1", "vault-1"}
    assert not (tmp_path / "b" / "captures" / "_node").exists()


def test_node_captures_without_the_daemonset_is_an_error(tmp_path: Path) -> None:
    cluster = MemoryCluster(
        {"Namespace": [namespace("bank")], "Pod": [pod("bank", "ledger-1")]},
        exec_handler=LocalExec(),
    )
    options = CollectOptions(out=tmp_path / "b", namespaces=("bank",), node_captures=True)
    with pytest.raises(
        CollectError, match=r"no node capture runs .* kubectl apply -k manifests/node-capture"
    ):
        collect(cluster, options)


def test_opting_in_for_node_captures_needs_no_restart(tmp_path: Path) -> None:
    cluster = MemoryCluster({"Namespace": [namespace("bank", labelled=False)]})
    options = CollectOptions(out=tmp_path / "b", namespaces=("bank",), node_captures=True)
    with pytest.raises(CollectError) as raised:
        collect(cluster, options)
    assert "kubectl label namespace bank netpol-sniffer.io/capture=enabled)" in str(raised.value)
