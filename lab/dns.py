"""The lab's cluster DNS: a tiny wire-format codec (A, AAAA and CNAME chains, enough for pods and
the outside world) and an asyncio server over UDP and TCP answering from a name → records table.

The codec is pure; the server is started by the DNS pod's agent (``lab.agent``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
from dataclasses import dataclass
from typing import cast

TYPE_A = 1
TYPE_CNAME = 5
TYPE_AAAA = 28
MAX_CHAIN = 8  # CNAME hops followed when answering
CLASS_IN = 1
RCODE_OK = 0
RCODE_FORMERR = 1
RCODE_NXDOMAIN = 3
TTL = 30
_TYPES = {"A": TYPE_A, "AAAA": TYPE_AAAA}

# name → {"A": [...], "AAAA": [...]} or {"CNAME": [target]}
Records = dict[str, dict[str, list[str]]]


class DnsFormatError(ValueError):
    """Bytes that are not a DNS message this codec understands."""


@dataclass(frozen=True, slots=True)
class Question:
    name: str
    qtype: int
    qclass: int = CLASS_IN


@dataclass(frozen=True, slots=True)
class Message:
    id: int
    flags: int
    questions: tuple[Question, ...]
    answers: tuple[tuple[str, int, str], ...] = ()  # (name, type, address) for A/AAAA

    @property
    def rcode(self) -> int:
        return self.flags & 0x000F

    @property
    def is_response(self) -> bool:
        return bool(self.flags & 0x8000)


def _encode_name(name: str) -> bytes:
    out = bytearray()
    for label in name.rstrip(".").split("."):
        raw = label.encode("ascii")
        if not raw or len(raw) > 63:
            raise DnsFormatError(f"bad label in {name!r}")
        out += bytes([len(raw)]) + raw
    return bytes(out + b"\0")


def _decode_name(data: bytes, offset: int) -> tuple[str, int]:
    labels: list[str] = []
    end = None
    for _ in range(128):  # bounds pointer loops
        if offset >= len(data):
            raise DnsFormatError("name runs past the message")
        length = data[offset]
        if length & 0xC0 == 0xC0:
            if offset + 1 >= len(data):
                raise DnsFormatError("truncated compression pointer")
            if end is None:
                end = offset + 2
            offset = ((length & 0x3F) << 8) | data[offset + 1]
            continue
        if length == 0:
            return ".".join(labels).lower(), end if end is not None else offset + 1
        labels.append(data[offset + 1 : offset + 1 + length].decode("ascii", "replace"))
        offset += 1 + length
    raise DnsFormatError("compression pointer loop")


def encode_query(query_id: int, name: str, qtype: int) -> bytes:
    """A recursive query for one name."""
    header = struct.pack("!HHHHHH", query_id, 0x0100, 1, 0, 0, 0)
    return header + _encode_name(name) + struct.pack("!HH", qtype, CLASS_IN)


def decode_message(data: bytes) -> Message:
    """Header, questions, and the A/AAAA answers (other record types are skipped)."""
    if len(data) < 12:
        raise DnsFormatError("shorter than a DNS header")
    query_id, flags, qdcount, ancount, _, _ = struct.unpack("!HHHHHH", data[:12])
    offset = 12
    questions = []
    for _ in range(qdcount):
        name, offset = _decode_name(data, offset)
        if offset + 4 > len(data):
            raise DnsFormatError("truncated question")
        qtype, qclass = struct.unpack("!HH", data[offset : offset + 4])
        offset += 4
        questions.append(Question(name, qtype, qclass))
    answers = []
    for _ in range(ancount):
        name, offset = _decode_name(data, offset)
        if offset + 10 > len(data):
            raise DnsFormatError("truncated answer")
        rtype, _, _, rdlength = struct.unpack("!HHIH", data[offset : offset + 10])
        offset += 10
        rdata = data[offset : offset + rdlength]
        if len(rdata) != rdlength:
            raise DnsFormatError("truncated answer data")
        offset += rdlength
        if rtype == TYPE_A and rdlength == 4:
            answers.append((name, rtype, str(ipaddress.IPv4Address(rdata))))
        elif rtype == TYPE_AAAA and rdlength == 16:
            answers.append((name, rtype, str(ipaddress.IPv6Address(rdata))))
    return Message(query_id, flags, tuple(questions), tuple(answers))


def _owner(name: str, question: Question) -> bytes:
    """A record's owner name: a pointer to the question's name (offset 12) when it is that."""
    return b"\xc0\x0c" if name == question.name else _encode_name(name)


def answer(query: bytes, records: Records) -> bytes:
    """The response to ``query``: the addresses known for its name (after the CNAME chain that
    leads to them, each hop an answer record), NXDOMAIN for unknown names, an empty NOERROR
    answer when the name exists without that record type."""
    try:
        message = decode_message(query)
    except DnsFormatError:
        if len(query) < 2:
            return b""
        return struct.pack(
            "!HHHHHH", int.from_bytes(query[:2], "big"), 0x8180 | RCODE_FORMERR, 0, 0, 0, 0
        )
    flags = 0x8000 | 0x0400 | (message.flags & 0x0100) | 0x0080  # QR, AA, RD copied, RA
    body = b""
    answers = 0
    rcode = RCODE_OK
    for question in message.questions[:1]:
        body += _encode_name(question.name) + struct.pack("!HH", question.qtype, question.qclass)
        name = question.name
        entry = records.get(name)
        if entry is None:
            rcode = RCODE_NXDOMAIN
            continue
        for _ in range(MAX_CHAIN):
            if not entry.get("CNAME"):
                break
            target = entry["CNAME"][0]
            rdata = _encode_name(target)
            body += _owner(name, question) + struct.pack(
                "!HHIH", TYPE_CNAME, CLASS_IN, TTL, len(rdata)
            )
            body += rdata
            answers += 1
            name, entry = target, records.get(target, {})
        for kind, qtype in _TYPES.items():
            if qtype != question.qtype:
                continue
            for address in entry.get(kind, []):
                packed = ipaddress.ip_address(address).packed
                body += _owner(name, question) + struct.pack(
                    "!HHIH", qtype, CLASS_IN, TTL, len(packed)
                )
                body += packed
                answers += 1
    header = struct.pack(
        "!HHHHHH", message.id, flags | rcode, min(len(message.questions), 1), answers, 0, 0
    )
    return header + body


class _UdpServer(asyncio.DatagramProtocol):
    def __init__(self, records: Records) -> None:
        self.records = records
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's selector transport does not subclass DatagramTransport
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        reply = answer(data, self.records)
        if reply and self.transport is not None:
            self.transport.sendto(reply, addr)


class DnsServer:
    """Serves ``records`` on port 53, UDP and TCP, IPv4 and IPv6; ``update`` swaps the table."""

    def __init__(self, records: Records, port: int = 53) -> None:
        self.records = records
        self.port = port
        self._udp: _UdpServer | None = None
        self._closers: list[asyncio.BaseTransport | asyncio.Server] = []

    def update(self, records: Records) -> None:
        self.records = records
        if self._udp is not None:
            self._udp.records = records

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", self.port))
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: _UdpServer(self.records), sock=sock
        )
        self._udp = protocol
        self._closers.append(transport)
        self._closers.append(await asyncio.start_server(self._tcp, host=None, port=self.port))

    async def _tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                length = struct.unpack("!H", await reader.readexactly(2))[0]
                reply = answer(await reader.readexactly(length), self.records)
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def close(self) -> None:
        for closer in self._closers:
            closer.close()
