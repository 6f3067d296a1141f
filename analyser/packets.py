"""Packets: captured bytes → small L3/L4 facts (one by one with ``decode``, or counted per
5-tuple key with ``count_batch``), and DNS messages → answers.

The only place that decodes link, network and transport headers, and (with dpkt.dns) DNS. Pure:
no I/O. Decoding is best effort and never raises on bad bytes: a packet that is not IP, a
non-first fragment, a protocol other than TCP/UDP/SCTP or a header cut short by the snap length
comes back with a :class:`Skip` reason for the caller to count. Overlay encapsulations (IP in IP,
VXLAN, Geneve: node-wide captures) are opened, and the packet inside gives the facts.

The hot path reads fixed offsets with ``struct.unpack_from`` instead of building dpkt objects: it
runs once per packet, millions of times per capture, and a dpkt object per layer costs
microseconds each (see ``bench/analyse_throughput.py`` and ``docs/captures.md``). For the same
reason this module is compiled with mypyc where the install can (``setup.py``): it must stay
within what mypyc compiles, and the interpreted source gives the same results.

Link types (pcap LINKTYPE_* values) understood:

========  ============================================================
0         BSD loopback NULL (4-byte address family in the writer's byte order)
1         Ethernet, with 802.1Q / 802.1ad VLAN tags
12, 14    raw IP (old DLT_RAW values of some systems)
101       raw IP
108       OpenBSD loopback LOOP (address family in network byte order)
113       Linux cooked capture v1 (``tcpdump -i any`` before libpcap 1.10)
228, 229  raw IPv4, raw IPv6
276       Linux cooked capture v2 (``tcpdump -i any`` with libpcap ≥ 1.10)
========  ============================================================
"""

from __future__ import annotations

import functools
import math
import re
import socket
import struct
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from sys import intern
from typing import Any, Final, NamedTuple

from analyser.flows import (
    CONVERSATION_ENTRY,
    AddressPair,
    ConversationEntry,
    ConversationKey,
    conversation_bits,
    handshake_role,
)
from analyser.sources import RECORD_HEADER, RECORD_SLACK, RecordChunk, repacked

# Final: compiled, these are constants in the code rather than lookups of module globals.
TCP: Final = 6
UDP: Final = 17
SCTP: Final = 132
DNS_PORT: Final = 53

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
# DLT_RAW had other numbers on some BSDs; pcap files from them carry these.
LINKTYPES_RAW = (12, 14, LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6)

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
ETHERTYPES_VLAN = (0x8100, 0x88A8, 0x9100)

# Address families in NULL/LOOP headers: IPv4 is 2 everywhere, IPv6 differs per system
# (Linux 10, the BSDs 24, FreeBSD 28, Darwin 30).
_AF_INET = 2
_AF_INET6 = (10, 24, 28, 30)

# Overlay networks, seen in captures taken on a node's own interface: IP in IP (Calico's default),
# VXLAN (flannel, Calico, Cilium; on the IANA port or Linux's old default) and Geneve (OVN-
# Kubernetes, Cilium). The packet inside is the flow; the tunnel between nodes is not.
IPIP: Final = 4
IPV6_IN_IP: Final = 41
VXLAN_PORT: Final = 4789
VXLAN_LINUX_PORT: Final = 8472
GENEVE_PORT: Final = 6081
_TRANSPARENT_ETHERNET = 0x6558  # Geneve's protocol type for an Ethernet frame inside
# Encapsulations opened one inside another at most (a crafted packet must not recurse deeply).
_MAX_TUNNELS = 2

# IPv6 extension headers with the generic "next header, length in 8-byte units" layout.
_IPV6_GENERIC_EXTENSIONS = frozenset((0, 43, 60, 135, 139, 140, 253, 254))
_IPV6_FRAGMENT = 44
_IPV6_AUTH = 51


class Skip(IntEnum):
    """Why a packet gave no facts; the caller counts these."""

    NOT_IP = 1  # ARP, LLDP, ... or a link type we do not decode
    FRAGMENT = 2  # a non-first IP fragment: no transport header
    OTHER_PROTOCOL = 3  # ICMP, ESP, GRE, ...: not a flow a NetworkPolicy names
    SHORT = 4  # headers cut short (snap length or a damaged record)
    UNKNOWN_LINKTYPE = 5


# (IP protocol number, addresses and ports as on the wire: source address, destination address,
# source port, destination port; 12 bytes for IPv4, 36 for IPv6). Kept raw because it is built
# millions of times; ``fold_tally`` turns the addresses into text once per file.
PacketKey = tuple[int, bytes]
# Facts of one packet, as a plain tuple for the same reason:
#   key: PacketKey, or the Skip reason when the packet gives no facts
#   control: TCP flags byte, SCTP first chunk type, 0 for UDP
#   length: the IP packet length from the IP header (not the captured length)
#   dns: a DnsSegment for a TCP/UDP packet to or from port 53, else None
# Skipped packets have the same shape, ``(reason, 0, 0, None)``, so that the caller handles every
# result alike (and counts skips under their reason like any other key).
DnsSegment = tuple[bytes, int, int, bool]
"""(transport payload as captured, without link-layer padding; TCP sequence number, 0 for UDP;
TCP flags byte, 0 for UDP; whether fewer bytes were captured than the IP header says were sent)"""
PacketFacts = tuple[PacketKey | Skip, int, int, DnsSegment | None]
Decoder = Callable[[bytes], PacketFacts]

