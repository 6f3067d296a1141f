"""packets: every link type × IP version × transport decodes to the right facts; damage and
non-IP are skipped with a reason; DNS messages decode to their answers."""

from __future__ import annotations

import random
import socket
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from analyser import packets, sources
from analyser.flows import conversation_bits, handshake_role
from analyser.packets import (
    DnsFault,
    DnsPayload,
    DnsResponse,
    Skip,
    Tally,
    decode,
    decode_dns,
)
from tests.analyser.compiled_modules import interpreted
from tests.analyser.packet_builders import (
    ARP,
    FRAMERS,
    TCP_ACK,
    TCP_SYN,
    dns_query,
    dns_response,
    ethernet,
    geneve,
    ip_in_ip,
    ip_packet,
    linux_sll,
    linux_sll2,
    vxlan,
    write_pcap,
)


def split_key(key: Any) -> tuple[int, str, int, str, int]:
    """(protocol number, source IP text, source port, destination IP text, destination port) of a
    ``packets.PacketKey``."""
    protocol, raw = key
    half = (len(raw) - 4) // 2
    family = socket.AF_INET if half == 4 else socket.AF_INET6
    source_port, destination_port = struct.unpack("!HH", raw[-4:])
    source, destination = (socket.inet_ntop(family, raw[i : i + half]) for i in (0, half))
    return protocol, source, source_port, destination, destination_port


ADDRESSES = {4: ("10.0.0.1", "10.0.0.2"), 6: ("fd00::1", "fd00:0:0:1::2")}
NUMBERS = {"tcp": 6, "udp": 17, "sctp": 132}


@pytest.mark.parametrize("linktype", sorted(FRAMERS))
@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("protocol", ["tcp", "udp", "sctp"])
def test_every_link_type_ip_version_and_transport(
    linktype: int, version: int, protocol: str
) -> None:
    src, dst = ADDRESSES[version]
    packet = ip_packet(src, dst, protocol, 40000, 8080, flags=TCP_SYN, chunk=1, payload=b"abc")
    key, control, length, dns = decode(linktype, FRAMERS[linktype](packet))
    assert isinstance(key, tuple)
    assert split_key(key) == (NUMBERS[protocol], src, 40000, dst, 8080)
    assert control == {"tcp": TCP_SYN, "udp": 0, "sctp": 1}[protocol]
    assert length == len(packet)
    assert dns is None


def test_vlan_tagged_ethernet() -> None:
    frame = ethernet(ip_packet("10.0.0.1", "10.0.0.2", "udp", 1000, 2000), vlan=42)
    key, _, _, _ = decode(1, frame)
    assert isinstance(key, tuple)
    assert split_key(key) == (17, "10.0.0.1", 1000, "10.0.0.2", 2000)


def test_ipv4_with_options_finds_the_transport_header() -> None:
    packet = bytearray(ip_packet("10.0.0.1", "10.0.0.2", "tcp", 1234, 443, flags=TCP_SYN | TCP_ACK))
    # Insert 4 bytes of options (NOP ×4): IHL 6.
    with_options = bytes([0x46]) + bytes(packet[1:20]) + b"\x01" * 4 + bytes(packet[20:])
    with_options = with_options[:2] + struct.pack("!H", len(with_options)) + with_options[4:]
    key, control, length, _ = decode(101, with_options)
    assert isinstance(key, tuple)
    assert split_key(key) == (6, "10.0.0.1", 1234, "10.0.0.2", 443)
    assert control == TCP_SYN | TCP_ACK
    assert length == len(with_options)


POD_PACKET = ("10.244.1.5", "10.244.2.7", "tcp", 40000, 8080)


