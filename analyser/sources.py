"""Sources: capture files → records ``(timestamp, linktype, bytes)``; nothing is decoded here.

Reads pcap (either byte order, micro- or nanosecond timestamps) and pcapng (any number of
sections and interfaces, each with its own link type, ``if_tsresol`` and ``if_tsoffset``), each
optionally gzip-compressed; the format is told by magic bytes, never by the file name. Streaming:
the file is read in chunks of ``CHUNK_SIZE`` bytes, so memory does not grow with the file.

Damage is translated into :mod:`kernel.errors`: a file that ends mid-record (or a gzip stream
without its end marker) is a :class:`~kernel.errors.TruncatedCapture`; bytes that are not a
capture, a record that makes no sense, or a corrupt gzip stream are a
:class:`~kernel.errors.MalformedCapture`. The records before the damage are still yielded;
:class:`CaptureFile` turns the outcome into a :class:`CaptureReport` instead of raising, so one
bad file never stops a run.

Records are handed out in chunks (:class:`RecordChunk`): a buffer of whole records in pcap's
layout (a 16-byte header, then the captured bytes) that a *walker* goes through, so that the hot
loop that walks the records can also decode them (``packets.count_records``) without a bytes
object per record. A pcap file's chunks are its own bytes, read ``CHUNK_SIZE`` at a time; pcapng
blocks are repacked into that layout (pcapng is rarer and block-structured). :func:`batches` and
:func:`records` walk with a walker that slices every record out.

The record parsers use ``struct`` on large chunks rather than ``dpkt.pcap.Reader`` (a file read
and a header object per record: about 4× slower here, 2.0 s against 0.5 s for a million records)
or ``dpkt.pcapng.Reader`` (it knows only the first interface of a file, but pcapng files of
``tcpdump -i any`` have several, with different link types). So dpkt is left to ``packets``.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import chain
from pathlib import Path
from typing import NamedTuple

from kernel.errors import CaptureError, CaptureTooLarge, MalformedCapture, TruncatedCapture
from kernel.times import possible

CHUNK_SIZE = 1 << 20
# A record larger than this is damage, not a packet, whatever snap length the file claims:
# libpcap's own ceiling (MAXIMUM_SNAPLEN), so nothing a real capture holds is refused, and no
# record claiming 4 GB is ever buffered.
MAX_RECORD = 1 << 18
# A pcapng block that is parsed (an interface description or a packet) larger than this is
# damage: one packet of at most MAX_RECORD bytes, its header and trailer (32 bytes), and room for
# its options (a comment, flags, hashes). Other blocks (name resolution, statistics, secrets) are
# skipped without being held in memory, whatever their size.
MAX_PARSED_BLOCK = MAX_RECORD + (1 << 16)
# Bytes read from one capture file (after decompression) by default: far beyond a real ring's
# files (the sidecar rotates at 10 MB), well short of a gzip bomb's gigabytes.
DEFAULT_MAX_BYTES = 1 << 30
# pcap global header magics → (struct byte order, timestamp fraction divisor)
_PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e6),
    b"\xa1\xb2\xc3\xd4": (">", 1e6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e9),
    b"\xa1\xb2\x3c\x4d": (">", 1e9),
}
_PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"
_GZIP_MAGIC = b"\x1f\x8b"
_PCAPNG_BYTE_ORDER_MAGIC = 0x1A2B3C4D
# pcapng block types
_IDB = 1
_OBSOLETE_PB = 2
_SPB = 3
_EPB = 6
_SHB = 0x0A0D0D0A
# The blocks that are read; others are skipped.
_PARSED_BLOCKS = frozenset({_IDB, _OBSOLETE_PB, _SPB, _EPB})
# pcapng interface options
_IF_TSRESOL = 9
_IF_TSOFFSET = 14

Record = tuple[float, int, bytes]
"""(timestamp in UTC epoch seconds, pcap LINKTYPE_* value, captured bytes)"""
Batch = tuple[int, list[float], list[bytes]]
"""(LINKTYPE_* value, timestamps, captured bytes): consecutive records of one link type."""
BATCH_SIZE = 8192
RECORD_HEADER = 16
# Zero bytes readable after a chunk's end: a walker may unpack a record header together with the
# first link, network and transport header fields in one go, even for the last, short record.
RECORD_SLACK = 256
_SLACK = bytes(RECORD_SLACK)
# The header of a repacked pcapng record: the timestamp as a double (the fraction is 0, so
# ``seconds + fraction / divisor`` gives it back exactly), then the captured length.
_REPACKED_HEADER = "<dII"


class RecordChunk(NamedTuple):
    """Records in pcap's layout in ``buffer[start:end]``; the last one may be cut off.

    Each record is a ``RECORD_HEADER``-byte header, which ``struct.unpack_from(header, ...)``
    turns into (seconds, fraction, captured length), followed by the captured bytes; its
    timestamp is ``seconds + fraction / divisor`` (UTC epoch seconds). A record that claims more
    than ``limit`` bytes is damage. ``buffer`` has ``RECORD_SLACK`` more bytes after ``end``.
    """

    linktype: int
    header: str  # struct format, with its byte order
    divisor: float
    limit: int
    buffer: bytes
    start: int
    end: int


RecordWalker = Callable[[RecordChunk], tuple[int, int]]
"""Goes through the whole records of a chunk from its start, stopping at the first record that
is cut off or longer than the limit; returns (the offset where it stopped, records walked)."""


class _Progress:
    """Records and captured bytes walked so far in one file, and records skipped for a time
    out of range (:func:`kernel.times.possible`)."""

    __slots__ = ("bytes", "impossible_times", "records")

    def __init__(self) -> None:
        self.records = 0
        self.bytes = 0
        self.impossible_times = 0

    def walk(self, walker: RecordWalker, chunk: RecordChunk) -> int:
        """Walk ``chunk``; the offset where the walker stopped."""
        stop, walked = walker(chunk)
        self.records += walked
        self.bytes += stop - chunk.start - RECORD_HEADER * walked
        return stop


@dataclass(frozen=True, slots=True)
class CaptureReport:
    """What reading one capture file gave: counts, and the damage if there was any."""

    path: str  # as the caller named it (bundle-relative in a bundle)
    packets: int  # records read (before the damage, if any), those skipped included
    bytes: int  # captured bytes in those records
    # "TruncatedCapture", "MalformedCapture", "CaptureTooLarge" or "CaptureError"
    error: str | None = None
    reason: str | None = None
    impossible_times: int = 0  # records skipped: a time before 1970 or after 9999 (pcapng)
    # Its first packet of a TCP, UDP or SCTP conversation (UTC epoch seconds; None without one):
    # from then on the capture ran (``reading`` fills it in; see ``vouching``).
    first_seen: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


OnRead = Callable[[int], None] | None
"""Told the number of on-disk bytes each time some are read (for progress bars)."""


def _plain_chunks(path: Path, on_read: OnRead) -> Iterator[bytes]:
    with path.open("rb") as stream:
        while chunk := stream.read(CHUNK_SIZE):
            if on_read is not None:
                on_read(len(chunk))
            yield chunk


def _gzip_chunks(path: Path, on_read: OnRead) -> Iterator[bytes]:
    """Decompressed chunks of a gzip file (several members allowed), bounded in size.

    zlib is driven directly rather than through ``gzip.GzipFile`` so that everything decompressed
    before a truncation or corruption is still handed out.
    """
    decompressor = zlib.decompressobj(wbits=31)
    member_open = False  # bytes of a gzip member were fed and its end marker is not yet seen
    try:
        for compressed in _plain_chunks(path, on_read):
            data = compressed
            while data:
                member_open = True
                chunk = decompressor.decompress(data, CHUNK_SIZE)
                if chunk:
                    yield chunk
                if decompressor.eof:
                    # The next gzip member, if any, starts in the unused data.
                    data = decompressor.unused_data
                    decompressor = zlib.decompressobj(wbits=31)
                    member_open = False
                else:
                    data = decompressor.unconsumed_tail
        if member_open:
            if tail := decompressor.flush():
                yield tail
            raise TruncatedCapture("the gzip stream ends before its end marker")
    except zlib.error as error:
        raise MalformedCapture(f"corrupt gzip stream: {error}") from error


def _capped(chunks: Iterator[bytes], max_bytes: int) -> Iterator[bytes]:
    """``chunks`` up to ``max_bytes`` bytes in all; then :class:`CaptureTooLarge`."""
    left = max_bytes
    for chunk in chunks:
        if len(chunk) > left:
            if left:
                yield chunk[:left]
            raise CaptureTooLarge(
                f"more than {_size_text(max_bytes)} once decompressed (--max-capture-size): the "
                "rest of the file was not read"
            )
        left -= len(chunk)
        yield chunk


def _size_text(size: int) -> str:
    """``1 GiB``, ``512 MiB``, ``1,500 bytes``: a byte count as ``--max-capture-size`` takes it."""
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift and size % (1 << shift) == 0:
            return f"{size >> shift:,} {unit}"
    return f"{size:,} bytes"


def _chunks(path: Path, on_read: OnRead, max_bytes: int) -> Iterator[bytes]:
    with path.open("rb") as stream:
        magic = stream.read(2)
    chunks = _gzip_chunks(path, on_read) if magic == _GZIP_MAGIC else _plain_chunks(path, on_read)
    return _capped(chunks, max_bytes)


class _Stream:
    """A byte buffer over a chunk iterator, for the block-structured pcapng parser."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self.buffer = b""
        self.offset = 0

    def rest(self) -> Iterator[bytes]:
        """The chunks not yet in the buffer."""
        return self._chunks

    def fill(self, size: int) -> bool:
        """Make ``size`` bytes available from ``offset``; False when the data ends first. The
        chunks needed are joined once (callers bound ``size``), not one by one."""
        missing = size - (len(self.buffer) - self.offset)
        if missing <= 0:
            return True
        parts = [self.buffer[self.offset :]]
        while missing > 0 and (chunk := next(self._chunks, None)) is not None:
            parts.append(chunk)
            missing -= len(chunk)
        self.buffer = b"".join(parts)
        self.offset = 0
        return missing <= 0

    def skip(self, size: int) -> bool:
        """Move ``offset`` on by ``size`` bytes without holding them; False when the data ends
        first."""
        while len(self.buffer) - self.offset < size:
            size -= len(self.buffer) - self.offset
            chunk = next(self._chunks, None)
            self.buffer, self.offset = chunk or b"", 0
            if chunk is None:
                return False
        self.offset += size
        return True

    @property
    def exhausted(self) -> bool:
        return self.offset == len(self.buffer) and not self.fill(1)


