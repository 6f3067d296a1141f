"""flows: conversations merged over captures without double counting, and oriented by handshake,
then by a known listener, then by port heuristics."""

from __future__ import annotations

import math
import random
import socket
import struct
import tracemalloc
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

from analyser.flows import (
    ROLE_ACCEPTOR,
    ROLE_CLOSER,
    ROLE_DISOWNER,
    ROLE_OPENER,
    CaptureConversations,
    Conversation,
    Endpoint,
    Evidence,
    Flow,
    FlowGroup,
    FlowTable,
    Protocol,
    handshake_role,
)
from analyser.orienting import ConversationTable, orient
from analyser.packets import Counts, Tally, fold_tally
from analyser.spilling import ColumnStore

CLIENT = Endpoint("10.1.0.5", 40002)
SERVER = Endpoint("10.1.0.9", 8080)


class _Directed(NamedTuple):
    """What one file saw from ``source`` to ``destination``: one key of its tally."""

    protocol: Protocol
    source: Endpoint
    destination: Endpoint
    counts: Counts


def _directed(
    source: Endpoint,
    destination: Endpoint,
    *,
    packets: int = 3,
    size: int = 300,
    roles: int = 0,
    first: float = 10.0,
    last: float = 11.0,
    protocol: Protocol = Protocol.TCP,
) -> _Directed:
    counts = Counts(first, size, roles)
    counts.last, counts.packets = last, packets
    return _Directed(protocol, source, destination, counts)


_NUMBERS = {Protocol.TCP: 6, Protocol.UDP: 17, Protocol.SCTP: 132}


def _raw(endpoint: Endpoint) -> bytes:
    return socket.inet_pton(socket.AF_INET6 if ":" in endpoint.ip else socket.AF_INET, endpoint.ip)


def _seen(capture: str, vantage: str, traffic: list[_Directed]) -> CaptureConversations:
    """What a file that saw ``traffic`` gives, folded as reading folds it."""
    tally: Tally = {}
    for protocol, source, destination, counts in traffic:
        ports = struct.pack("!HH", source.port, destination.port)
        tally[(_NUMBERS[protocol], _raw(source) + _raw(destination) + ports)] = counts
    number = _FILE_NUMBERS.setdefault(capture, len(_FILE_NUMBERS))
    folded = fold_tally(tally, number)
    return CaptureConversations(capture, vantage, number, folded.entries, folded.pairs)


# Each file's number among the files read together, as reading gives them.
_FILE_NUMBERS: dict[str, int] = {}


def _add(table: ConversationTable, capture: str, vantage: str, traffic: list[_Directed]) -> None:
    table.add(_seen(capture, vantage, traffic))


def _conversation(
    a: Endpoint,
    b: Endpoint,
    *,
    protocol: Protocol = Protocol.TCP,
    opened_by: Endpoint | None = None,
) -> Conversation:
    low, high = sorted((a, b))
    return Conversation(protocol, low, high, 1.0, 2.0, 4, 400, frozenset({"x.pcap"}), opened_by)


def test_handshake_roles_of_tcp_and_sctp() -> None:
    assert handshake_role(6, 0x02) == ROLE_OPENER
    assert handshake_role(6, 0x12) == ROLE_ACCEPTOR
    assert handshake_role(6, 0x10) == 0
    assert handshake_role(6, 0x11) == ROLE_CLOSER  # FIN+ACK
    assert handshake_role(6, 0x14) == 0  # RST+ACK: refusing a SYN, or aborting its own connection
    assert handshake_role(6, 0x04) == ROLE_DISOWNER  # RST alone: "not my connection"
    assert handshake_role(132, 1) == ROLE_OPENER
    assert handshake_role(132, 2) == ROLE_ACCEPTOR
    assert handshake_role(17, 2) == 0


def test_both_ends_captures_make_one_conversation_counted_once() -> None:
    table = ConversationTable()
    # The client's capture and the server's capture saw the same 5 packets each way.
    for capture in ("ns/client/capture.pcap", "ns/server/capture.pcap"):
        _add(
            table,
            capture,
            capture,
            [
                _directed(CLIENT, SERVER, packets=5, size=500, roles=ROLE_OPENER, first=10.0),
                _directed(SERVER, CLIENT, packets=4, size=4000, roles=ROLE_ACCEPTOR, last=12.0),
            ],
        )
    (conversation,) = table.conversations()
    assert conversation.packets == 9
    assert conversation.bytes == 4500
    assert conversation.captures == {"ns/client/capture.pcap", "ns/server/capture.pcap"}
    assert (conversation.first_seen, conversation.last_seen) == (10.0, 12.0)
    assert conversation.opened_by == CLIENT


