"""Clients following the plan, inside a pod: a stub resolver with the pod's search path and real
TCP/UDP calls, counting what happened to each call (and who answered)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import json
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

from lab import dns

PROBE_PERIOD = 2.0  # kubelet probes, in the lab's compressed time
CONNECT_TIMEOUT = 2.0
REPLY_TIMEOUT = 2.0
DNS_TIMEOUT = 1.0
NDOTS = 5


@dataclass(frozen=True, slots=True)
class CallSpec:
    """One call of the plan as the agent runs it (plain JSON in the agent's config)."""

    id: int
    host: str
    port: int
    protocol: str
    every: float
    ipv6: bool
    long_lived: bool
    source: str | None = None  # bind to this address (an outside client's own)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CallSpec:
        return cls(**data)


@dataclass
class CallResult:
    id: int
    attempts: int = 0
    ok: int = 0
    refused: int = 0
    nxdomain: int = 0
    failed: int = 0
    dns_answered: bool = False
    servers: set[tuple[str, int, str]] = field(default_factory=set)  # server, port, peer seen
    last_error: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "attempts": self.attempts,
            "ok": self.ok,
            "refused": self.refused,
            "nxdomain": self.nxdomain,
            "failed": self.failed,
            "dns_answered": self.dns_answered,
            "servers": sorted(list(server) for server in self.servers),
            "last_error": self.last_error,
        }


class NameNotFound(Exception):
    """Every candidate name of the search path was NXDOMAIN or had no address."""


class Resolver:
    """A pod's resolv.conf: one nameserver, a search list, ndots:5; UDP queries. ``hosts`` is
    an /etc/hosts (the outside world's own names for the cluster's LoadBalancers); addresses
    need no lookup."""

    def __init__(
        self, nameserver: str, search: list[str], hosts: dict[str, list[str]] | None = None
    ) -> None:
        self.nameserver = nameserver
        self.search = search
        self.hosts = hosts or {}
        self._ids = itertools.count(1)

    def candidates(self, name: str) -> list[str]:
        expanded = [f"{name}.{suffix}" for suffix in self.search]
        return [*expanded, name] if name.count(".") < NDOTS else [name, *expanded]

    async def resolve(self, name: str, *, ipv6: bool, result: CallResult) -> list[str]:
        fixed = [a for a in self.hosts.get(name, []) if (":" in a) == ipv6]
        if fixed:
            return fixed
        with contextlib.suppress(ValueError):
            return [str(ipaddress.ip_address(name))]
        qtype = dns.TYPE_AAAA if ipv6 else dns.TYPE_A
        for candidate in self.candidates(name):
            reply = await self._query(candidate, qtype)
            result.dns_answered = True
            addresses = [a for _, t, a in reply.answers if t == qtype]
            if addresses:
                return addresses
        raise NameNotFound(name)

    async def _query(self, name: str, qtype: int) -> dns.Message:
        query_id = next(self._ids) & 0xFFFF
        reply = await udp_exchange(
            self.nameserver, 53, dns.encode_query(query_id, name, qtype), timeout=DNS_TIMEOUT
        )
        message = dns.decode_message(reply)
        if message.id != query_id:
            raise TimeoutError(f"DNS answer for another query ({message.id} != {query_id})")
        return message


class _OneReply(asyncio.DatagramProtocol):
    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's selector transport does not subclass DatagramTransport
        cast(asyncio.DatagramTransport, transport).sendto(self.payload)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if not self.reply.done():
            self.reply.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.reply.done():
            self.reply.set_exception(exc)


async def udp_exchange(
    address: str, port: int, payload: bytes, *, timeout: float, source: str | None = None
) -> bytes:
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: _OneReply(payload),
        remote_addr=(address, port),
        family=family,
        local_addr=None if source is None else (source, 0),
    )
    try:
        return await asyncio.wait_for(protocol.reply, timeout)
    finally:
        transport.close()


def _parse_reply(line: bytes) -> tuple[str, int, str]:
    data = json.loads(line)
    return str(data["server"]), int(data["port"]), str(data["peer"])


async def _tcp_exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, message: bytes
) -> tuple[str, int, str]:
    """Send ``message`` on an open connection; the server's one-line reply, parsed."""
    writer.write(message)
    await writer.drain()
    line = await asyncio.wait_for(reader.readline(), REPLY_TIMEOUT)
    if not line:
        raise ConnectionResetError("closed without a reply")
    return _parse_reply(line)


