"""dns: answers → IP ↔ names with times, per client and vantage point; CNAME chains give every
name; invalid names are left out; tables merge; TCP segments → whole messages within fixed
limits."""

from __future__ import annotations

import struct

import dpkt

from analyser.dns import CLOCK_SKEW, DnsName, DnsNames, DnsTable, TcpDnsStreams
from analyser.flows import Endpoint, Evidence, Flow, Protocol
from analyser.packets import DnsFault, DnsResponse
from tests.analyser.packet_builders import dns_response

CLIENT = "10.244.0.7"  # the address the answers were sent to

CHAIN = DnsResponse(
    "www.shop.example",
    (("edge.cdn.example", "192.0.2.7"), ("edge.cdn.example", "2001:db8::7")),
    (("www.shop.example", "shop.example"), ("shop.example", "edge.cdn.example")),
)


def test_a_cname_chain_names_the_address_with_every_name_on_it() -> None:
    table = DnsTable()
    table.add(CHAIN, at=100.0, client=CLIENT)
    expected = ("edge.cdn.example", "shop.example", "www.shop.example")
    assert table.names_for("192.0.2.7") == expected
    assert table.names_for("2001:db8::7") == expected
    assert table.names_for("192.0.2.8") == ()


def test_unrelated_aliases_do_not_leak_onto_an_address() -> None:
    response = DnsResponse(
        "a.example",
        (("a.example", "192.0.2.1"),),
        (("other.example", "elsewhere.example"),),
    )
    table = DnsTable()
    table.add(response, at=1.0, client=CLIENT)
    assert table.names_for("192.0.2.1") == ("a.example",)


def test_names_for_a_time_only_uses_answers_seen_by_then() -> None:
    table = DnsTable()
    table.add(
        DnsResponse("old.example", (("old.example", "192.0.2.1"),), ()), at=100.0, client=CLIENT
    )
    table.add(
        DnsResponse("new.example", (("new.example", "192.0.2.1"),), ()), at=200.0, client=CLIENT
    )
    assert table.names_for("192.0.2.1", at=150.0) == ("old.example",)
    assert table.names_for("192.0.2.1", at=200.0 - CLOCK_SKEW / 2) == ("new.example", "old.example")
    assert table.names_for("192.0.2.1", at=50.0) == ()
    assert table.names_for("192.0.2.1") == ("new.example", "old.example")


def test_merge_keeps_first_and_last_and_iteration_is_sorted() -> None:
    early, late = DnsTable(), DnsTable()
    early.add(CHAIN, at=100.0, client=CLIENT)
    late.add(CHAIN, at=300.0, client=CLIENT)
    late.add(DnsResponse("a.example", (("a.example", "10.0.0.1"),), ()), at=250.0, client=CLIENT)
    merged = DnsTable()
    merged.merge(late)
    merged.merge(early)
    entries = list(merged)
    assert entries[0] == DnsName("10.0.0.1", "a.example", 250.0, 250.0)
    assert DnsName("192.0.2.7", "shop.example", 100.0, 300.0) in entries
    assert entries == sorted(entries)
    assert len(merged) == 3


def _named(name: str, ip: str) -> DnsResponse:
    return DnsResponse(name, ((name, ip),), ())


def test_a_full_table_leaves_new_names_out_and_counts_them() -> None:
    # A pod that forges answers in its own capture must not grow the table without bound: past
    # max_names (an address's name for a client, or a client's lookup), new names are left out.
    table = DnsTable(max_names=4)
    table.add(_named("a.example", "192.0.2.1"), at=1.0, client=CLIENT)  # a lookup and a name
    table.add(_named("b.example", "192.0.2.2"), at=2.0, client=CLIENT)  # full
    assert table.left_out == 0
    table.add(CHAIN, at=3.0, client=CLIENT)  # the question, and 3 names for each of 2 addresses
    table.add(_named("a.example", "192.0.2.1"), at=9.0, client=CLIENT)  # known: its times move
    assert table.left_out == 7
    assert list(table) == [
        DnsName("192.0.2.1", "a.example", 1.0, 9.0),
        DnsName("192.0.2.2", "b.example", 2.0, 2.0),
    ]
    assert len(table) == 2  # no address without a name
    assert table.lookups(asked_by=lambda _: True) == ("a.example", "b.example")
    assert table.names_for("192.0.2.7", asked=True) == ()