def test_files_of_one_ring_are_summed() -> None:
    table = ConversationTable()
    _add(table, "p/capture.pcap0", "p/capture.pcap", [_directed(CLIENT, SERVER, packets=2)])
    _add(table, "p/capture.pcap1", "p/capture.pcap", [_directed(CLIENT, SERVER, packets=3)])
    _add(table, "q/capture.pcap", "q/capture.pcap", [_directed(SERVER, CLIENT, packets=4)])
    (conversation,) = table.conversations()
    assert conversation.packets == 5  # the ring saw 2 + 3, more than the other capture's 4


def test_adding_captures_is_order_independent() -> None:
    seen = [
        _seen(
            f"c{index}.pcap",
            "ring",
            [_directed(CLIENT, SERVER, packets=index + 1, first=10.0 - index, last=11.0 + index)],
        )
        for index in range(3)
    ]
    forward, backward = ConversationTable(), ConversationTable()
    for part in seen:
        forward.add(part)
    for part in reversed(seen):
        backward.add(part)
    assert forward.conversations() == backward.conversations()
    (conversation,) = forward.conversations()
    assert (conversation.packets, conversation.first_seen, conversation.last_seen) == (6, 8.0, 13.0)


class _Holding:
    """A vantage point that held ``ip`` from ``since`` on."""

    def __init__(self, ip: str, since: float) -> None:
        self.ip, self.since = ip, since

    def holds(self, ip: str, first: float, last: float) -> bool:
        return ip == self.ip and last >= self.since

    def steady(self, ip: str, at: float) -> bool:
        return ip != self.ip or at >= self.since


def test_conversations_without_an_end_of_the_vantage_point_are_dropped() -> None:
    outside = Endpoint("198.51.100.1", 45000)
    seen = _seen(
        "p/capture.pcap",
        "p/capture.pcap",
        [
            _directed(CLIENT, SERVER),  # the vantage point is the client
            _directed(SERVER, outside),  # neither end is
            _directed(outside, CLIENT, first=1.0, last=2.0),  # before it held its address
        ],
    )
    assert seen.drop_foreign(_Holding(CLIENT.ip, since=5.0)) == 2
    table = ConversationTable()
    table.add(seen)
    assert [(c.a, c.b) for c in table.conversations()] == [(CLIENT, SERVER)]


def test_syn_ack_alone_names_the_client() -> None:
    table = ConversationTable()
    _add(table, "s.pcap", "s.pcap", [_directed(SERVER, CLIENT, roles=ROLE_ACCEPTOR)])
    assert table.conversations()[0].opened_by == CLIENT


def test_service_case_keeps_both_five_tuples() -> None:
    cluster_ip = Endpoint("10.96.0.20", 80)
    table = ConversationTable()
    _add(table, "c.pcap", "c.pcap", [_directed(CLIENT, cluster_ip, roles=ROLE_OPENER)])
    _add(table, "s.pcap", "s.pcap", [_directed(CLIENT, SERVER, roles=ROLE_OPENER)])
    flows = orient(table.conversations(), None)
    assert [(flow.client, flow.server) for flow in flows] == [
        (CLIENT, SERVER),
        (CLIENT, cluster_ip),
    ]


def test_orientation_by_handshake_beats_the_oracle_and_ports() -> None:
    # The "client" uses port 80 and the "server" an ephemeral port: only the SYN tells the truth.
    odd_client, odd_server = Endpoint("10.0.0.1", 80), Endpoint("10.0.0.2", 50000)
    (flow,) = orient([_conversation(odd_client, odd_server, opened_by=odd_client)], lambda *_: True)
    assert (flow.client, flow.server, flow.evidence) == (odd_client, odd_server, Evidence.HANDSHAKE)