@pytest.mark.parametrize(
    "outer",
    [
        pytest.param(lambda inner: ip_in_ip("192.168.0.1", "192.168.0.2", inner), id="ipip"),
        pytest.param(
            lambda inner: vxlan("192.168.0.1", "192.168.0.2", ethernet(inner)), id="vxlan"
        ),
        pytest.param(
            lambda inner: vxlan("192.168.0.1", "192.168.0.2", ethernet(inner), port=8472),
            id="vxlan-linux-port",
        ),
        pytest.param(
            lambda inner: geneve("192.168.0.1", "192.168.0.2", ethernet(inner)), id="geneve"
        ),
        pytest.param(
            lambda inner: geneve("192.168.0.1", "192.168.0.2", inner, kind=0x0800, options=0),
            id="geneve-ip",
        ),
        pytest.param(
            lambda inner: vxlan("fd00::1", "fd00::2", ethernet(inner)), id="vxlan-over-ipv6"
        ),
    ],
)
@pytest.mark.parametrize("linktype", [1, 113, 276])
def test_overlay_tunnels_give_the_packet_inside(
    outer: Callable[[bytes], bytes], linktype: int
) -> None:
    """Captures on a node's own interface see pod traffic between nodes encapsulated."""
    inner = ip_packet(*POD_PACKET, flags=TCP_SYN)
    key, control, length, _ = decode(linktype, FRAMERS[linktype](outer(inner)))
    assert isinstance(key, tuple)
    assert split_key(key) == (6, "10.244.1.5", 40000, "10.244.2.7", 8080)
    assert (control, length) == (TCP_SYN, len(inner))


def test_dns_inside_a_tunnel_is_read() -> None:
    answer = dns_response("db.example", [("db.example", "A", "192.0.2.9")])
    inner = ip_packet("10.96.0.10", "10.244.1.5", "udp", 53, 40000, payload=answer)
    key, _, _, segment = decode(1, ethernet(vxlan("192.168.0.1", "192.168.0.2", ethernet(inner))))
    assert isinstance(key, tuple) and split_key(key)[1] == "10.96.0.10"
    assert segment is not None and segment[0] == answer


def test_udp_to_a_tunnel_port_without_a_tunnel_header_is_plain_udp() -> None:
    packet = ip_packet("10.0.0.1", "10.0.0.2", "udp", 1000, 4789, payload=b"\x00" * 20)
    key, _, _, _ = decode(101, packet)
    assert isinstance(key, tuple)
    assert split_key(key) == (17, "10.0.0.1", 1000, "10.0.0.2", 4789)


def test_nested_tunnels_stop_at_the_limit() -> None:
    """A crafted packet of tunnels inside tunnels is not followed without end."""
    packet = ip_packet(*POD_PACKET)
    for _ in range(2):
        packet = ip_in_ip("192.168.0.1", "192.168.0.2", packet)
    key, _, _, _ = decode(101, packet)
    assert isinstance(key, tuple) and split_key(key)[1] == "10.244.1.5"
    key, _, _, _ = decode(101, ip_in_ip("192.168.0.1", "192.168.0.2", packet))
    assert key is Skip.OTHER_PROTOCOL
    deep = ip_packet(*POD_PACKET)
    for _ in range(3000):
        deep = ip_in_ip("192.168.0.1", "192.168.0.2", deep)[:20] + deep
    assert decode(101, deep)[0] is Skip.OTHER_PROTOCOL


@pytest.mark.parametrize("implementation", ["imported", "interpreted"])
def test_counting_tunnelled_packets_agrees_with_decoding_them(implementation: str) -> None:
    module = IMPLEMENTATIONS[implementation]
    frames = []
    for index in range(40):
        inner = ip_packet("10.244.1.5", "10.244.2.7", "tcp", 40000 + index % 4, 8080)
        wrapped = [
            vxlan("192.168.0.1", "192.168.0.2", ethernet(inner)),
            ip_in_ip("192.168.0.1", "192.168.0.2", inner),
            geneve("192.168.0.1", "192.168.0.2", ethernet(inner)),
            ip_packet("192.168.0.1", "192.168.0.2", "udp", 51234, 4789, payload=bytes(30)),
        ][index % 4]
        frames.append((1000.0 + index, linux_sll2(wrapped)))
    tally: Tally = {}
    dns_tally: Tally = {}
    payloads: list[DnsPayload] = []
    module.count_batch(
        276, [t for t, _ in frames], [f for _, f in frames], tally, dns_tally, payloads
    )
    expected, _ = _reference_count(276, frames)
    assert {key: list(counts.fields()) for key, counts in tally.items()} == expected
    # The pod flows (3 source ports: the fourth frame of each four is no tunnel) and the one UDP
    # flow to 4789 that is no tunnel either.
    ports = sorted(split_key(key)[4] for key in tally if isinstance(key, tuple))
    assert ports == [4789] + [8080] * 3


