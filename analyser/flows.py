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
_ESTABLISHED = 1
_ANSWERED = 2
_EVIDENCE = tuple(Evidence)
_EVIDENCE_KIND = {evidence: place << 2 for place, evidence in enumerate(_EVIDENCE)}


def flow_kind(evidence: Evidence, established: bool, answered: bool) -> int:
    """A flow's evidence and flags as :attr:`FlowGroup.kinds` keeps them."""
    return _EVIDENCE_KIND[evidence] | (established and _ESTABLISHED) | (answered and _ANSWERED)


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
                bool(kind & _ESTABLISHED),
                bool(kind & _ANSWERED),
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
        order = sorted(range(len(column)), key=column.__getitem__)
        if len(set(column)) < len(column):
            columns = (column, *then)
            order.sort(key=lambda index: tuple(values[index] for values in columns))
        return self if order == list(range(len(column))) else loaded.taken(order)

    def evidence(self) -> set[Evidence]:
        """The evidence its flows rest on."""
        return {_EVIDENCE[kind >> 2] for kind in set(self.kinds)}

    def places(self, *, established: bool) -> list[int]:
        """The places of its established flows, or of the others (``established=False``)."""
        wanted = _ESTABLISHED if established else 0
        return [index for index, kind in enumerate(self.kinds) if kind & _ESTABLISHED == wanted]

    def any_answered(self) -> bool:
        return any(kind & _ANSWERED for kind in self.kinds)

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


class _Aggregate:
    """Mutable totals of one conversation while captures are merged (one per conversation of a
    day of captures, so small: the first vantage point's totals in place, others aside)."""

    __slots__ = (
        "bytes",
        "captures",
        "first_seen",
        "last_seen",
        "others",
        "packets",
        "roles",
        "vantage",
    )

    def __init__(self, first_seen: float, last_seen: float, vantage: str) -> None:
        self.first_seen = first_seen
        self.last_seen = last_seen
        self.roles = 0  # CaptureConversations' handshake bits
        self.captures: frozenset[str] = frozenset()  # shared between conversations
        # Packets and bytes of the first vantage point (one tcpdump ring) that saw it, and of
        # any other: [packets, bytes] by vantage point.
        self.vantage = vantage
        self.packets = self.bytes = 0
        self.others: dict[str, list[int]] | None = None

    def add(self, vantage: str, packets: int, size: int) -> None:
        if vantage == self.vantage:
            self.packets += packets
            self.bytes += size
            return
        if self.others is None:
            self.others = {}
        totals = self.others.setdefault(vantage, [0, 0])
        totals[0] += packets
        totals[1] += size

    def largest(self) -> tuple[int, int]:
        """The (packets, bytes) of the vantage point that saw the most."""
        largest = (self.packets, self.bytes)
        for packets, size in (self.others or {}).values():
            largest = max(largest, (packets, size))
        return largest


# CaptureConversations' bits.
_OPENED, _ACCEPTED, _CLOSED = 1 | 2, 4 | 8, 16
_A_DISOWNED, _B_DISOWNED = 32, 64
_A_SENT, _B_SENT = 128, 256


def conversation_bits(roles: int, forward: bool) -> int:
    """:class:`CaptureConversations`' handshake bits for what one direction's sender did
    (``ROLE_*`` bits); ``forward``: the sender is the conversation's lower endpoint, ``a``."""
    bits = _A_SENT if forward else _B_SENT
    if roles & ROLE_OPENER:
        bits |= 1 if forward else 2
    if roles & ROLE_ACCEPTOR:
        bits |= 4 if forward else 8
    if roles & ROLE_CLOSER:
        bits |= _CLOSED
    if roles & ROLE_DISOWNER:
        bits |= 32 if forward else 64
    return bits


# What a connection that never got going can amount to: Linux sends a SYN and 6 retries
# (net.ipv4.tcp_syn_retries), each perhaps answered by a RST. More packets mean data flowed.
MAX_UNESTABLISHED_PACKETS = 14