_NOT_IP: PacketFacts = (Skip.NOT_IP, 0, 0, None)
_FRAGMENT: PacketFacts = (Skip.FRAGMENT, 0, 0, None)
_OTHER_PROTOCOL: PacketFacts = (Skip.OTHER_PROTOCOL, 0, 0, None)
_SHORT: PacketFacts = (Skip.SHORT, 0, 0, None)
_UNKNOWN_LINKTYPE: PacketFacts = (Skip.UNKNOWN_LINKTYPE, 0, 0, None)

# Any IPv4 header: version/IHL, total length, flags/fragment offset, protocol, addresses.
_IPV4 = struct.Struct("!BxHxxHxB2x8s")
# IPv6: payload length, next header, addresses.
_IPV6 = struct.Struct("!4xHB1x32s")
_U16 = struct.Struct("!H")
_U32_LE = struct.Struct("<I")
_U32_BE = struct.Struct("!I")


@functools.lru_cache(maxsize=4096)
def address_text(raw: bytes) -> str:
    """4 or 16 address bytes as compressed text (``10.0.0.1``, ``fd00::1``).

    Cached: servers have many flows with many clients, so the same addresses come again and
    again when a capture's pairs of addresses are turned into text (``fold_tally``), and in DNS
    answers; the last 4,096 are enough for that and stay small.
    """
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)


def _transport(
    buf: bytes, offset: int, protocol: int, key: bytes, length: int, end: int, tunnels: int
) -> PacketFacts:
    """The transport header at ``offset``; ``key`` already ends with its two ports; ``end``: where
    the IP packet ends in ``buf`` by its header; ``tunnels``: how many more encapsulations may be
    opened."""
    if protocol == TCP:
        if len(buf) < offset + 14:
            return _SHORT
        control = buf[offset + 13]
        payload = offset + (buf[offset + 12] >> 4) * 4
    elif protocol == UDP:
        control = 0
        payload = offset + 8
        if tunnels and is_tunnel_port(key[-2] << 8 | key[-1]):
            inner = _overlay(buf, payload, key[-2] << 8 | key[-1], tunnels - 1)
            if inner is not None:
                return inner
    elif protocol in (IPIP, IPV6_IN_IP) and tunnels:
        return (_ipv4 if protocol == IPIP else _ipv6)(buf, offset, tunnels - 1)
    elif protocol == SCTP:
        if len(buf) < offset + 13:
            return _SHORT
        return (SCTP, key), buf[offset + 12], length, None
    else:
        return _OTHER_PROTOCOL
    # Port 53 (0x0035) as source or destination: the last four bytes of the key are the ports.
    if (key[-3] == DNS_PORT and key[-4] == 0) or (key[-1] == DNS_PORT and key[-2] == 0):
        seq = _U32_BE.unpack_from(buf, offset + 4)[0] if protocol == TCP else 0
        segment = (buf[payload:end], seq, control, len(buf) < end)
        return (protocol, key), control, length, segment
    return (protocol, key), control, length, None


def is_tunnel_port(port: int) -> bool:
    """Whether UDP to ``port`` is taken for an overlay's encapsulation (if its header fits)."""
    return port in (VXLAN_PORT, VXLAN_LINUX_PORT, GENEVE_PORT)


def _overlay(buf: bytes, offset: int, port: int, tunnels: int) -> PacketFacts | None:
    """The packet inside a VXLAN or Geneve header at ``offset``; None when the bytes there are not
    such a header (then it is plain UDP to that port)."""
    if len(buf) < offset + 8:
        return None
    if port == GENEVE_PORT:
        # Version 0; options length in 4-byte words; protocol type: an EtherType.
        if buf[offset] >> 6:
            return None
        inner = offset + 8 + (buf[offset] & 0x3F) * 4
        kind = _U16.unpack_from(buf, offset + 2)[0]
        if kind == _TRANSPARENT_ETHERNET:
            return _ethernet(buf, inner, tunnels)
        decoder = _BY_ETHERTYPE.get(kind)
        return None if decoder is None else decoder(buf, inner, tunnels)
    # VXLAN: the I flag (a valid network identifier) and nothing else in the flags byte.
    if buf[offset] != 0x08:
        return None
    return _ethernet(buf, offset + 8, tunnels)


def _ipv4(buf: bytes, offset: int, tunnels: int = _MAX_TUNNELS) -> PacketFacts:
    if len(buf) < offset + 20:
        return _SHORT
    version_ihl, length, fragment, protocol, addresses = _IPV4.unpack_from(buf, offset)
    if version_ihl >> 4 != 4:
        return _NOT_IP
    if fragment & 0x1FFF:
        return _FRAGMENT
    transport = offset + (version_ihl & 0x0F) * 4
    if len(buf) < transport + 4:
        return _SHORT
    ports = buf[transport : transport + 4]
    return _transport(buf, transport, protocol, addresses + ports, length, offset + length, tunnels)


