"""Reading: capture files → :class:`Traffic` (conversations, DNS names, what each file gave).

The shell that puts ``sources`` (files → records), ``packets`` (records → facts counted per
5-tuple), ``flows`` (counts → conversations) and ``dns`` together, one file per task, on every
core. Each worker returns partial aggregates that are merged in the order of the input, and
every merge is commutative, so the result does not depend on the number of workers. A file taken
at a known vantage point (a pod's own capture) loses its foreign conversations in the merge,
before they meet other files' (see :func:`read_captures`).

The map step (one file → its partial aggregates) runs behind one seam, :class:`CaptureMap`: an
executor that maps :func:`read_capture` over :class:`CaptureTask` s and gives the results back in
input order. A local ``ProcessPoolExecutor`` is one; ``analyser.distributing`` holds a Dask
cluster's. What :func:`read_capture` returns travels unchanged, whichever runs it.

Usage::

    traffic = read_captures(find_captures(bundle / "captures"), root=bundle)
    flows = orient(traffic.conversations, oracle)
"""

from __future__ import annotations

import gc
import os
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass, field, replace
from itertools import chain
from pathlib import Path
from typing import Any, Protocol, TypeVar

from analyser.dns import DnsNames, DnsTable, TcpDnsStreams
from analyser.flows import (
    CaptureConversations,
    CaptureVantage,
    Conversation,
    Flow,
    ListenerOracle,
)
from analyser.packets import (
    DNS_PORT,
    TCP,
    Counts,
    DnsPayload,
    Tally,
    address_text,
    by_interface,
    count_records,
    fold_tally,
)
from analyser.sources import DEFAULT_MAX_BYTES, CaptureFile, CaptureReport, RecordChunk
from analyser.spilling import (
    SPILL_BYTES,
    SPILL_ENTRIES,
    FilePieces,
    SpillingConversations,
    pieces_folder,
)
from kernel.bundles import ring_name


@dataclass(frozen=True, slots=True)
class Traffic:
    """Everything the captures say, before identities: see :func:`read_captures`."""

    conversations: tuple[Conversation, ...]  # sorted by (protocol, a, b); see ``flows``
    dns: DnsNames
    reports: tuple[CaptureReport, ...]  # one per file, in input order
    packets: int  # records read from all files
    counted: int  # packets that went into conversations
    skipped: dict[str, int] = field(default_factory=dict)  # packets without facts, by reason
    dns_faults: dict[str, int] = field(default_factory=dict)  # DNS payloads not understood
    # Conversations dropped from a capture because its vantage point was neither end, by file
    # (a file read in pieces, see PIECE_KEYS: per piece, a conversation split between two in each).
    foreign: dict[str, int] = field(default_factory=dict)
    # DNS names (an address's for a client, or a lookup) left out of a file's answers, by file:
    # its vantage point's table was full (``dns.MAX_NAMES``).
    dns_left_out: dict[str, int] = field(default_factory=dict)
    # The conversations oriented, when read with an :class:`Orientation` (then
    # ``conversations`` is empty): sorted by (protocol, client, server, first seen).
    flows: Sequence[Flow] = ()  # a FlowTable


@dataclass(frozen=True, slots=True)
class Orientation:
    """How :func:`read_captures` orients the conversations as it makes them
    (``orienting.orient``): a day's millions of conversations then never all exist as conversations
    and flows at once."""

    known_listener: ListenerOracle | None


# Keys (one per direction of a 5-tuple, ~250 bytes each) a file's tally holds before what it
# counted so far is folded and set aside (spilling.FilePieces): whatever the file, a worker holds
# at most ~125 MB of tally (a 1 GiB file of forged SYNs has 15 million keys). A sidecar ring's
# 10 MB files have at most ~300,000 and never get there.
PIECE_KEYS = 500_000


@dataclass(slots=True)
class _Partial:
    """What one file gave; merged by the parent."""

    conversations: CaptureConversations  # the last piece (all of it, for most files)
    earlier: FilePieces  # the pieces set aside before it
    dns: DnsTable
    report: CaptureReport
    counted: int
    skipped: Counter[str]
    dns_faults: Counter[str]


@dataclass(frozen=True, slots=True)
class CaptureTask:
    """One capture file to read and how: what the map step sends to wherever it runs."""

    path: Path  # absolute: a worker elsewhere opens the same path
    name: str  # as reports name it (bundle-relative)
    size: int  # on-disk bytes, as this process sees them (0: unknown); for progress
    max_bytes: int
    per_interface: bool  # a node's capture (see :func:`read_captures`)
    number: int  # its place among the files read together (see ``flows.CaptureConversations``)
    # Where its pieces are set aside (``spilling.FilePieces``; None: in memory) and how often.
    pieces: Path | None = None
    piece_keys: int = PIECE_KEYS