def test_orientation_by_known_listener() -> None:
    # Neither port is well known; the snapshot says 10.1.0.9 listens on 31000/UDP.
    a, b = Endpoint("10.1.0.5", 30000), Endpoint("10.1.0.9", 31000)
    asked: list[tuple[Endpoint, Protocol, float]] = []

    def listens(endpoint: Endpoint, protocol: Protocol, at: float) -> bool:
        asked.append((endpoint, protocol, at))
        return endpoint == b

    (flow,) = orient([_conversation(a, b, protocol=Protocol.UDP)], listens)
    assert (flow.client, flow.server, flow.evidence) == (a, b, Evidence.KNOWN_LISTENER)
    assert (b, Protocol.UDP, 1.0) in asked


def test_an_oracle_that_says_yes_to_both_falls_back_to_heuristics() -> None:
    a, b = Endpoint("10.0.0.1", 5432), Endpoint("10.0.0.2", 41000)
    (flow,) = orient([_conversation(a, b)], lambda *_: True)
    assert (flow.server, flow.evidence) == (a, Evidence.HEURISTIC)


def test_heuristics() -> None:
    cases = [
        # (one end, other end, expected server)
        (Endpoint("10.0.0.1", 53), Endpoint("10.0.0.2", 40000), Endpoint("10.0.0.1", 53)),
        (Endpoint("10.0.0.1", 45000), Endpoint("10.0.0.2", 6379), Endpoint("10.0.0.2", 6379)),
        (Endpoint("10.0.0.1", 12000), Endpoint("10.0.0.2", 50000), Endpoint("10.0.0.1", 12000)),
        (Endpoint("10.0.0.1", 20000), Endpoint("10.0.0.2", 15000), Endpoint("10.0.0.2", 15000)),
        (Endpoint("10.0.0.1", 443), Endpoint("10.0.0.2", 8080), Endpoint("10.0.0.1", 443)),
        (Endpoint("10.0.0.2", 123), Endpoint("10.0.0.1", 123), Endpoint("10.0.0.1", 123)),
    ]
    for one, other, server in cases:
        (flow,) = orient([_conversation(one, other, protocol=Protocol.UDP)], None)
        assert (flow.server, flow.evidence) == (server, Evidence.HEURISTIC), (one, other)
        assert flow.client == (other if server == one else one)


def test_flows_are_sorted_and_keep_the_counts() -> None:
    conversations = [
        _conversation(Endpoint("10.0.0.9", 40000), Endpoint("10.0.0.1", 80)),
        _conversation(Endpoint("10.0.0.2", 40000), Endpoint("10.0.0.1", 53), protocol=Protocol.UDP),
        _conversation(Endpoint("10.0.0.3", 40000), Endpoint("10.0.0.1", 80)),
    ]
    flows = orient(conversations, None)
    assert [(flow.protocol, flow.client.ip) for flow in flows] == [
        (Protocol.TCP, "10.0.0.3"),
        (Protocol.TCP, "10.0.0.9"),
        (Protocol.UDP, "10.0.0.2"),
    ]
    assert all((flow.packets, flow.bytes) == (4, 400) for flow in flows)
    assert flows == orient(list(reversed(conversations)), None)


def _orient_order(flow: Flow) -> tuple[Protocol, str, int, str, int, float]:
    """The order orient promises: one sort by (protocol, client, server, first packet), ports
    compared as numbers."""
    return (
        flow.protocol,
        flow.client.ip,
        flow.client.port,
        flow.server.ip,
        flow.server.port,
        flow.first_seen,
    )


def test_flows_are_sorted_by_client_server_and_time_however_many() -> None:
    # orient sorts per protocol and client address, then puts them together: the order of one
    # sort by (protocol, client, server, first packet), ports compared as numbers.
    rng = random.Random(7)
    conversations = []
    for _ in range(400):
        protocol = rng.choice([Protocol.TCP, Protocol.UDP])
        client = Endpoint(rng.choice(["10.0.0.9", "10.0.0.10", "fd00::2"]), rng.randrange(1, 65536))
        server = Endpoint(rng.choice(["10.0.0.1", "10.0.0.100"]), rng.choice([80, 443, 8080]))
        first = float(rng.randrange(5))
        low, high = sorted((client, server))
        conversations.append(
            Conversation(protocol, low, high, first, first + 1, 2, 100, frozenset({"x"}), client)
        )
    flows = orient(conversations, None)
    assert flows == sorted(
        flows,
        key=_orient_order,
    )
    assert len(flows) == 400