def _established(protocol: Protocol, roles: int, packets: int) -> bool:
    """Whether a TCP connection got going, from its handshake bits (``CaptureConversations``).

    Without a SYN or SYN+ACK captured (the capture started later), it is taken as established.
    A FIN says it was: only an open connection is closed that way. Its opener (who sent the SYN,
    or did not send the SYN+ACK) disowning it with a RST without ACK says it was not: that is the
    answer of a host to a SYN+ACK for a SYN it never sent, spoofed in its name (or a port scanner
    leaving a half-open probe). Otherwise a SYN+ACK says it was, and so do more packets than a
    failed attempt makes (a capture that dropped packets may miss the SYN+ACK and the FIN of a
    connection that worked). The ACK that completes a handshake is no evidence here: the default
    ``handshake`` capture mode keeps only TCP packets with SYN, FIN or RST.
    """
    if protocol is not Protocol.TCP or not roles & (_OPENED | _ACCEPTED) or roles & _CLOSED:
        return True
    a_opened = roles & (1 | 8)  # a sent the SYN, or b the SYN+ACK
    b_opened = roles & (2 | 4)
    if (a_opened and roles & _A_DISOWNED) or (b_opened and roles & _B_DISOWNED):
        return False
    return bool(roles & _ACCEPTED) or packets > MAX_UNESTABLISHED_PACKETS


def _opener(roles: int) -> int:
    """Which end opened the connection by its handshake bits: ``_A``, ``_B`` or ``_NEITHER``."""
    a_opened, b_opened = bool(roles & 1), bool(roles & 2)
    if a_opened != b_opened:
        return _A if a_opened else _B
    a_accepted, b_accepted = bool(roles & 4), bool(roles & 8)
    if a_accepted != b_accepted:
        return _B if a_accepted else _A
    return _NEITHER


def _only_sender(roles: int) -> int:
    """Which end alone sent packets, by the handshake bits: ``_A``, ``_B`` or ``_NEITHER``."""
    sent = roles & (_A_SENT | _B_SENT)
    return _NEITHER if sent == _A_SENT | _B_SENT else _A if sent == _A_SENT else _B


_NEITHER, _A, _B = 0, 1, 2
# By the bits, worked out once (the bits of a conversation are below 512): who opened it, who
# alone sent packets, and whether a TCP connection got going whatever its number of packets.
_OPENERS = tuple(_opener(roles) for roles in range(512))
_ONLY_SENDERS = tuple(_only_sender(roles) for roles in range(512))
_ESTABLISHED_ANYWAY = tuple(
    _established(Protocol.TCP, roles, 0) and _established(Protocol.TCP, roles, 1 << 62)
    for roles in range(512)
)


