"""Build real packets and capture files with dpkt, for the reading tests and the fixtures.

Every link type the analyser reads gets a framer; frames are written to pcap (either byte
order, micro or nano), pcapng (several interfaces) and gzip.
"""

from __future__ import annotations

import gzip
import socket
import struct
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import dpkt

TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK = 0x01, 0x02, 0x04, 0x08, 0x10

Frame = tuple[float, bytes]


def _address(ip: str) -> tuple[int, bytes]:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    return family, socket.inet_pton(family, ip)


def transport(
    protocol: str,
    sport: int,
    dport: int,
    *,
    flags: int = TCP_ACK,
    payload: bytes = b"",
    chunk: int = 0,
    seq: int = 0xDEADBEEF,
) -> dpkt.Packet:
    """A TCP, UDP or SCTP header (+ payload); ``chunk`` is the SCTP chunk type, ``seq`` the TCP
    sequence number (dpkt's default unless given)."""
    if protocol == "tcp":
        return dpkt.tcp.TCP(sport=sport, dport=dport, flags=flags, data=payload, seq=seq)
    if protocol == "udp":
        return dpkt.udp.UDP(sport=sport, dport=dport, data=payload, ulen=8 + len(payload))
    if protocol == "sctp":
        # common header (ports, verification tag, checksum 0: dpkt fills in CRC32c) + one chunk
        body = struct.pack("!BBH", chunk, 0, 20) + b"\x00" * 16
        return dpkt.sctp.SCTP(struct.pack("!HHII", sport, dport, 7, 0) + body)
    raise ValueError(protocol)


_IP_PROTOCOLS = {"tcp": 6, "udp": 17, "sctp": 132}


def ip_packet(src: str, dst: str, protocol: str, sport: int, dport: int, **kwargs: object) -> bytes:
    """An IPv4 or IPv6 packet (by the address form) carrying one transport header."""
    family, _ = _address(src)
    segment = transport(protocol, sport, dport, **kwargs)  # type: ignore[arg-type]
    if family == socket.AF_INET:
        packet = dpkt.ip.IP(
            src=_address(src)[1],
            dst=_address(dst)[1],
            p=_IP_PROTOCOLS[protocol],
            ttl=64,
            data=segment,
        )
        packet.len = 20 + len(bytes(segment))
        return bytes(packet)
    packet6 = dpkt.ip6.IP6(
        src=_address(src)[1],
        dst=_address(dst)[1],
        nxt=_IP_PROTOCOLS[protocol],
        hlim=64,
        data=segment,
        plen=len(bytes(segment)),
    )
    return bytes(packet6)


def ip_in_ip(src: str, dst: str, inner: bytes) -> bytes:
    """IPv4 carrying an IPv4 (protocol 4, Calico's IPIP) or IPv6 packet (protocol 41)."""
    outer = dpkt.ip.IP(
        src=_address(src)[1], dst=_address(dst)[1], p=4 if inner[0] >> 4 == 4 else 41, ttl=64
    )
    outer.data = inner
    outer.len = 20 + len(inner)
    return bytes(outer)


def vxlan(src: str, dst: str, frame: bytes, *, port: int = 4789, vni: int = 1) -> bytes:
    """An Ethernet frame in VXLAN (flags: I) in UDP between two nodes."""
    header = struct.pack("!B3xI", 0x08, vni << 8)
    return ip_packet(src, dst, "udp", 51234, port, payload=header + frame)


def geneve(src: str, dst: str, inner: bytes, *, kind: int = 0x6558, options: int = 2) -> bytes:
    """``inner`` (an Ethernet frame for 0x6558, else a packet of that EtherType) in Geneve, with
    ``options`` 4-byte words of options, in UDP between two nodes."""
    header = struct.pack("!BBHI", options, 0, kind, 7 << 8) + b"\x01" * 4 * options
    return ip_packet(src, dst, "udp", 40123, 6081, payload=header + inner)


def _ethertype(packet: bytes) -> int:
    return 0x0800 if packet[0] >> 4 == 4 else 0x86DD


def ethernet(packet: bytes, *, vlan: int | None = None) -> bytes:
    header = b"\x02\x00\x00\x00\x00\x01" + b"\x02\x00\x00\x00\x00\x02"
    if vlan is not None:
        header += struct.pack("!HH", 0x8100, vlan)
    return header + struct.pack("!H", _ethertype(packet)) + packet


