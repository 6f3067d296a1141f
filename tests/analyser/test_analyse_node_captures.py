"""A node's capture (``captures/_node/NODE/``): the vantage of every pod on its node, of the
namespaces opted in.

The recorded microservices-demo bundle (12 pods on ``lab-node-1``, one sidecar each) is turned
into what the node-capture DaemonSet records on that node instead: every pod's packets in one
file, each on the interface of its pod (a packet between two pods is recorded twice, once on
each pod's veth, as ``tcpdump -i any`` on a node records it), without what the pods said on
their own loopback.
"""

from __future__ import annotations

import json
import shutil
import struct
from dataclasses import replace
from pathlib import Path

import pytest

from analyser.analysing import Analysis
from analyser.bundles import open_bundle
from analyser.packets import LINKTYPE_LINUX_SLL2, by_interface
from analyser.reading import read_captures
from analyser.sources import RecordChunk
from kernel.bundles import (
    CAPTURE_META,
    CAPTURES,
    FORMAT_VERSION,
    Manifest,
    entries_for_layout,
    node_capture_folder,
    write_manifest,
)
from tests.analyser.packet_builders import ip_packet, linux_sll2, write_pcap
from tests.bundle_builders import handshake
from tests.hostile.hostile_helpers import (
    NAMESPACE,
    copy_example,
    pod_ip,
    policy_files,
    run,
    window_start,
)

NODE = "lab-node-1"
LOOPBACK_INTERFACE = 1
_RECORD = struct.Struct("<IIII")
_SLL2_INTERFACE = slice(4, 8)


def _records(path: Path) -> list[tuple[float, bytes]]:
    """A little-endian microsecond pcap's (time, packet) records."""
    data = path.read_bytes()
    records, offset = [], 24
    while offset + 16 <= len(data):
        seconds, micros, captured, _ = _RECORD.unpack_from(data, offset)
        records.append((seconds + micros / 1e6, data[offset + 16 : offset + 16 + captured]))
        offset += 16 + captured
    return records


def _on_interface(packet: bytes, interface: int) -> bytes:
    return packet[:4] + struct.pack("!I", interface) + packet[8:]


def as_node_capture(bundle: Path, *, namespaces: tuple[str, ...] = (NAMESPACE,)) -> Path:
    """The bundle with its pods' sidecar captures replaced by one capture of their node, as
    ``collect --node-captures`` pulls it (``namespaces``: what bundle.json says it pulled for)."""
    records: list[tuple[float, bytes]] = []
    pods = sorted((bundle / CAPTURES / NAMESPACE).iterdir())
    for interface, folder in enumerate(pods, start=10):
        for path in sorted(folder.glob("capture.pcap*")):
            records += [
                (at, _on_interface(packet, interface))
                for at, packet in _records(path)
                if struct.unpack("!I", packet[_SLL2_INTERFACE])[0] != LOOPBACK_INTERFACE
            ]
    manifest = open_bundle(bundle).manifest
    assert manifest is not None and manifest.window is not None
    shutil.rmtree(bundle / CAPTURES)
    folder = bundle / node_capture_folder(NODE)
    folder.mkdir(parents=True)
    write_pcap(folder / "capture.pcap0", sorted(records), linktype=LINKTYPE_LINUX_SLL2)
    meta = {
        "node": NODE,
        "ips": ["10.0.0.10"],
        "pod_networks": ["10.244.0.0/16"],
        "start_time": "2026-11-26T10:40:08Z",
        "capture_mode": "handshake",
    }
    (folder / CAPTURE_META).write_text(json.dumps(meta))
    write_manifest(
        bundle,
        Manifest(
            producer=manifest.producer,
            capture_mode=manifest.capture_mode,
            window=manifest.window,
            captures=tuple(entries_for_layout(bundle)),
            namespaces=namespaces,
        ),
    )
    return bundle


