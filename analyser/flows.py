"""Flows: the traffic facts the rest of the analyser works on (data, plus the pure step that
orients captured conversations into client → server flows).

No I/O here and no dpkt: packets arrive already decoded (see ``packets``).
"""

from __future__ import annotations

import math
import struct
import typing
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple


class Protocol(StrEnum):
    TCP = "TCP"
    UDP = "UDP"
    SCTP = "SCTP"


class Evidence(StrEnum):
    """How the direction of a flow (who is the client) was decided."""

    HANDSHAKE = "handshake"  # TCP SYN without ACK, or SCTP INIT, was captured
    KNOWN_LISTENER = "known-listener"  # the server side listens on that port per the snapshot
    ONE_WAY = "one-way"  # only one end sent packets: it is the client
    HEURISTIC = "heuristic"  # port heuristics (well-known / lower port is the server)


@dataclass(frozen=True, order=True, slots=True)
class Endpoint:
    """An IP address (compressed text form, IPv4 or IPv6) and a port."""

    ip: str
    port: int

    def __str__(self) -> str:
        return f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}"


@dataclass(frozen=True, slots=True)
class Flow:
    """One client → server conversation, as seen by one or more captures."""

    protocol: Protocol
    client: Endpoint
    server: Endpoint
    first_seen: float  # UTC epoch seconds
    last_seen: float
    packets: int
    bytes: int
    captures: frozenset[str]  # bundle-relative paths of the capture files that saw it
    evidence: Evidence
    # False for a TCP connection that never got going: its SYN was answered by nothing (filtered,
    # or the server was gone) or by a RST (nothing listens), or its opener disowned the SYN+ACK
    # (a spoofed SYN), see Conversation.established.
    established: bool = True
    # False when packets went one way only: no capture saw the other end send anything back.
    answered: bool = True


# "Does ENDPOINT listen on PROTOCOL at TIME?" — answered from the snapshot by the identity layer.
ListenerOracle = Callable[[Endpoint, Protocol, float], bool]


# --- Flows kept by the million ---------------------------------------------------------------

# A flow's evidence and flags in one byte of FlowGroup.kinds: the evidence's place in EVIDENCE
# times 4, plus these.
KIND_ESTABLISHED = 1
KIND_ANSWERED = 2
_EVIDENCE = tuple(Evidence)
_EVIDENCE_KIND = {evidence: place << 2 for place, evidence in enumerate(_EVIDENCE)}
_ESTABLISHED_FLAGS = bytes(bool(kind & KIND_ESTABLISHED) for kind in range(256))  # to translate


def flow_kind(evidence: Evidence, established: bool, answered: bool) -> int:
    """A flow's evidence and flags as :attr:`FlowGroup.kinds` keeps them."""
    return (
        _EVIDENCE_KIND[evidence] | (established and KIND_ESTABLISHED) | (answered and KIND_ANSWERED)
    )


# A FlowGroup's columns, as array type codes: first and last seen (8 bytes each), packets and
# bytes (8 each), client port (2) and kind (1). The widest come first, so that each column starts
# aligned (FlowGroup's properties hold the offsets).
_COLUMN_CODES = "ddQQHB"
FLOW_BYTES = 35
# A flow as rows of flat lists hold it while a group is gathered (see pack_flows): one value per
# column, in the columns' order.
FlowRow = tuple[float, float, int, int, int, int]


# One flow's columns: the arrays' native byte order, no padding.
_ONE_FLOW = struct.Struct("=" + _COLUMN_CODES)


def pack_flows(rows: list[Any]) -> bytes:
    """The columns of :class:`FlowGroup` for flows given one after another in a flat list, each
    as a :data:`FlowRow`'s six values (one ``list.extend`` a flow: the cheapest way to gather a
    day's connections)."""
    step = len(_COLUMN_CODES)
    if len(rows) == step:  # one flow (a scan has a group for each): its columns are its row
        return _ONE_FLOW.pack(*rows)
    return _joined(rows[place::step] for place in range(step))


def _joined(columns: Iterable[Iterable[Any]]) -> bytes:
    """A group's columns, each given as its values in :data:`FlowRow`'s order, as one ``bytes``."""
    return b"".join(
        array(code, values) for code, values in zip(_COLUMN_CODES, columns, strict=True)
    )