def linux_sll(packet: bytes) -> bytes:
    # packet type (0: to us), ARPHRD_ETHER, address length, address (8 bytes), protocol
    return struct.pack("!HHH8sH", 0, 1, 6, b"\x02\x00\x00\x00\x00\x01", _ethertype(packet)) + packet


def linux_sll2(packet: bytes) -> bytes:
    # protocol, reserved, interface index, ARPHRD_ETHER, packet type, address length, address
    return (
        struct.pack("!HHIHBB8s", _ethertype(packet), 0, 2, 1, 4, 6, b"\x02" + b"\x00" * 7) + packet
    )


def raw(packet: bytes) -> bytes:
    return packet


def null(packet: bytes) -> bytes:
    """BSD loopback: the family in host (here: little-endian) byte order; IPv6 is 24 (BSD)."""
    return struct.pack("<I", 2 if packet[0] >> 4 == 4 else 24) + packet


def loop(packet: bytes) -> bytes:
    """OpenBSD loopback: the family in network byte order."""
    return struct.pack("!I", 2 if packet[0] >> 4 == 4 else 24) + packet


# link type → framer
FRAMERS: dict[int, Callable[[bytes], bytes]] = {
    0: null,
    1: ethernet,
    12: raw,
    14: raw,
    101: raw,
    108: loop,
    113: linux_sll,
    276: linux_sll2,
}


def write_pcap(
    path: Path,
    frames: Iterable[Frame],
    *,
    linktype: int = 1,
    big_endian: bool = False,
    nano: bool = False,
    snaplen: int = 65535,
) -> Path:
    """A pcap file written byte by byte (dpkt's Writer knows one byte order only)."""
    order = ">" if big_endian else "<"
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    scale = 1_000_000_000 if nano else 1_000_000
    out = bytearray(struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype))
    for timestamp, frame in frames:
        seconds = int(timestamp)
        fraction = round((timestamp - seconds) * scale)
        captured = frame[:snaplen]
        out += struct.pack(order + "IIII", seconds, fraction, len(captured), len(frame)) + captured
    path.write_bytes(bytes(out))
    return path


def _block(order: str, block_type: int, body: bytes) -> bytes:
    body += b"\x00" * (-len(body) % 4)
    length = 12 + len(body)
    return struct.pack(order + "II", block_type, length) + body + struct.pack(order + "I", length)


def write_pcapng(
    path: Path,
    interfaces: Sequence[tuple[int, int]],
    packets: Iterable[tuple[int, float, bytes]],
    *,
    big_endian: bool = False,
    offsets: Sequence[int] = (),
) -> Path:
    """A pcapng file: ``interfaces`` are (link type, if_tsresol as a negative power of ten),
    ``packets`` are (interface index, timestamp, frame); ``offsets`` are the interfaces'
    if_tsoffset seconds (the timestamps given include them)."""
    order = ">" if big_endian else "<"
    out = bytearray(_block(order, 0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1)))
    for index, (linktype, resolution) in enumerate(interfaces):
        options = struct.pack(order + "HHB3x", 9, 1, resolution)
        if index < len(offsets):
            options += struct.pack(order + "HHq", 14, 8, offsets[index])
        options += struct.pack(order + "HH", 0, 0)
        out += _block(order, 1, struct.pack(order + "HHI", linktype, 0, 65535) + options)
    for index, timestamp, frame in packets:
        offset = offsets[index] if index < len(offsets) else 0
        units = round((timestamp - offset) * 10 ** interfaces[index][1])
        header = struct.pack(
            order + "IIIII", index, units >> 32, units & 0xFFFFFFFF, len(frame), len(frame)
        )
        out += _block(order, 6, header + frame)
    path.write_bytes(bytes(out))
    return path


def gzip_file(source: Path, target: Path) -> Path:
    target.write_bytes(gzip.compress(source.read_bytes(), mtime=0))
    return target


def dns_query(question: str, *, ident: int = 1) -> bytes:
    query = dpkt.dns.DNS.Q(name=question, type=dpkt.dns.DNS_A, cls=dpkt.dns.DNS_IN)
    return bytes(
        dpkt.dns.DNS(
            id=ident, qr=dpkt.dns.DNS_Q, opcode=dpkt.dns.DNS_QUERY, qd=[query], an=[], ns=[], ar=[]
        )
    )