def _ipv6(buf: bytes, offset: int, tunnels: int = _MAX_TUNNELS) -> PacketFacts:
    if len(buf) < offset + 44:
        return _SHORT
    payload_length, header, addresses = _IPV6.unpack_from(buf, offset)
    position = offset + 40
    end = position + payload_length
    if header in (TCP, UDP, SCTP):
        key = buf[offset + 8 : offset + 44]
        return _transport(buf, position, header, key, payload_length + 40, end, tunnels)
    while True:
        if header in _IPV6_GENERIC_EXTENSIONS:
            if len(buf) < position + 2:
                return _SHORT
            header, size = buf[position], (buf[position + 1] + 1) * 8
            position += size
        elif header == _IPV6_FRAGMENT:
            if len(buf) < position + 4:
                return _SHORT
            if _U16.unpack_from(buf, position + 2)[0] & 0xFFF8:
                return _FRAGMENT
            header = buf[position]
            position += 8
        elif header == _IPV6_AUTH:
            if len(buf) < position + 2:
                return _SHORT
            header, size = buf[position], (buf[position + 1] + 2) * 4
            position += size
        else:
            if len(buf) < position + 4:
                return _SHORT
            ports = buf[position : position + 4]
            facts = addresses + ports, payload_length + 40, end, tunnels
            return _transport(buf, position, header, *facts)


def _ip(buf: bytes, offset: int) -> PacketFacts:
    """IP of either version, told apart by the version nibble."""
    if len(buf) <= offset:
        return _SHORT
    version = buf[offset] >> 4
    if version == 4:
        return _ipv4(buf, offset)
    if version == 6:
        return _ipv6(buf, offset)
    return _NOT_IP


def _not_ip(buf: bytes, offset: int, tunnels: int = 0) -> PacketFacts:
    return _NOT_IP


# EtherType → decoder of the header that follows it: (bytes, offset, tunnels) → facts.
_BY_ETHERTYPE: dict[int, Callable[[bytes, int, int], PacketFacts]] = {
    ETHERTYPE_IPV4: _ipv4,
    ETHERTYPE_IPV6: _ipv6,
}


def _ethernet(buf: bytes, offset: int, tunnels: int) -> PacketFacts:
    """An Ethernet frame starting at ``offset`` (also inside a VXLAN or Geneve header)."""
    if len(buf) < offset + 14:
        return _SHORT
    ethertype = buf[offset + 12] << 8 | buf[offset + 13]
    offset += 14
    while ethertype in ETHERTYPES_VLAN:
        if len(buf) < offset + 4:
            return _SHORT
        ethertype = buf[offset + 2] << 8 | buf[offset + 3]
        offset += 4
    return _BY_ETHERTYPE.get(ethertype, _not_ip)(buf, offset, tunnels)


def decode_ethernet(buf: bytes) -> PacketFacts:
    return _ethernet(buf, 0, _MAX_TUNNELS)


def decode_linux_sll(buf: bytes) -> PacketFacts:
    if len(buf) < 16:
        return _SHORT
    return _BY_ETHERTYPE.get(buf[14] << 8 | buf[15], _not_ip)(buf, 16, _MAX_TUNNELS)


def decode_linux_sll2(buf: bytes) -> PacketFacts:
    if len(buf) < 20:
        return _SHORT
    return _BY_ETHERTYPE.get(buf[0] << 8 | buf[1], _not_ip)(buf, 20, _MAX_TUNNELS)


def decode_raw(buf: bytes) -> PacketFacts:
    return _ip(buf, 0)


def _by_family(buf: bytes, family: int) -> PacketFacts:
    if family == _AF_INET:
        return _ipv4(buf, 4)
    if family in _AF_INET6:
        return _ipv6(buf, 4)
    return _NOT_IP


def decode_null(buf: bytes) -> PacketFacts:
    if len(buf) < 4:
        return _SHORT
    # The family is in the byte order of the machine that wrote the file: small values only.
    family = _U32_LE.unpack_from(buf, 0)[0]
    if family > 0xFFFF:
        family = _U32_BE.unpack_from(buf, 0)[0]
    return _by_family(buf, family)


def decode_loop(buf: bytes) -> PacketFacts:
    if len(buf) < 4:
        return _SHORT
    return _by_family(buf, _U32_BE.unpack_from(buf, 0)[0])


def _unknown_linktype(buf: bytes) -> PacketFacts:
    return _UNKNOWN_LINKTYPE


_DECODERS: dict[int, Decoder] = {
    LINKTYPE_NULL: decode_null,
    LINKTYPE_ETHERNET: decode_ethernet,
    LINKTYPE_LOOP: decode_loop,
    LINKTYPE_LINUX_SLL: decode_linux_sll,
    LINKTYPE_LINUX_SLL2: decode_linux_sll2,
    **dict.fromkeys(LINKTYPES_RAW, decode_raw),
}


def decoder_for(linktype: int) -> Decoder:
    """The decoder for a link type: ``decoder(bytes) -> PacketFacts``; never raises."""
    return _DECODERS.get(linktype, _unknown_linktype)


