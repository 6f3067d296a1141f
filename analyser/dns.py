"""DNS: captured answers → which names an IP address had, and when, as told to which client at
which vantage point; DNS over TCP split across segments → whole messages (:class:`TcpDnsStreams`).

A response for ``shop.example`` that says ``shop.example CNAME edge.cdn.example`` and
``edge.cdn.example A 192.0.2.7`` gives 192.0.2.7 both names: the one the client asked for and
every name on the CNAME chain that leads to it. The name asked for (the question, when the chain
leads from it to the address) is kept apart too: a policy by name (Cilium's ``toFQDNs``) must
name what the application looks up, not where the chain ends. So is every name a client looked
up (the questions of its answered lookups): what a DNS rule that lists names must allow.

Names are bound to where they were captured: a capture comes from one pod, which controls every
byte of it, so an answer in it may name only that pod's own flows. :class:`DnsNames` gives a flow
the names its client was told for its server's address (the answer went to the flow's client
address) by answers captured at a vantage point that saw the flow. Pure: decoding is
``packets.decode_dns``'s job, no I/O here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass

from analyser.flows import Flow
from analyser.packets import DnsFault, DnsResponse, decode_dns

# Seconds by which clocks of two captures (two nodes) may disagree.
CLOCK_SKEW = 1.0
# Names a vantage point's table keeps, at most: an address's name as told to one client, or a
# name a client looked up (~1.5 KB each, with their times and containers). Past this, the names
# of later answers are left out and counted (``DnsTable.left_out``, and per file in
# ``reading.Traffic.dns_left_out``): a pod seldom looks up so many distinct names in one capture
# window, and one that forges answers in its own capture would otherwise grow the table without
# bound (a 1 GiB file holds ~9 million).
MAX_NAMES = 100_000


@dataclass(frozen=True, order=True, slots=True)
class DnsName:
    """One name seen for one address, with the first and last answer that said so."""

    ip: str
    name: str
    first_seen: float
    last_seen: float


def _chain_names(owner: str, aliases: tuple[tuple[str, str], ...]) -> set[str]:
    """``owner`` and every name whose CNAME chain leads to it."""
    pointing_at: dict[str, list[str]] = {}
    for alias, target in aliases:
        pointing_at.setdefault(target, []).append(alias)
    names = {owner}
    pending = [owner]
    while pending:
        for alias in pointing_at.get(pending.pop(), ()):
            if alias not in names:
                names.add(alias)
                pending.append(alias)
    return names


# name → [first answer, last answer]
_Times = dict[str, list[float]]


class DnsTable:
    """What the DNS answers captured at one vantage point say: IP address (compressed text) →
    the clients (the addresses answers were sent to) → names, each with the times of the first
    and last answer; the same for the names asked for (:meth:`names_for` with ``asked``); and
    client → every name it looked up (:meth:`lookups`). At most ``max_names`` names
    (:data:`MAX_NAMES`): past them, new names are left out and counted in :attr:`left_out`."""

    def __init__(self, max_names: int | None = None) -> None:
        self._seen: dict[str, dict[str, _Times]] = {}  # address → client → names
        self._asked: dict[str, dict[str, _Times]] = {}  # address → client → questions
        self._lookups: dict[str, _Times] = {}  # client → questions of its answered lookups
        self.max_names = MAX_NAMES if max_names is None else max_names
        self._kept = 0  # names in _seen and _lookups (_asked's are some of _seen's)
        self.left_out = 0  # names :meth:`add` left out, the table full (merges return theirs)

    def add(
        self, response: DnsResponse, at: float, *, client: str, until: float | None = None
    ) -> None:
        """Record the addresses of one response sent to ``client``, captured at ``at`` (UTC epoch
        seconds) and, when given, again up to ``until``."""
        last = at if until is None else until
        question = response.question
        if question and not self._kept_name(self._lookups, client, question, at, last):
            self.left_out += 1
        for owner, ip in response.addresses:
            chain = _chain_names(owner, response.aliases)
            # In order: which names a full table keeps must not depend on a set's hashing.
            names = [(name, at, last) for name in sorted(chain)]
            self.left_out += self._left_out(ip, client, names)
            if question in chain and question in self._seen.get(ip, {}).get(client, ()):
                asked = self._asked.setdefault(ip, {}).setdefault(client, {})
                self._note(asked, question, at, last)

    def _left_out(self, ip: str, client: str, names: list[tuple[str, float, float]]) -> int:
        """Note ``names`` (with their first and last times) for ``ip`` as told to ``client``;
        how many were left out."""
        clients = self._seen.get(ip)
        if clients is None:
            if self._kept >= self.max_names:
                return len(names)
            clients = self._seen[ip] = {}  # not full: its first name is kept
        return sum(
            not self._kept_name(clients, client, name, first, last) for name, first, last in names
        )

    def _kept_name(
        self, names_of: dict[str, _Times], owner: str, name: str, first: float, last: float
    ) -> bool:
        """Note ``name`` among the names of ``owner`` (a client, in ``names_of``); False when it
        is new and the table holds ``max_names`` already."""
        names = names_of.get(owner)
        if names is not None and name in names:
            self._note(names, name, first, last)
            return True
        if self._kept >= self.max_names:
            return False
        self._kept += 1
        names_of.setdefault(owner, {})[name] = [first, last]
        return True

    def add_payload(
        self,
        payload: bytes,
        *,
        over_tcp: bool,
        at: float,
        client: str | None,
        until: float | None = None,
    ) -> DnsFault | None:
        """Decode a port-53 payload and record its answers as sent to ``client`` (None: not from
        port 53, so it names nothing; only its faults count); the fault if it could not be read,
        or ``BAD_NAME`` when records with names that are not valid DNS names were left out (the
        rest is recorded)."""
        responses = decode_dns(payload, over_tcp=over_tcp)
        if isinstance(responses, DnsFault):
            return responses
        for response in responses:
            if client is not None:
                self.add(response, at, client=client, until=until)
        return DnsFault.BAD_NAME if any(r.bad_names for r in responses) else None

    @staticmethod
    def _note(names: _Times, name: str, first: float, last: float) -> None:
        seen = names.get(name)
        if seen is None:
            names[name] = [first, last]
        else:
            seen[0] = min(seen[0], first)
            seen[1] = max(seen[1], last)

    def merge(self, other: DnsTable) -> int:
        """Fold another table into this one (the result does not depend on the order while the
        names fit in ``max_names``; past it, the tables folded in last lose theirs); the number
        of names left out."""
        left_out = 0
        for ip, their_clients in other._seen.items():
            for client, their_names in their_clients.items():
                times = [(name, first, last) for name, (first, last) in their_names.items()]
                left_out += self._left_out(ip, client, times)
        for ip, their_clients in other._asked.items():
            for client, their_names in their_clients.items():
                kept = self._seen.get(ip, {}).get(client, {})
                for name, (first, last) in their_names.items():
                    if name in kept:
                        asked = self._asked.setdefault(ip, {}).setdefault(client, {})
                        self._note(asked, name, first, last)
        for client, their_names in other._lookups.items():
            for name, (first, last) in their_names.items():
                left_out += not self._kept_name(self._lookups, client, name, first, last)
        return left_out

    def lookups(self, *, asked_by: Callable[[str], bool]) -> tuple[str, ...]:
        """Every name looked up in an answered lookup by a client address ``asked_by`` accepts,
        sorted."""
        return tuple(
            sorted({name for c, names in self._lookups.items() if asked_by(c) for name in names})
        )

    def names_for(
        self,
        ip: str,
        at: float | None = None,
        *,
        asked_by: Callable[[str], bool] | None = None,
        asked: bool = False,
    ) -> tuple[str, ...]:
        """The names seen for ``ip`` (compressed text), sorted; with ``asked_by``, only in
        answers sent to a client address it accepts; with ``asked``, only the names asked for
        (the question of an answer whose CNAME chain leads from it to ``ip``).

        With ``at``, only names from answers captured at or before that time (give or take
        ``CLOCK_SKEW`` seconds, as the answer and the flow may come from captures on different
        nodes): an address used before anyone looked it up does not take a later answer's name.
        """
        latest = None if at is None else at + CLOCK_SKEW
        table = self._asked if asked else self._seen
        return tuple(
            sorted(
                {
                    name
                    for client, names in table.get(ip, {}).items()
                    if asked_by is None or asked_by(client)
                    for name, (first, _) in names.items()
                    if latest is None or first <= latest
                }
            )
        )

    def __iter__(self) -> Iterator[DnsName]:
        """Every (address, name) pair, over all clients, sorted by address text then name."""
        for ip in sorted(self._seen):
            merged: _Times = {}
            for names in self._seen[ip].values():
                for name, (first, last) in names.items():
                    self._note(merged, name, first, last)
            for name, (first, last) in sorted(merged.items()):
                yield DnsName(ip, name, first, last)

    def __len__(self) -> int:
        """The number of addresses with at least one name."""
        return len(self._seen)


class DnsNames:
    """The :class:`DnsTable` of every vantage point, and where each capture file was taken: which
    names a flow's client was told for the flow's server."""

    def __init__(self) -> None:
        self._tables: dict[str, DnsTable] = {}  # vantage → its answers
        self._vantage_of: dict[str, str] = {}  # capture file → vantage

    def add(self, capture: str, vantage: str, table: DnsTable) -> int:
        """The answers one capture file (bundle-relative path) holds, captured at ``vantage``
        (a pod, a node, or for a capture tied to none, its tcpdump ring); the number of names
        left out, the vantage point's table full (:data:`MAX_NAMES`)."""
        self._vantage_of[capture] = vantage
        return self._tables.setdefault(vantage, DnsTable()).merge(table)

    @staticmethod
    def union(labelled: Iterable[tuple[str, DnsNames]]) -> DnsNames:
        """Several bundles' names as one (``analyser.windows``): each capture file and vantage
        point named with its bundle's label in front (``LABEL/captures/...``), so no bundle's
        answers name another bundle's flows."""
        merged = DnsNames()
        for label, names in labelled:
            for capture, vantage in names._vantage_of.items():
                merged._vantage_of[f"{label}/{capture}"] = f"{label}/{vantage}"
            for vantage, table in names._tables.items():
                merged._tables.setdefault(f"{label}/{vantage}", DnsTable()).merge(table)
        return merged

    @property
    def vantages(self) -> tuple[str, ...]:
        """The vantage points capture files were added for, sorted."""
        return tuple(sorted(self._tables))

    def seen_at(self, vantage: str) -> DnsTable:
        """The answers captured at ``vantage`` (empty when none were)."""
        return self._tables.get(vantage) or DnsTable()

    def _vantages(self, flow: Flow) -> set[str]:
        return {self._vantage_of[c] for c in flow.captures if c in self._vantage_of}

    def names_for_flow(
        self, flow: Flow, *, asked_by: Callable[[str], bool] | None = None, asked: bool = False
    ) -> tuple[str, ...]:
        """The names for ``flow``'s server address in answers that a vantage point whose captures
        saw the flow captured up to its first packet (:meth:`DnsTable.names_for`; with
        ``asked``, the names asked for only), sent to the flow's client: its address, or with
        ``asked_by`` any address it accepts (the client pod's other addresses). What the client
        itself asked for: one pod's capture cannot name another pod's peers."""
        if asked_by is None:
            asked_by = flow.client.ip.__eq__
        names = {
            name
            for vantage in self._vantages(flow)
            for name in self._tables[vantage].names_for(
                flow.server.ip, flow.first_seen, asked_by=asked_by, asked=asked
            )
        }
        return tuple(sorted(names))

    def lookups_for_flow(
        self, flow: Flow, *, asked_by: Callable[[str], bool] | None = None
    ) -> tuple[str, ...]:
        """Every name the client of ``flow`` (a DNS query's flow) looked up in answers captured
        at a vantage point whose captures saw the flow, sent to the flow's client (or any
        address ``asked_by`` accepts), sorted: vantage-bound like :meth:`names_for_flow`."""
        if asked_by is None:
            asked_by = flow.client.ip.__eq__
        names = {
            name
            for vantage in self._vantages(flow)
            for name in self._tables[vantage].lookups(asked_by=asked_by)
        }
        return tuple(sorted(names))