def _walk(
    path: Path, walker: RecordWalker, progress: _Progress, on_read: OnRead, max_bytes: int
) -> Iterator[None]:
    """Hand the records of a capture file to ``walker``, chunk by chunk in file order; yields
    after each chunk. At most ``max_bytes`` bytes of the file (decompressed) are read.

    Raises :class:`~kernel.errors.TruncatedCapture` or :class:`~kernel.errors.MalformedCapture`
    after walking every record before the damage, :class:`~kernel.errors.CaptureTooLarge` after
    walking every record before the cap; an unreadable file raises
    :class:`~kernel.errors.CaptureError`.
    """
    try:
        stream = _Stream(_chunks(path, on_read, max_bytes))
        if not stream.fill(4):
            if stream.buffer[stream.offset :]:
                raise TruncatedCapture("the file ends inside the file header")
            raise TruncatedCapture("the file is empty")
        magic = stream.buffer[stream.offset : stream.offset + 4]
        if magic in _PCAP_MAGICS:
            yield from _walk_pcap(stream, *_PCAP_MAGICS[magic], walker, progress)
        elif magic == _PCAPNG_SHB:
            yield from _walk_pcapng(stream, walker, progress)
        else:
            raise MalformedCapture(f"not a pcap or pcapng file (starts with {magic.hex()})")
    except OSError as error:
        raise CaptureError(f"cannot read: {error.strerror or error}") from error


