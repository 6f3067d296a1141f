"""Orienting: conversations merged over capture files (:class:`ConversationTable`), and the step
that turns them into client → server flows (:func:`orient`, :meth:`ConversationTable.oriented`).

Pure, no I/O. Its loop runs once per connection of a day of captures, so like ``packets`` this
module is compiled with mypyc where the install can (``setup.py``): it stays within what mypyc
compiles, and the interpreted source gives the same results (``test_orienting`` runs both). A
conversation goes from the table to its group as a :data:`ConversationRow`, which compiled is a
C struct, not an object.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, Final

from analyser.flows import (
    A_ACCEPTED,
    A_DISOWNED,
    A_OPENED,
    A_SENT,
    B_ACCEPTED,
    B_DISOWNED,
    B_OPENED,
    B_SENT,
    CLOSED,
    CONVERSATION_ENTRY,
    KEY_TAIL,
    KIND_ANSWERED,
    KIND_ESTABLISHED,
    AddressPair,
    CaptureConversations,
    Conversation,
    ConversationEntry,
    ConversationKey,
    Endpoint,
    Evidence,
    FlowGroup,
    FlowTable,
    ListenerOracle,
    Protocol,
    flow_kind,
    pack_flows,
    protocol_named,
    unpacked_entry,
)

# Compiled, constants: a class's member or a method would be looked up each time.
_TCP: Final = Protocol.TCP
_unpack_entry: Final = CONVERSATION_ENTRY.unpack

# --- What a conversation's handshake bits say ------------------------------------------------

# What a connection that never got going can amount to: Linux sends a SYN and 6 retries
# (net.ipv4.tcp_syn_retries), each perhaps answered by a RST. More packets mean data flowed.
MAX_UNESTABLISHED_PACKETS = 14
_OPENED: Final = A_OPENED | B_OPENED
_ACCEPTED: Final = A_ACCEPTED | B_ACCEPTED


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
    if protocol is not _TCP or not roles & (_OPENED | _ACCEPTED) or roles & CLOSED:
        return True
    a_opened = roles & (A_OPENED | B_ACCEPTED)  # a sent the SYN, or b the SYN+ACK
    b_opened = roles & (B_OPENED | A_ACCEPTED)
    if (a_opened and roles & A_DISOWNED) or (b_opened and roles & B_DISOWNED):
        return False
    return bool(roles & _ACCEPTED) or packets > MAX_UNESTABLISHED_PACKETS


def _opener(roles: int) -> int:
    """Which end opened the connection by its handshake bits: ``_A``, ``_B`` or ``_NEITHER``."""
    a_opened, b_opened = bool(roles & A_OPENED), bool(roles & B_OPENED)
    if a_opened != b_opened:
        return _A if a_opened else _B
    a_accepted, b_accepted = bool(roles & A_ACCEPTED), bool(roles & B_ACCEPTED)
    if a_accepted != b_accepted:
        return _B if a_accepted else _A
    return _NEITHER


def _only_sender(roles: int) -> int:
    """Which end alone sent packets, by the handshake bits: ``_A``, ``_B`` or ``_NEITHER``."""
    sent = roles & (A_SENT | B_SENT)
    return _NEITHER if sent == A_SENT | B_SENT else _A if sent == A_SENT else _B


# Ends of a conversation by name.
_NEITHER: Final = 0
_A: Final = 1
_B: Final = 2
_SWAPPED: Final = (_NEITHER, _B, _A)  # an end's name once a and b trade places
# By the bits, worked out once (the bits of a conversation are below 512): who opened it, who
# alone sent packets, and whether a TCP connection got going whatever its number of packets.
_OPENERS: Final = [_opener(roles) for roles in range(512)]
_ONLY_SENDERS: Final = [_only_sender(roles) for roles in range(512)]
_ESTABLISHED_ANYWAY: Final = [
    _established(Protocol.TCP, roles, 0) and _established(Protocol.TCP, roles, 1 << 62)
    for roles in range(512)
]
_PROTOCOLS: Final = {number: protocol_named(number) for number in (6, 17, 132)}


# A conversation as ``ConversationTable`` reads it, before anything is made of it: protocol, a's
# address and port, b's, first and last seen, packets, bytes, captures, which end opened it
# (``_A``, ``_B`` or ``_NEITHER``), whether it got going, and which end alone sent packets. ``a``
# is the end whose text comes first (see :class:`Conversation`).
ConversationRow = tuple[
    Protocol, str, int, str, int, float, float, int, int, frozenset[str], int, bool, int
]


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


# --- Conversations merged over capture files -------------------------------------------------


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

    def __init__(self, vantage: str = "") -> None:
        # Empty until a file's entry is folded in (compiled, unpickling makes one without
        # arguments, then sets its fields).
        self.first_seen = math.inf
        self.last_seen = -math.inf
        self.roles = 0  # CaptureConversations' handshake bits
        self.captures: frozenset[str] = frozenset()  # shared between conversations
        # Packets and bytes of the first vantage point (one tcpdump ring) that saw it, and of
        # any other: [packets, bytes] by vantage point.
        self.vantage = vantage
        self.packets = 0
        self.bytes = 0
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
        number = unpacked_entry(entry)[5]
        aggregate = _Aggregate(self._vantages[number])
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
        alone: dict[int, frozenset[str]] = {}
        pairs, tail = self._pairs, KEY_TAIL
        return sorted(
            _conversation(self._row(key, found, pairs[key[:-tail]], alone))
            for key, found in self._merged.items()
        )

    def oriented(self, known_listener: ListenerOracle | None) -> FlowTable:
        """Every conversation oriented (as :func:`orient` does), each leaving the table as it is
        read: the table is empty at the end, and a day's millions of conversations never exist
        both as entries and as flows. No :class:`Conversation` or :class:`Endpoint` is made for
        a connection here, only its place in a :class:`FlowGroup`."""
        return FlowTable.sorted(self.flow_groups(known_listener))

    def flow_groups(self, known_listener: ListenerOracle | None) -> list[FlowGroup]:
        """:meth:`oriented`, its groups not yet put in order (``FlowTable.sorted``)."""
        groups = _Groups(known_listener, pairs_together=True)
        alone: dict[int, frozenset[str]] = {}  # a file's number → the set of its name alone
        merged, pairs, tail = self._merged, self._pairs, KEY_TAIL
        keys = sorted(merged, reverse=True)  # taken from the end: each goes once it is used
        # The keys of a pair of addresses come one after another: its texts are looked up once.
        pair = b""
        texts: AddressPair = ("", "", 0.0)
        while keys:
            key = keys.pop()
            if len(key) != len(pair) + tail or not key.startswith(pair):
                pair = key[:-tail]
                texts = pairs[pair]
            groups.add(self._row(key, merged.pop(key), texts, alone))
        return groups.packed()

    def _row(
        self,
        key: ConversationKey,
        found: ConversationEntry | _Aggregate,
        texts: AddressPair,
        alone: dict[int, frozenset[str]],
    ) -> ConversationRow:
        """The row of the conversation with ``key`` and ``found`` in the table, ``texts`` its
        pair of addresses'; ``alone`` keeps the set of each file's name alone, made once."""
        first_seen: float
        last_seen: float
        packets: int
        size: int
        roles: int
        if isinstance(found, bytes):
            first_seen, last_seen, size, packets, roles, number = _unpack_entry(found)
            captures = alone.get(number)
            if captures is None:
                captures = alone[number] = self._with(frozenset(), self._captures_by_number[number])
        else:
            first_seen, last_seen, roles = found.first_seen, found.last_seen, found.roles
            packets, size = found.largest()
            captures = found.captures
        ip_a, ip_b, _ = texts
        end = len(key)  # a's port, b's port and the protocol number (see ConversationKey)
        port_a = key[end - 5] << 8 | key[end - 4]
        port_b = key[end - 3] << 8 | key[end - 2]
        protocol = _PROTOCOLS[key[end - 1]]
        established = (protocol is not _TCP or _ESTABLISHED_ANYWAY[roles]) or _established(
            protocol, roles, packets
        )
        # The key orders its ends by their addresses' bytes; a conversation by their text.
        opener, sender = _OPENERS[roles], _ONLY_SENDERS[roles]
        if ip_b < ip_a or (ip_a == ip_b and port_b < port_a):
            return (
                protocol, ip_b, port_b, ip_a, port_a, first_seen, last_seen, packets, size,
                captures, _SWAPPED[opener], established, _SWAPPED[sender],
            )  # fmt: skip
        return (
            protocol, ip_a, port_a, ip_b, port_b, first_seen, last_seen, packets, size, captures,
            opener, established, sender,
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
    groups = _Groups(known_listener, pairs_together=False)
    for conversation in conversations:
        groups.add(_row(conversation))
    return FlowTable.sorted(groups.packed())


# A flow's evidence as FlowGroup.kinds keeps it, before its flags.
_HANDSHAKE: Final = flow_kind(Evidence.HANDSHAKE, False, False)
_KNOWN_LISTENER: Final = flow_kind(Evidence.KNOWN_LISTENER, False, False)
_ONE_WAY: Final = flow_kind(Evidence.ONE_WAY, False, False)
_HEURISTIC: Final = flow_kind(Evidence.HEURISTIC, False, False)

# A group's protocol, client address, server address and port, and captures, as _Groups
# gathers it.
_GroupKey = tuple[Protocol, str, str, int, frozenset[str]]


class _Groups:
    """Conversations oriented one by one (:func:`orient`) into flow groups, not yet in order.

    A connection of a day becomes no object here but its values in its group's flat list
    (:func:`pack_flows`). With ``pairs_together`` (the rows of a pair of addresses come one after
    another, as a table's do), a pair's groups are packed as soon as the next pair's rows begin,
    so that only one pair's flows at a time wait as Python objects.
    """

    def __init__(self, known_listener: ListenerOracle | None, *, pairs_together: bool) -> None:
        self.known_listener = known_listener
        self.pairs_together = pairs_together
        self.groups: list[FlowGroup] = []
        self.gathering: dict[_GroupKey, list[Any]] = {}  # the groups not yet packed
        self.pair_a = ""
        self.pair_b = ""
        # The last flow's group and its key: a pair's flows mostly go to the one group of
        # the port called, one after another, and comparing is cheaper than hashing a key.
        self.last: list[Any] = []
        self.last_key: _GroupKey = (Protocol.TCP, "", "", -1, frozenset())

    def add(self, row: ConversationRow) -> None:
        (
            protocol, ip_a, port_a, ip_b, port_b, first_seen, last_seen, packets, size, captures,
            opener, established, sender,
        ) = row  # fmt: skip
        if self.pairs_together and (ip_a != self.pair_a or ip_b != self.pair_b):
            self._pack()
            self.pair_a = ip_a
            self.pair_b = ip_b
        if opener:
            client_is_a = opener == _A
            kind = _HANDSHAKE
        else:
            listens_a = listens_b = False
            known_listener = self.known_listener
            if known_listener is not None:
                listens_a = known_listener(Endpoint(ip_a, port_a), protocol, first_seen)
                listens_b = known_listener(Endpoint(ip_b, port_b), protocol, first_seen)
            if listens_a != listens_b:
                client_is_a = listens_b
                kind = _KNOWN_LISTENER
            elif sender:
                client_is_a = sender == _A
                kind = _ONE_WAY
            else:
                client_is_a = not _heuristic_server_is_a(port_a, port_b)
                kind = _HEURISTIC
        if established:
            kind |= KIND_ESTABLISHED
        if not sender:
            kind |= KIND_ANSWERED
        if client_is_a:
            client_ip, server_ip, server_port, client_port = ip_a, ip_b, port_b, port_a
        else:
            client_ip, server_ip, server_port, client_port = ip_b, ip_a, port_a, port_b
        last_protocol, last_client, last_server, last_port, last_captures = self.last_key
        if (
            server_port == last_port
            and protocol is last_protocol
            and captures is last_captures
            and client_ip == last_client
            and server_ip == last_server
        ):
            flows = self.last
        else:
            key = (protocol, client_ip, server_ip, server_port, captures)
            found = self.gathering.get(key)
            if found is None:
                found = self.gathering[key] = []
            flows = self.last = found
            self.last_key = key
        flows += (first_seen, last_seen, packets, size, client_port, kind)  # a FlowRow

    def _pack(self) -> None:
        """The groups gathered so far, packed into :class:`FlowGroup` s."""
        groups = self.groups
        for (
            protocol,
            client_ip,
            server_ip,
            server_port,
            captures,
        ), flows in self.gathering.items():
            server = Endpoint(server_ip, server_port)
            groups.append(FlowGroup(protocol, client_ip, server, captures, pack_flows(flows)))
        self.gathering.clear()
        self.last = []
        self.last_key = (Protocol.TCP, "", "", -1, frozenset())

    def packed(self) -> list[FlowGroup]:
        """Every group, packed (this gatherer is done)."""
        self._pack()
        return self.groups