def decode(linktype: int, buf: bytes) -> PacketFacts:
    """Facts of one captured packet, or (in the key's place) why there are none."""
    return decoder_for(linktype)(buf)


# --- Counting ------------------------------------------------------------------------------

# Link types whose header has a fixed size: where the EtherType and the IP header are, for the
# inline decoding in ``count_records``.
_INLINE_LAYOUTS: dict[int, tuple[int, int]] = {
    LINKTYPE_ETHERNET: (12, 14),
    LINKTYPE_LINUX_SLL: (14, 16),
    LINKTYPE_LINUX_SLL2: (0, 20),
}
# Other link types decode nothing inline: their minimum lengths are never met (this layout only
# has to give valid structs).
_NO_LAYOUT = (0, 2)
_NEVER = 1 << 32  # more than any record holds (sources.MAX_RECORD)


class Counts:
    """What the packets of one key (or Skip reason) in one file add up to.

    A class rather than a list: compiled (see ``setup.py``), its fields are plain C fields.
    """

    __slots__ = ("first", "last", "packets", "roles", "size")

    def __init__(self, timestamp: float, size: int, roles: int) -> None:
        self.first = timestamp  # first seen, UTC epoch seconds
        self.last = timestamp  # last seen
        self.packets = 1
        self.size = size  # IP bytes, as the IP headers give them
        self.roles = roles  # flows.ROLE_* bits of what the key's source sent

    def add(self, timestamp: float, size: int, roles: int) -> None:
        """One more packet (any time order)."""
        if timestamp > self.last:
            self.last = timestamp
        elif timestamp < self.first:
            self.first = timestamp
        self.packets += 1
        self.size += size
        self.roles |= roles

    def fields(self) -> tuple[float, float, int, int, int]:
        """(first, last, packets, size, roles)"""
        return self.first, self.last, self.packets, self.size, self.roles


Tally = dict[PacketKey | Skip, Counts]
_NO_COUNTS: Final = Counts(0.0, 0, 0)  # no key's (count_records' known keys start as none)


# The handshake bits of a conversation (``flows.CaptureConversations``) for a direction's roles
# (``Counts.roles``, below 16), sent by the conversation's lower endpoint or by its higher one.
_LOWER_SENT: Final = [conversation_bits(roles, True) for roles in range(16)]
_HIGHER_SENT: Final = [conversation_bits(roles, False) for roles in range(16)]


class FoldedTally(NamedTuple):
    """A file's tally as conversations (:func:`fold_tally`)."""

    entries: dict[ConversationKey, ConversationEntry]  # see ``flows.CaptureConversations``
    pairs: dict[bytes, AddressPair]  # likewise
    counted: int  # packets in them
    skipped: dict[Skip, int]  # packets without facts, by reason
    first_seen: float | None  # the first packet in them


def fold_tally(tally: Tally, number: int) -> FoldedTally:
    """The two directions of each 5-tuple of ``tally`` (one file's, the ``number``-th of the
    files read together) as one conversation entry, packed, keyed by its end with the lower
    address bytes first (see ``flows.CaptureConversations``). ``tally`` is emptied as it is
    read: a file of a million short connections holds as many keys, and its entries are made
    as its counts go, both directions of a conversation at once.

    Here rather than in ``flows`` because it runs once per key of every file (two per short
    connection) and this module is compiled. An address's text is made once per pair of
    addresses in a file and interned: one string for every pair it is in, in this file and the
    others.
    """
    entries: dict[bytes, bytes] = {}
    skipped: dict[Skip, int] = {}
    earliest: dict[bytes, float] = {}  # a pair of addresses → its first packet
    protocols = {number: bytes((number,)) for number in (TCP, UDP, SCTP)}
    lower_sent = _LOWER_SENT
    higher_sent = _HIGHER_SENT
    pack = CONVERSATION_ENTRY.pack
    counted = 0
    first_seen = math.inf
    while tally:
        key, counts = tally.popitem()
        if not isinstance(key, tuple):  # a Skip reason (a cheaper test than for Skip)
            skipped[key] = skipped.get(key, 0) + counts.packets
            continue
        protocol, raw = key
        half = (len(raw) - 4) >> 1  # see PacketKey
        source = raw[:half]
        destination = raw[half:-4]
        source_port = raw[-4:-2]
        destination_port = raw[-2:]
        reverse = b"".join((destination, source, destination_port, source_port))
        # The other direction, if any (none when both ends are one endpoint: the key is its own
        # reverse, and taken already).
        answer = tally.pop((protocol, reverse), None)
        first: float = counts.first
        last: float = counts.last
        packets: int = counts.packets
        size: int = counts.size
        forward = source < destination or (
            source == destination and source_port <= destination_port
        )
        bits = lower_sent[counts.roles] if forward else higher_sent[counts.roles]
        if answer is not None:
            if answer.first < first:
                first = answer.first
            if answer.last > last:
                last = answer.last
            packets += answer.packets
            size += answer.size
            bits |= higher_sent[answer.roles] if forward else lower_sent[answer.roles]
        if first < first_seen:
            first_seen = first
        counted += packets
        ordered = raw if forward else reverse
        pair = ordered[:-4]
        seen = earliest.get(pair)
        if seen is None or first < seen:
            earliest[pair] = first
        entries[ordered + protocols[protocol]] = pack(first, last, size, packets, bits, number)
    pairs: dict[bytes, AddressPair] = {}
    for pair, first in earliest.items():
        half = len(pair) >> 1
        pairs[pair] = (
            intern(address_text(pair[:half])),
            intern(address_text(pair[half:])),
            first,
        )
    return FoldedTally(entries, pairs, counted, skipped, first_seen if entries else None)