class ConversationTable:
    """Conversations merged over capture files.

    A conversation seen from both ends (the client's and the server's capture) is one
    conversation: packets and bytes are summed within one vantage point (the files of one tcpdump
    ring, see ``sources.ring_name``) and the largest vantage total is taken, so the same packets
    are not counted twice. Adding is commutative, so the result does not depend on the order in
    which files were read.

    Most conversations are seen by one file only (a short connection, captured at one end): the
    table keeps such a file's entry as it is, and makes an :class:`_Aggregate` only for a
    conversation a second file sees too.
    """

    def __init__(self) -> None:
        # Per key: the entry of the one file that saw it (``CaptureConversations.entries``), or
        # the totals over the files that did.
        self._merged: dict[ConversationKey, ConversationEntry | _Aggregate] = {}
        self._captures_by_number: dict[int, str] = {}  # a file's number → its name
        self._vantages: dict[int, str] = {}  # a file's number → its vantage point
        # The text of the pairs of addresses keys start with (``CaptureConversations.pairs``).
        self._pairs: dict[bytes, AddressPair] = {}
        # The sets of captures conversations have, each once: (a set, one more) → their union.
        self._captures: dict[tuple[frozenset[str], str], frozenset[str]] = {}

    def add(self, seen: CaptureConversations) -> None:
        """Fold in what one capture file saw (its entries are kept, not copied)."""
        merged, entries = self._merged, seen.entries
        if self._captures_by_number.setdefault(seen.number, seen.capture) != seen.capture:
            raise ValueError(f"{seen.capture}: file number {seen.number} is another file's")
        self._vantages[seen.number] = seen.vantage
        self._pairs.update(seen.pairs)
        aggregates: dict[ConversationKey, _Aggregate] = {}
        for key in entries.keys() & merged.keys():
            known = merged[key]
            aggregate = self._aggregate(known) if isinstance(known, bytes) else known
            self._fold(aggregate, entries[key])
            aggregates[key] = aggregate
        # New keys (and the ones above, put right after) without a loop in Python.
        merged.update(entries)
        merged.update(aggregates)

    def _aggregate(self, entry: ConversationEntry) -> _Aggregate:
        """The totals of a conversation so far seen by one file: its entry."""
        first_seen, last_seen, _, _, _, number = unpacked_entry(entry)
        aggregate = _Aggregate(first_seen, last_seen, self._vantages[number])
        self._fold(aggregate, entry)
        return aggregate

    def _fold(self, aggregate: _Aggregate, entry: ConversationEntry) -> None:
        first_seen, last_seen, size, packets, roles, number = unpacked_entry(entry)
        aggregate.first_seen = min(aggregate.first_seen, first_seen)
        aggregate.last_seen = max(aggregate.last_seen, last_seen)
        aggregate.roles |= roles
        aggregate.captures = self._with(aggregate.captures, self._captures_by_number[number])
        aggregate.add(self._vantages[number], packets, size)

    def _with(self, captures: frozenset[str], capture: str) -> frozenset[str]:
        found = self._captures.get((captures, capture))
        if found is None:
            found = self._captures[(captures, capture)] = captures | {capture}
        return found

    def __len__(self) -> int:
        return len(self._merged)

    def held(self) -> int:
        """Its conversations plus its pairs of addresses: what its memory grows with (a pair's
        texts take about as much as a conversation, and a scan has a pair a conversation)."""
        return len(self._merged) + len(self._pairs)

    def split(self, parts: int, part_of: Callable[[bytes], int]) -> list[ConversationTable]:
        """Its conversations in ``parts`` tables, each in the table ``part_of`` gives the pair of
        addresses its key starts with; this table is left empty."""
        tables = [ConversationTable() for _ in range(parts)]
        place = {pair: part_of(pair) for pair in self._pairs}
        for table in tables:
            table._captures_by_number = dict(self._captures_by_number)
            table._vantages = dict(self._vantages)
        for pair, texts in self._pairs.items():
            tables[place[pair]]._pairs[pair] = texts
        merged, tail = self._merged, KEY_TAIL
        while merged:
            key, found = merged.popitem()
            tables[place[key[:-tail]]]._merged[key] = found
        self._pairs.clear()
        return tables

    def conversations(self) -> list[Conversation]:
        """Every conversation, sorted by (protocol, a, b)."""
        return sorted(map(_conversation, self._rows(take=False)))

    def oriented(self, known_listener: ListenerOracle | None) -> FlowTable:
        """Every conversation oriented (as :func:`orient` does), each leaving the table as it is
        read: the table is empty at the end, and a day's millions of conversations never exist
        both as entries and as flows. No :class:`Conversation` or :class:`Endpoint` is made for
        a connection here, only its place in a :class:`FlowGroup`."""
        return FlowTable.sorted(self.flow_groups(known_listener))

    def flow_groups(self, known_listener: ListenerOracle | None) -> list[FlowGroup]:
        """:meth:`oriented`, its groups not yet put in order (``FlowTable.sorted``)."""
        return _flow_groups(self._rows(take=True), known_listener, pairs_together=True)

    def _rows(self, *, take: bool) -> Iterator[ConversationRow]:
        alone: dict[int, frozenset[str]] = {}  # a file's number → the set of its name alone
        merged, pairs, protocols = self._merged, self._pairs, _PROTOCOLS
        tail = KEY_TAIL
        unpack_tail = _PORTS_AND_PROTOCOL.unpack_from
        unpack_entry = CONVERSATION_ENTRY.unpack
        tcp = Protocol.TCP  # a local: looking a member up on its class is slow
        keys = sorted(merged, reverse=True)  # taken from the end: each goes once it is used
        while keys:
            key = keys.pop()
            found = merged.pop(key) if take else merged[key]
            if isinstance(found, bytes):
                first_seen, last_seen, size, packets, roles, number = unpack_entry(found)
                captures = alone.get(number) or alone.setdefault(
                    number, self._with(frozenset(), self._captures_by_number[number])
                )
            else:
                first_seen, last_seen, roles = found.first_seen, found.last_seen, found.roles
                packets, size = found.largest()
                captures = found.captures
            ip_a, ip_b, _ = pairs[key[:-tail]]
            port_a, port_b, number = unpack_tail(key, len(key) - tail)
            protocol = protocols[number]
            established = (protocol is not tcp or _ESTABLISHED_ANYWAY[roles]) or _established(
                protocol, roles, packets
            )
            # The key orders its ends by their addresses' bytes; a conversation by their text.
            opener, sender = _OPENERS[roles], _ONLY_SENDERS[roles]
            if ip_b < ip_a or (ip_a == ip_b and port_b < port_a):
                yield (
                    protocol, ip_b, port_b, ip_a, port_a, first_seen, last_seen, packets, size,
                    captures, _SWAPPED[opener], established, _SWAPPED[sender],
                )  # fmt: skip
            else:
                yield (
                    protocol, ip_a, port_a, ip_b, port_b, first_seen, last_seen, packets, size,
                    captures, opener, established, sender,
                )  # fmt: skip