Result = TypeVar("Result")


class CaptureMap(Protocol):
    """Where the map step runs: ``map(read_capture, tasks)`` runs the top-level function on each
    task, anywhere, and yields the results in the order of ``tasks``, as
    ``concurrent.futures.Executor.map`` does (a ``ProcessPoolExecutor`` is one)."""

    def map(
        self, function: Callable[[CaptureTask], Result], tasks: Iterable[CaptureTask], /
    ) -> Iterator[Result]: ...


def read_capture(task: CaptureTask) -> _Partial:
    """The map step: one capture file → its partial aggregates (merged by :func:`read_captures`).
    Top level, so that a process pool or a Dask worker can run it by name."""
    return _read_one(task, None)


@contextmanager
def no_cyclic_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector. Reading allocates millions of small tuples and lists
    and keeps hundreds of thousands alive, so the collector runs again and again over the same
    live objects (about a tenth of the time) and finds nothing: these structures hold no
    reference cycles. Reference counting still frees everything. Also a decorator
    (``analysing.analyse``: the rest of the analysis is the same)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _read_one(task: CaptureTask, on_read: Callable[[int], None] | None) -> _Partial:
    """One file → partial aggregates; ``on_read`` gets the on-disk bytes as they are read."""
    with no_cyclic_gc():
        return _count_file(task, on_read)


def _answered_client(raw: bytes) -> bytes:
    """The destination address (4 or 16 bytes) of a packet sent from port 53, by its key's bytes:
    the client an answer went to; empty for any other packet (a query), whose answers would name
    nothing."""
    if raw[-4] != 0 or raw[-3] != DNS_PORT:
        return b""
    half = (len(raw) - 4) // 2
    return raw[half : 2 * half]


class _DnsAnswers:
    """Port-53 payloads → a :class:`DnsTable`, each distinct payload decoded once per client.

    The same answers come again and again (every client asks, over and over), and the table
    keeps only the first and last time of each name, so per distinct payload and client (the
    address it was sent to, from port 53) the first and last time it was seen and how often are
    enough. UDP messages are told apart without their 2-byte ID, which decoding ignores. TCP
    segments go through :class:`TcpDnsStreams` first, so that a message split across segments is
    decoded whole. Flushed every ``LIMIT`` distinct payloads: memory stays bounded.
    """

    LIMIT = 4096

    def __init__(self) -> None:
        self.table = DnsTable()
        self.faults: Counter[str] = Counter()
        self.streams = TcpDnsStreams()
        # (over TCP, client, message) → [first seen, last seen, times]
        self._pending: dict[tuple[bool, bytes, bytes], list[Any]] = {}

    def add(self, payloads: Iterable[DnsPayload]) -> None:
        pending = self._pending
        streams = self.streams
        for timestamp, key, payload, seq, flags, cut in payloads:
            protocol, raw = key  # type: ignore[misc]  # DNS payloads have flow keys
            over_tcp = protocol == TCP
            if over_tcp:
                payload = streams.add(key, seq, flags, payload, cut)
                if not payload:
                    continue
            message = (over_tcp, _answered_client(raw), payload if over_tcp else payload[2:])
            seen = pending.get(message)
            if seen is None:
                pending[message] = [timestamp, timestamp, 1]
            else:
                if timestamp < seen[0]:
                    seen[0] = timestamp
                elif timestamp > seen[1]:
                    seen[1] = timestamp
                seen[2] += 1
        if len(pending) > self.LIMIT:
            self.flush()

    def close(self) -> None:
        """The end of the file: count what TCP streams left incomplete, decode what is left."""
        self.streams.close()
        self.faults.update(self.streams.faults)
        self.flush()

    def flush(self) -> None:
        for (over_tcp, client, message), (first, last, times) in self._pending.items():
            payload = message if over_tcp else b"\0\0" + message
            fault = self.table.add_payload(
                payload,
                over_tcp=over_tcp,
                at=first,
                until=last,
                client=address_text(client) if client else None,
            )
            if fault is not None:
                self.faults[fault.value] += times
        self._pending.clear()