DnsPayload = tuple[float, PacketKey | Skip, bytes, int, int, bool]
"""(timestamp, key, then the packet's :data:`DnsSegment`: port-53 payload, TCP sequence number,
TCP flags, cut short by the snap length)"""

# Handshake role of a TCP packet's sender by its flags byte.
_TCP_ROLES = bytes([handshake_role(TCP, flags) for flags in range(256)])


class _Inline(NamedTuple):
    """How ``count_records`` reads the common case for one record header and link type."""

    byte_by_byte: bool  # read the fields one by one (see BYTE_BY_BYTE), else with ipv4 and ipv6
    ipv4: Callable[[bytes, int], tuple[Any, ...]]  # unpack_from at a record's start
    ipv6: Callable[[bytes, int], tuple[Any, ...]]
    big_endian: bool  # the record header's byte order
    ethertype_at: int  # where the EtherType is in the captured bytes
    ethertype_ipv4: int  # the EtherTypes and the fragment mask as the fields are read
    ethertype_ipv6: int
    fragment_mask: int
    minimum_ipv4: int  # captured bytes needed
    minimum_ipv6: int
    ip_at: int  # where the IP header starts in the captured bytes


def _u32(buffer: bytes, at: int, big_endian: bool) -> int:
    """The 4-byte unsigned integer at ``at``."""
    if big_endian:
        return buffer[at] << 24 | buffer[at + 1] << 16 | buffer[at + 2] << 8 | buffer[at + 3]
    return buffer[at + 3] << 24 | buffer[at + 2] << 16 | buffer[at + 1] << 8 | buffer[at]


# Compiled by mypyc, ``count_records`` reads a pcap record's fields byte by byte: C integers,
# no objects (unpacking the record header alone costs as much as the rest of the loop).
# Interpreted, each byte read is several bytecodes, and one ``struct.unpack_from`` per record is
# faster. Both read the same fields (the tests run both).
BYTE_BY_BYTE: Final = not isinstance(_u32, types.FunctionType)
# pcap's record headers, read byte by byte; others (a repacked pcapng record's double) unpacked.
_PCAP_HEADERS = {"<III4x": False, ">III4x": True}  # → big endian


@functools.lru_cache(maxsize=64)
def _inline(header: str, linktype: int) -> _Inline:
    ethertype_at, ip_at = _INLINE_LAYOUTS.get(linktype, _NO_LAYOUT)
    link = f"{ethertype_at}xH{ip_at - ethertype_at - 2}x"
    # After the record header (seconds, fraction, captured length) and the EtherType: for IPv4
    # version/IHL, the total length as two bytes, flags/fragment offset, protocol, addresses and
    # ports in one piece, TCP data offset and flags (meaningless for UDP); for IPv6 the payload
    # length as two bytes, next header, addresses and ports, TCP data offset and flags. The
    # numbers are read in the record header's byte order (one struct), so the EtherTypes and the
    # fragment mask are compared in that order too; lengths are put together from their bytes.
    # Read byte by byte, they are in network order.
    ipv4 = struct.Struct(header + link + "BxBB2xHxB2x12s8xBB")
    ipv6 = struct.Struct(header + link + "4xBBBx36s8xBB")
    assert max(ipv4.size, ipv6.size) <= RECORD_HEADER + RECORD_SLACK
    byte_by_byte = BYTE_BY_BYTE and header in _PCAP_HEADERS
    swap = header[0] == "<" and not byte_by_byte  # the record header is "<..." or ">..."
    known = linktype in _INLINE_LAYOUTS
    return _Inline(
        byte_by_byte,
        ipv4.unpack_from,
        ipv6.unpack_from,
        _PCAP_HEADERS.get(header, False),
        ethertype_at,
        0x0008 if swap else ETHERTYPE_IPV4,
        0xDD86 if swap else ETHERTYPE_IPV6,
        0xFF1F if swap else 0x1FFF,
        ip_at + 34 if known else _NEVER,
        ip_at + 54 if known else _NEVER,
        ip_at,
    )