def batches(
    path: Path, *, on_read: OnRead = None, max_bytes: int = DEFAULT_MAX_BYTES
) -> Iterator[Batch]:
    """The records of a capture file in file order, in batches that share a link type.

    Raises :class:`~kernel.errors.TruncatedCapture` or :class:`~kernel.errors.MalformedCapture`
    after yielding every record before the damage, :class:`~kernel.errors.CaptureTooLarge` past
    ``max_bytes`` bytes (decompressed); an unreadable file raises
    :class:`~kernel.errors.CaptureError`.
    """
    return _sliced(lambda walker: _walk(path, walker, _Progress(), on_read, max_bytes))


def records(path: Path) -> Iterator[Record]:
    """The records of a capture file one by one, in file order; raises like :func:`batches`."""
    for linktype, timestamps, packets in batches(path):
        for timestamp, packet in zip(timestamps, packets, strict=True):
            yield timestamp, linktype, packet


@lru_cache(maxsize=16)
def _header(header: str) -> struct.Struct:
    return struct.Struct(header)


def _sliced(walking: Callable[[RecordWalker], Iterator[None]]) -> Iterator[Batch]:
    """The batches of a walk with a walker that slices every record out."""
    sliced: list[Batch] = []
    for _ in walking(_slicer(sliced)):
        yield from sliced
        sliced.clear()