# A conversation as ``ConversationTable`` reads it, before anything is made of it: protocol, a's
# address and port, b's, first and last seen, packets, bytes, captures, which end opened it
# (``_A``, ``_B`` or ``_NEITHER``), whether it got going, and which end alone sent packets. ``a``
# is the end whose text comes first (see :class:`Conversation`).
ConversationRow = tuple[
    Protocol, str, int, str, int, float, float, int, int, frozenset[str], int, bool, int
]
_SWAPPED = (_NEITHER, _B, _A)  # an end's name once a and b trade places


def _conversation(row: ConversationRow) -> Conversation:
    protocol, ip_a, port_a, ip_b, port_b, first, last, packets, size, captures = row[:10]
    opener, established, sender = row[10:]
    a, b = Endpoint(ip_a, port_a), Endpoint(ip_b, port_b)
    ends = (None, a, b)
    return Conversation(
        protocol,
        a,
        b,
        first,
        last,
        packets,
        size,
        captures,
        ends[opener],
        established,
        ends[sender],
    )


def _row(conversation: Conversation) -> ConversationRow:
    a, b = conversation.a, conversation.b
    sides = {None: _NEITHER, a: _A, b: _B}
    return (
        conversation.protocol, a.ip, a.port, b.ip, b.port, conversation.first_seen,
        conversation.last_seen, conversation.packets, conversation.bytes, conversation.captures,
        sides[conversation.opened_by], conversation.established, sides[conversation.sender],
    )  # fmt: skip


# --- Orientation -----------------------------------------------------------------------------

# Ports above 1023 that are servers' by convention (databases, brokers, HTTP alternates, the
# Kubernetes API and kubelet, gRPC, ...). Ports below 1024 count as servers' anyway.
SERVICE_PORTS = frozenset(
    {
        1433, 1521, 2049, 2181, 2379, 2380, 3000, 3306, 4222, 4317, 4318, 5000, 5432, 5672,
        5984, 6379, 6443, 7000, 7001, 8000, 8008, 8080, 8081, 8443, 8888, 9000, 9042, 9090,
        9092, 9093, 9200, 9300, 9411, 10250, 11211, 15672, 27017, 50051,
    }
)  # fmt: skip
# Linux picks client ports from 32768-60999, IANA from 49152: a port this high is a client's.
EPHEMERAL_PORTS_START = 32768


def _port_rank(port: int) -> int:
    """0: a service port, 1: unknown, 2: ephemeral (a client's)."""
    if port < 1024 or port in SERVICE_PORTS:
        return 0
    return 2 if port >= EPHEMERAL_PORTS_START else 1


def _heuristic_server_is_a(port_a: int, port_b: int) -> bool:
    """Whether the end with ``port_a`` is the server by port heuristics (of two ends, ``a``
    the lower)."""
    rank_a, rank_b = _port_rank(port_a), _port_rank(port_b)
    if rank_a != rank_b:
        return rank_a < rank_b
    # Same kind of port: the lower port is the server's; equal ports give the lower endpoint.
    return not port_b < port_a