def _ipv6_with_extensions(*, fragment_offset: int) -> bytes:
    """IPv6 → hop-by-hop options → fragment header → UDP."""
    packet = ip_packet("fd00::1", "fd00::2", "udp", 5000, 6000, payload=b"data")
    udp = packet[40:]
    hop_by_hop = bytes([44, 0]) + b"\x01\x04\x00\x00\x00\x00"  # next: fragment, 8 bytes of PadN
    fragment = bytes([17, 0]) + struct.pack("!HI", fragment_offset << 3, 99)
    payload = hop_by_hop + fragment + udp
    header = packet[:4] + struct.pack("!HBB", len(payload), 0, 64) + packet[8:40]
    return header + payload


def test_ipv6_extension_headers_are_walked() -> None:
    key, _, length, _ = decode(101, _ipv6_with_extensions(fragment_offset=0))
    assert isinstance(key, tuple)
    assert split_key(key) == (17, "fd00::1", 5000, "fd00::2", 6000)
    assert length == 40 + 16 + 12


@pytest.mark.parametrize(
    ("frame", "linktype", "reason"),
    [
        (ARP, 1, Skip.NOT_IP),
        (_ipv6_with_extensions(fragment_offset=185), 101, Skip.FRAGMENT),
        (ip_packet("10.0.0.1", "10.0.0.2", "tcp", 1, 2)[:30], 101, Skip.SHORT),
        (b"\x45\x00", 101, Skip.SHORT),
        (b"", 276, Skip.SHORT),
        (b"\x00" * 60, 101, Skip.NOT_IP),
        (ethernet(ip_packet("10.0.0.1", "10.0.0.2", "udp", 1, 2)), 147, Skip.UNKNOWN_LINKTYPE),
    ],
)
def test_packets_without_facts_say_why(frame: bytes, linktype: int, reason: Skip) -> None:
    assert decode(linktype, frame)[0] is reason


def test_non_first_ipv4_fragment_and_icmp_are_skipped() -> None:
    packet = bytearray(ip_packet("10.0.0.1", "10.0.0.2", "udp", 1, 2, payload=b"x" * 20))
    packet[6:8] = struct.pack("!H", 100)  # fragment offset 800 bytes
    assert decode(101, bytes(packet))[0] is Skip.FRAGMENT
    packet[6:8] = b"\x00\x00"
    packet[9] = 1  # ICMP
    assert decode(101, bytes(packet))[0] is Skip.OTHER_PROTOCOL


def test_null_loopback_in_either_byte_order() -> None:
    packet = ip_packet("10.0.0.1", "10.0.0.2", "udp", 1, 2)
    big_endian = struct.pack("!I", 2) + packet
    little_endian = struct.pack("<I", 2) + packet
    assert decode(0, big_endian)[0] == decode(0, little_endian)[0]
    assert decode(0, big_endian)[0] != Skip.NOT_IP