def _slicer(batches: list[Batch]) -> RecordWalker:
    """A walker that appends each chunk's records to ``batches`` as one batch."""

    def slice_records(chunk: RecordChunk) -> tuple[int, int]:
        linktype, header, divisor, limit, buffer, offset, end = chunk
        unpack = _header(header).unpack_from
        timestamps: list[float] = []
        packets: list[bytes] = []
        while offset + RECORD_HEADER <= end:
            seconds, fraction, captured = unpack(buffer, offset)
            record_end = offset + RECORD_HEADER + captured
            if record_end > end or captured > limit:
                break
            timestamps.append(seconds + fraction / divisor)
            packets.append(buffer[offset + RECORD_HEADER : record_end])
            offset = record_end
        if packets:
            batches.append((linktype, timestamps, packets))
        return offset, len(packets)

    return slice_records


def repacked(linktype: int, timestamps: Sequence[float], packets: Sequence[bytes]) -> RecordChunk:
    """Records given one by one (one link type) as a :class:`RecordChunk`."""
    pack = _header(_REPACKED_HEADER).pack
    buffer = b"".join(
        [
            part
            for timestamp, packet in zip(timestamps, packets, strict=True)
            for part in (pack(timestamp, 0, len(packet)), packet)
        ]
    )
    return RecordChunk(linktype, _REPACKED_HEADER, 1.0, MAX_RECORD, buffer + _SLACK, 0, len(buffer))


