"""Rings: whether a capture's tcpdump ring wrapped and overwrote its oldest files.

The sidecar (and the node capture) runs ``tcpdump -C MB -W N -w capture.pcap``: it writes
``capture.pcap0``, ``capture.pcap1``, … (numbers padded to the width of N - 1) and, once N files
are full, starts again at the first one, overwriting it. ``collect`` keeps those names. The flows
of an overwritten file are gone, and policies made from the rest would miss them.

How a wrap is told (per ring: the files of one folder with one base name, ``kernel.bundles``'
``ring_name``):

- **Certain** (:attr:`RingVerdict.WRAPPED`): the file holding the oldest retained packet is not
  the ring's first. tcpdump fills the files in order, so without a wrap the first file's first
  packet is the oldest of all; after one, the oldest is the file after the one last written.
  Or a file without any packet comes before one with packets: it was just opened again.
- **Likely** (:attr:`RingVerdict.MAY_HAVE_WRAPPED`): the ring is full (as many files as the
  sidecar's ``-W``, read from its container's arguments in the snapshot) and in order, which is
  also what a ring looks like that wrapped exactly as its last file was being written; it is
  said only when its first packet came later after the capture started than half the time the
  ring's files span and at least :data:`MIN_SILENCE` (a pod silent that long and then filling
  the ring is rare; a quiet pod that never filled the ring is never flagged). A ring that wrapped
  at its last file within its first minute is therefore not told.

Whatever else a ring shows (fewer files than ``-W``, files in order) is no wrap: no warning.

The window a ring covers runs from its oldest retained packet to its newest; what it lost runs
from when its capture started (the latest known of the pod's start, the sidecar's start in
``meta.json`` and the bundle's window start) to that oldest packet.

Pure: capture reports, flows and a few times in, verdicts out; no I/O.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from itertools import pairwise
from pathlib import Path, PurePosixPath

from analyser.bundles import Bundle
from analyser.flows import Flow, FlowTable
from analyser.objects import KubeObject, Pod
from analyser.snapshot import CaptureMeta, NodeCaptureMeta, Snapshot
from analyser.sources import CaptureReport
from kernel.bundles import CAPTURES, NODE_CAPTURES, ring_name
from kernel.names import CONTAINER_NAME, NODE_CAPTURE_NAMESPACE
from kernel.times import utc_text

# A ring full and in order is said to have maybe wrapped only when its first packet came at least
# this long after its capture started (and later than half the time its files span): a pod is
# rarely silent that long (kubelet probes, DNS), and a short quiet start is no sign of a wrap.
MIN_SILENCE = 60.0
# tcpdump writes a ring's files one after the other; packets of one CPU's buffer may come a little
# out of order across files (tcpdump -i any), never by this much.
ORDER_SLACK = 1.0


class RingVerdict(StrEnum):
    WRAPPED = "wrapped"  # certain: its oldest packet is not in its first file
    MAY_HAVE_WRAPPED = "may have wrapped"  # full and in order, its first packet late


@dataclass(frozen=True, slots=True)
class RingLoss:
    """A capture ring that wrapped (or likely did): whose it was, what it still covers and what
    it lost. ``pod`` ("NS/NAME") for a pod's capture, ``node`` for a node's; both empty for a ring
    outside the bundle layout (a plain folder's)."""

    ring: str  # bundle-relative, without the file number: captures/NS/POD/capture.pcap
    pod: str
    node: str
    verdict: RingVerdict
    files: int  # the ring's files in the bundle
    ring_size: int | None  # tcpdump's -W, when the snapshot shows the capture's arguments
    oldest: str  # the file holding the oldest retained packet
    covered_start: float  # the oldest retained packet
    covered_end: float  # the newest packet of the ring's flows (or covered_start)
    lost_start: float | None  # when its capture started, when known

    @property
    def where(self) -> str:
        """``pod NS/NAME``, ``node NAME`` or the ring's path."""
        if self.pod:
            return f"pod {self.pod}"
        return f"node {self.node}" if self.node else self.ring

    @property
    def text(self) -> str:
        """One line for the warning and the report."""
        since = (
            f"from {utc_text(self.lost_start)} " if self.lost_start is not None else ""
        ) + f"to {utc_text(self.covered_start)}"
        size = f" of {self.ring_size}" if self.ring_size is not None else ""
        if self.verdict is RingVerdict.WRAPPED:
            how = (
                f"its capture ring wrapped ({self.files}{size} files; the oldest packet is in "
                f"{PurePosixPath(self.oldest).name}, not the first file): its oldest files were "
                f"overwritten"
            )
        else:
            how = (
                f"its capture ring is full ({self.files}{size} files) and its first packet came "
                "long after the capture started: it may have wrapped"
            )
        return (
            f"{self.where}: {how}; the flows {since} are lost and the policies miss them; the "
            f"capture covers {utc_text(self.covered_start)} to {utc_text(self.covered_end)} "
            "(capture again with a larger ring, -C/-W, or collect more often)"
        )

    def as_json(self) -> dict[str, object]:
        """An entry of ``--json``'s ``wrapped_rings``."""
        return {
            "ring": self.ring,
            "pod": self.pod or None,
            "node": self.node or None,
            "verdict": str(self.verdict),
            "files": self.files,
            "ring_size": self.ring_size,
            "covered": {"start": utc_text(self.covered_start), "end": utc_text(self.covered_end)},
            "lost": {
                "start": None if self.lost_start is None else utc_text(self.lost_start),
                "end": utc_text(self.covered_start),
            },
        }


@dataclass(frozen=True, slots=True)
class RingMember:
    """One file of a ring, with its number in the ring and its first packet."""

    path: str
    number: int
    first_seen: float


def ring_member_number(path: str) -> int | None:
    """The number tcpdump gave a ring's file (``capture.pcap07.gz`` → 7); None for a file that
    is no ring member (``capture.pcap``)."""
    name = path[:-3] if path.lower().endswith(".gz") else path
    digits = name[len(ring_name(path)) :]
    return int(digits) if digits.isascii() and digits.isdigit() else None


def owner_of_ring(ring: str) -> tuple[str, str]:
    """(``NS/POD``, ``NODE``) of a ring by where the bundle layout puts it; empty when neither."""
    parts = PurePosixPath(ring).parts
    if len(parts) >= 4 and parts[0] == CAPTURES:
        if parts[1] == NODE_CAPTURES:
            return "", parts[2]
        return f"{parts[1]}/{parts[2]}", ""
    return "", ""


def _is_count(text: str) -> bool:
    """A small number in ASCII digits (``str.isdigit`` also takes ``²``, which ``int`` refuses;
    the snapshot is input)."""
    return text.isascii() and text.isdigit() and len(text) <= 6


def ring_size_of(pod: KubeObject) -> int | None:
    """The ``-W`` of the capture container (the sidecar, or the node capture's) in a pod's
    spec, when it has one with a number there."""
    spec = pod.raw.get("spec")
    if not isinstance(spec, Mapping):
        return None
    for key in ("initContainers", "containers"):
        containers = spec.get(key)
        for container in containers if isinstance(containers, list) else ():
            if not isinstance(container, Mapping) or container.get("name") != CONTAINER_NAME:
                continue
            args = container.get("args")
            if not isinstance(args, list):
                continue
            for flag, value in pairwise(args):
                if flag == "-W" and isinstance(value, str) and _is_count(value):
                    return int(value) or None
    return None


def ring_losses(
    reports: Iterable[CaptureReport],
    flows: Iterable[Flow],
    *,
    context: RingContext,
) -> tuple[RingLoss, ...]:
    """The rings among the capture files of ``reports`` that wrapped or likely did, sorted by
    ring. ``context``: when each folder's capture started, and its ``-W`` (:func:`ring_context`).
    Files with packets but none of a flow say nothing about the order; a file without any
    packet before one with packets was just started again (:func:`_ring_loss`)."""
    members: dict[str, list[RingMember]] = defaultdict(list)
    empty: dict[str, list[int]] = defaultdict(list)
    for report in reports:
        number = ring_member_number(report.path)
        if number is None:
            continue
        if report.ok and not report.packets:
            empty[ring_name(report.path)].append(number)
        elif report.first_seen is not None:
            members[ring_name(report.path)].append(
                RingMember(report.path, number, report.first_seen)
            )
    # The last packet per set of captures first: flows share a handful of such sets.
    latest: dict[frozenset[str], float] = {}
    for group in FlowTable.of(flows).groups:
        seen, last_seen = latest.get(group.captures), group.last_seen()
        if seen is None or last_seen > seen:
            latest[group.captures] = last_seen
    last: dict[str, float] = {}
    for captures, last_seen in latest.items():
        for capture in captures:
            ring = ring_name(capture)
            if ring in members:
                last[ring] = max(last.get(ring, last_seen), last_seen)
    losses = []
    for ring, found in sorted(members.items()):
        folder = str(PurePosixPath(ring).parent)
        loss = _ring_loss(
            ring,
            sorted(found, key=lambda member: member.number),
            empty=empty.get(ring, []),
            last=last.get(ring),
            started=context.started.get(folder),
            ring_size=context.ring_sizes.get(folder),
        )
        if loss is not None:
            losses.append(loss)
    return tuple(losses)


def _ring_loss(
    ring: str,
    members: list[RingMember],
    *,
    empty: list[int],
    last: float | None,
    started: float | None,
    ring_size: int | None,
) -> RingLoss | None:
    """``members``: the ring's files with a flow's packet, by number; ``empty``: the numbers of
    its files without any packet. tcpdump fills a file before it opens the next, so an empty
    file numbered before one with packets was opened again after the ring went round: wrapped,
    as when the oldest packet is not in the first file."""
    first = members[0]
    oldest = min(members, key=lambda member: (member.first_seen, member.number))
    restarted = any(number < first.number for number in empty)
    if restarted or oldest.first_seen < first.first_seen - ORDER_SLACK:
        verdict = RingVerdict.WRAPPED
    elif _full_and_late(members, last=last, started=started, ring_size=ring_size):
        verdict, oldest = RingVerdict.MAY_HAVE_WRAPPED, first
    else:
        return None
    pod, node = owner_of_ring(ring)
    covered_end = max(last if last is not None else oldest.first_seen, oldest.first_seen)
    return RingLoss(
        ring=ring,
        pod=pod,
        node=node,
        verdict=verdict,
        files=len(members) + len(empty),
        ring_size=ring_size,
        oldest=oldest.path,
        covered_start=oldest.first_seen,
        covered_end=covered_end,
        lost_start=started if started is not None and started < oldest.first_seen else None,
    )


def _full_and_late(
    members: list[RingMember], *, last: float | None, started: float | None, ring_size: int | None
) -> bool:
    """A ring as full as its ``-W``, whose first packet came later after its capture started
    than half the time its files span: what a ring that wrapped at its last file looks like."""
    if ring_size is None or started is None or last is None or len(members) < max(ring_size, 2):
        return False
    silent = members[0].first_seen - started
    return silent > max(MIN_SILENCE, (last - members[0].first_seen) / 2)


@dataclass(frozen=True, slots=True)
class RingContext:
    """What a bundle tells of its rings besides their files: when each capture folder's capture
    started and its ring size (``-W``), by folder (bundle-relative)."""

    started: Mapping[str, float]
    ring_sizes: Mapping[str, int]


def ring_context(
    folders: Iterable[str],
    snapshot: Snapshot,
    *,
    meta_starts: Mapping[str, float],
    window_start: float | None,
) -> RingContext:
    """For each capture folder (``captures/NS/POD``, ``captures/_node/NODE``): when its capture
    started, the latest known of the window's start, the sidecar's (``meta_starts``: folder →
    ``meta.json``'s ``start_time``) and, for a pod's, the pod's (``status.startTime``); and the
    ``-W`` of its capture container in the snapshot (a node's: the node-capture pod on it)."""
    node_pods: dict[str, KubeObject] = {
        pod.node_name: pod for pod in snapshot.pods if pod.namespace == NODE_CAPTURE_NAMESPACE
    }
    started: dict[str, float] = {}
    sizes: dict[str, int] = {}
    for folder in folders:
        pod_name, node = owner_of_ring(f"{folder}/ring")
        known = [t for t in (window_start, meta_starts.get(folder)) if t is not None]
        pod: KubeObject | None = None
        if pod_name:
            namespace, name = pod_name.split("/", 1)
            pod = snapshot.get("Pod", namespace, name)
            if isinstance(pod, Pod) and pod.started is not None:
                known.append(pod.started)
        elif node:
            pod = node_pods.get(node)
        if known:
            started[folder] = max(known)
        size = ring_size_of(pod) if pod is not None else None
        if size is not None:
            sizes[folder] = size
    return RingContext(started, sizes)


def bundle_ring_losses(
    bundle: Bundle,
    snapshot: Snapshot,
    *,
    metas: Iterable[CaptureMeta | NodeCaptureMeta],
    reports: Sequence[CaptureReport],
    flows: Iterable[Flow],
) -> tuple[RingLoss, ...]:
    """:func:`ring_losses` of a bundle's capture files, with the starts its ``meta.json`` files
    (pods' and nodes'), snapshot and window give."""
    meta_starts = {
        bundle.relative(Path(meta.source).parent): meta.start_time
        for meta in metas
        if meta.start_time is not None
    }
    window = bundle.manifest.window if bundle.manifest is not None else None
    context = ring_context(
        {str(PurePosixPath(report.path).parent) for report in reports},
        snapshot,
        meta_starts=meta_starts,
        window_start=window.start if window is not None else None,
    )
    return ring_losses(reports, flows, context=context)