def test_port_53_payload_is_handed_over_for_tcp_and_udp() -> None:
    answer = dns_response("a.example", [("a.example", "A", "192.0.2.1")])
    udp = decode(
        113, linux_sll(ip_packet("10.0.0.53", "10.0.0.1", "udp", 53, 40000, payload=answer))
    )
    assert udp[3] == (answer, 0, 0, False)
    framed = struct.pack("!H", len(answer)) + answer
    tcp = decode(
        113,
        linux_sll(
            ip_packet("10.0.0.53", "10.0.0.1", "tcp", 53, 40000, payload=framed, flags=TCP_ACK)
        ),
    )
    assert tcp[3] is not None and tcp[3][0] == framed and tcp[3][3] is False
    v6 = decode(113, linux_sll(ip_packet("fd00::53", "fd00::1", "udp", 40000, 53, payload=b"q")))
    assert v6[3] is not None and v6[3][0] == b"q"


def test_dns_cname_chain_over_udp() -> None:
    answer = dns_response(
        "Shop.Example",
        [
            ("shop.example", "CNAME", "edge.cdn.example"),
            ("edge.cdn.example", "A", "192.0.2.7"),
            ("edge.cdn.example", "AAAA", "2001:db8::7"),
        ],
    )
    assert decode_dns(answer, over_tcp=False) == [
        DnsResponse(
            "shop.example",
            (("edge.cdn.example", "192.0.2.7"), ("edge.cdn.example", "2001:db8::7")),
            (("shop.example", "edge.cdn.example"),),
        )
    ]


def test_dns_over_tcp_with_two_messages_in_one_segment() -> None:
    first = dns_response("a.example", [("a.example", "A", "192.0.2.1")], ident=1)
    second = dns_response("b.example", [("b.example", "A", "192.0.2.2")], ident=2)
    payload = b"".join(struct.pack("!H", len(m)) + m for m in (first, second))
    responses = decode_dns(payload, over_tcp=True)
    assert isinstance(responses, list)
    assert [r.addresses for r in responses] == [
        (("a.example", "192.0.2.1"),),
        (("b.example", "192.0.2.2"),),
    ]
    # The second message continues in the next segment: reported, not guessed.
    assert decode_dns(payload[:-5], over_tcp=True) is DnsFault.TRUNCATED


def test_dns_queries_give_nothing_and_damage_is_a_fault() -> None:
    answer = dns_response("a.example", [("a.example", "A", "192.0.2.1")])
    assert decode_dns(dns_query("a.example"), over_tcp=False) == []
    assert decode_dns(answer[:-3], over_tcp=False) is DnsFault.TRUNCATED
    assert decode_dns(answer[:5], over_tcp=False) is DnsFault.TRUNCATED
    # A response whose question name points at itself (a compression loop): malformed.
    looping = answer[:12] + b"\xc0\x0c" + answer[12 + len(b"\x01a\x07example\x00") :]
    assert decode_dns(looping, over_tcp=False) in (DnsFault.MALFORMED, DnsFault.TRUNCATED)


# Names a hostile pod can put in an answer it forges: dpkt hands them over decoded as UTF-8.
BAD_NAMES = [
    "evil\u2028egress.example",  # a line separator: ends a YAML comment
    "evil\u2029.example",
    "evil\u0085.example",  # NEL
    "caf\u00e9.example",  # non-ASCII
    "\u212aelvin.example",  # the Kelvin sign, which str.lower() turns into an ASCII "k"
    "evil\u202e.example",  # a bidi override
    "two words.example",
    "tab\there.example",
    "new\nline.example",
    "nul\x00.example",
    "esc\x1b[31m.example",
    ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 62]),  # 254 characters: one too many
]


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_dns_records_with_invalid_names_are_left_out_and_counted(bad: str) -> None:
    answer = dns_response(
        "shop.example",
        [
            ("shop.example", "A", "192.0.2.1"),
            (bad, "A", "192.0.2.66"),
            ("shop.example", "CNAME", bad),
            (bad, "CNAME", "edge.example"),
            ("edge.example", "A", "192.0.2.7"),
        ],
    )
    # The valid record stays; the CNAMEs from and to the bad name break the chain there, so
    # edge.example's address gets no other name.
    assert decode_dns(answer, over_tcp=False) == [
        DnsResponse(
            "shop.example",
            (("shop.example", "192.0.2.1"), ("edge.example", "192.0.2.7")),
            (),
            bad_names=3,
        )
    ]
    question = decode_dns(dns_response(bad, [("ok.example", "A", "192.0.2.1")]), over_tcp=False)
    assert question == [DnsResponse("", (("ok.example", "192.0.2.1"),), (), bad_names=1)]