def flow_row(flow: Flow) -> FlowRow:
    """What a :class:`FlowGroup` keeps of ``flow`` besides what the group's flows share."""
    return (
        flow.first_seen,
        flow.last_seen,
        flow.packets,
        flow.bytes,
        flow.client.port,
        flow_kind(flow.evidence, flow.established, flow.answered),
    )


class StoredColumns(typing.Protocol):
    """A :class:`FlowGroup`'s columns kept outside memory (``spilling.ColumnStore``)."""

    def __len__(self) -> int:
        """Their size in bytes."""

    def load(self) -> bytes:
        """The columns, as :func:`pack_flows` gave them."""


class FlowGroup:
    """Flows with the same protocol, client address, server endpoint and captures (a client
    that opens a connection per request makes thousands), the rest of each flow in columns:
    ``firsts`` and ``lasts`` (first and last seen), ``packets``, ``sizes`` (bytes), ``ports``
    (the client's) and ``kinds`` (:func:`flow_kind`). All of them are one ``bytes`` object
    (:func:`pack_flows`), each column a typed view of its part: 35 bytes a flow and one object a
    group, where a :class:`Flow` and its client's :class:`Endpoint` take about 250 bytes and an
    array a column about 100. A day has millions of flows in over a hundred thousand groups; its
    groups' columns are on disk (:class:`StoredColumns`), read each time they are asked for
    (:meth:`loaded` reads them once). A :class:`Flow` is made when one is asked for
    (:meth:`flow`, :meth:`flows`). Immutable: a changed group is a new one.
    """

    __slots__ = ("captures", "client_ip", "columns", "protocol", "server")

    def __init__(
        self,
        protocol: Protocol,
        client_ip: str,
        server: Endpoint,
        captures: frozenset[str],
        columns: bytes | StoredColumns = b"",
    ) -> None:
        self.protocol = protocol
        self.client_ip = client_ip
        self.server = server
        self.captures = captures
        self.columns = columns  # pack_flows, in memory or on disk

    @classmethod
    def of(cls, flows: Iterable[Flow]) -> FlowGroup:
        """A group of ``flows`` (at least one; of one protocol, client address, server and
        captures), in their order."""
        rows: list[Any] = []
        for flow in flows:
            rows += flow_row(flow)
        return cls(flow.protocol, flow.client.ip, flow.server, flow.captures, pack_flows(rows))

    def packed(self) -> bytes:
        """Its columns as :func:`pack_flows` gave them, read from disk when they are there."""
        columns = self.columns
        return columns if isinstance(columns, bytes) else columns.load()

    def _part(self, start: int, stop: int) -> memoryview:
        """Its columns' bytes from ``start`` to ``stop`` times its number of flows."""
        packed = self.packed()
        count = len(packed) // FLOW_BYTES
        return memoryview(packed)[start * count : stop * count]

    @property
    def firsts(self) -> memoryview[float]:
        return self._part(0, 8).cast("d")

    @property
    def lasts(self) -> memoryview[float]:
        return self._part(8, 16).cast("d")

    @property
    def packets(self) -> memoryview[int]:
        return self._part(16, 24).cast("Q")

    @property
    def sizes(self) -> memoryview[int]:
        return self._part(24, 32).cast("Q")

    @property
    def ports(self) -> memoryview[int]:
        return self._part(32, 34).cast("H")

    @property
    def kinds(self) -> memoryview[int]:
        return self._part(34, 35).cast("B")

    def _views(self) -> tuple[memoryview[Any], ...]:
        """Its columns, in :data:`FlowRow`'s order (read from disk once for all six)."""
        group = self.loaded()
        return (group.firsts, group.lasts, group.packets, group.sizes, group.ports, group.kinds)

    def loaded(self) -> FlowGroup:
        """This group with its columns in memory: itself when they are, else a copy that reads
        them from disk once, for code that reads several."""
        if isinstance(self.columns, bytes):
            return self
        return FlowGroup(self.protocol, self.client_ip, self.server, self.captures, self.packed())

    def __len__(self) -> int:
        return len(self.columns) // FLOW_BYTES

    def flow(self, index: int) -> Flow:
        """Its flow at ``index`` (0 up to its length)."""
        return next(self.flows(index, index + 1))

    def flows(self, start: int = 0, stop: int | None = None) -> Iterator[Flow]:
        """Its flows from ``start`` to ``stop``, in its order (made column by column)."""
        protocol, client_ip, server, captures = (
            self.protocol,
            self.client_ip,
            self.server,
            self.captures,
        )
        place = slice(start, stop)
        for first, last, packets, size, port, kind in zip(
            *(column[place] for column in self._views()), strict=True
        ):
            yield Flow(
                protocol,
                Endpoint(client_ip, port),
                server,
                first,
                last,
                packets,
                size,
                captures,
                _EVIDENCE[kind >> 2],
                bool(kind & KIND_ESTABLISHED),
                bool(kind & KIND_ANSWERED),
            )

    def taken(self, indices: Iterable[int]) -> FlowGroup:
        """A group of the flows at ``indices``, in that order."""
        places = indices if isinstance(indices, range | list) else list(indices)
        if not places:  # a scan's unanswered SYNs: a group a flow, none established
            return FlowGroup(self.protocol, self.client_ip, self.server, self.captures)
        columns = _joined(map(column.__getitem__, places) for column in self._views())
        return FlowGroup(self.protocol, self.client_ip, self.server, self.captures, columns)

    def seen_by(self, captures: frozenset[str]) -> FlowGroup:
        """The same flows, seen by ``captures`` (its columns shared, not copied)."""
        return FlowGroup(self.protocol, self.client_ip, self.server, captures, self.columns)

    def by_time(self) -> FlowGroup:
        """This group with its flows in order of first seen (then client port, last seen,
        packets, bytes: they differ in nothing else), those in the same place kept in their
        order."""
        group = self.loaded()
        return self._sorted_by(
            group, group.firsts, group.ports, group.lasts, group.packets, group.sizes
        )

    def by_port(self) -> FlowGroup:
        """This group with its flows in order of client port (then first seen): how
        :func:`orient` sorts flows, for one group (a client port is used twice only in several
        captures' views)."""
        group = self.loaded()
        return self._sorted_by(group, group.ports, group.firsts)

    def _sorted_by(
        self, loaded: FlowGroup, column: memoryview[Any], *then: memoryview[Any]
    ) -> FlowGroup:
        """This group in order of ``column``, then of ``then`` where it has a value twice;
        stable. Itself when already in that order (no copy). The columns are ``loaded``'s
        (:meth:`loaded`: read from disk once)."""
        if len(column) < 2:
            return self
        primary = column.tolist()  # a list's items are read faster than a memoryview's
        ties = len(set(primary)) < len(primary)
        if not ties and primary == sorted(primary):  # often so: no order to make, nor to compare
            return self
        order = sorted(range(len(primary)), key=primary.__getitem__)
        if ties:
            columns = (column, *then)
            order.sort(key=lambda index: tuple(values[index] for values in columns))
        return self if order == list(range(len(primary))) else loaded.taken(order)

    def evidence(self) -> set[Evidence]:
        """The evidence its flows rest on."""
        return {_EVIDENCE[kind >> 2] for kind in set(self.kinds)}

    def places(self, *, established: bool) -> list[int]:
        """The places of its established flows, or of the others (``established=False``)."""
        # 1 for an established flow, 0 for another: counted in C, so that a group whose flows
        # are all one or the other (most are) costs no loop in Python.
        flags = bytes(self.kinds).translate(_ESTABLISHED_FLAGS)
        wanted = int(established)
        count = flags.count(wanted)
        if count in (0, len(flags)):
            return list(range(count))
        return [index for index, flag in enumerate(flags) if flag == wanted]

    def any_answered(self) -> bool:
        return any(kind & KIND_ANSWERED for kind in self.kinds)

    def first_seen(self) -> float:
        return min(self.firsts)

    def last_seen(self) -> float:
        return max(self.lasts)

    def order_key(self) -> tuple[Protocol, str, int, str, int]:
        """Where its first flow (by client port) is among sorted flows (:func:`orient`)."""
        return (self.protocol, self.client_ip, min(self.ports), self.server.ip, self.server.port)