def dns_response(
    question: str,
    answers: Sequence[tuple[str, str, str]],
    *,
    ident: int = 1,
    rcode: int = dpkt.dns.DNS_RCODE_NOERR,
) -> bytes:
    """A DNS response: answers are (owner, type "A"/"AAAA"/"CNAME", value); ``rcode``, its
    response code (NXDOMAIN: the name does not exist)."""
    records = []
    for owner, kind, value in answers:
        record = dpkt.dns.DNS.RR(name=owner, cls=dpkt.dns.DNS_IN, ttl=30)
        if kind == "CNAME":
            record.type = dpkt.dns.DNS_CNAME
            record.cname = value
        else:
            record.type = dpkt.dns.DNS_A if kind == "A" else dpkt.dns.DNS_AAAA
            record.rdata = _address(value)[1]
        records.append(record)
    query = dpkt.dns.DNS.Q(name=question, type=dpkt.dns.DNS_A, cls=dpkt.dns.DNS_IN)
    message = dpkt.dns.DNS(
        id=ident,
        qr=dpkt.dns.DNS_R,
        opcode=dpkt.dns.DNS_QUERY,
        rcode=rcode,
        qd=[query],
        an=records,
    )
    return bytes(message)


# --- The committed fixtures in tests/data -----------------------------------------------------
# Regenerate with: .venv/bin/python -m tests.analyser.packet_builders tests/data
# (test_sources checks that the committed files are exactly what this writes).

START = 1_700_000_000.0
CLIENT, DNS_SERVER, EXTERNAL, PEER = "10.1.0.5", "10.96.0.10", "203.0.113.7", "10.1.0.9"
ARP = b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x06" + b"\x00" * 28


def two_pods_frames() -> list[Frame]:
    """DNS (a CNAME chain), a TCP connection with its handshake, UDP without one, and ARP."""
    answer = dns_response(
        "api.example.com",
        [
            ("api.example.com", "CNAME", "edge.example.net"),
            ("edge.example.net", "A", EXTERNAL),
            ("edge.example.net", "AAAA", "2001:db8::7"),
        ],
    )
    packets = [
        ip_packet(CLIENT, DNS_SERVER, "udp", 40001, 53, payload=dns_query("api.example.com")),
        ip_packet(DNS_SERVER, CLIENT, "udp", 53, 40001, payload=answer),
        ip_packet(CLIENT, EXTERNAL, "tcp", 40002, 443, flags=TCP_SYN),
        ip_packet(EXTERNAL, CLIENT, "tcp", 443, 40002, flags=TCP_SYN | TCP_ACK),
        ip_packet(CLIENT, EXTERNAL, "tcp", 40002, 443, flags=TCP_ACK),
        ip_packet(CLIENT, EXTERNAL, "tcp", 40002, 443, flags=TCP_PSH | TCP_ACK, payload=b"x" * 100),
        ip_packet(CLIENT, PEER, "udp", 40003, 8125, payload=b"metric:1|c"),
    ]
    frames = [(START + index * 0.001, ethernet(packet)) for index, packet in enumerate(packets)]
    return [*frames, (START + 0.5, ARP)]


def write_fixtures(directory: Path) -> None:
    pcap = write_pcap(directory / "two-pods.pcap", two_pods_frames())
    gzip_file(pcap, directory / "two-pods.pcap.gz")
    # Cut inside the last record: 7 whole packets and a damaged eighth.
    (directory / "truncated.pcap").write_bytes(pcap.read_bytes()[:-10])
    (directory / "garbage.pcap").write_bytes(bytes((index * 37 + 11) % 256 for index in range(300)))
    syn = ip_packet(CLIENT, PEER, "tcp", 40010, 8080, flags=TCP_SYN)
    syn_ack = ip_packet(PEER, CLIENT, "tcp", 8080, 40010, flags=TCP_SYN | TCP_ACK)
    # Interface 0: Ethernet, microseconds; interface 1: Linux cooked v2, nanoseconds.
    write_pcapng(
        directory / "two-interfaces.pcapng",
        [(1, 6), (276, 9)],
        [(0, START + 1.0, ethernet(syn)), (1, START + 1.5, linux_sll2(syn_ack))],
    )


if __name__ == "__main__":
    import sys

    write_fixtures(Path(sys.argv[1]))