def count_records(
    chunk: RecordChunk, tally: Tally, dns_tally: Tally, dns_payloads: list[DnsPayload]
) -> tuple[int, int]:
    """Walk the records of a chunk (a ``sources.RecordWalker``) and count them per key.

    Keys of TCP and UDP to or from port 53 are counted in ``dns_tally`` (and their payloads
    appended to ``dns_payloads``), every other key and Skip reason in ``tally``. The result is
    what decoding every packet with :func:`decode` and counting its facts gives; but the common
    case (behind Ethernet or Linux cooked v1/v2: IPv4 with a 20-byte header, not a fragment, or
    IPv6 without extension headers, carrying TCP or UDP with 14 bytes of transport header
    captured) is decoded inline, at fixed offsets: compiled, byte by byte; interpreted, with one
    unpack that also reads the record header (see ``BYTE_BY_BYTE``). This loop runs once per
    packet of every capture, and a bytes object, a decoder call or a facts tuple per packet would
    cost more than the rest of it. Port-53 keys are kept apart
    so that a known key needs no port test: they always take the slow path. UDP to an overlay's
    tunnel port (one test per UDP packet) and everything else go through the link type's
    decoder. ``test_packets`` checks that the two agree.

    Written for mypyc as much as for the interpreter (``setup.py`` compiles this module when it
    can): the fields go into typed locals, so that compiled they are C integers and floats.

    Returns (the offset of the first record not walked, records walked).
    """
    linktype, header, divisor, limit, buffer, offset, end = chunk
    layout = _inline(header, linktype)
    byte_by_byte = layout.byte_by_byte
    big_endian = layout.big_endian
    ethertype_at: int = layout.ethertype_at
    unpack_ipv4 = layout.ipv4
    unpack_ipv6 = layout.ipv6
    ethertype_ipv4: int = layout.ethertype_ipv4
    ethertype_ipv6: int = layout.ethertype_ipv6
    fragment_mask: int = layout.fragment_mask
    minimum_ipv4: int = layout.minimum_ipv4
    minimum_ipv6: int = layout.minimum_ipv6
    ip_at: int = layout.ip_at
    general = decoder_for(linktype)
    roles = _TCP_ROLES
    record_header: int = RECORD_HEADER
    last_start = end - record_header
    walked = 0
    seconds: float  # an int in pcap files; repacked pcapng records give a float
    fraction: int
    captured: int
    ethertype: int
    version_ihl: int
    high: int  # the IP length's bytes
    low: int
    fragment: int
    protocol: int
    raw: bytes
    data_offset: int
    control: int
    # The last two keys found or put in ``tally`` (not port 53's), and their counts: a
    # connection's packets come in bursts, both ways, and comparing a key's bytes with a known
    # key's costs less than making a key, hashing it and looking it up.
    last_protocol = other_protocol = -1
    last_raw = other_raw = b""
    last_counts = other_counts = _NO_COUNTS
    while offset <= last_start:
        ip = offset + record_header + ip_at
        if byte_by_byte:
            seconds = float(_u32(buffer, offset, big_endian))
            fraction = _u32(buffer, offset + 4, big_endian)
            captured = _u32(buffer, offset + 8, big_endian)
            at = offset + record_header + ethertype_at
            ethertype = buffer[at] << 8 | buffer[at + 1]
            version_ihl = buffer[ip]
            high = buffer[ip + 2]
            low = buffer[ip + 3]
            fragment = buffer[ip + 6] << 8 | buffer[ip + 7]
            protocol = buffer[ip + 9]
            raw = buffer[ip + 12 : ip + 24]
            data_offset = buffer[ip + 32]
            control = buffer[ip + 33]
        else:
            (
                seconds,
                fraction,
                captured,
                ethertype,
                version_ihl,
                high,
                low,
                fragment,
                protocol,
                raw,
                data_offset,
                control,
            ) = unpack_ipv4(buffer, offset)
        start = offset + record_header
        if captured > limit or start + captured > end:
            break
        offset = start + captured
        walked += 1
        timestamp = seconds + fraction / divisor
        if (
            ethertype == ethertype_ipv4
            and version_ihl == 0x45
            and not fragment & fragment_mask
            and captured >= minimum_ipv4
            and protocol in (TCP, UDP)
        ):
            length = high << 8 | low
        elif ethertype == ethertype_ipv6 and captured >= minimum_ipv6:
            if byte_by_byte:
                high = buffer[ip + 4]
                low = buffer[ip + 5]
                protocol = buffer[ip + 6]
                raw = buffer[ip + 8 : ip + 44]
                data_offset = buffer[ip + 52]
                control = buffer[ip + 53]
            else:
                _, _, _, _, high, low, protocol, raw, data_offset, control = unpack_ipv6(
                    buffer, start - record_header
                )
            if protocol not in (TCP, UDP):
                _count(*general(buffer[start:offset]), timestamp, tally, dns_tally, dns_payloads)
                continue
            length = (high << 8 | low) + 40
        else:
            _count(*general(buffer[start:offset]), timestamp, tally, dns_tally, dns_payloads)
            continue
        if protocol == UDP and is_tunnel_port(raw[-2] << 8 | raw[-1]):
            # An overlay's tunnel (node-wide captures): the packet inside is the flow.
            _count(*general(buffer[start:offset]), timestamp, tally, dns_tally, dns_payloads)
            continue
        role = roles[control] if protocol == TCP else 0
        if protocol == last_protocol and raw == last_raw:
            last_counts.add(timestamp, length, role)
            continue
        if protocol == other_protocol and raw == other_raw:
            other_counts.add(timestamp, length, role)
            continue
        key: PacketKey = (protocol, raw)
        entry = tally.get(key)
        if entry is not None:
            other_protocol, other_raw, other_counts = last_protocol, last_raw, last_counts
            last_protocol, last_raw, last_counts = protocol, raw, entry
        else:
            table = tally
            # Port 53 (0x0035) at either end: the last four bytes of the key are the ports.
            if (raw[-3] == DNS_PORT and raw[-4] == 0) or (raw[-1] == DNS_PORT and raw[-2] == 0):
                transport = start + ip_at + (20 if len(raw) == 12 else 40)
                declared = start + ip_at + length
                seq = 0
                if protocol == TCP:
                    at = transport + (data_offset >> 4) * 4
                    seq = _U32_BE.unpack_from(buffer, transport + 4)[0]
                else:
                    at, control = transport + 8, 0
                payload = buffer[at : min(offset, declared)]
                dns_payloads.append((timestamp, key, payload, seq, control, offset < declared))
                table = dns_tally
                entry = dns_tally.get(key)
            if entry is None:
                entry = table[key] = Counts(timestamp, length, role)
                if table is tally:
                    other_protocol, other_raw, other_counts = last_protocol, last_raw, last_counts
                    last_protocol, last_raw, last_counts = protocol, raw, entry
                continue
        entry.add(timestamp, length, role)
    return offset, walked