class FlowTable(Sequence[Flow]):
    """Flows kept in groups (:class:`FlowGroup`), one per protocol, client address, server
    endpoint and captures: what :func:`orient` gives. A sequence of :class:`Flow` made as they
    are asked for: each group's in turn, those of consecutive groups of one client address by
    client port; for a table in :meth:`sorted` order (``orient``'s), sorted by (protocol, client,
    server, first seen). Code that goes through a day's flows reads ``groups`` instead."""

    __slots__ = ("_length", "groups")

    def __init__(self, groups: Iterable[FlowGroup]) -> None:
        self.groups = tuple(groups)
        self._length = sum(len(group) for group in self.groups)

    @classmethod
    def sorted(cls, groups: Iterable[FlowGroup]) -> FlowTable:
        """A table of ``groups``, each put in order, in the order of their first flows."""
        return cls(sorted((group.by_port() for group in groups), key=FlowGroup.order_key))

    @classmethod
    def of(cls, flows: Iterable[Flow]) -> FlowTable:
        """The flows of ``flows`` in groups, each group's in the order given; the groups in the
        order their first flows come in (a :class:`FlowTable` is returned as it is)."""
        if isinstance(flows, FlowTable):
            return flows
        groups: dict[tuple[Protocol, str, Endpoint, frozenset[str]], list[Flow]] = {}
        for flow in flows:
            key = (flow.protocol, flow.client.ip, flow.server, flow.captures)
            groups.setdefault(key, []).append(flow)
        return cls(map(FlowGroup.of, groups.values()))

    def __len__(self) -> int:
        return self._length

    def evidence_counts(self) -> Counter[Evidence]:
        """How many of its flows rest on each evidence (one count of its groups' kinds: a scan
        has a group a flow)."""
        kinds: Counter[int] = Counter()
        for group in self.groups:
            kinds.update(group.kinds)
        counts: Counter[Evidence] = Counter()
        for kind, count in kinds.items():
            counts[_EVIDENCE[kind >> 2]] += count
        return counts

    def __iter__(self) -> Iterator[Flow]:
        # The groups of one client address are in order of their first flows; the flows of
        # several groups of one client interleave by client port.
        start = 0
        groups = self.groups
        while start < len(groups):
            client = (groups[start].protocol, groups[start].client_ip)
            end = start + 1
            while end < len(groups) and (groups[end].protocol, groups[end].client_ip) == client:
                end += 1
            if end - start == 1:
                yield from groups[start].flows()
            else:
                yield from sorted(
                    (flow for group in groups[start:end] for flow in group.flows()),
                    key=_order_within_client,
                )
            start = end

    @typing.overload
    def __getitem__(self, index: int) -> Flow: ...

    @typing.overload
    def __getitem__(self, index: slice) -> Sequence[Flow]: ...

    def __getitem__(self, index: int | slice) -> Flow | Sequence[Flow]:
        return tuple(self)[index]  # for a few flows: code that goes through them all iterates

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence):
            return NotImplemented
        return len(self) == len(other) and all(
            mine == theirs for mine, theirs in zip(self, other, strict=True)
        )

    __hash__ = None  # type: ignore[assignment]  # equal to a list of the same flows

    def __repr__(self) -> str:
        return f"FlowTable({len(self.groups)} groups, {len(self)} flows)"

    def first_seen(self) -> float:
        """The first packet of any of its flows (``inf`` without any)."""
        return min((group.first_seen() for group in self.groups), default=math.inf)

    def last_seen(self) -> float:
        return max((group.last_seen() for group in self.groups), default=-math.inf)