class _InterfaceTallies:
    """Per-interface counts of a node's capture (``packets.by_interface``), and their merge: of
    the copies of a packet that passed several interfaces of the node, one counts."""

    def __init__(self) -> None:
        self.tallies: dict[int, tuple[Tally, Tally]] = {}

    def walker(
        self, count: Callable[[RecordChunk, Tally, Tally], tuple[int, int]]
    ) -> Callable[[RecordChunk], tuple[int, int]]:
        def walk(chunk: RecordChunk) -> tuple[int, int]:
            split = by_interface(chunk)
            for interface, part in split.chunks.items():
                tally, dns_tally = self.tallies.setdefault(interface, ({}, {}))
                count(part, tally, dns_tally)
            return split.stop, split.walked

        return walk

    def keys(self) -> int:
        """Keys counted, over every interface."""
        return sum(len(tally) + len(dns_tally) for tally, dns_tally in self.tallies.values())

    def taken(self) -> Tally:
        """Per key, the interface that counted the most packets (and the most bytes), first and
        last seen over all, and every role any copy showed; the interfaces' counts start again.
        Taken piece by piece (:data:`PIECE_KEYS`), the busiest interface is the piece's: the
        copies of a packet pass a node's interfaces within microseconds, in the same piece."""
        merged: Tally = {}
        for tally, dns_tally in self.tallies.values():
            for part in (tally, dns_tally):
                for key, counts in part.items():
                    known = merged.get(key)
                    if known is None:
                        merged[key] = _copy(counts)
                        continue
                    known.first = min(known.first, counts.first)
                    known.last = max(known.last, counts.last)
                    known.packets = max(known.packets, counts.packets)
                    known.size = max(known.size, counts.size)
                    known.roles |= counts.roles
        self.tallies.clear()
        return merged


def _copy(counts: Counts) -> Counts:
    copy = Counts(counts.first, counts.size, counts.roles)
    copy.last, copy.packets = counts.last, counts.packets
    return copy


def _count_file(task: CaptureTask, on_read: Callable[[int], None] | None) -> _Partial:
    name = task.name
    read = 0  # on-disk bytes so far

    def reading(size: int) -> None:
        nonlocal read
        read += size
        if on_read is not None:
            on_read(size)

    capture = CaptureFile(task.path, name=name, on_read=reading, max_bytes=task.max_bytes)
    dns_payloads: list[DnsPayload] = []
    answers = _DnsAnswers()
    folds = _Folds(task)

    def count_into(chunk: RecordChunk, tally: Tally, dns_tally: Tally) -> tuple[int, int]:
        walked = count_records(chunk, tally, dns_tally, dns_payloads)
        answers.add(dns_payloads)
        dns_payloads.clear()
        return walked

    tally: Tally = {}
    dns_tally: Tally = {}
    try:
        # Between chunks, past piece_keys keys, the tally is set aside: outside the walker, so
        # that a disk too full to take it fails the reading, not just this file.
        if task.per_interface:
            interfaces = _InterfaceTallies()
            for _ in capture.walking(interfaces.walker(count_into)):
                if interfaces.keys() > task.piece_keys:
                    folds.set_aside(interfaces.taken(), read)
            tally = interfaces.taken()
        else:
            for _ in capture.walking(lambda chunk: count_into(chunk, tally, dns_tally)):
                if len(tally) + len(dns_tally) > task.piece_keys:
                    tally.update(dns_tally)
                    dns_tally.clear()
                    folds.set_aside(tally, read)
            tally.update(dns_tally)
        report = capture.report
        answers.close()
        last = folds.fold(tally)
    finally:
        folds.pieces.close()
    if report.impossible_times:
        folds.skipped["impossible_time"] = report.impossible_times
    return _Partial(
        last,
        folds.pieces,
        answers.table,
        replace(report, first_seen=folds.first_seen),
        folds.counted,
        folds.skipped,
        answers.faults,
    )


class _Folds:
    """A file's tally folded into conversations (``packets.fold_tally``), all at the end or
    piece by piece as it fills up (see :data:`PIECE_KEYS`), and what the folds add up to."""

    def __init__(self, task: CaptureTask) -> None:
        self.task = task
        self.pieces = FilePieces(task.pieces, task.number)
        self.counted = 0  # packets in conversations
        self.skipped: Counter[str] = Counter()  # packets without facts, by reason
        self.first_seen: float | None = None  # the first packet in a conversation

    def fold(self, tally: Tally) -> CaptureConversations:
        """``tally``'s conversations (it is left empty)."""
        task = self.task
        folded = fold_tally(tally, task.number)
        self.counted += folded.counted
        for reason, packets in folded.skipped.items():
            self.skipped[reason.name.lower()] += packets
        if folded.first_seen is not None:
            known = self.first_seen
            self.first_seen = folded.first_seen if known is None else min(known, folded.first_seen)
        return CaptureConversations(
            task.name, ring_name(task.name), task.number, folded.entries, folded.pairs
        )

    def set_aside(self, tally: Tally, read: int) -> None:
        """Fold ``tally`` (emptied) into a piece set aside, ``read`` bytes of the file read."""
        self.pieces.add(self.fold(tally), read)