def _walk_pcap(
    stream: _Stream, order: str, divisor: float, walker: RecordWalker, progress: _Progress
) -> Iterator[None]:
    if not stream.fill(24):
        raise TruncatedCapture("the file ends inside the pcap file header")
    _, _, snaplen, linktype_field = struct.unpack_from(
        order + "IIII", stream.buffer, stream.offset + 8
    )
    # The upper bits of the link type field carry FCS information.
    linktype = linktype_field & 0xFFFF
    # Not the snap length the header claims (up to 4 GB): a record cut by the end of a chunk is
    # held whole until the next chunk completes it.
    limit = MAX_RECORD
    header = order + "III4x"
    captured_length = struct.Struct(order + "8xI")
    first = stream.buffer[stream.offset + 24 :]
    left_over = b""
    # One chunk at a time; a record cut by the end of a chunk is carried over to the next.
    for chunk in chain((first,), stream.rest()):
        end = len(left_over) + len(chunk)
        buffer = b"".join((left_over, chunk, _SLACK))
        stop = progress.walk(walker, RecordChunk(linktype, header, divisor, limit, buffer, 0, end))
        yield
        if stop + RECORD_HEADER <= end:
            captured = captured_length.unpack_from(buffer, stop)[0]
            if captured > limit:
                raise MalformedCapture(
                    f"record {progress.records + 1} claims {captured} bytes, more than a packet "
                    f"can hold ({MAX_RECORD}; the file's snap length is {snaplen})"
                )
        left_over = buffer[stop:end]
    if left_over:
        raise TruncatedCapture(
            f"the file ends inside record {progress.records + 1} ({len(left_over)} bytes left over)"
        )


@dataclass(frozen=True, slots=True)
class _Interface:
    linktype: int
    divisor: float  # timestamp units per second
    offset: int  # seconds added to every timestamp


def _interface(block: bytes, order: str) -> _Interface:
    linktype = struct.unpack_from(order + "H", block, 8)[0]
    divisor = 1e6
    offset = 0
    position = 16
    while position + 4 <= len(block) - 4:
        code, size = struct.unpack_from(order + "HH", block, position)
        value = block[position + 4 : position + 4 + size]
        if code == 0:
            break
        if code == _IF_TSRESOL and size >= 1:
            # Top bit set: a negative power of 2, else a negative power of 10.
            base = 2 if value[0] & 0x80 else 10
            divisor = float(base ** (value[0] & 0x7F))
        elif code == _IF_TSOFFSET and size >= 8:
            offset = struct.unpack_from(order + "q", value)[0]
        position += 4 + (size + 3) // 4 * 4
    return _Interface(linktype, divisor, offset)


def _walk_pcapng(stream: _Stream, walker: RecordWalker, progress: _Progress) -> Iterator[None]:
    """Blocks are parsed one by one; consecutive packets of one link type are repacked into a
    chunk of up to ``BATCH_SIZE`` records."""
    linktype = -1
    timestamps: list[float] = []
    packets: list[bytes] = []
    try:
        for timestamp, record_linktype, packet in _pcapng_records(stream, progress):
            if record_linktype != linktype or len(packets) >= BATCH_SIZE:
                if packets:
                    progress.walk(walker, repacked(linktype, timestamps, packets))
                    yield
                linktype, timestamps, packets = record_linktype, [], []
            timestamps.append(timestamp)
            packets.append(packet)
    except CaptureError:
        # The packets before the damage count.
        if packets:
            progress.walk(walker, repacked(linktype, timestamps, packets))
            yield
        raise
    if packets:
        progress.walk(walker, repacked(linktype, timestamps, packets))
        yield