# --- From captured packets to conversations -------------------------------------------------

# Handshake roles of the sender of a packet (bits, OR-ed over a conversation's packets).
ROLE_OPENER = 1  # sent a TCP SYN without ACK, or an SCTP INIT: the client
ROLE_ACCEPTOR = 2  # sent a TCP SYN+ACK, or an SCTP INIT-ACK: the server
ROLE_CLOSER = 4  # sent a TCP FIN: only an established connection is closed that way
# Sent a TCP RST without ACK: how a host answers a segment of a connection it does not have, such
# as a SYN+ACK to a SYN it never sent (a SYN spoofed in its name). Aborting a connection of its
# own, or refusing a SYN, it sends RST+ACK.
ROLE_DISOWNER = 8

_PROTOCOLS = {6: Protocol.TCP, 17: Protocol.UDP, 132: Protocol.SCTP}
_TCP_FIN = 0x01
_TCP_SYN = 0x02
_TCP_RST = 0x04
_TCP_ACK = 0x10
_SCTP_INIT = 1
_SCTP_INIT_ACK = 2


def protocol_named(number: int) -> Protocol:
    """The :class:`Protocol` for an IP protocol number (6, 17, 132)."""
    return _PROTOCOLS[number]


def handshake_role(protocol_number: int, control: int) -> int:
    """The handshake role (``ROLE_*`` bits, or 0) of a packet's sender.

    ``control`` is the TCP flags byte or the type of an SCTP packet's first chunk.
    """
    if protocol_number == 6:
        if control & (_TCP_SYN | _TCP_ACK) == _TCP_SYN:
            return ROLE_OPENER
        if control & (_TCP_SYN | _TCP_ACK) == _TCP_SYN | _TCP_ACK:
            return ROLE_ACCEPTOR
        if control & _TCP_FIN:
            return ROLE_CLOSER
        if control & (_TCP_RST | _TCP_ACK) == _TCP_RST:
            return ROLE_DISOWNER
    elif protocol_number == 132:
        if control == _SCTP_INIT:
            return ROLE_OPENER
        if control == _SCTP_INIT_ACK:
            return ROLE_ACCEPTOR
    return 0


