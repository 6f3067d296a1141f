"""Capture rings that wrapped (analyser.rings): told from the files' numbers and first packets,
said per pod (or node) in the report, --json and the warnings; never for a ring that did not."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import dpkt
import pytest

from analyser.analysing import analyse
from analyser.bundles import open_bundle
from analyser.flows import Flow
from analyser.objects import KubeObject, ObjectMeta
from analyser.rings import (
    RingContext,
    RingVerdict,
    ring_losses,
    ring_member_number,
    ring_size_of,
)
from analyser.sources import CaptureReport
from cli.main import main
from kernel.bundles import (
    Manifest,
    Window,
    entries_for_layout,
    node_capture_folder,
    write_manifest,
)
from tests.analyser.flow_builders import flow
from tests.analyser.test_analyse_node_captures import NODE, as_node_capture
from tests.bundle_builders import (
    API_IP,
    CART_IP,
    CART_POD,
    T0,
    handshake,
    make_bundle,
    write_pcap,
)
from tests.hostile.hostile_helpers import copy_example, run

POD_RING = "captures/shop/cart-1/capture.pcap"
NODE_RING = "captures/_node/node-a/capture.pcap"


def reports(ring: str, firsts: dict[int, float | None]) -> list[CaptureReport]:
    return [
        CaptureReport(f"{ring}{number}", packets=10, bytes=1000, first_seen=first)
        for number, first in firsts.items()
    ]


def ring_flow(last: float, capture: str) -> Flow:
    """A flow seen by ``capture`` whose last packet was at ``last``."""
    return replace(flow("10.0.0.1:40000", "10.0.0.2:80", capture=capture), last_seen=last)


def no_context() -> RingContext:
    return RingContext({}, {})


def test_ring_member_numbers() -> None:
    assert ring_member_number("captures/ns/pod/capture.pcap07.gz") == 7
    assert ring_member_number("captures/ns/pod/capture.pcap0") == 0
    assert ring_member_number("captures/ns/pod/capture.pcap") is None
    assert ring_member_number("trace.pcapng") is None
    assert ring_member_number("capture.pcap²") is None


def test_a_ring_in_order_did_not_wrap() -> None:
    found = reports(POD_RING, {0: T0 + 1, 1: T0 + 100, 2: T0 + 200})
    assert ring_losses(found, [], context=RingContext({"captures/shop/cart-1": T0}, {})) == ()


def test_a_ring_whose_oldest_packet_is_not_in_its_first_file_wrapped() -> None:
    # tcpdump -W 3 went round: pcap0 was overwritten after pcap2, so pcap1 holds the oldest.
    found = reports(POD_RING, {0: T0 + 300, 1: T0 + 100, 2: T0 + 200})
    flows = [ring_flow(T0 + 350, f"{POD_RING}0")]
    (loss,) = ring_losses(
        found, flows, context=RingContext({"captures/shop/cart-1": T0}, {"captures/shop/cart-1": 3})
    )
    assert loss.verdict is RingVerdict.WRAPPED
    assert (loss.pod, loss.node, loss.ring, loss.oldest) == (
        "shop/cart-1",
        "",
        POD_RING,
        f"{POD_RING}1",
    )
    assert (loss.covered_start, loss.covered_end, loss.lost_start) == (T0 + 100, T0 + 350, T0)
    assert loss.as_json() == {
        "ring": POD_RING,
        "pod": "shop/cart-1",
        "node": None,
        "verdict": "wrapped",
        "files": 3,
        "ring_size": 3,
        "covered": {"start": "2026-01-01T10:01:40Z", "end": "2026-01-01T10:05:50Z"},
        "lost": {"start": "2026-01-01T10:00:00Z", "end": "2026-01-01T10:01:40Z"},
    }
    assert "pod shop/cart-1: its capture ring wrapped" in loss.text
    assert "from 2026-01-01T10:00:00Z to 2026-01-01T10:01:40Z are lost" in loss.text


def test_a_ring_whose_first_file_was_just_started_again_wrapped() -> None:
    # tcpdump just reopened capture.pcap0 (a header, no packet yet): capture.pcap1 is full.
    found = [
        CaptureReport(f"{POD_RING}0", packets=0, bytes=0),
        *reports(POD_RING, {1: T0 + 100}),
    ]
    (loss,) = ring_losses(found, [], context=no_context())
    assert (loss.verdict, loss.files, loss.oldest) == (RingVerdict.WRAPPED, 2, f"{POD_RING}1")


def test_an_empty_ring_or_a_ring_with_an_empty_last_file_did_not_wrap() -> None:
    # The ring's next file opened a moment ago; a capture that saw nothing at all.
    found = [*reports(POD_RING, {0: T0 + 1}), CaptureReport(f"{POD_RING}1", packets=0, bytes=0)]
    assert ring_losses(found, [], context=no_context()) == ()
    assert ring_losses([CaptureReport(f"{NODE_RING}0", 0, 0)], [], context=no_context()) == ()


def test_a_node_capture_ring_that_wrapped_is_the_node_s() -> None:
    found = reports(NODE_RING, {0: T0 + 50, 1: T0 + 10})
    (loss,) = ring_losses(found, [], context=no_context())
    assert (loss.pod, loss.node, loss.where) == ("", "node-a", "node node-a")
    assert loss.lost_start is None and "the flows to " in loss.text


def test_a_node_capture_ring_in_order_did_not_wrap() -> None:
    assert ring_losses(reports(NODE_RING, {0: T0 + 10, 1: T0 + 50}), [], context=no_context()) == ()


def test_files_without_a_flow_and_out_of_order_packets_within_a_second_say_nothing() -> None:
    # An empty file (no first packet) and the next file's first packet a bit earlier than the
    # last one's (tcpdump -i any interleaves CPUs' buffers): no wrap.
    found = reports(POD_RING, {0: T0 + 10, 1: T0 + 9.5, 2: None})
    assert ring_losses(found, [], context=no_context()) == ()


def full_ring(first: float) -> list[CaptureReport]:
    return reports(POD_RING, {0: first, 1: T0 + 2000, 2: T0 + 2500})


def last_at(at: float) -> list[Flow]:
    return [ring_flow(at, f"{POD_RING}2")]


def test_a_full_ring_in_order_whose_first_packet_came_long_after_the_start_may_have_wrapped() -> (
    None
):
    # -W 3, all three files, in order; the capture started at T0 and its first retained packet
    # is 1,500 s later while the three files span 1,500 s: what a ring that wrapped exactly at
    # its last file looks like.
    context = RingContext({"captures/shop/cart-1": T0}, {"captures/shop/cart-1": 3})
    (loss,) = ring_losses(full_ring(T0 + 1500), last_at(T0 + 3000), context=context)
    assert loss.verdict is RingVerdict.MAY_HAVE_WRAPPED
    assert "may have wrapped" in loss.text and loss.lost_start == T0


@pytest.mark.parametrize(
    ("first", "ring_size"),
    [
        (T0 + 5, 3),  # full and in order, its first packet right after the start: did not wrap
        (T0 + 1500, 4),  # late, but not full (3 of 4 files): did not wrap
        (T0 + 1500, None),  # late, but the ring's size is unknown: nothing certain to say
    ],
)
def test_a_ring_that_is_not_full_or_not_late_did_not_wrap(
    first: float, ring_size: int | None
) -> None:
    sizes = {"captures/shop/cart-1": ring_size} if ring_size is not None else {}
    context = RingContext({"captures/shop/cart-1": T0}, sizes)
    assert ring_losses(full_ring(first), last_at(T0 + 3000), context=context) == ()


def test_the_ring_size_comes_from_the_capture_container_s_arguments() -> None:
    def pod(spec: object) -> KubeObject:
        meta = ObjectMeta("cart-1", "shop", "", {}, None, None, ())
        return KubeObject("Pod", meta, {"spec": spec})

    sidecar = {"name": "netpol-sniffer-capture", "args": ["tcpdump", "-C", "10", "-W", "7"]}
    assert ring_size_of(pod({"initContainers": [sidecar]})) == 7
    assert ring_size_of(pod({"containers": [{**sidecar, "name": "app"}]})) is None
    assert ring_size_of(pod({"containers": [{**sidecar, "args": ["-W", "x"]}]})) is None
    assert ring_size_of(pod({"containers": [{**sidecar, "args": ["-W", "²"]}]})) is None
    assert ring_size_of(pod({"containers": [{**sidecar, "args": ["-W", "9" * 5000]}]})) is None
    assert ring_size_of(pod("not a spec")) is None


# -- a bundle ---------------------------------------------------------------------------------


def wrap_cart_ring(root: Path) -> Path:
    """The cart's capture as a ring of two files that went round: capture.pcap0 was overwritten
    with the newest packets, capture.pcap1 holds the oldest still kept."""
    folder = root / "captures" / "shop" / CART_POD
    write_pcap(folder / "capture.pcap1", handshake(CART_IP, 50010, API_IP, 443, T0 + 30))
    write_pcap(folder / "capture.pcap0", handshake(CART_IP, 50020, API_IP, 443, T0 + 40))
    write_manifest(
        root,
        Manifest(
            producer="lab",
            capture_mode="sidecar",
            window=Window(T0, T0 + 60),
            captures=tuple(entries_for_layout(root)),
        ),
    )
    return root


def test_a_bundle_whose_ring_did_not_wrap_says_nothing(tmp_path: Path) -> None:
    analysis = analyse(open_bundle(make_bundle(tmp_path / "b")), workers=1)
    assert analysis.rings == ()
    assert analysis.summary()["wrapped_rings"] == []
    assert "Capture rings that wrapped" not in analysis.files["report.md"]


def test_a_bundle_whose_ring_wrapped_says_so_per_pod(tmp_path: Path) -> None:
    analysis = analyse(open_bundle(wrap_cart_ring(make_bundle(tmp_path / "b"))), workers=1)
    (loss,) = analysis.rings
    assert loss.pod == f"shop/{CART_POD}" and loss.verdict is RingVerdict.WRAPPED
    assert loss.lost_start == T0 and loss.covered_start == T0 + 30
    assert analysis.summary()["wrapped_rings"] == [loss.as_json()]
    assert loss.as_json()["covered"] == {
        "start": "2026-01-01T10:00:30Z",
        "end": "2026-01-01T10:00:40Z",
    }
    report = analysis.files["report.md"]
    assert "## Capture rings that wrapped" in report
    assert f"| pod shop/{CART_POD} | captures/shop/{CART_POD}/capture.pcap | wrapped |" in report
    assert any("capture ring wrapped" in p.problem for p in analysis.problems)


def test_analyse_warns_about_a_wrapped_ring_on_stderr_and_in_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = wrap_cart_ring(make_bundle(tmp_path / "b"))
    status = main(["analyse", str(bundle), "-o", str(tmp_path / "out"), "--json", "--workers", "1"])
    captured = capsys.readouterr()
    assert status == 0
    assert (
        f"warning: captures/shop/{CART_POD}/capture.pcap: pod shop/{CART_POD}: its capture "
        "ring wrapped" in captured.err
    )
    assert json.loads(captured.out)["wrapped_rings"][0]["pod"] == f"shop/{CART_POD}"


# -- a node's capture ----------------------------------------------------------------------------


def node_ring(bundle: Path, *, wrapped: bool) -> Path:
    """The node capture's one file split into a ring of two: in order (capture.pcap0 the older
    half), or wrapped (capture.pcap0 overwritten with the newer half)."""
    folder = bundle / node_capture_folder(NODE)
    source = folder / "capture.pcap0"
    with source.open("rb") as stream:
        reader = dpkt.pcap.Reader(stream)
        linktype = reader.datalink()
        records = [(at, bytes(frame)) for at, frame in reader]
    half = len(records) // 2
    older, newer = (
        ("capture.pcap1", "capture.pcap0") if wrapped else ("capture.pcap0", "capture.pcap1")
    )
    for name, part in ((older, records[:half]), (newer, records[half:])):
        with (folder / name).open("wb") as stream:
            writer = dpkt.pcap.Writer(stream, linktype=linktype)
            for at, frame in part:
                writer.writepkt(frame, ts=at)
    manifest = open_bundle(bundle, check_sums=False).manifest
    assert manifest is not None
    write_manifest(bundle, replace(manifest, captures=tuple(entries_for_layout(bundle))))
    return bundle


@pytest.mark.parametrize("wrapped", [False, True], ids=["in-order", "wrapped"])
def test_a_node_capture_s_ring(tmp_path: Path, wrapped: bool) -> None:
    bundle = node_ring(as_node_capture(copy_example(tmp_path / "bundle")), wrapped=wrapped)
    analysis = run(bundle)
    if not wrapped:
        assert analysis.rings == ()
        return
    (loss,) = analysis.rings
    assert (loss.node, loss.pod, loss.ring) == (NODE, "", f"captures/_node/{NODE}/capture.pcap")
    assert loss.oldest.endswith("capture.pcap1") and loss.verdict is RingVerdict.WRAPPED
    assert (
        f"| node {NODE} | captures/\\_node/{NODE}/capture.pcap | wrapped |"
        in (analysis.files["report.md"])
    )