def test_valid_dns_names_pass() -> None:
    longest = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])  # 253 characters
    names = [longest, "_sip._tcp.example", "x-1.Example.COM", "a"]
    answer = dns_response("q.example", [(name, "A", "192.0.2.1") for name in names])
    responses = decode_dns(answer, over_tcp=False)
    assert isinstance(responses, list)
    [response] = responses
    assert [owner for owner, _ in response.addresses] == [name.lower() for name in names]
    assert response.bad_names == 0


def test_a_dns_label_holding_a_dot_that_makes_an_empty_label_is_a_bad_name() -> None:
    answer = dns_response("q.example", [("ab.example", "A", "192.0.2.1")])
    dotted = answer.replace(b"\x02ab", b"\x02a.")  # one label "a.": decoded "a..example"
    assert decode_dns(dotted, over_tcp=False) == [DnsResponse("q.example", (), (), bad_names=1)]


def test_dns_names_that_are_not_utf8_make_the_message_malformed() -> None:
    answer = dns_response("q.example", [("q.example", "A", "192.0.2.1")])
    latin1 = answer.replace(b"\x01q", b"\x01\xe9")  # "é" in Latin-1: no UTF-8
    assert decode_dns(latin1, over_tcp=False) is DnsFault.MALFORMED


def test_dns_answers_survive_a_snap_length_cut_in_the_additional_section() -> None:
    answer = bytearray(dns_response("a.example", [("a.example", "A", "192.0.2.1")]))
    answer[10:12] = struct.pack("!H", 1)  # one additional record, of which only 3 bytes arrived
    responses = decode_dns(bytes(answer) + b"\x00\x00\x29", over_tcp=False)
    assert isinstance(responses, list)
    assert responses[0].addresses == (("a.example", "192.0.2.1"),)


def _reference_count(
    linktype: int, frames: list[tuple[float, bytes]]
) -> tuple[dict[Any, list[Any]], list[Any]]:
    """Counting by decoding every packet with ``decode``: what ``count_batch`` must give."""
    tally: dict[Any, list[Any]] = {}
    payloads = []
    for timestamp, frame in frames:
        key, control, length, payload = decode(linktype, frame)
        role = handshake_role(key[0], control) if isinstance(key, tuple) else 0
        entry = tally.setdefault(key, [timestamp, timestamp, 0, 0, 0])
        entry[0], entry[1] = min(entry[0], timestamp), max(entry[1], timestamp)
        entry[2] += 1
        entry[3] += length
        entry[4] |= role
        if payload is not None:
            payloads.append((timestamp, key, *payload))
    return tally, payloads


def _random_frames(linktype: int) -> list[tuple[float, bytes]]:
    """600 frames of every kind, some fragments and ICMP, cut at various snap lengths, out of
    time order."""
    rng = random.Random(linktype)
    frames = []
    for _ in range(600):
        version = rng.choice([4, 6])
        packet = bytearray(
            ip_packet(
                *ADDRESSES[version],
                rng.choice(["tcp", "udp", "sctp"]),
                rng.choice([53, 80, 40000]),
                rng.choice([53, 443, 50000]),
                flags=rng.randrange(256),
                chunk=rng.choice([0, 1, 2, 3]),
                payload=rng.randbytes(rng.randrange(40)),
            )
        )
        if version == 4 and rng.random() < 0.2:
            packet[6:8] = struct.pack("!H", rng.choice([0x2000, 0x0010, 0x4000]))  # fragments
        if version == 4 and rng.random() < 0.1:
            packet[9] = 1  # ICMP
        frame = FRAMERS[linktype](bytes(packet))[: rng.choice([200, 60, 40, 30])]  # snap lengths
        frames.append((1000.0 + rng.random(), frame))
    return frames