def test_orienting_the_conversations_empties_the_table() -> None:
    # What an analysis reads: each conversation leaves the table as it is oriented.
    table = ConversationTable()
    _add(table, "a.pcap", "a.pcap", [_directed(CLIENT, SERVER), _directed(SERVER, CLIENT)])
    _add(table, "b.pcap", "b.pcap", [_directed(Endpoint("10.1.0.6", 41000), SERVER, packets=7)])
    _add(table, "c.pcap", "c.pcap", [_directed(CLIENT, SERVER, packets=9)])
    made = table.conversations()
    assert table.oriented(None) == orient(made, None) and len(made) == 2
    assert (len(table), table.conversations()) == (0, [])


def test_a_tcp_connection_without_syn_ack_or_fin_is_not_established() -> None:
    other = Endpoint("10.1.0.5", 40003)
    table = ConversationTable()
    _add(
        table,
        "ns/client/capture.pcap",
        "ns/client/capture.pcap",
        [
            # refused: SYN, RST+ACK
            _directed(CLIENT, SERVER, packets=1, roles=ROLE_OPENER),
            _directed(SERVER, CLIENT, packets=1),
            # never answered: three SYNs
            _directed(other, Endpoint("10.1.0.9", 9999), packets=3, roles=ROLE_OPENER),
            # its SYN+ACK was not captured, but it was closed: it worked
            _directed(other, SERVER, roles=ROLE_OPENER | ROLE_CLOSER),
            # neither SYN+ACK nor FIN captured (a capture that dropped packets), but data flowed
            _directed(other, Endpoint("10.1.0.9", 5432), packets=40, roles=ROLE_OPENER),
            # UDP has no handshake: always established
            _directed(CLIENT, Endpoint("10.1.0.9", 53), protocol=Protocol.UDP),
        ],
    )
    flows = orient(table.conversations(), None)
    assert [(f.protocol, f.server.port, f.established) for f in flows] == [
        (Protocol.TCP, 8080, False),
        (Protocol.TCP, 5432, True),
        (Protocol.TCP, 8080, True),
        (Protocol.TCP, 9999, False),
        (Protocol.UDP, 53, True),
    ]


def test_a_syn_ack_its_opener_disowns_with_a_rst_is_not_established() -> None:
    """A SYN spoofed in the name of another host: the server's SYN+ACK reaches the real host,
    which answers with a RST without ACK. However often it is repeated, and whichever capture saw
    which part, it never got going; a connection aborted with RST+ACK (its own) did."""
    spoofed = Endpoint("203.0.113.9", 40000)
    scanner = Endpoint("10.1.0.5", 40004)
    aborted = Endpoint("10.1.0.5", 40005)
    table = ConversationTable()
    _add(
        table,
        "ns/server/capture.pcap",
        "ns/server/capture.pcap",
        [
            # SYN, SYN+ACK, RST (no ACK), 8 times over: more packets than a failed attempt makes
            _directed(spoofed, SERVER, packets=16, roles=ROLE_OPENER | ROLE_DISOWNER),
            _directed(SERVER, spoofed, packets=8, roles=ROLE_ACCEPTOR),
            # a half-open scan seen by the server's capture only from the SYN+ACK on
            _directed(SERVER, scanner, packets=1, roles=ROLE_ACCEPTOR),
            _directed(scanner, SERVER, packets=1, roles=ROLE_DISOWNER),
            # SYN, SYN+ACK, then the client aborts its connection with RST+ACK: it worked
            _directed(aborted, SERVER, packets=2, roles=ROLE_OPENER),
            _directed(SERVER, aborted, packets=1, roles=ROLE_ACCEPTOR),
        ],
    )
    # The server disowning a connection (it restarted) says nothing against the client's SYN.
    _add(
        table,
        "ns/client/capture.pcap",
        "ns/client/capture.pcap",
        [
            _directed(CLIENT, SERVER, packets=1, roles=ROLE_OPENER),
            _directed(SERVER, CLIENT, packets=2, roles=ROLE_ACCEPTOR | ROLE_DISOWNER),
        ],
    )
    flows = orient(table.conversations(), None)
    assert {(f.client, f.established) for f in flows} == {
        (spoofed, False),
        (scanner, False),
        (aborted, True),
        (CLIENT, True),
    }


