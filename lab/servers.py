"""Real servers on every containerPort (and on the outside world's ports): TCP and UDP.

Every request line (TCP) or datagram (UDP) is answered with who answered and on which port, as a
JSON line, so the clients learn the true server behind a Service and truth.json records what
really happened rather than what was meant to happen.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import cast


@dataclass(frozen=True, slots=True)
class Listen:
    port: int
    protocol: str  # TCP or UDP
    address: str | None = None  # None: every address of the pod, IPv4 and IPv6


def reply_for(identity: str, port: int) -> bytes:
    return json.dumps({"server": identity, "port": port}, sort_keys=True).encode() + b"\n"


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's selector transport does not subclass DatagramTransport
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if self.transport is not None:
            self.transport.sendto(self.reply, addr)


def _tcp_handler(
    reply: bytes,
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.readline():
                writer.write(reply)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    return handle


async def serve(
    listens: list[Listen], identity: str | None
) -> list[asyncio.BaseTransport | asyncio.Server]:
    """Start every listener; ``identity`` None means "ip:<the address it is bound to>"."""
    loop = asyncio.get_running_loop()
    closers: list[asyncio.BaseTransport | asyncio.Server] = []
    for listen in listens:
        who = identity if identity is not None else f"ip:{listen.address}"
        reply = reply_for(who, listen.port)
        if listen.protocol == "TCP":
            closers.append(
                await asyncio.start_server(
                    _tcp_handler(reply), host=listen.address, port=listen.port, reuse_address=True
                )
            )
        else:
            if listen.address is None:
                sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                sock.bind(("::", listen.port))
            else:
                family = socket.AF_INET6 if ":" in listen.address else socket.AF_INET
                sock = socket.socket(family, socket.SOCK_DGRAM)
                sock.bind((listen.address, listen.port))
            transport, _ = await loop.create_datagram_endpoint(partial(_Udp, reply), sock=sock)
            closers.append(transport)
    return closers