def _check_counts(
    frames: list[tuple[float, bytes]],
    linktype: int,
    tally: Tally,
    dns_tally: Tally,
    payloads: list[DnsPayload],
) -> None:
    expected_tally, expected_payloads = _reference_count(linktype, frames)
    counted = {key: list(counts.fields()) for key, counts in (tally | dns_tally).items()}
    assert counted == expected_tally
    # Port-53 keys (and only they) are counted apart.
    assert set(dns_tally) == {payload[1] for payload in expected_payloads}
    assert not set(tally) & set(dns_tally)
    assert payloads == expected_payloads


# The module as imported (compiled by mypyc where the build could) and its source interpreted:
# both must count alike.
IMPLEMENTATIONS = {"imported": packets, "interpreted": interpreted(packets)}


@pytest.mark.parametrize("implementation", sorted(IMPLEMENTATIONS))
@pytest.mark.parametrize("linktype", sorted(FRAMERS))
def test_count_batch_agrees_with_decoding_every_packet(linktype: int, implementation: str) -> None:
    count_batch = IMPLEMENTATIONS[implementation].count_batch
    frames = _random_frames(linktype)
    tally: Tally = {}
    dns_tally: Tally = {}
    payloads: list[DnsPayload] = []
    for start in range(0, len(frames), 100):
        batch = frames[start : start + 100]
        count_batch(
            linktype, [t for t, _ in batch], [f for _, f in batch], tally, dns_tally, payloads
        )
    _check_counts(frames, linktype, tally, dns_tally, payloads)
    assert len(tally) > 20 and dns_tally


@pytest.mark.parametrize("implementation", sorted(IMPLEMENTATIONS))
@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("linktype", sorted(FRAMERS))
def test_counting_pcap_records_agrees_with_decoding_every_packet(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    linktype: int,
    big_endian: bool,
    implementation: str,
) -> None:
    """The pcap file's own records, in either byte order, walked in small chunks (records cut
    by a chunk's end are carried over)."""
    count_records = IMPLEMENTATIONS[implementation].count_records
    monkeypatch.setattr(sources, "CHUNK_SIZE", 1000)
    path = write_pcap(
        tmp_path / "a.pcap",
        _random_frames(linktype),
        linktype=linktype,
        big_endian=big_endian,
        nano=big_endian,
    )
    frames = [(timestamp, frame) for timestamp, _, frame in sources.records(path)]
    tally: Tally = {}
    dns_tally: Tally = {}
    payloads: list[DnsPayload] = []
    report = sources.CaptureFile(path).walk(
        lambda chunk: count_records(chunk, tally, dns_tally, payloads)
    )
    assert (report.ok, report.packets) == (True, 600)
    assert report.bytes == sum(len(frame) for _, frame in frames)
    _check_counts(frames, linktype, tally, dns_tally, payloads)
    assert len(tally) > 20 and dns_tally


@pytest.mark.parametrize("implementation", sorted(IMPLEMENTATIONS))
def test_bursts_of_a_connection_both_ways_count_as_decoding_every_packet(
    tmp_path: Path, implementation: str
) -> None:
    """A connection's packets one after another, both ways and interleaved with another's, and
    DNS packets in a row: each is counted under its own key (the loop reuses the last two keys
    it looked up) and every DNS packet's payload is kept."""
    count_records = IMPLEMENTATIONS[implementation].count_records
    client, server = ADDRESSES[4]
    forward = ip_packet(client, server, "tcp", 40000, 80, flags=TCP_ACK, payload=b"x" * 10)
    backward = ip_packet(server, client, "tcp", 80, 40000, flags=TCP_ACK, payload=b"y" * 30)
    other = ip_packet(client, server, "tcp", 40001, 80, flags=TCP_SYN)
    over_udp = ip_packet(client, server, "udp", 40000, 80)  # the first's ports, another protocol
    query = ip_packet(client, server, "udp", 5353, 53, payload=dns_query("a.example"))
    packets_sent = [
        forward, forward, backward, forward, backward, backward, other, forward, over_udp,
        backward, query, query, query, forward, other, other, backward,
    ]  # fmt: skip
    frames = [(1000.0 + place / 10, ethernet(packet)) for place, packet in enumerate(packets_sent)]
    path = write_pcap(tmp_path / "a.pcap", frames, linktype=1)
    tally: Tally = {}
    dns_tally: Tally = {}
    payloads: list[DnsPayload] = []
    sources.CaptureFile(path).walk(lambda chunk: count_records(chunk, tally, dns_tally, payloads))
    _check_counts(frames, 1, tally, dns_tally, payloads)
    assert len(payloads) == 3
    assert [counts.packets for counts in tally.values()] == [5, 5, 3, 1]


