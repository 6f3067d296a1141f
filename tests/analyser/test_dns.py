"""dns: answers → IP ↔ names with times; CNAME chains give every name; tables merge; TCP
segments → whole messages within fixed limits."""

from __future__ import annotations

import struct

from analyser.dns import CLOCK_SKEW, DnsName, DnsTable, TcpDnsStreams
from analyser.packets import DnsFault, DnsResponse
from tests.analyser.packet_builders import dns_response

CHAIN = DnsResponse(
    "www.shop.example",
    (("edge.cdn.example", "192.0.2.7"), ("edge.cdn.example", "2001:db8::7")),
    (("www.shop.example", "shop.example"), ("shop.example", "edge.cdn.example")),
)


def test_a_cname_chain_names_the_address_with_every_name_on_it() -> None:
    table = DnsTable()
    table.add(CHAIN, at=100.0)
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
    table.add(response, at=1.0)
    assert table.names_for("192.0.2.1") == ("a.example",)


def test_names_for_a_time_only_uses_answers_seen_by_then() -> None:
    table = DnsTable()
    table.add(DnsResponse("old.example", (("old.example", "192.0.2.1"),), ()), at=100.0)
    table.add(DnsResponse("new.example", (("new.example", "192.0.2.1"),), ()), at=200.0)
    assert table.names_for("192.0.2.1", at=150.0) == ("old.example",)
    assert table.names_for("192.0.2.1", at=200.0 - CLOCK_SKEW / 2) == ("new.example", "old.example")
    assert table.names_for("192.0.2.1", at=50.0) == ()
    assert table.names_for("192.0.2.1") == ("new.example", "old.example")


def test_merge_keeps_first_and_last_and_iteration_is_sorted() -> None:
    early, late = DnsTable(), DnsTable()
    early.add(CHAIN, at=100.0)
    late.add(CHAIN, at=300.0)
    late.add(DnsResponse("a.example", (("a.example", "10.0.0.1"),), ()), at=250.0)
    merged = DnsTable()
    merged.merge(late)
    merged.merge(early)
    entries = list(merged)
    assert entries[0] == DnsName("10.0.0.1", "a.example", 250.0, 250.0)
    assert DnsName("192.0.2.7", "shop.example", 100.0, 300.0) in entries
    assert entries == sorted(entries)
    assert len(merged) == 3


def test_payloads_over_udp_and_tcp_and_faults() -> None:
    answer = dns_response("a.example", [("a.example", "A", "192.0.2.1")])
    table = DnsTable()
    assert table.add_payload(answer, over_tcp=False, at=1.0) is None
    framed = struct.pack("!H", len(answer)) + answer
    assert table.add_payload(framed, over_tcp=True, at=2.0) is None
    assert list(table) == [DnsName("192.0.2.1", "a.example", 1.0, 2.0)]
    assert table.add_payload(answer[:20], over_tcp=False, at=3.0) is DnsFault.TRUNCATED
    assert table.add_payload(b"\x00\x01\x81\x80" + b"\xff" * 30, over_tcp=False, at=3.0) in (
        DnsFault.MALFORMED,
        DnsFault.TRUNCATED,
    )


def test_a_payload_with_invalid_names_records_the_rest_and_says_so() -> None:
    answer = dns_response(
        "a.example", [("a.example", "A", "192.0.2.1"), ("evil\u2028x.example", "A", "192.0.2.2")]
    )
    table = DnsTable()
    assert table.add_payload(answer, over_tcp=False, at=1.0) is DnsFault.BAD_NAME
    assert list(table) == [DnsName("192.0.2.1", "a.example", 1.0, 1.0)]


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