def _pcapng_records(stream: _Stream, progress: _Progress) -> Iterator[Record]:
    """The packets of a pcapng file; those with a time out of range are counted in ``progress``
    and skipped."""
    order = "<"
    interfaces: list[_Interface] = []
    last_timestamp = 0.0
    number = 0
    while not stream.exhausted:
        number += 1
        if not stream.fill(12):
            raise TruncatedCapture(f"the file ends inside the header of block {number}")
        buffer, start = stream.buffer, stream.offset
        block_type = struct.unpack_from(order + "I", buffer, start)[0]
        if buffer[start : start + 4] == _PCAPNG_SHB:
            # A new section: its own byte order (told by the byte-order magic) and interfaces.
            if struct.unpack_from("<I", buffer, start + 8)[0] == _PCAPNG_BYTE_ORDER_MAGIC:
                order = "<"
            elif struct.unpack_from(">I", buffer, start + 8)[0] == _PCAPNG_BYTE_ORDER_MAGIC:
                order = ">"
            else:
                raise MalformedCapture(
                    f"block {number}: section header with a bad byte-order magic"
                )
            block_type = _SHB
            interfaces = []
        length = struct.unpack_from(order + "I", buffer, start + 4)[0]
        if length < 12 or length % 4:
            raise MalformedCapture(f"block {number} has an impossible length {length}")
        if block_type not in _PARSED_BLOCKS:
            if not stream.skip(length):
                raise TruncatedCapture(f"the file ends inside block {number}")
            continue
        if length > MAX_PARSED_BLOCK:
            raise MalformedCapture(
                f"block {number} claims {length} bytes, more than an interface or packet block "
                f"can hold ({MAX_PARSED_BLOCK})"
            )
        if not stream.fill(length):
            raise TruncatedCapture(f"the file ends inside block {number}")
        block = stream.buffer[stream.offset : stream.offset + length]
        stream.offset += length
        if block_type == _IDB:
            interfaces.append(_interface(block, order))
        elif block_type in (_EPB, _OBSOLETE_PB):
            if block_type == _EPB:
                interface_id, high, low, captured = struct.unpack_from(order + "IIII", block, 8)
            else:
                interface_id, high, low, captured = struct.unpack_from(order + "H2xIII", block, 8)
            if interface_id >= len(interfaces):
                raise MalformedCapture(
                    f"block {number}: packet on undeclared interface {interface_id}"
                )
            if 28 + captured > length - 4:
                raise MalformedCapture(f"block {number}: packet longer than its block")
            if captured > MAX_RECORD:
                raise MalformedCapture(
                    f"block {number}: a packet of {captured} bytes, more than a packet can hold "
                    f"({MAX_RECORD})"
                )
            interface = interfaces[interface_id]
            timestamp = ((high << 32) | low) / interface.divisor + interface.offset
            if not possible(timestamp):
                progress.impossible_times += 1
                continue
            last_timestamp = timestamp
            yield last_timestamp, interface.linktype, block[28 : 28 + captured]
        elif block_type == _SPB:
            if not interfaces:
                raise MalformedCapture(f"block {number}: packet before any interface")
            original = struct.unpack_from(order + "I", block, 8)[0]
            packet = block[12 : min(12 + original, length - 4)]
            if len(packet) > MAX_RECORD:
                raise MalformedCapture(
                    f"block {number}: a packet of {len(packet)} bytes, more than a packet can "
                    f"hold ({MAX_RECORD})"
                )
            # Simple packets carry no timestamp: they get the last one seen in the file.
            yield last_timestamp, interfaces[0].linktype, packet


class CaptureFile:
    """One capture file read to the end without raising; ``report`` says how it went.

    ``capture.walk(walker)``, or ``for linktype, timestamps, packets in capture.batches(): ...``;
    then ``capture.report``.
    """

    def __init__(
        self,
        path: Path,
        *,
        name: str | None = None,
        on_read: OnRead = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.path = path
        self.name = name if name is not None else str(path)
        self.on_read = on_read
        self.max_bytes = max_bytes
        self.report = CaptureReport(self.name, 0, 0)

    def walk(self, walker: RecordWalker) -> CaptureReport:
        """Hand every record to ``walker``, chunk by chunk in file order; the report."""
        for _ in self.walking(walker):
            pass
        return self.report

    def batches(self) -> Iterator[Batch]:
        return _sliced(self.walking)

    def walking(self, walker: RecordWalker) -> Iterator[None]:
        """:meth:`walk`, yielding after each chunk: what the caller does between chunks is
        its own (an error it raises is not the file's); the report is ready at the end."""
        progress = _Progress()
        error: CaptureError | None = None
        try:
            yield from _walk(self.path, walker, progress, self.on_read, self.max_bytes)
        except CaptureError as caught:
            error = caught
        finally:
            self.report = CaptureReport(
                self.name,
                progress.records + progress.impossible_times,
                progress.bytes,
                type(error).__name__ if error else None,
                str(error) if error else None,
                progress.impossible_times,
            )
