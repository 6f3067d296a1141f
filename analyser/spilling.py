"""Spilling: a day's conversations merged on disk, one part at a time in memory, and its flows
kept on disk.

Merging every capture file's conversations in one table (``orienting.ConversationTable``) takes
about 165 bytes a connection at its fullest: 1.1 GB for the 5 million connections of 20 million
packets, and it grows with the captures. Past :data:`SPILL_BYTES` of capture files,
``reading.read_captures`` keeps each file's conversations instead in :data:`parts <part_count>`
on disk, split by their pair of addresses: a conversation seen by several files (a ring's next
file, the other end's capture) is in one part, and so is every flow group (one client address,
one server), since its conversations share a pair of addresses. The parts are then merged and
oriented one at a time (:meth:`SpilledConversations.oriented`), and the flow groups' columns
(~35 bytes a connection) go to a :class:`ColumnStore`, so that neither grows memory with the
captures. The result is the same as one table's, byte for byte.

The parts are pickles this process writes into a folder of its own (``tempfile``: 0700 under
``$TMPDIR``) and reads back; the folder goes when the reading is done or fails. The column
store is a file without a name in that folder, gone with the last group that reads from it.

One capture file's reading is bounded too: past ``reading.PIECE_KEYS`` keys, what its tally holds
is folded into conversations and set aside (:class:`FilePieces`), in a file of a folder the
reading makes for the purpose, and the merge reads the pieces back one at a time.
"""

from __future__ import annotations

import math
import os
import pickle
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from analyser.flows import (
    FLOW_BYTES,
    KEY_TAIL,
    AddressPair,
    CaptureConversations,
    Conversation,
    ConversationKey,
    FlowGroup,
    FlowTable,
    ListenerOracle,
)
from analyser.orienting import ConversationTable
from kernel.errors import CaptureError

# Capture files (on disk) merged in memory in one table; past this, in parts of a quarter of this
# much each: a part in memory takes about 70 MB, whatever the size of the bundle (up to
# MAX_PARTS parts: 32 GiB of captures).
SPILL_BYTES = 512 * 1024 * 1024
# Conversations merged in memory in one table (~165 bytes each at the fullest): past this, in
# parts, of a quarter of this many each (SpillingConversations). A day's 512 MiB hold ~1.8 million.
SPILL_ENTRIES = 2_000_000
PARTS_PER_SPILL = 4
MAX_PARTS = 256  # files open at once


def part_count(capture_bytes: int, spill_bytes: int = SPILL_BYTES) -> int:
    """How many parts the conversations of ``capture_bytes`` of capture files are merged in: 1
    (in memory, no files) up to ``spill_bytes`` (or when it is 0), else one for each quarter of
    ``spill_bytes``, at most :data:`MAX_PARTS`."""
    if spill_bytes <= 0 or capture_bytes <= spill_bytes:
        return 1
    return min(MAX_PARTS, math.ceil(capture_bytes * PARTS_PER_SPILL / spill_bytes))


def _part(pair: bytes, parts: int) -> int:
    """The part of the conversations between a pair of addresses (the bytes their keys start
    with): a stable hash, the same in every process."""
    return zlib.crc32(pair) % parts


def _no_room(folder: Path, error: OSError) -> CaptureError:
    """The error of a folder too small (or not writable) for what a reading keeps on disk."""
    return CaptureError(
        f"{folder}: cannot keep the merged conversations of a bundle this size there "
        f"({error.strerror or error}); set TMPDIR to a folder with room for about a third of "
        "the size of the capture files, or more"
    )


# The columns of one or two flows: where they are on disk would take about as much memory as
# they do, and reading them back costs a call into the kernel each time they are asked for (a
# scan makes a group, of one flow, for every address it tried).
SMALL_GROUP_BYTES = 2 * FLOW_BYTES


class ColumnStore:
    """The columns of flow groups (``flows.pack_flows``) in a file of their own, so that a day's
    flows take disk, not memory: about 35 bytes a connection, 175 MB for the 5 million of 20
    million packets, growing with the captures. Memory keeps what the groups share (protocol,
    addresses, server port, captures) and where their columns are, or the columns themselves
    for a group of one or two flows. The file has no name (made in ``folder``, a
    :class:`SpilledConversations`'), so it goes when the last group kept in it does, whatever
    happens."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self._end = 0
        try:
            # Open as long as the store is: the groups kept in it read from it to the end.
            self._file = tempfile.TemporaryFile(dir=folder)  # noqa: SIM115
        except OSError as error:
            raise _no_room(folder, error) from error

    def kept(self, group: FlowGroup) -> FlowGroup:
        """``group`` with its columns in this store; as it is when it has no more than
        :data:`SMALL_GROUP_BYTES` of them."""
        columns = group.packed()
        if len(columns) <= SMALL_GROUP_BYTES:
            return group
        try:
            written = 0
            while written < len(columns):  # a full disk may take part of it
                written += os.pwrite(self._file.fileno(), columns[written:], self._end + written)
        except OSError as error:
            raise _no_room(self._folder, error) from error
        stored = _Stored(self, self._end, len(columns))
        self._end += len(columns)
        return FlowGroup(group.protocol, group.client_ip, group.server, group.captures, stored)

    def load(self, start: int, size: int) -> bytes:
        """The ``size`` bytes kept at ``start``."""
        return os.pread(self._file.fileno(), size, start)


class _Stored:
    """Where a group's columns are in a :class:`ColumnStore` (``flows.StoredColumns``)."""

    __slots__ = ("_size", "_start", "_store")

    def __init__(self, store: ColumnStore, start: int, size: int) -> None:
        self._store = store
        self._start = start
        self._size = size

    def __len__(self) -> int:
        return self._size

    def load(self) -> bytes:
        return self._store.load(self._start, self._size)


