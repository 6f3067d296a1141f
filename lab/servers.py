"""Real servers on every containerPort (and on the outside world's ports): TCP and UDP.

Every request line (TCP) or datagram (UDP) is answered with who answered, on which port, and
the address the request came from, as a JSON line: the clients learn the true server behind a
Service (and what the server saw of them), so truth.json records what really happened rather
than what was meant to happen.
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


def reply_for(identity: str, port: int, peer: object) -> bytes:
    address = str(peer).removeprefix("::ffff:")  # an IPv4 client of a dual-stack socket
    data = {"server": identity, "port": port, "peer": address}
    return json.dumps(data, sort_keys=True).encode() + b"\n"


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, identity: str, port: int) -> None:
        self.identity = identity
        self.port = port
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's selector transport does not subclass DatagramTransport
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if self.transport is not None:
            self.transport.sendto(reply_for(self.identity, self.port, addr[0]), addr)


def _tcp_handler(
    identity: str, port: int
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        reply = reply_for(identity, port, writer.get_extra_info("peername")[0])
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
        if listen.protocol == "TCP":
            closers.append(
                await asyncio.start_server(
                    _tcp_handler(who, listen.port),
                    host=listen.address,
                    port=listen.port,
                    reuse_address=True,
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
            transport, _ = await loop.create_datagram_endpoint(
                partial(_Udp, who, listen.port), sock=sock
            )
            closers.append(transport)
    return closers