class Conversation(NamedTuple):
    """Both directions between two endpoints, merged over every capture; not yet oriented.

    ``a`` is the lower endpoint and ``b`` the higher, so each conversation has one key. What
    ``read_captures`` gives without an orientation (``ConversationTable.conversations``); an
    analysis orients the table's entries without making one (``ConversationTable.oriented``).
    """

    protocol: Protocol
    a: Endpoint
    b: Endpoint
    first_seen: float
    last_seen: float
    packets: int
    bytes: int
    captures: frozenset[str]
    opened_by: Endpoint | None  # the client according to a captured handshake, if any
    # False when a TCP SYN was captured but no SYN+ACK and no FIN from either end, in no more
    # packets than a failed attempt makes: the connection was refused (RST) or never answered;
    # or when its opener disowned it (see _established).
    established: bool = True
    sender: Endpoint | None = None  # the only end that sent packets; None when both did


# A conversation's key, packed (one small bytes object per connection of a day, where a tuple of
# its values takes three times the memory): the address of its end ``a`` and of ``b`` as on the
# wire (4 bytes each for IPv4, 16 for IPv6), then a's port, b's port (big-endian) and the IP
# protocol number. ``a`` is the end with the lower address bytes (the lower port for one address);
# ``ConversationTable`` turns keys into endpoints ordered as text.
ConversationKey = bytes
# The pair of addresses a key starts with (``key[:-5]``), and their text and the first time a
# conversation between them was seen in a file: see CaptureConversations.
AddressPair = tuple[str, str, float]
# A conversation's totals in one file, packed as :data:`CONVERSATION_ENTRY`: first seen, last
# seen, bytes, packets, handshake bits and the file's number (see CaptureConversations).
ConversationEntry = bytes
CONVERSATION_ENTRY = struct.Struct("<ddQQHI")
_TIMES = struct.Struct("<dd")  # an entry's first and last seen
_PORTS_AND_PROTOCOL = struct.Struct("!HHB")  # a key's last 5 bytes
KEY_TAIL = _PORTS_AND_PROTOCOL.size


def unpacked_entry(entry: ConversationEntry) -> tuple[float, float, int, int, int, int]:
    """(first seen, last seen, bytes, packets, handshake bits, file number) of an entry."""
    fields: tuple[float, float, int, int, int, int] = CONVERSATION_ENTRY.unpack(entry)
    return fields


class CaptureVantage(typing.Protocol):
    """Where a capture file was taken, as reading it needs: ``str()`` names the vantage point,
    and :meth:`holds` says which addresses the capture speaks for."""

    def holds(self, ip: str, first: float, last: float) -> bool:
        """Whether ``ip`` was the vantage point's own address (or a loopback one) at ``first`` or
        at ``last``."""
        ...

    def steady(self, ip: str, at: float) -> bool:
        """Whether :meth:`holds` says the same of ``ip`` at any time from ``at`` on."""
        ...