@contextmanager
def pieces_folder() -> Iterator[Path]:
    """A folder of its own (``tempfile``: 0700 under ``$TMPDIR``) for the pieces of the files
    read together (:class:`FilePieces`), removed with what is left in it at the end."""
    try:
        folder = tempfile.TemporaryDirectory(prefix="netpol-sniffer-")
    except OSError as error:
        raise _no_room(Path(tempfile.gettempdir()), error) from error
    with folder:
        yield Path(folder.name)


class FilePieces:
    """What one capture file's tally held each time it filled up, folded into conversations
    (``reading.PIECE_KEYS``), with the on-disk bytes of the file read by then: set aside while
    the rest of the file is read, and read back in order by the merge.

    With a ``folder``, appended to a file there (named by the file's ``number``, unique among the
    files read together), so that the worker reading a 1 GiB file of forged SYNs holds one piece
    at a time, not 15 million connections. Once :meth:`close` d, it pickles: it travels with the
    file's result as a path, and :meth:`taken` removes the file. Without a folder (a Dask worker,
    whose disk this machine cannot read), kept in memory: folded, ~160 bytes a connection, a
    third of what the tally holds.
    """

    __slots__ = ("_file", "_kept", "_path", "count")

    def __init__(self, folder: Path | None, number: int) -> None:
        self._path = None if folder is None else folder / f"file-{number}.pieces"
        self._file: BinaryIO | None = None
        self._kept: list[tuple[int, CaptureConversations]] = []
        self.count = 0

    def add(self, piece: CaptureConversations, read: int) -> None:
        """Set ``piece`` aside, ``read`` bytes of its file read."""
        self.count += 1
        if self._path is None:
            self._kept.append((read, piece))
            return
        try:
            if self._file is None:
                self._file = self._path.open("xb")
            pickle.dump((read, piece), self._file, protocol=pickle.HIGHEST_PROTOCOL)
        except OSError as error:
            raise _no_room(self._path.parent, error) from error

    def close(self) -> None:
        """Done adding: the pieces go wherever the file's result goes (a file stays open only
        in the process that wrote it)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def taken(self) -> Iterator[tuple[int, CaptureConversations]]:
        """Each piece with its bytes read, in the order they were set aside, each given up once
        taken (a file of them is removed at the end, or when the taking stops)."""
        self.close()
        kept, self._kept = self._kept[::-1], []
        while kept:
            yield kept.pop()
        if self._path is None or not self.count:
            return
        try:
            with self._path.open("rb") as file:
                for _ in range(self.count):
                    yield pickle.load(file)  # written by this reading (add, above)
        finally:
            self._path.unlink(missing_ok=True)


class SpilledConversations:
    """Conversations merged over capture files as ``ConversationTable`` merges them, kept in
    ``parts`` files in ``folder`` until they are oriented (see the module's docstring)."""

    def __init__(self, folder: Path, parts: int, start: ConversationTable | None = None) -> None:
        """``start``: conversations already merged in memory, moved to the parts (the table is
        left empty)."""
        self._folder = folder
        self._paths = [folder / f"part-{number}.pickle" for number in range(parts)]
        self._files: list[BinaryIO] = [path.open("wb") for path in self._paths]
        self.entries = 0  # conversation entries added (a conversation two files saw: two)
        if start is not None:
            self.entries = len(start)
            for number, table in enumerate(start.split(parts, lambda pair: _part(pair, parts))):
                self._dump(number, table)

    def _dump(self, number: int, piece: CaptureConversations | ConversationTable) -> None:
        try:
            pickle.dump(piece, self._files[number], protocol=pickle.HIGHEST_PROTOCOL)
        except OSError as error:
            raise _no_room(self._folder, error) from error

    def add(self, seen: CaptureConversations) -> None:
        """Put what one capture file saw into the parts its conversations belong to."""
        parts = len(self._files)
        part_of = {pair: _part(pair, parts) for pair in seen.pairs}
        entries: list[dict[ConversationKey, bytes]] = [{} for _ in range(parts)]
        pairs: list[dict[bytes, AddressPair]] = [{} for _ in range(parts)]
        tail = KEY_TAIL
        for key, entry in seen.entries.items():
            entries[part_of[key[:-tail]]][key] = entry
        for pair, texts in seen.pairs.items():
            pairs[part_of[pair]][pair] = texts
        for number in range(parts):
            if entries[number]:
                piece = CaptureConversations(
                    seen.capture, seen.vantage, seen.number, entries[number], pairs[number]
                )
                self._dump(number, piece)
        self.entries += len(seen.entries)

    def __len__(self) -> int:
        return self.entries

    @property
    def parts(self) -> int:
        return len(self._paths)

    def close(self) -> None:
        """Close its files (once oriented, they are gone)."""
        for file in self._files:
            file.close()

    def _tables(self) -> Iterator[ConversationTable]:
        """Each part merged in a table of its own, read in turn, its file removed once read."""
        self.close()
        for path in self._paths:
            table = ConversationTable()
            with path.open("rb") as file:
                while True:
                    try:
                        piece = pickle.load(file)  # written by this process, above
                    except EOFError:
                        break
                    if isinstance(piece, ConversationTable):
                        table = piece  # the part's share of the start, always first
                    else:
                        table.add(piece)
            path.unlink()
            yield table

    def oriented(self, known_listener: ListenerOracle | None) -> FlowTable:
        """Every conversation oriented (``ConversationTable.oriented``), one part at a time, the
        groups' columns kept on disk (:class:`ColumnStore`)."""
        store = ColumnStore(self._folder)
        groups: list[FlowGroup] = []
        for table in self._tables():
            groups += map(store.kept, table.flow_groups(known_listener))
        return FlowTable.sorted(groups)

    def conversations(self) -> list[Conversation]:
        """Every conversation, sorted by (protocol, a, b)."""
        return sorted(
            conversation for table in self._tables() for conversation in table.conversations()
        )


class SpillingConversations:
    """Conversations merged over capture files, as ``ConversationTable`` merges them: in one
    table in memory while it stays small, else in parts on disk (:class:`SpilledConversations`),
    in a private folder (``tempfile``) that :meth:`close` removes.

    In parts from the start past ``spill_bytes`` of capture files (``sizes``, the files' sizes in
    the order they are added). Else as soon as the table holds more than ``spill_entries``
    conversations while files are left to add: a capture of very short connections (a scan,
    forged SYNs, a client without keep-alive) has several times a day's conversations a byte, and
    its size alone would keep them all in memory. A pair of addresses counts as a conversation
    (``ConversationTable.held``): a scan has one for each. ``spill_bytes`` 0: always in
    memory."""

    def __init__(
        self,
        sizes: Sequence[int],
        spill_bytes: int = SPILL_BYTES,
        spill_entries: int = SPILL_ENTRIES,
    ) -> None:
        self._sizes = sizes
        self._spill_bytes = spill_bytes
        self._spill_entries = spill_entries
        self._added = 0  # files
        self._folder: tempfile.TemporaryDirectory[str] | None = None
        parts = part_count(sum(sizes), spill_bytes)
        self._table: ConversationTable | SpilledConversations = (
            ConversationTable() if parts == 1 else SpilledConversations(self._new_folder(), parts)
        )

    def _new_folder(self) -> Path:
        self._folder = tempfile.TemporaryDirectory(prefix="netpol-sniffer-")
        return Path(self._folder.name)

    @property
    def parts(self) -> int:
        """How many parts the conversations are in (1: in memory)."""
        return self._table.parts if isinstance(self._table, SpilledConversations) else 1

    def add(self, seen: CaptureConversations, read: int | None = None) -> None:
        """Fold in what the next capture file saw; with ``read``, a piece of it
        (:class:`FilePieces`), set aside once that many of its bytes were read: more follows."""
        table = self._table
        table.add(seen)
        if read is None:
            self._added += 1
        if (
            isinstance(table, ConversationTable)
            and self._spill_bytes > 0
            and table.held() > self._spill_entries
            and (read is not None or self._added < len(self._sizes))
        ):
            self._table = SpilledConversations(
                self._new_folder(), self._parts_for(table.held(), read or 0), start=table
            )

    def _parts_for(self, entries: int, read_of_next: int) -> int:
        """Parts for all the files' conversations, ``entries`` after the files added so far
        (and ``read_of_next`` bytes of the next): of about a quarter of ``spill_entries`` each,
        by the share of the bytes read."""
        read = sum(self._sizes[: self._added]) + read_of_next
        expected = entries * sum(self._sizes) / max(read, 1)
        return min(MAX_PARTS, max(2, math.ceil(expected * PARTS_PER_SPILL / self._spill_entries)))

    def __len__(self) -> int:
        return len(self._table)

    def conversations(self) -> list[Conversation]:
        """Every conversation, sorted by (protocol, a, b)."""
        return self._table.conversations()

    def oriented(self, known_listener: ListenerOracle | None) -> FlowTable:
        """Every conversation oriented (``ConversationTable.oriented``)."""
        return self._table.oriented(known_listener)

    def close(self) -> None:
        """Remove the parts' folder, if any (the flows' file stays while its groups do)."""
        if isinstance(self._table, SpilledConversations):
            self._table.close()
        if self._folder is not None:
            self._folder.cleanup()