def _name_under(path: Path, root: Path) -> str:
    """The path relative to ``root`` in POSIX form, or as given when it is not under root.

    By the names, not where symbolic links lead: a bundle may link a capture kept elsewhere, and
    the file's place in the bundle is what ties it to its pod."""
    try:
        return Path(os.path.abspath(path)).relative_to(os.path.abspath(root)).as_posix()
    except ValueError:
        return path.as_posix()


def read_captures(
    paths: Sequence[Path],
    *,
    root: Path,
    workers: int | None = None,
    on_progress: Callable[[int], None] | None = None,
    vantages: Mapping[str, CaptureVantage] | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    node_captures: Collection[str] = (),
    capture_map: CaptureMap | None = None,
    orientation: Orientation | None = None,
    on_step: Callable[[str], None] | None = None,
    spill_bytes: int = SPILL_BYTES,
    spill_entries: int = SPILL_ENTRIES,
    piece_keys: int = PIECE_KEYS,
) -> Traffic:
    """Read every capture file into one :class:`Traffic`: its conversations, or with an
    ``orientation`` its flows (``orienting.orient``; what an analysis wants, made with less memory).

    ``paths`` are capture files (see ``sources.find_captures``); they are named in reports and
    ``Conversation.captures`` relative to ``root`` (the bundle directory). ``workers`` processes
    read files in parallel (default: one per core, at most one per file); ``workers=1`` reads
    in this process. ``capture_map``, when given, runs the reading instead (e.g. on a Dask
    cluster: ``analyser.distributing``), and ``workers`` is not used. ``on_progress`` is called in
    this process with numbers of on-disk bytes read (per megabyte when reading in this process,
    per file otherwise), adding up to the sum of the files' sizes, which a progress bar can use
    as its total. ``on_step`` is told, once every file is read, what comes next and how big it
    is (on a day's bundle, turning the conversations into flows takes a while).

    ``vantages`` says where files (by their names) were taken, e.g. in a pod: of what such a
    file saw, only the conversations with an end that was the vantage point's own address are
    kept; the rest are dropped as foreign before they merge with other files' and counted in
    :attr:`Traffic.foreign`. The DNS answers a file holds name only flows seen at its vantage
    point (a file without one is a vantage point of its own: its tcpdump ring).

    A damaged file never raises: its :class:`~analyser.sources.CaptureReport` says what went
    wrong and the packets before the damage count. At most ``max_bytes`` bytes of each file
    (decompressed) are read: past them, the report says so (``CaptureTooLarge``) and the packets
    before count. The result is the same for any ``workers`` and any ``capture_map``.

    ``node_captures`` names files taken on a node, on all its interfaces (``tcpdump -i any`` in
    the node's network namespace): a packet between two of its pods passes two veths, one to
    another node passes a veth and the uplink (a bridge adds a copy too), and each copy is
    recorded. Such a file is counted per interface (Linux cooked v2 records say which), and of
    each direction of a conversation the interface with the most packets counts: every packet
    once, as a pod's own capture counts it.

    Past ``spill_bytes`` of capture files (on disk; 0: never), or once more than
    ``spill_entries`` conversations are merged while files are left, the conversations are
    merged in parts on disk, one part at a time in memory (``analyser.spilling``), with the same
    result. A file whose tally passes ``piece_keys`` keys is folded piece by piece, the pieces
    set aside on disk (:data:`PIECE_KEYS`), with the same conversations; but a node's capture
    counts each piece's busiest interface, a conversation split between pieces that a vantage
    point drops as foreign counts in :attr:`Traffic.foreign` once per piece, and is dropped in
    one piece and not the other when its address changed hands in between.
    """
    names = [_name_under(path, root) for path in paths]
    sizes = [_size(path) for path in paths]
    report = on_progress if on_progress is not None else _ignore
    placed = vantages if vantages is not None else {}
    count = min(workers or os.cpu_count() or 1, max(len(paths), 1))
    with ExitStack() as stack:
        table = stack.enter_context(
            closing(SpillingConversations(sizes, spill_bytes, spill_entries))
        )
        # A Dask worker's pieces come back with its result: this machine cannot read its disk.
        pieces = None if capture_map is not None else stack.enter_context(pieces_folder())
        tasks = [
            CaptureTask(
                Path(os.path.abspath(path)),
                name,
                size,
                max_bytes,
                name in node_captures,
                number,
                pieces,
                piece_keys,
            )
            for number, (path, name, size) in enumerate(zip(paths, names, sizes, strict=True))
        ]
        if capture_map is not None:
            merged = _merge(_read_mapped(capture_map, tasks, report), placed, table)
        elif count <= 1:
            merged = _merge(_read_here(tasks, report), placed, table)
        else:
            # Imported here: it pulls in multiprocessing, a sixtieth of a second that one-worker
            # reads (and every short-lived command) need not pay.
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(max_workers=count) as pool:
                merged = _merge(_read_mapped(pool, tasks, report), placed, table)
        # With the workers gone: their memory is not held while conversations become flows.
        if on_step is not None:
            doing = "sorting" if orientation is None else "orienting"
            on_step(
                f"{doing} {len(table):,} conversations"
                if table.parts == 1
                else f"{doing} the conversations in {table.parts} parts ({len(table):,} entries)"
            )
        return merged.finish(orientation)