# A DNS message over TCP is at most 65,535 bytes after its 2-byte length prefix.
_LARGEST_TCP_MESSAGE = 2 + 0xFFFF
_TCP_SYN = 0x02
_SEQ_MODULO = 1 << 32


def _whole_messages(data: bytearray) -> int:
    """How many bytes at the start of ``data`` are whole length-prefixed DNS messages."""
    position = 0
    while position + 2 <= len(data):
        end = position + 2 + (data[position] << 8 | data[position + 1])
        if end > len(data):
            break
        position = end
    return position


class _Stream:
    """One direction of one TCP connection: the bytes of a message not yet whole, from its
    length prefix on, and the segments that arrived ahead of them."""

    __slots__ = ("ahead", "ahead_bytes", "data", "expected")

    def __init__(self, expected: int) -> None:
        self.expected = expected  # sequence number of the next byte wanted
        self.data = bytearray()
        self.ahead: dict[int, bytes] = {}  # sequence number → payload, beyond ``expected``
        self.ahead_bytes = 0


class TcpDnsStreams:
    """Port-53 TCP segments → whole DNS messages, per direction of each connection.

    Segments are put in order by sequence number (bytes already had are dropped, segments that
    arrive early are held) and whole length-prefixed messages come out as soon as they are
    complete: a long answer split over two or three segments is read like one in a single
    segment. A stream starts at its SYN, or else at its first segment with data (a capture that
    begins mid-connection). Memory stays flat: a stream holds at most ``STREAM_BYTES`` bytes and
    ``STREAM_SEGMENTS`` early segments, and at most ``STREAMS`` streams are kept (the oldest is
    given up first). What never completes is counted in ``faults``: ``truncated`` for a message
    cut short (by the snap length, as a segment with fewer bytes captured than sent ends its
    stream's reassembly, or by the end of the capture), ``gap`` for data held after a hole that
    was never filled (a segment the capture missed).
    """

    STREAMS = 1024
    STREAM_BYTES = 2 * _LARGEST_TCP_MESSAGE
    STREAM_SEGMENTS = 64

    def __init__(self) -> None:
        self.faults: Counter[str] = Counter()
        self._streams: dict[Hashable, _Stream] = {}

    def add(self, key: Hashable, seq: int, flags: int, payload: bytes, cut: bool) -> bytes:
        """One segment of the direction ``key`` (``seq``: its sequence number, ``flags``: its TCP
        flags, ``cut``: fewer bytes captured than sent) → the whole messages it completes, with
        their length prefixes (empty when none)."""
        if flags & _TCP_SYN:
            self._close(key)
            self._open(key, (seq + 1) % _SEQ_MODULO)
            return b""
        if not payload:
            return b""
        if cut:
            # The rest of the segment was not captured: its message can never be whole.
            self._close(key)
            self.faults[DnsFault.TRUNCATED.value] += 1
            return b""
        stream = self._streams.get(key) or self._open(key, seq)
        offset = (seq - stream.expected) % _SEQ_MODULO
        if offset >= _SEQ_MODULO // 2:  # starts before ``expected``: sent again
            behind = _SEQ_MODULO - offset
            if behind >= len(payload):
                return b""
            payload, offset = payload[behind:], 0
        if offset:
            return self._hold(key, stream, seq, payload)
        stream.data += payload
        stream.expected = (stream.expected + len(payload)) % _SEQ_MODULO
        while stream.expected in stream.ahead:
            early = stream.ahead.pop(stream.expected)
            stream.ahead_bytes -= len(early)
            stream.data += early
            stream.expected = (stream.expected + len(early)) % _SEQ_MODULO
        # What is left is part of one message: less than _LARGEST_TCP_MESSAGE bytes.
        whole = _whole_messages(stream.data)
        messages = bytes(stream.data[:whole])
        del stream.data[:whole]
        return messages

    def _hold(self, key: Hashable, stream: _Stream, seq: int, payload: bytes) -> bytes:
        """Keep a segment that arrived ahead of the bytes before it, within the limits."""
        if seq in stream.ahead:
            return b""
        if (
            len(stream.ahead) >= self.STREAM_SEGMENTS
            or len(stream.data) + stream.ahead_bytes + len(payload) > self.STREAM_BYTES
        ):
            # Too much waiting for a hole to be filled: give the stream up.
            del self._streams[key]
            self.faults[DnsFault.GAP.value] += 1
            return b""
        stream.ahead[seq] = payload
        stream.ahead_bytes += len(payload)
        return b""

    def _open(self, key: Hashable, expected: int) -> _Stream:
        if len(self._streams) >= self.STREAMS:
            self._close(next(iter(self._streams)))
        stream = self._streams[key] = _Stream(expected)
        return stream

    def _close(self, key: Hashable) -> None:
        """Give a stream up, counting what it still held."""
        stream = self._streams.pop(key, None)
        if stream is None:
            return
        if stream.ahead:
            self.faults[DnsFault.GAP.value] += 1
        elif stream.data:
            self.faults[DnsFault.TRUNCATED.value] += 1

    def close(self) -> None:
        """The end of the capture: give up every stream still waiting for bytes."""
        for key in list(self._streams):
            self._close(key)