def _count(
    key: PacketKey | Skip,
    control: int,
    length: int,
    segment: DnsSegment | None,
    timestamp: float,
    tally: Tally,
    dns_tally: Tally,
    dns_payloads: list[DnsPayload],
) -> None:
    """Count one packet's facts the slow way (see :func:`count_records`)."""
    if segment is not None:
        payload, seq, flags, cut = segment
        dns_payloads.append((timestamp, key, payload, seq, flags, cut))
        tally = dns_tally
    # A Skip key always comes with control 0, so key[0] is a protocol number here.
    role = handshake_role(key[0], control) if control else 0  # type: ignore[index]
    entry = tally.get(key)
    if entry is None:
        tally[key] = Counts(timestamp, length, role)
    else:
        entry.add(timestamp, length, role)


class InterfaceChunks(NamedTuple):
    """A chunk's whole records by the interface they were captured on (:func:`by_interface`)."""

    chunks: dict[int, RecordChunk]  # interface index → its records, in file order
    stop: int  # the offset of the first record not walked
    walked: int  # records walked


# Where a Linux cooked v2 header holds the interface's index (4 bytes, network order).
_SLL2_INTERFACE: Final = 4
_NO_SLACK = bytes(RECORD_SLACK)


def by_interface(chunk: RecordChunk) -> InterfaceChunks:
    """The whole records of a Linux cooked v2 chunk (``tcpdump -i any``) split by the interface
    each was captured on, so that each can be counted on its own: on a node, one packet passes
    several interfaces (a pod's veth, a bridge, the node's uplink), and only per interface is a
    packet counted once. Records of another link type all go to interface 0. Stops like
    :func:`count_records`: at the first record cut off or longer than the chunk's limit."""
    linktype, header, divisor, limit, buffer, offset, end = chunk
    lengths = struct.Struct(header).unpack_from
    interface_at: int = RECORD_HEADER + _SLL2_INTERFACE
    per_interface = linktype == LINKTYPE_LINUX_SLL2
    record_header: int = RECORD_HEADER
    parts: dict[int, list[bytes]] = {}
    walked = 0
    while offset + record_header <= end:
        captured: int = lengths(buffer, offset)[2]
        record_end = offset + record_header + captured
        if record_end > end or captured > limit:
            break
        interface = 0
        if per_interface and captured >= _SLL2_INTERFACE + 4:
            interface = _U32_BE.unpack_from(buffer, offset + interface_at)[0]
        part = parts.get(interface)
        if part is None:
            part = parts[interface] = []
        part.append(buffer[offset:record_end])
        offset = record_end
        walked += 1
    chunks = {}
    for interface, records in parts.items():
        joined = b"".join(records)
        chunks[interface] = RecordChunk(
            linktype, header, divisor, limit, joined + _NO_SLACK, 0, len(joined)
        )
    return InterfaceChunks(chunks, offset, walked)


def count_batch(
    linktype: int,
    timestamps: Sequence[float],
    packets: Sequence[bytes],
    tally: Tally,
    dns_tally: Tally,
    dns_payloads: list[DnsPayload],
) -> None:
    """:func:`count_records` for records given one by one (one link type)."""
    count_records(repacked(linktype, timestamps, packets), tally, dns_tally, dns_payloads)


# --- DNS -------------------------------------------------------------------------------------


_DNS_HEADER = 12


class DnsFault(StrEnum):
    """Why a DNS payload gave no answers (counted, never fatal)."""

    TRUNCATED = "truncated"  # cut by the snap length, or its TCP segments not all captured
    MALFORMED = "malformed"
    GAP = "gap"  # TCP: a message's later segments captured, an earlier one never
    # A record whose name is no valid DNS name (non-ASCII, spaces, control characters, line
    # separators, empty or overlong labels) was dropped; the rest of the response counts.
    BAD_NAME = "bad_name"


@dataclass(frozen=True, slots=True)
class DnsResponse:
    """What one answered DNS lookup says (an NXDOMAIN answer: its question only). Names are
    lower case without the final dot."""

    question: str  # "" when it was no valid DNS name
    addresses: tuple[tuple[str, str], ...]  # (owner name, IP text) of A and AAAA records
    aliases: tuple[tuple[str, str], ...]  # (owner name, target name) of CNAME records
    bad_names: int = 0  # records (and question) left out because a name in them is not valid