def _ignore(size: int) -> None:
    """The progress callback when nobody listens."""


def _read_here(
    tasks: Sequence[CaptureTask], on_progress: Callable[[int], None]
) -> Iterator[_Partial]:
    """Files read in this process; progress as each megabyte is read."""
    for task in tasks:
        done = 0

        def advance(size: int) -> None:
            nonlocal done
            done += size
            on_progress(size)

        yield _read_one(task, advance)
        # A damaged file is not read to its end: report the rest too, so the sizes add up.
        if (rest := task.size - done) > 0:
            on_progress(rest)


def _read_mapped(
    capture_map: CaptureMap, tasks: Sequence[CaptureTask], on_progress: Callable[[int], None]
) -> Iterator[_Partial]:
    """Files read by ``capture_map``, in input order as they are ready; progress per file."""
    for task, partial in zip(tasks, capture_map.map(read_capture, tasks), strict=True):
        on_progress(task.size)
        yield partial


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


@dataclass(frozen=True, slots=True)
class _Merged:
    """Every file's partial aggregates merged: the conversations still in their table."""

    table: SpillingConversations
    traffic: Traffic  # without conversations or flows

    def finish(self, orientation: Orientation | None) -> Traffic:
        """The traffic with its conversations, or with an ``orientation`` its flows (the table
        is emptied as they are made)."""
        with no_cyclic_gc():
            if orientation is None:
                return replace(self.traffic, conversations=tuple(self.table.conversations()))
            return replace(self.traffic, flows=self.table.oriented(orientation.known_listener))


def _merge(
    partials: Iterable[_Partial],
    vantages: Mapping[str, CaptureVantage],
    conversations: SpillingConversations,
) -> _Merged:
    """Fold partial aggregates one by one (in input order), so only the merged total is kept;
    the conversations into ``conversations``."""
    with no_cyclic_gc():
        return _merge_all(partials, vantages, conversations)


def _merge_all(
    partials: Iterable[_Partial],
    vantages: Mapping[str, CaptureVantage],
    conversations: SpillingConversations,
) -> _Merged:
    dns = DnsNames()
    reports = []
    counted = 0
    skipped: Counter[str] = Counter()
    dns_faults: Counter[str] = Counter()
    foreign: dict[str, int] = {}
    names_left_out: dict[str, int] = {}
    for partial in partials:
        seen = partial.conversations
        vantage = vantages.get(seen.capture)
        # One piece at a time: a file's pieces together are what setting them aside avoids.
        pieces: Iterable[tuple[int | None, CaptureConversations]] = partial.earlier.taken()
        for read, piece in chain(pieces, [(None, seen)]):
            if vantage is not None and (dropped := piece.drop_foreign(vantage)):
                foreign[seen.capture] = foreign.get(seen.capture, 0) + dropped
            conversations.add(piece, read)
        place = seen.vantage if vantage is None else str(vantage)
        if left_out := partial.dns.left_out + dns.add(seen.capture, place, partial.dns):
            names_left_out[seen.capture] = left_out
        reports.append(partial.report)
        counted += partial.counted
        skipped.update(partial.skipped)
        dns_faults.update(partial.dns_faults)
    traffic = Traffic(
        conversations=(),
        dns=dns,
        reports=tuple(reports),
        packets=sum(report.packets for report in reports),
        counted=counted,
        skipped=dict(sorted(skipped.items())),
        dns_faults=dict(sorted(dns_faults.items())),
        foreign=foreign,
        dns_left_out=names_left_out,
    )
    return _Merged(conversations, traffic)