def test_a_merge_into_a_full_table_returns_what_it_left_out() -> None:
    first, second = DnsTable(), DnsTable()
    first.add(_named("a.example", "192.0.2.1"), at=1.0, client=CLIENT)
    second.add(CHAIN, at=3.0, client=CLIENT)
    second.add(_named("a.example", "192.0.2.1"), at=5.0, client=CLIENT)
    merged = DnsTable(max_names=3)
    assert merged.merge(first) == 0
    # second: the lookups www.shop.example (left out) and a.example (known); six names for two
    # addresses (one kept: 192.0.2.7's first, the table then full) and a.example's (known)
    assert merged.merge(second) == 6
    assert merged.names_for("192.0.2.1") == ("a.example",)
    assert merged.names_for("192.0.2.7") == ("edge.cdn.example",)  # the first, in order
    assert merged.names_for("2001:db8::7") == ()
    assert merged.names_for("192.0.2.1", asked=True) == ("a.example",)
    assert next(iter(merged)) == DnsName("192.0.2.1", "a.example", 1.0, 5.0)


def test_payloads_over_udp_and_tcp_and_faults() -> None:
    answer = dns_response("a.example", [("a.example", "A", "192.0.2.1")])
    table = DnsTable()
    assert table.add_payload(answer, over_tcp=False, at=1.0, client=CLIENT) is None
    framed = struct.pack("!H", len(answer)) + answer
    assert table.add_payload(framed, over_tcp=True, at=2.0, client=CLIENT) is None
    assert list(table) == [DnsName("192.0.2.1", "a.example", 1.0, 2.0)]
    assert (
        table.add_payload(answer[:20], over_tcp=False, at=3.0, client=CLIENT) is DnsFault.TRUNCATED
    )
    assert table.add_payload(
        b"\x00\x01\x81\x80" + b"\xff" * 30, over_tcp=False, at=3.0, client=CLIENT
    ) in (
        DnsFault.MALFORMED,
        DnsFault.TRUNCATED,
    )


def test_a_payload_with_invalid_names_records_the_rest_and_says_so() -> None:
    answer = dns_response(
        "a.example", [("a.example", "A", "192.0.2.1"), ("evil\u2028x.example", "A", "192.0.2.2")]
    )
    table = DnsTable()
    assert table.add_payload(answer, over_tcp=False, at=1.0, client=CLIENT) is DnsFault.BAD_NAME
    assert list(table) == [DnsName("192.0.2.1", "a.example", 1.0, 1.0)]


def test_a_payload_not_sent_from_port_53_names_nothing_but_its_faults_count() -> None:
    answer = dns_response("a.example", [("a.example", "A", "192.0.2.1")])
    table = DnsTable()
    assert table.add_payload(answer, over_tcp=False, at=1.0, client=None) is None
    assert table.add_payload(answer[:20], over_tcp=False, at=1.0, client=None) is (
        DnsFault.TRUNCATED
    )
    assert len(table) == 0


def test_names_are_per_client() -> None:
    table = DnsTable()
    table.add(CHAIN, at=1.0, client=CLIENT)
    table.add(
        DnsResponse("other.example", (("other.example", "192.0.2.7"),), ()),
        at=1.0,
        client="10.244.0.9",
    )
    assert table.names_for("192.0.2.7", asked_by=CLIENT.__eq__) == (
        "edge.cdn.example",
        "shop.example",
        "www.shop.example",
    )
    assert table.names_for("192.0.2.7", asked_by="10.244.0.9".__eq__) == ("other.example",)
    assert len(table.names_for("192.0.2.7")) == 4  # anyone's


def _flow(client: str, server: str, capture: str, at: float = 10.0) -> Flow:
    return Flow(
        Protocol.TCP,
        Endpoint(client, 40000),
        Endpoint(server, 443),
        at,
        at + 1,
        4,
        400,
        frozenset({capture}),
        Evidence.HANDSHAKE,
    )