# A DNS name as it may be printed: labels of 1 to 63 letters, digits, hyphens and underscores
# (SRV and DKIM names have underscores), at most 253 characters without the final dot. Anything
# else (non-ASCII, spaces, control characters, U+2028) is an attacker's text, not a name.
_VALID_NAME = re.compile(r"(?=.{1,253}\Z)[A-Za-z0-9_-]{1,63}(?:\.[A-Za-z0-9_-]{1,63})*\Z")


def _name(raw: str) -> str | None:
    """A name as decoded by dpkt (UTF-8) → lower case without the final dot; None when it is not a
    valid DNS name. Checked before lowering: ``str.lower`` turns some non-ASCII letters (the
    Kelvin sign) into ASCII ones."""
    name = raw[:-1] if raw.endswith(".") else raw
    return name.lower() if _VALID_NAME.match(name) else None


@functools.lru_cache(maxsize=4096)
def _response(message_after_id: bytes) -> DnsResponse | DnsFault | None:
    """One DNS response → its answers (none for a name that does not exist); None for a lookup
    that failed otherwise (SERVFAIL, REFUSED).

    Cached, and keyed without the 2-byte message ID, because clients ask the same names over and
    over and dpkt takes tens of microseconds per message.
    """
    # Imported at the first DNS message: importing dpkt (all its protocols) takes 50 ms, a
    # thirtieth of reading a million packets, and captures without DNS need none of it.
    import dpkt

    try:
        # Authority and additional records are not needed: zero their counts so that a message
        # cut by the snap length in those sections still gives its answers.
        parsed = dpkt.dns.DNS(b"\x00\x00" + message_after_id[:6] + bytes(4) + message_after_id[10:])
        if parsed.rcode not in (dpkt.dns.DNS_RCODE_NOERR, dpkt.dns.DNS_RCODE_NXDOMAIN):
            return None
        # An answer that the name does not exist names no address, but it was a lookup: the
        # search list's expansions (``api.example.default.svc.cluster.local``) come back so, and
        # a DNS rule that lists names must allow them or the resolver stops searching.
        nothing = parsed.rcode == dpkt.dns.DNS_RCODE_NXDOMAIN
        addresses: list[tuple[str, str]] = []
        aliases: list[tuple[str, str]] = []
        bad_names = 0
        for answer in () if nothing else parsed.an:
            if len(answer.rdata) < answer.rlen:
                return DnsFault.TRUNCATED
            if answer.type in (dpkt.dns.DNS_A, dpkt.dns.DNS_AAAA) and len(answer.rdata) in (4, 16):
                owner = _name(answer.name)
                if owner is None:
                    bad_names += 1
                else:
                    addresses.append((owner, address_text(answer.rdata)))
            elif answer.type == dpkt.dns.DNS_CNAME:
                alias, target = _name(answer.name), _name(answer.cname)
                # Left out, the record breaks the chain there: names beyond it name nothing.
                if alias is None or target is None:
                    bad_names += 1
                else:
                    aliases.append((alias, target))
        asked = parsed.qd[0].name if parsed.qd else ""  # "": none, or the root
        question = _name(asked) if asked else ""
        if question is None:
            question = ""
            bad_names += 1
    except dpkt.NeedData:
        return DnsFault.TRUNCATED
    except (dpkt.UnpackError, struct.error, IndexError, ValueError, UnicodeDecodeError):
        return DnsFault.MALFORMED
    return DnsResponse(question, tuple(addresses), tuple(aliases), bad_names)


def _tcp_messages(payload: bytes) -> list[bytes] | DnsFault:
    """DNS over TCP: each message has a 2-byte length prefix; a segment may carry several."""
    messages = []
    position = 0
    while position < len(payload):
        if position + 2 > len(payload):
            return DnsFault.TRUNCATED
        size = _U16.unpack_from(payload, position)[0]
        end = position + 2 + size
        if end > len(payload):
            return DnsFault.TRUNCATED
        messages.append(payload[position + 2 : end])
        position = end
    return messages


def decode_dns(payload: bytes, *, over_tcp: bool) -> list[DnsResponse] | DnsFault:
    """The successful responses in a port-53 payload (queries and errors give an empty list).

    dpkt's ``NeedData`` (the message is cut short) becomes ``DnsFault.TRUNCATED`` and its
    ``UnpackError`` or nonsense inside a record becomes ``DnsFault.MALFORMED``. Records whose
    names are not valid DNS names are left out and counted in ``DnsResponse.bad_names``.
    """
    messages = _tcp_messages(payload) if over_tcp else [payload]
    if isinstance(messages, DnsFault):
        return messages
    responses = []
    for message in messages:
        if len(message) < _DNS_HEADER:
            return DnsFault.TRUNCATED
        if not message[2] & 0x80:
            continue  # a query: nothing to learn
        response = _response(message[2:])
        if isinstance(response, DnsFault):
            return response
        if response is not None:
            responses.append(response)
    return responses
