"""A real tcpdump ring, as the sidecar runs it (the capture image's entrypoint and the webhook's
argv) with a small ring (-C 1 -W 2): filled past its size it wraps, and analyser.rings says so;
filled to its size without wrapping, nothing is said."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from analyser.orienting import orient
from analyser.reading import read_captures
from analyser.rings import RingContext, RingLoss, RingVerdict, ring_losses
from analyser.snapshot import load_capture_meta
from kernel.bundles import find_captures
from lab import capturing, netns
from webhook.capture import CaptureOptions

pytestmark = pytest.mark.root

POD = capturing.PodInfo(
    name="web-abc12-xyz34",
    namespace="shop",
    uid="0000-1111",
    ips=("127.0.0.1",),
    node="lab-node-1",
    labels=(("app", "web"),),
)
# A batch of 1,000-byte datagrams, cut to the sidecar's 512-byte snap length: about 260 KB of
# capture, a quarter of a ring file.
SENDER = """
import socket, time
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for index in range(500):
    sock.sendto(b"x" * 1000, ("127.0.0.1", 9999))
    if index % 20 == 0:
        time.sleep(0.01)  # let tcpdump keep up
"""
MAX_BATCHES = 40  # 10 MB: five times round the ring


@pytest.fixture
def namespace() -> Iterator[str]:
    netns.require_root()
    name = f"{netns.PREFIX}{os.getpid()}-ring"
    netns.run(["ip", "netns", "add", name])
    try:
        netns.run(netns.in_namespace(name, ["ip", "link", "set", "lo", "up"]))
        yield name
    finally:
        netns.delete_namespace(name)


def sizes(folder: Path) -> dict[str, int]:
    return {path.name: path.stat().st_size for path in folder.glob("capture.pcap*")}


def wrapped(found: dict[str, int]) -> bool:
    """Both files written and the first one started again (smaller than the second)."""
    return found.get("capture.pcap1", 0) >= 1_000_000 > found.get("capture.pcap0", 0)


def wrapped_with_packets(found: dict[str, int]) -> bool:
    """Wrapped, and the first file has packets again."""
    return wrapped(found) and found["capture.pcap0"] > 50_000


def full(found: dict[str, int]) -> bool:
    """Both files there: the first one full, the second one started."""
    return found.get("capture.pcap1", 0) > 0


def capture(namespace: str, root: Path, *, until: Callable[[dict[str, int]], bool]) -> Path:
    """Run the sidecar with a ring of two 1 MB files, sending batches of datagrams until its
    files are as ``until`` wants them (by what tcpdump wrote, not by what was sent: a loaded
    machine drops packets); the bundle folder its files are in."""
    folder = root / "captures" / POD.namespace / POD.name
    folder.mkdir(parents=True)
    options = CaptureOptions(rotate_megabytes=1, rotate_files=2)
    running = capturing.start(namespace, folder, options, pod=POD, scratch=root)
    try:
        for _ in range(MAX_BATCHES):
            subprocess.run(
                netns.in_namespace(namespace, [sys.executable, "-c", SENDER]),
                check=True,
                timeout=60,
            )
            drained(folder)
            if until(sizes(folder)):
                break
    finally:
        running.stop()
    assert until(sizes(folder)), sizes(folder)
    return root


def drained(folder: Path) -> None:
    """Wait until tcpdump wrote what it received (its files stop growing for half a second):
    packets still in the kernel's buffer when it is stopped are lost."""
    totals: list[int] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        totals.append(sum(sizes(folder).values()))
        if len(totals) > 5 and len(set(totals[-5:])) == 1:
            return
        time.sleep(0.1)


def losses(root: Path) -> tuple[RingLoss, ...]:
    """What analyse says of the ring: its files, when the sidecar's meta.json says it started,
    and its -W (the snapshot would show it in the sidecar's arguments)."""
    folder = f"captures/{POD.namespace}/{POD.name}"
    traffic = read_captures(find_captures(root / "captures"), root=root, workers=1)
    started = load_capture_meta(root / folder / "meta.json").start_time
    assert started is not None
    context = RingContext({folder: started}, {folder: 2})
    return ring_losses(traffic.reports, orient(traffic.conversations, None), context=context)


def test_a_ring_filled_past_its_size_wrapped(namespace: str, tmp_path: Path) -> None:
    root = capture(namespace, tmp_path, until=wrapped_with_packets)
    assert sorted(p.name for p in (root / "captures" / "shop" / POD.name).glob("capture.*")) == [
        "capture.pcap0",
        "capture.pcap1",
    ]
    (loss,) = losses(root)
    assert loss.verdict is RingVerdict.WRAPPED
    assert loss.pod == f"shop/{POD.name}"
    assert loss.oldest.endswith("capture.pcap1")


def test_a_ring_as_full_as_its_size_that_did_not_wrap_says_nothing(
    namespace: str, tmp_path: Path
) -> None:
    root = capture(namespace, tmp_path, until=full)
    assert len(list((root / "captures" / "shop" / POD.name).glob("capture.pcap*"))) == 2
    assert losses(root) == ()