def test_a_flow_takes_names_only_from_its_own_vantage_point_and_client() -> None:
    frontend, payments = DnsTable(), DnsTable()
    frontend.add(
        DnsResponse("evil.example", (("evil.example", "192.0.2.7"),), ()), at=1.0, client=CLIENT
    )
    payments.add(
        DnsResponse("pay.example", (("pay.example", "192.0.2.7"),), ()), at=1.0, client="10.244.0.9"
    )
    names = DnsNames()
    names.add("captures/default/frontend/capture.pcap0", "pod default/frontend", frontend)
    names.add("captures/default/frontend/capture.pcap1", "pod default/frontend", DnsTable())
    names.add("captures/default/payments/capture.pcap0", "pod default/payments", payments)
    assert names.vantages == ("pod default/frontend", "pod default/payments")
    # The payments pod's own flow, seen by its capture: only its own answer names the address.
    paying = _flow("10.244.0.9", "192.0.2.7", "captures/default/payments/capture.pcap0")
    assert names.names_for_flow(paying) == ("pay.example",)
    # The frontend's flow in another file of its vantage point takes the frontend's answer.
    shopping = _flow(CLIENT, "192.0.2.7", "captures/default/frontend/capture.pcap1")
    assert names.names_for_flow(shopping) == ("evil.example",)
    # An answer sent to another address of the client (a dual-stack pod) counts when accepted.
    dual = _flow("fd00::7", "192.0.2.7", "captures/default/frontend/capture.pcap1")
    assert names.names_for_flow(dual) == ()
    assert names.names_for_flow(dual, asked_by={CLIENT, "fd00::7"}.__contains__) == (
        "evil.example",
    )
    # Answers captured after the flow began do not name it.
    assert (
        names.names_for_flow(
            _flow(CLIENT, "192.0.2.7", "captures/default/frontend/capture.pcap1", at=-5.0)
        )
        == ()
    )


ACK, SYN = 0x10, 0x02


def test_tcp_streams_wrap_around_the_sequence_space_and_keep_messages_apart() -> None:
    first, second = b"\x00\x03abc", b"\x00\x02de"
    streams = TcpDnsStreams()
    assert streams.add("k", 0xFFFFFFFF, SYN, b"", False) == b""  # data starts at 0
    assert streams.add("k", 0, ACK, first[:3], False) == b""
    assert streams.add("k", 3, ACK, first[3:] + second, False) == first + second
    assert streams.add("o", 5, ACK, second, False) == second  # another direction, no SYN
    streams.close()
    assert streams.faults == {}


def test_tcp_streams_stay_within_their_limits() -> None:
    streams = TcpDnsStreams()
    streams.add("k", 0, ACK, b"\x00\xffa", False)
    for index in range(TcpDnsStreams.STREAM_SEGMENTS + 1):  # early segments, never filled in
        streams.add("k", 100 + index, ACK, b"x", False)
    assert streams.faults == {"gap": 1}  # given up at the limit, not grown
    assert "k" not in streams._streams
    for index in range(TcpDnsStreams.STREAMS + 1):
        streams.add(index, 0, ACK, b"\x00\x09a", False)  # each waits for the rest
    assert len(streams._streams) == TcpDnsStreams.STREAMS
    assert streams.faults == {"gap": 1, "truncated": 1}  # stream 0, the oldest, given up
    big = TcpDnsStreams()
    big.add("k", 0, ACK, b"\x00\x01", False)
    big.add("k", 10, ACK, bytes(TcpDnsStreams.STREAM_BYTES), False)
    assert big.faults == {"gap": 1}


def test_the_name_asked_for_is_kept_apart_from_the_chain() -> None:
    table = DnsTable()
    table.add(CHAIN, at=100.0, client=CLIENT)
    assert table.names_for("192.0.2.7", asked=True) == ("www.shop.example",)
    # An answer whose chain does not lead from the question to the address asks for nothing.
    stray = DnsResponse("a.example", (("b.example", "192.0.2.9"),), ())
    table.add(stray, at=100.0, client=CLIENT)
    assert table.names_for("192.0.2.9", asked=True) == ()
    assert table.names_for("192.0.2.9") == ("b.example",)


def test_lookups_are_every_question_a_client_had_answered_nxdomain_included() -> None:
    table = DnsTable()
    table.add(CHAIN, at=100.0, client=CLIENT)
    nxdomain = dns_response(
        "api.example.default.svc.cluster.local", [], rcode=dpkt.dns.DNS_RCODE_NXDOMAIN
    )
    refused = dns_response("refused.example", [], rcode=dpkt.dns.DNS_RCODE_REFUSED)
    for payload in (nxdomain, refused):
        assert table.add_payload(payload, over_tcp=False, at=100.0, client=CLIENT) is None
    table.add_payload(
        dns_response("other.example", [("other.example", "A", "192.0.2.8")]),
        over_tcp=False,
        at=100.0,
        client="10.244.0.8",
    )
    assert table.lookups(asked_by=CLIENT.__eq__) == (
        "api.example.default.svc.cluster.local",
        "www.shop.example",
    )
    # The answer that the name does not exist names no address.
    assert table.names_for("192.0.2.7") == ("edge.cdn.example", "shop.example", "www.shop.example")
    merged = DnsTable()
    merged.merge(table)
    assert merged.lookups(asked_by=lambda ip: True) == (
        "api.example.default.svc.cluster.local",
        "other.example",
        "www.shop.example",
    )