def test_a_fin_still_proves_a_connection_its_opener_later_disowned() -> None:
    table = ConversationTable()
    _add(
        table,
        "c.pcap",
        "c.pcap",
        [
            _directed(CLIENT, SERVER, roles=ROLE_OPENER | ROLE_CLOSER | ROLE_DISOWNER),
            _directed(SERVER, CLIENT, roles=ROLE_ACCEPTOR),
        ],
    )
    (flow,) = orient(table.conversations(), None)
    assert flow.established


def test_a_flow_knows_whether_both_ends_sent_packets() -> None:
    outside = Endpoint("198.51.100.7", 8125)
    answering = Endpoint("198.51.100.8", 123)
    table = ConversationTable()
    _add(
        table,
        "c.pcap",
        "c.pcap",
        [
            _directed(CLIENT, outside, protocol=Protocol.UDP),  # statsd: nothing comes back
            _directed(CLIENT, answering, protocol=Protocol.UDP),
        ],
    )
    # The answer is in another capture (another vantage point): still an answer.
    _add(
        table, "s.pcap", "s.pcap", [_directed(answering, CLIENT, protocol=Protocol.UDP, packets=1)]
    )
    flows = orient(table.conversations(), None)
    assert {(f.server, f.answered) for f in flows} == {(outside, False), (answering, True)}


def test_the_only_end_that_sent_packets_is_the_client() -> None:
    """Datagrams from port 53 to a high port that nothing answered: the port heuristics would
    make the receiver the client (an egress rule to the sender); it only received."""
    sender, receiver = Endpoint("203.0.113.9", 53), Endpoint("10.1.0.5", 40000)
    table = ConversationTable()
    _add(table, "r.pcap", "r.pcap", [_directed(sender, receiver, protocol=Protocol.UDP)])
    (flow,) = orient(table.conversations(), None)
    assert (flow.client, flow.server, flow.evidence) == (sender, receiver, Evidence.ONE_WAY)
    assert not flow.answered
    # The snapshot knowing who listens still comes first.
    (flow,) = orient(table.conversations(), lambda endpoint, *_: endpoint == sender)
    assert (flow.client, flow.evidence) == (receiver, Evidence.KNOWN_LISTENER)


def _random_flows(count: int, seed: int = 7) -> list[Flow]:
    rng = random.Random(seed)
    flows = []
    for index in range(count):
        protocol = rng.choice([Protocol.TCP, Protocol.UDP])
        first = float(rng.randrange(5))
        flows.append(
            Flow(
                protocol,
                Endpoint(rng.choice(["10.0.0.9", "fd00::2"]), 1024 + index),
                Endpoint(rng.choice(["10.0.0.1", "10.0.0.100"]), rng.choice([80, 443])),
                first,
                first + rng.random(),
                rng.randrange(1, 10),
                rng.randrange(40, 1 << 40),
                rng.choice([frozenset({"a"}), frozenset({"a", "b"})]),
                rng.choice(list(Evidence)),
                rng.random() < 0.9,
                rng.random() < 0.9,
            )
        )
    return flows


def test_a_flow_table_gives_back_every_flow_as_it_was() -> None:
    flows = _random_flows(300)
    table = FlowTable.of(flows)
    # one group per protocol, client address, server and captures; each flow in one of them
    assert len(table) == 300 and len(table.groups) <= 2 * 2 * 2 * 2 * 2
    assert Counter(flow for group in table.groups for flow in group.flows()) == Counter(flows)
    # in groups of the order orient gives them: sorted like orient's flows
    assert FlowTable.sorted(table.groups) == sorted(
        flows,
        key=_orient_order,
    )
    assert FlowTable.of(table) is table
    assert table.first_seen() == min(f.first_seen for f in flows)
    assert table.last_seen() == max(f.last_seen for f in flows)
    assert FlowTable([]).first_seen() == math.inf


