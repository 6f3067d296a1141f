"""Spilling: the conversations of a day's captures merged on disk, one part at a time in memory.

Merging every capture file's conversations in one table (``flows.ConversationTable``) takes
about 165 bytes a connection at its fullest: 1.1 GB for the 5 million connections of 20 million
packets, and it grows with the captures. Past :data:`SPILL_BYTES` of capture files,
``reading.read_captures`` keeps each file's conversations instead in :data:`parts <part_count>`
on disk, split by their pair of addresses: a conversation seen by several files (a ring's next
file, the other end's capture) is in one part, and so is every flow group (one client address,
one server), since its conversations share a pair of addresses. The parts are then merged and
oriented one at a time (:meth:`SpilledConversations.oriented`), and only the flow groups (~35
bytes a connection) add up. The result is the same as one table's, byte for byte.

The parts are pickles this process writes into a folder of its own (``tempfile``: 0700 under
``$TMPDIR``) and reads back; the folder goes when the analysis is done or fails.
"""

from __future__ import annotations

import math
import pickle
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from analyser.flows import (
    KEY_TAIL,
    AddressPair,
    CaptureConversations,
    Conversation,
    ConversationKey,
    ConversationTable,
    FlowGroup,
    FlowTable,
    ListenerOracle,
)
from kernel.errors import CaptureError

# Capture files (on disk) merged in memory in one table; past this, in parts of about this much.
SPILL_BYTES = 512 * 1024 * 1024
MAX_PARTS = 64  # files open at once


def part_count(capture_bytes: int, spill_bytes: int = SPILL_BYTES) -> int:
    """How many parts the conversations of ``capture_bytes`` of capture files are merged in: 1
    (in memory, no files) up to ``spill_bytes`` (or when it is 0), at most :data:`MAX_PARTS`."""
    if spill_bytes <= 0:
        return 1
    return min(MAX_PARTS, max(1, math.ceil(capture_bytes / spill_bytes)))


def _part(pair: bytes, parts: int) -> int:
    """The part of the conversations between a pair of addresses (the bytes their keys start
    with): a stable hash, the same in every process."""
    return zlib.crc32(pair) % parts


class SpilledConversations:
    """Conversations merged over capture files as ``ConversationTable`` merges them, kept in
    ``parts`` files in ``folder`` until they are oriented (see the module's docstring)."""

    def __init__(self, folder: Path, parts: int) -> None:
        self._paths = [folder / f"part-{number}.pickle" for number in range(parts)]
        self._files: list[BinaryIO] = [path.open("wb") for path in self._paths]
        self.entries = 0  # conversation entries added (a conversation two files saw: two)

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
        for number, file in enumerate(self._files):
            if not entries[number]:
                continue
            piece = CaptureConversations(
                seen.capture, seen.vantage, seen.number, entries[number], pairs[number]
            )
            try:
                pickle.dump(piece, file, protocol=pickle.HIGHEST_PROTOCOL)
            except OSError as error:
                raise CaptureError(
                    f"{self._paths[number].parent}: cannot keep the merged conversations of a "
                    f"bundle this size there ({error.strerror or error}); set TMPDIR to a folder "
                    "with room for about a fifth of the size of the capture files, or more"
                ) from error
        self.entries += len(seen.entries)

    def __len__(self) -> int:
        return self.entries

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
                        table.add(pickle.load(file))  # written by this process, above
                    except EOFError:
                        break
            path.unlink()
            yield table

    def oriented(self, known_listener: ListenerOracle | None) -> FlowTable:
        """Every conversation oriented (``ConversationTable.oriented``), one part at a time."""
        groups: list[FlowGroup] = []
        for table in self._tables():
            groups += table.flow_groups(known_listener)
        return FlowTable.sorted(groups)

    def conversations(self) -> list[Conversation]:
        """Every conversation, sorted by (protocol, a, b)."""
        return sorted(
            conversation for table in self._tables() for conversation in table.conversations()
        )