class Client:
    """Runs the calls of one pod and keeps their results."""

    def __init__(self, pod: str, resolver: Resolver, calls: list[CallSpec]) -> None:
        self.greeting = f"hello from {pod}\n".encode()
        self.resolver = resolver
        self.calls = calls
        self.results = {call.id: CallResult(call.id) for call in calls}
        self._open: dict[int, tuple[asyncio.StreamReader, asyncio.StreamWriter]] = {}

    async def _connect(self, call: CallSpec) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        result = self.results[call.id]
        addresses = await self.resolver.resolve(call.host, ipv6=call.ipv6, result=result)
        local = None if call.source is None else (call.source, 0)
        return await asyncio.wait_for(
            asyncio.open_connection(addresses[0], call.port, local_addr=local), CONNECT_TIMEOUT
        )

    async def open_long_lived(self) -> None:
        """Connect the long-lived calls (before the capture starts)."""
        for call in self.calls:
            if call.long_lived:
                await self._attempt(call, self._open_one)

    async def _open_one(self, call: CallSpec) -> tuple[str, int, str] | None:
        self._open[call.id] = await self._connect(call)
        return None

    async def close_long_lived(self) -> None:
        for reader_writer in self._open.values():
            writer = reader_writer[1]
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        self._open.clear()

    async def _once(self, call: CallSpec) -> tuple[str, int, str] | None:
        if call.long_lived:
            if call.id not in self._open:
                raise ConnectionResetError("the long-lived connection is gone")
            return await _tcp_exchange(*self._open[call.id], self.greeting)
        if call.protocol == "UDP":
            addresses = await self.resolver.resolve(
                call.host, ipv6=call.ipv6, result=self.results[call.id]
            )
            return _parse_reply(
                await udp_exchange(
                    addresses[0],
                    call.port,
                    self.greeting,
                    timeout=REPLY_TIMEOUT,
                    source=call.source,
                )
            )
        reader, writer = await self._connect(call)
        try:
            return await _tcp_exchange(reader, writer, self.greeting)
        finally:
            writer.close()

    async def _attempt(
        self, call: CallSpec, action: Callable[[CallSpec], Awaitable[tuple[str, int, str] | None]]
    ) -> None:
        result = self.results[call.id]
        result.attempts += 1
        try:
            server = await action(call)
        except NameNotFound:
            result.nxdomain += 1
        except ConnectionRefusedError:
            result.refused += 1
        except (OSError, TimeoutError, ValueError, KeyError, dns.DnsFormatError) as error:
            result.failed += 1
            result.last_error = f"{type(error).__name__}: {error}"
        else:
            result.ok += 1
            if server is not None:
                result.servers.add(server)

    async def run(self, duration: float) -> None:
        """Every call on its own period, spread over the window so they do not all fire at once."""
        start = time.monotonic()
        for result in self.results.values():
            result.dns_answered = False  # only lookups inside the window were captured

        async def repeat(number: int, call: CallSpec) -> None:
            at = (number * 0.173) % call.every
            while at < duration:
                delay = start + at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await self._attempt(call, self._once)
                at += call.every

        await asyncio.gather(*(repeat(n, call) for n, call in enumerate(self.calls)))


class Prober:
    """The kubelet's network probes (httpGet, tcpSocket, grpc): from the node, a TCP connection
    to every target every ``PROBE_PERIOD`` seconds; ``targets`` can be replaced as pods change.
    Counts, and who answered, cover the time since the last ``reset`` (the capture window)."""

    def __init__(self, targets: list[tuple[str, int]]) -> None:
        self.targets = targets
        self.ok = 0
        self.failed = 0
        self.servers: set[tuple[str, int, str]] = set()

    def reset(self) -> None:
        self.ok = self.failed = 0
        self.servers.clear()

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "failed": self.failed, "servers": sorted(map(list, self.servers))}

    async def _probe(self, address: str, port: int) -> None:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(address, port), CONNECT_TIMEOUT
            )
            try:
                server = await _tcp_exchange(reader, writer, b"probe\n")
            finally:
                writer.close()
        except (OSError, TimeoutError, ValueError, KeyError):
            self.failed += 1
        else:
            self.ok += 1
            self.servers.add(server)

    async def run(self) -> None:
        while True:
            await asyncio.gather(*(self._probe(a, p) for a, p in self.targets))
            await asyncio.sleep(PROBE_PERIOD)