def test_a_flow_group_takes_sorts_and_counts_its_flows() -> None:
    flows = [f for f in _random_flows(300) if f.client.ip == "10.0.0.9"]
    (group, *_) = sorted(FlowTable.of(flows).groups, key=len, reverse=True)
    own = list(group.flows())
    assert len(own) > 10
    by_time = list(group.by_time().flows())
    assert by_time == sorted(
        own, key=lambda f: (f.first_seen, f.client.port, f.last_seen, f.packets, f.bytes)
    )
    assert list(group.taken([2, 0]).flows()) == [own[2], own[0]]
    established = group.places(established=True)
    attempts = group.places(established=False)
    assert sorted(established + attempts) == list(range(len(own)))
    assert all(own[index].established for index in established)
    assert not any(own[index].established for index in attempts)
    assert FlowTable([group]).evidence_counts() == Counter(flow.evidence for flow in own)
    assert FlowTable.of(flows).evidence_counts() == Counter(flow.evidence for flow in flows)
    assert group.evidence() == {flow.evidence for flow in own}
    assert group.taken([]).places(established=False) == []
    # A group of both kinds, and groups of one kind only.
    mixed = FlowGroup.of(
        replace(flow, established=index % 3 != 0) for index, flow in enumerate(own)
    )
    assert mixed.places(established=False) == list(range(0, len(own), 3))
    assert mixed.places(established=True) == [i for i in range(len(own)) if i % 3]
    only = mixed.taken(mixed.places(established=True))
    assert (only.places(established=True), only.places(established=False)) == (
        list(range(len(only))),
        [],
    )
    none = mixed.taken(mixed.places(established=False))
    assert (none.places(established=True), none.places(established=False)) == (
        [],
        list(range(len(none))),
    )
    # already in order: the group itself, no copy
    in_time = group.by_time()
    assert in_time.by_time() is in_time
    # one flow's columns are packed in one piece, as the columns of several are
    alone = FlowGroup.of(own[:1])
    assert list(alone.flows()) == own[:1]
    assert alone.columns == group.taken([0]).columns
    assert alone.by_port() is alone and alone.by_time() is alone
    assert group.any_answered() == any(flow.answered for flow in own)
    relabelled = group.seen_by(frozenset({"w/a"}))
    assert [f.captures for f in relabelled.flows()] == [frozenset({"w/a"})] * len(own)


def test_a_flow_table_keeps_a_flow_in_far_less_than_a_flow_object() -> None:
    # a day's millions of connections: ~35 bytes a flow in columns, where a Flow, its client's
    # Endpoint and two times take ~250
    conversations = [
        Conversation(
            Protocol.TCP,
            Endpoint("10.0.0.9", 20000 + index),
            Endpoint("10.0.0.99", 8080),
            1000.0 + index,
            1000.5 + index,
            9,
            700,
            frozenset({"a"}),
            Endpoint("10.0.0.9", 20000 + index),
        )
        for index in range(20000)
    ]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        table = orient(conversations, None)
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(table) == 20000 and len(table.groups) == 1
    assert kept / len(table) < 60


def test_a_flow_group_kept_on_disk_is_the_group_it_was(tmp_path: Path) -> None:
    # a day's groups keep their columns in a ColumnStore (analyser.spilling): read back as they
    # are asked for, the same flows, columns and sorted copies; a group of one or two flows
    # keeps them in memory
    store = ColumnStore(tmp_path)
    groups = FlowTable.of(_random_flows(300)).groups
    groups += tuple(group.taken(range(size)) for size, group in enumerate(groups[:4]))
    kept = [store.kept(group) for group in groups]
    in_memory = [isinstance(group.columns, bytes) for group in kept]
    assert in_memory == [len(group) <= 2 for group in groups]
    assert any(in_memory) and not all(in_memory)
    for group, on_disk in zip(groups, kept, strict=True):
        assert list(on_disk.flows()) == list(group.flows())
        assert len(on_disk) == len(group)
        assert on_disk.firsts.tolist() == group.firsts.tolist()
        assert on_disk.kinds.tolist() == group.kinds.tolist()
        assert list(on_disk.by_time().flows()) == list(group.by_time().flows())
        assert on_disk.loaded().columns == group.columns
        assert store.kept(on_disk).loaded().columns == group.columns
    assert list(tmp_path.iterdir()) == []  # the store's file has no name