@pytest.mark.parametrize("header", ["<III4x", ">III4x", "<dII"])
def test_garbage_records_never_raise_and_both_implementations_agree(header: str) -> None:
    """Random bytes behind plausible record headers, for every link type: whatever is counted,
    the compiled and the interpreted loop count the same and neither raises."""
    rng = random.Random(header)
    for _ in range(200):
        size = rng.randrange(3000)
        buffer = bytearray(rng.randbytes(size))
        position = 0
        while position + sources.RECORD_HEADER < size:
            captured = rng.randrange(120)
            if header == "<dII":
                struct.pack_into(header, buffer, position, rng.random() * 1e9, 0, captured)
            else:
                fields = (rng.randrange(1 << 32), rng.randrange(10**6), captured, captured)
                struct.pack_into(header[0] + "IIII", buffer, position, *fields)
            position += sources.RECORD_HEADER + captured
        data = bytes(buffer) + bytes(sources.RECORD_SLACK)
        linktype = rng.choice([*FRAMERS, 228, 229, 999])
        results = []
        for module in IMPLEMENTATIONS.values():
            chunk = sources.RecordChunk(linktype, header, 1e6, 1 << 18, data, 0, size)
            tally: Tally = {}
            dns_tally: Tally = {}
            payloads: list[DnsPayload] = []
            walked = module.count_records(chunk, tally, dns_tally, payloads)
            counted = [{k: c.fields() for k, c in t.items()} for t in (tally, dns_tally)]
            results.append((walked, counted, payloads))
        assert results[0] == results[1]


@pytest.mark.parametrize("implementation", sorted(IMPLEMENTATIONS))
def test_fold_tally_makes_one_entry_of_both_directions(implementation: str) -> None:
    module = IMPLEMENTATIONS[implementation]
    client, server = (socket.inet_pton(socket.AF_INET, ip) for ip in ("10.0.0.9", "10.0.0.10"))
    low, high = (socket.inet_pton(socket.AF_INET6, ip) for ip in ("fd00::1", "fd00::2"))
    tally = {
        # The client (the lower address bytes, though "10.0.0.9" > "10.0.0.10" as text) opens
        # and closes...
        (6, client + server + struct.pack("!HH", 40000, 80)): _counts(module, 5.0, 7.0, 3, 180, 5),
        # ... the server accepts.
        (6, server + client + struct.pack("!HH", 80, 40000)): _counts(module, 5.5, 6.5, 2, 900, 2),
        # One way only, over IPv6.
        (17, high + low + struct.pack("!HH", 5000, 6000)): _counts(module, 4.0, 4.0, 1, 60, 0),
        # An endpoint sending to itself: its key is its own other direction.
        (17, client + client + struct.pack("!HH", 53, 53)): _counts(module, 8.0, 9.0, 2, 90, 0),
        module.Skip.SHORT: _counts(module, 1.0, 1.0, 4, 0, 0),
    }  # fmt: skip
    folded = module.fold_tally(tally, 3)
    assert tally == {}  # emptied as it is read: a file's keys and its entries never both whole
    assert _unpacked(folded.entries) == {
        # lower address bytes first; bits: a opened (1), b accepted (8), closed (16), both sent
        (6, "10.0.0.9", 40000, "10.0.0.10", 80): (5.0, 7.0, 1080, 5, 1 | 8 | 16 | 128 | 256, 3),
        (17, "fd00::1", 6000, "fd00::2", 5000): (4.0, 4.0, 60, 1, 256, 3),
        (17, "10.0.0.9", 53, "10.0.0.9", 53): (8.0, 9.0, 90, 2, 128, 3),
    }  # fmt: skip
    assert folded.pairs == {
        client + server: ("10.0.0.9", "10.0.0.10", 5.0),
        low + high: ("fd00::1", "fd00::2", 4.0),
        client + client: ("10.0.0.9", "10.0.0.9", 8.0),
    }
    assert (folded.counted, folded.first_seen) == (8, 4.0)
    assert folded.skipped == {module.Skip.SHORT: 4}
    # One string per address, for every pair it is in.
    assert all(
        ip is sys.intern(ip) for ip_a, ip_b, _ in folded.pairs.values() for ip in (ip_a, ip_b)
    )
    assert module.fold_tally({}, 0).first_seen is None