def orient(
    conversations: Iterable[Conversation], known_listener: ListenerOracle | None
) -> FlowTable:
    """Client → server flows, each with the evidence its direction rests on.

    In order: a captured handshake (:attr:`Conversation.opened_by`); else ``known_listener``
    (from the snapshot: does this endpoint listen on this protocol at the conversation's first
    packet?) when it says yes for exactly one side; else, when only one end sent packets
    (:attr:`Conversation.sender`), that end: whoever sent datagrams nobody answered started
    the exchange (a datagram with a low source port to a high one, say from port 53, forged or
    not, must not give the receiver an egress rule to its sender); else port heuristics (a port
    below 1024 or in ``SERVICE_PORTS`` is the server's, an ephemeral port is the client's, else
    the lower port is the server's). Sorted by (protocol, client, server, first_seen), kept in
    groups (:class:`FlowTable`). ``ConversationTable.oriented`` does the same from its entries.
    """
    return FlowTable.sorted(
        _flow_groups(map(_row, conversations), known_listener, pairs_together=False)
    )


def _flow_groups(
    rows: Iterable[ConversationRow],
    known_listener: ListenerOracle | None,
    *,
    pairs_together: bool,
) -> list[FlowGroup]:
    """:func:`orient`, of conversations as rows, its groups not yet in order: the loop that runs
    once per connection of a day, so it makes no object for one but its values in its group's
    flat list (:func:`pack_flows`). With ``pairs_together`` (the rows of a pair of addresses come
    one after another, as a table's do), a pair's groups are packed as soon as the next pair's
    rows begin, so that only one pair's flows at a time wait as Python objects."""
    groups: list[FlowGroup] = []
    gathering: dict[_GatheredKey, list[Any]] = {}  # the groups not yet packed
    pair = ("", "")
    # Locals: looking a member up on its class, or a global, is slow.
    handshake = _EVIDENCE_KIND[Evidence.HANDSHAKE]
    known = _EVIDENCE_KIND[Evidence.KNOWN_LISTENER]
    one_way = _EVIDENCE_KIND[Evidence.ONE_WAY]
    heuristic = _EVIDENCE_KIND[Evidence.HEURISTIC]
    a_side = _A
    for (
        protocol,
        ip_a,
        port_a,
        ip_b,
        port_b,
        first_seen,
        last_seen,
        packets,
        size,
        captures,
        opener,
        established,
        sender,
    ) in rows:
        if pairs_together and (ip_a != pair[0] or ip_b != pair[1]):
            groups += _packed_groups(gathering)
            gathering.clear()
            pair = (ip_a, ip_b)
        if opener:
            client_is_a = opener == a_side
            kind = handshake
        else:
            listens_a = listens_b = False
            if known_listener is not None:
                listens_a = known_listener(Endpoint(ip_a, port_a), protocol, first_seen)
                listens_b = known_listener(Endpoint(ip_b, port_b), protocol, first_seen)
            if listens_a != listens_b:
                client_is_a = listens_b
                kind = known
            elif sender:
                client_is_a = sender == a_side
                kind = one_way
            else:
                client_is_a = not _heuristic_server_is_a(port_a, port_b)
                kind = heuristic
        if established:  # flow_kind, inline: this loop runs once per connection of a day
            kind |= _ESTABLISHED
        if not sender:
            kind |= _ANSWERED
        if client_is_a:
            key = (protocol, ip_a, ip_b, port_b, captures)
            client_port = port_a
        else:
            key = (protocol, ip_b, ip_a, port_a, captures)
            client_port = port_b
        flows = gathering.get(key)
        if flows is None:
            flows = gathering[key] = []
        flows += (first_seen, last_seen, packets, size, client_port, kind)  # a FlowRow
    groups += _packed_groups(gathering)
    return groups


# A group's protocol, client address, server address and port, and captures, as _flow_groups
# gathers it.
_GatheredKey = tuple[Protocol, str, str, int, frozenset[str]]


def _packed_groups(gathering: dict[_GatheredKey, list[Any]]) -> Iterator[FlowGroup]:
    for (protocol, client_ip, server_ip, server_port, captures), flows in gathering.items():
        server = Endpoint(server_ip, server_port)
        yield FlowGroup(protocol, client_ip, server, captures, pack_flows(flows))


def _order_within_client(flow: Flow) -> tuple[int, str, int, float]:
    return (flow.client.port, flow.server.ip, flow.server.port, flow.first_seen)