@pytest.fixture(scope="module")
def sidecars(tmp_path_factory: pytest.TempPathFactory) -> Analysis:
    return run(copy_example(tmp_path_factory.mktemp("sidecars") / "bundle"))


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Analysis:
    return run(as_node_capture(copy_example(tmp_path_factory.mktemp("node") / "bundle")))


def test_a_nodes_capture_gives_the_policies_every_sidecar_gives(
    sidecars: Analysis, node: Analysis
) -> None:
    assert policy_files(node) == policy_files(sidecars)
    assert node.scope == sidecars.scope
    assert not [p for p in node.problems if "foreign" in p.problem]


def test_the_nodes_flows_are_the_sidecars_flows_counted_alike(
    sidecars: Analysis, node: Analysis
) -> None:
    def counts(analysis: Analysis) -> dict[tuple[str, str, int], tuple[int, int]]:
        return {
            (flow.client.ip, flow.server.ip, flow.server.port): (flow.packets, flow.bytes)
            for flow in analysis.flows
            if not flow.client.ip.startswith("127.")
        }

    assert counts(node) == counts(sidecars)


def test_a_packet_between_two_pods_of_the_node_counts_once(tmp_path: Path) -> None:
    """A call from one pod straight to another's address passes the veths of both: each packet
    is recorded twice in the node's capture, and counts once."""
    example = copy_example(tmp_path / "example")
    frontend, cart = pod_ip(example, "frontend"), pod_ip(example, "cartservice")
    bundle = as_node_capture(copy_example(tmp_path / "bundle"))
    start = window_start(bundle)
    call = [
        (at, linux_sll2(frame[14:]))  # the Ethernet header off
        for at, frame in handshake(frontend, 45000, cart, 7070, start + 1)
    ]
    frames = [
        (at + copy * 1e-5, _on_interface(packet, interface))
        for at, packet in call
        for copy, interface in enumerate((10, 11))
    ]
    folder = bundle / node_capture_folder(NODE)
    write_pcap(folder / "capture.pcap1", frames, linktype=LINKTYPE_LINUX_SLL2)
    manifest = open_bundle(bundle).manifest
    assert manifest is not None
    write_manifest(bundle, replace(manifest, captures=tuple(entries_for_layout(bundle))))
    (flow,) = [f for f in run(bundle).flows if (f.client.ip, f.client.port) == (frontend, 45000)]
    assert flow.packets == len(call)


def test_the_report_says_which_vantage_covered_each_pod(sidecars: Analysis, node: Analysis) -> None:
    assert {item.vantages for item in node.coverage} == {(f"node {NODE}",)}
    assert {item.vantages for item in sidecars.coverage} == {("its own capture",)}
    assert [item.pod for item in node.coverage] == [item.pod for item in sidecars.coverage]
    report = node.files["report.md"]
    assert "## Vantage points" in report and f"| node {NODE} |" in report
    assert node.summary()["coverage"] == {item.pod: [f"node {NODE}"] for item in node.coverage}


def test_a_bundle_with_a_nodes_capture_is_format_version_2(tmp_path: Path) -> None:
    bundle = as_node_capture(copy_example(tmp_path / "bundle"))
    document = json.loads((bundle / "bundle.json").read_text())
    assert document["format_version"] == FORMAT_VERSION == 2
    assert document["captures"][0]["node"] == NODE
    assert "pod" not in document["captures"][0] and "namespace" not in document["captures"][0]
    manifest = open_bundle(bundle).manifest
    assert manifest is not None and manifest.captures[0].node == NODE
    sidecar_bundle = json.loads((copy_example(tmp_path / "sidecars") / "bundle.json").read_text())
    assert sidecar_bundle["format_version"] == 1