def _unpacked(entries: dict[bytes, bytes]) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    """Packed conversation keys and entries as (protocol number, IP a, port a, IP b, port b) and
    (first seen, last seen, bytes, packets, bits, file number)."""
    unpacked = {}
    for key, entry in entries.items():
        half = (len(key) - 5) // 2
        family = socket.AF_INET if half == 4 else socket.AF_INET6
        port_a, port_b, protocol = struct.unpack("!HHB", key[-5:])
        ip_a, ip_b = (socket.inet_ntop(family, raw) for raw in (key[:half], key[half:-5]))
        unpacked[(protocol, ip_a, port_a, ip_b, port_b)] = struct.unpack("<ddQQHI", entry)
    return unpacked


def _counts(
    module: ModuleType, first: float, last: float, packets: int, size: int, roles: int
) -> Any:
    counts = module.Counts(first, size, roles)
    counts.last, counts.packets = last, packets
    return counts


@pytest.mark.parametrize("implementation", sorted(IMPLEMENTATIONS))
def test_fold_tally_agrees_with_folding_each_key_by_hand(implementation: str) -> None:
    module = IMPLEMENTATIONS[implementation]
    tally: Tally = {}
    dns_tally: Tally = {}
    payloads: list[DnsPayload] = []
    frames = _random_frames(module.LINKTYPE_ETHERNET)
    module.count_batch(
        module.LINKTYPE_ETHERNET,
        [t for t, _ in frames],
        [f for _, f in frames],
        tally,
        dns_tally,
        payloads,
    )
    tally |= dns_tally
    expected: dict[tuple[Any, ...], list[Any]] = {}
    for key, counts in tally.items():
        if not isinstance(key, tuple):
            continue
        number, source, source_port, destination, destination_port = split_key(key)
        # The end with the lower address bytes first (then the lower port).
        low, high = (source, source_port), (destination, destination_port)
        forward = _packed(low) <= _packed(high)
        conversation = (number, *(low + high if forward else high + low))
        bits = conversation_bits(counts.roles, forward)
        entry = expected.setdefault(conversation, [counts.first, counts.last, 0, 0, 0, 7])
        entry[0], entry[1] = min(entry[0], counts.first), max(entry[1], counts.last)
        entry[2] += counts.size
        entry[3] += counts.packets
        entry[4] |= bits
    folded = module.fold_tally(tally, 7)
    assert _unpacked(folded.entries) == {key: tuple(entry) for key, entry in expected.items()}
    assert len(expected) > 20
    assert folded.counted == sum(entry[3] for entry in expected.values())


def _packed(endpoint: tuple[str, int]) -> bytes:
    ip, port = endpoint
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    return socket.inet_pton(family, ip) + struct.pack("!H", port)