class CaptureConversations:
    """What one capture file saw, folded into conversations: what a reading worker returns, so
    it is plain data that pickles and merges cheaply.

    ``entries`` maps each conversation's :data:`ConversationKey` to its
    :data:`ConversationEntry` (``packets.fold_tally`` makes them from a file's packets): the
    handshake bits (:func:`conversation_bits` of each direction, OR-ed) are: a opened, b opened,
    a accepted, b accepted (1, 2, 4, 8), either closed (16), a disowned, b disowned (32, 64), a
    sent, b sent (128, 256); the file's ``number`` (its place in the files read together) is in
    every entry, so that :class:`ConversationTable` can keep the entry of a conversation only
    one file saw as it is. ``pairs`` maps each pair of addresses the keys start with to
    their text and the first time a conversation between them was seen in this file.
    """

    __slots__ = ("capture", "entries", "number", "pairs", "vantage")

    def __init__(
        self,
        capture: str,
        vantage: str,
        number: int,
        entries: dict[ConversationKey, ConversationEntry],
        pairs: dict[bytes, AddressPair],
    ) -> None:
        self.capture = capture  # the file, relative to the bundle
        self.vantage = vantage  # the tcpdump ring it belongs to (see ``sources.ring_name``)
        self.number = number
        self.entries = entries
        self.pairs = pairs

    def drop_foreign(self, vantage: CaptureVantage) -> int:
        """Remove the conversations in which neither end was ``vantage``'s own address at the
        conversation's first or last packet in this file, and return how many: a pod controls
        every byte of its capture, so the capture speaks only for that pod's own traffic."""
        # Per address, asked once when the answer stays the same from its first conversation on
        # (a pod calling out thousands of times has a handful of addresses).
        since: dict[str, float] = {}
        for ip_a, ip_b, first in self.pairs.values():
            if since.get(ip_a, math.inf) > first:
                since[ip_a] = first
            if since.get(ip_b, math.inf) > first:
                since[ip_b] = first
        steady = {
            ip: vantage.holds(ip, at, at) for ip, at in since.items() if vantage.steady(ip, at)
        }
        always = {ip for ip, held in steady.items() if held}
        # Only the conversations between two addresses neither of which is always its own are
        # looked at one by one: in a pod's capture, usually none.
        suspect = {
            pair: (ip_a, ip_b)
            for pair, (ip_a, ip_b, _) in self.pairs.items()
            if ip_a not in always and ip_b not in always
        }
        if not suspect:
            return 0

        def own(ip: str, first: float, last: float) -> bool:
            found = steady.get(ip)
            return vantage.holds(ip, first, last) if found is None else found

        foreign = []
        for key, entry in self.entries.items():
            ips = suspect.get(key[:-KEY_TAIL])
            if ips is not None:
                first, last = _TIMES.unpack_from(entry)
                if not own(ips[0], first, last) and not own(ips[1], first, last):
                    foreign.append(key)
        for key in foreign:
            del self.entries[key]
        return len(foreign)


# CaptureConversations' handshake bits (see there).
A_OPENED, B_OPENED, A_ACCEPTED, B_ACCEPTED, CLOSED = 1, 2, 4, 8, 16
A_DISOWNED, B_DISOWNED, A_SENT, B_SENT = 32, 64, 128, 256


def conversation_bits(roles: int, forward: bool) -> int:
    """:class:`CaptureConversations`' handshake bits for what one direction's sender did
    (``ROLE_*`` bits); ``forward``: the sender is the conversation's lower endpoint, ``a``."""
    bits = A_SENT if forward else B_SENT
    if roles & ROLE_OPENER:
        bits |= A_OPENED if forward else B_OPENED
    if roles & ROLE_ACCEPTOR:
        bits |= A_ACCEPTED if forward else B_ACCEPTED
    if roles & ROLE_CLOSER:
        bits |= CLOSED
    if roles & ROLE_DISOWNER:
        bits |= A_DISOWNED if forward else B_DISOWNED
    return bits


def _order_within_client(flow: Flow) -> tuple[int, str, int, float]:
    return (flow.client.port, flow.server.ip, flow.server.port, flow.first_seen)