def test_only_the_pods_of_opted_in_namespaces_are_covered(tmp_path: Path) -> None:
    """A node's capture holds every pod of the node; of a namespace not opted in nothing is kept
    and no pod gets a policy."""
    analysis = run(as_node_capture(copy_example(tmp_path / "bundle"), namespaces=("shop",)))
    assert not analysis.scope.workloads and not analysis.policy_files
    assert analysis.flows == ()
    assert any(
        "no pod of node lab-node-1 in an opted-in namespace is an end" in p.problem
        for p in analysis.problems
    )


def test_without_an_opted_in_namespace_a_nodes_capture_is_not_read(tmp_path: Path) -> None:
    example = copy_example(tmp_path / "example")
    (frontend,) = (example / CAPTURES / NAMESPACE).glob("frontend-*/capture.pcap0")
    bundle = as_node_capture(copy_example(tmp_path / "bundle"), namespaces=())
    snapshot = json.loads((bundle / "snapshot.json").read_text())
    for item in snapshot["items"]:
        if item["kind"] == "Namespace":
            item["metadata"]["labels"].pop("netpol-sniffer.io/capture", None)
    (bundle / "snapshot.json").write_text(json.dumps(snapshot))
    shutil.copy(frontend, bundle / CAPTURES / "frontend.pcap")  # something else to read
    analysis = run(bundle)
    assert any(
        p.path == node_capture_folder(NODE) and "no namespace is opted in" in p.problem
        for p in analysis.problems
    )
    assert [report.path for report in analysis.traffic.reports] == ["captures/frontend.pcap"]


def test_records_are_split_by_the_interface_they_were_captured_on(tmp_path: Path) -> None:
    packet = ip_packet("10.244.0.2", "10.244.0.3", "udp", 5000, 53)
    frames = [
        (1.0, _on_interface(linux_sll2(packet), 7)),
        (2.0, _on_interface(linux_sll2(packet), 9)),
        (3.0, _on_interface(linux_sll2(packet), 7)),
    ]
    data = write_pcap(tmp_path / "x.pcap", frames, linktype=LINKTYPE_LINUX_SLL2).read_bytes()
    body = data[24:]
    chunk = RecordChunk(
        LINKTYPE_LINUX_SLL2, "<III4x", 1e6, 1 << 18, body + bytes(256), 0, len(body)
    )
    split = by_interface(chunk)
    assert split.walked == 3 and split.stop == len(body)
    assert {interface: part.end for interface, part in split.chunks.items()} == {
        7: 2 * (len(body) // 3),
        9: len(body) // 3,
    }
    cut = chunk._replace(end=len(body) - 1)
    assert by_interface(cut).walked == 2


def test_a_nodes_capture_counts_each_packet_once_per_direction(tmp_path: Path) -> None:
    """A packet passing two interfaces (a pod's veth, then another's) counts once; the reply,
    seen on both too, once as well; the same file read as a pod's counts every copy."""
    request = ip_packet("10.244.0.2", "10.244.0.3", "udp", 5000, 9000)
    reply = ip_packet("10.244.0.3", "10.244.0.2", "udp", 9000, 5000)
    frames = [
        (1.0, _on_interface(linux_sll2(request), 7)),
        (1.0001, _on_interface(linux_sll2(request), 9)),
        (1.1, _on_interface(linux_sll2(reply), 9)),
        (1.1001, _on_interface(linux_sll2(reply), 7)),
        (2.0, _on_interface(linux_sll2(request), 7)),
        (2.0001, _on_interface(linux_sll2(request), 9)),
    ]
    path = write_pcap(tmp_path / "node.pcap", frames, linktype=LINKTYPE_LINUX_SLL2)
    on_node = read_captures([path], root=tmp_path, workers=1, node_captures={"node.pcap"})
    as_pod = read_captures([path], root=tmp_path, workers=1)
    (conversation,) = on_node.conversations
    (doubled,) = as_pod.conversations
    assert conversation.packets == 3 and doubled.packets == 6
    assert conversation.bytes * 2 == doubled.bytes
    assert (conversation.first_seen, conversation.last_seen) == (1.0, 2.0001)
