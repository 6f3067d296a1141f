"""The stand-in for an application's container on the test node (tests/e2e/node.py).

The lab's agent logic (``lab.servers``' answers, ``lab.traffic``'s resolver and clients) in a
container image: the image of each application container is swapped for a tag of this one
(kustomize ``images:``) whose ``NETPOL_SNIFFER_AGENT_LISTEN`` names the ports the original
listens on.

    node_agent serve                 the container's process: listen, answer, remember who called
    node_agent calls CONFIG_JSON     the plan's calls for a window (run through ``kubectl exec``)
    node_agent probe CONFIG_JSON     one connection attempt per target (the probe matrix)
    node_agent seen [--reset]        the peers the serving process answered, from inside the pod

Every answer names the pod (its hostname) that gave it and the address the caller came from, as
the lab's servers do. Requests are told apart by their first line: HTTP/1 (the kubelet's
``httpGet`` probes, ``wget``), the HTTP/2 preface (the kubelet's ``grpc`` probes: the gRPC
health service, answered SERVING) or the lab's one-line greeting.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import signal
import socket
import sys
from collections import Counter
from typing import Any

from lab import servers, traffic

LISTEN_ENV = "NETPOL_SNIFFER_AGENT_LISTEN"  # "8080/TCP 53/UDP ..."
IDENTITY_ENV = "NETPOL_SNIFFER_AGENT_IDENTITY"  # default: the hostname (the pod's name)
# An abstract socket lives in the pod's network namespace: exec'd commands reach the serving
# process without a writable file system.
CONTROL_SOCKET = "\0netpol-sniffer-agent"
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n"
FIRST_LINE_LIMIT = 4096
PROBE_TIMEOUT_S = 2.0

# (peer address, port, protocol) → answered requests
Seen = Counter[tuple[str, int, str]]


def listen_specs(text: str) -> list[servers.Listen]:
    """``"8080/TCP 53/UDP"`` → listeners on every address of the pod."""
    specs = []
    for item in text.split():
        port, _, protocol = item.partition("/")
        specs.append(servers.Listen(port=int(port), protocol=(protocol or "TCP").upper()))
    return specs


def _peer(writer: asyncio.StreamWriter) -> str:
    return str(writer.get_extra_info("peername")[0]).removeprefix("::ffff:")


async def _answer_http(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes
) -> None:
    while (await reader.readline()).strip():  # the request's headers, up to the blank line
        pass
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    await writer.drain()


async def _answer_grpc_health(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first_line: bytes
) -> None:
    """grpc.health.v1.Health/Check over cleartext HTTP/2: every call is answered SERVING."""
    import h2.config
    import h2.connection
    import h2.events

    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    connection.initiate_connection()
    data = first_line
    while data:
        for event in connection.receive_data(data):
            if isinstance(event, h2.events.DataReceived):
                connection.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                stream = event.stream_id
                connection.send_headers(
                    stream, [(":status", "200"), ("content-type", "application/grpc")]
                )
                # one length-prefixed message: HealthCheckResponse{status: SERVING (1)}
                connection.send_data(stream, b"\x00\x00\x00\x00\x02\x08\x01")
                connection.send_headers(stream, [("grpc-status", "0")], end_stream=True)
        writer.write(connection.data_to_send())
        await writer.drain()
        data = await reader.read(65536)


class Server:
    """The container's listeners and what they answered."""

    def __init__(self, identity: str, listens: list[servers.Listen]) -> None:
        self.identity = identity
        self.listens = listens
        self.seen: Seen = Counter()
        self._closers: list[asyncio.BaseTransport | asyncio.Server] = []

    def _tcp_handler(self, port: int) -> Any:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            peer = _peer(writer)
            reply = servers.reply_for(self.identity, port, peer)
            try:
                line = await reader.readline()
                if line:
                    self.seen[(peer, port, "TCP")] += 1
                if line.startswith(HTTP2_PREFACE):
                    await _answer_grpc_health(reader, writer, line)
                elif line.startswith((b"GET ", b"HEAD ")):
                    await _answer_http(reader, writer, reply)
                else:
                    while line:
                        writer.write(reply)
                        await writer.drain()
                        line = await reader.readline()
            except (ConnectionError, ValueError):
                pass
            finally:
                writer.close()

        return handle

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for listen in self.listens:
            if listen.protocol == "TCP":
                self._closers.append(
                    await asyncio.start_server(
                        self._tcp_handler(listen.port),
                        port=listen.port,
                        reuse_address=True,
                        limit=FIRST_LINE_LIMIT,
                    )
                )
                continue
            sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(("::", listen.port))
            transport, _ = await loop.create_datagram_endpoint(
                functools.partial(_Udp, self, listen.port), sock=sock
            )
            self._closers.append(transport)
        self._closers.append(await asyncio.start_unix_server(self._control, path=CONTROL_SOCKET))

    async def _control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        command = (await reader.readline()).decode().strip()
        seen = [
            [peer, port, protocol, count] for (peer, port, protocol), count in self.seen.items()
        ]
        if command == "reset":
            self.seen.clear()
        writer.write(json.dumps(sorted(seen)).encode() + b"\n")
        await writer.drain()
        writer.close()

    async def serve_forever(self) -> None:
        await self.start()
        stopped = asyncio.Event()
        # PID 1 of its container: SIGTERM (the pod is deleted) ends it at once
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopped.set)
        try:
            await stopped.wait()
        finally:
            for closer in self._closers:
                closer.close()


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: Server, port: int) -> None:
        self.server = server
        self.port = port
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        peer = str(addr[0]).removeprefix("::ffff:")
        self.server.seen[(peer, self.port, "UDP")] += 1
        if self.transport is not None:
            self.transport.sendto(servers.reply_for(self.server.identity, self.port, peer), addr)


def pod_resolver(hosts: dict[str, list[str]] | None = None) -> traffic.Resolver:
    """The pod's /etc/resolv.conf (the kubelet's: the cluster DNS and the search path)."""
    nameserver, search = "127.0.0.1", []
    with contextlib.suppress(OSError), open("/etc/resolv.conf", encoding="ascii") as conf:
        for line in conf:
            fields = line.split()
            if fields[:1] == ["nameserver"] and len(fields) > 1 and nameserver == "127.0.0.1":
                nameserver = fields[1]
            elif fields[:1] == ["search"]:
                search = fields[1:]
    return traffic.Resolver(nameserver, search, hosts)


async def run_calls(config: dict[str, Any]) -> list[dict[str, Any]]:
    """The plan's calls for ``duration`` seconds, long-lived ones opened first and closed last."""
    calls = [traffic.CallSpec.from_json(entry) for entry in config["calls"]]
    client = traffic.Client(socket.gethostname(), pod_resolver(config.get("hosts")), calls)
    await client.open_long_lived()
    try:
        await client.run(float(config["duration"]))
    finally:
        await client.close_long_lived()
    return [result.to_json() for result in client.results.values()]


async def _probe_one(target: dict[str, Any]) -> dict[str, Any]:
    """TCP: did the connection open? UDP: did an answer come back? Nothing else is sent over
    TCP, so a server that is not an agent (DNS, the API server, TLS) counts as reached too."""
    address, port, protocol = target["address"], int(target["port"]), target["protocol"]
    outcome = "connected"
    try:
        if protocol == "UDP":
            await traffic.udp_exchange(address, port, b"probe\n", timeout=PROBE_TIMEOUT_S)
        else:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(address, port), PROBE_TIMEOUT_S
            )
            writer.close()
    except ConnectionRefusedError:
        outcome = "refused"
    except TimeoutError:
        outcome = "timeout"
    except OSError as error:
        outcome = f"error: {error}"
    return {**target, "outcome": outcome}


async def run_probes(config: dict[str, Any]) -> list[dict[str, Any]]:
    return list(await asyncio.gather(*(_probe_one(target) for target in config["targets"])))


async def ask_server(command: str) -> Any:
    reader, writer = await asyncio.open_unix_connection(path=CONTROL_SOCKET)
    writer.write(command.encode() + b"\n")
    await writer.drain()
    answer = json.loads(await reader.readline())
    writer.close()
    return answer


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "serve"
    if command == "serve":
        identity = os.environ.get(IDENTITY_ENV) or socket.gethostname()
        listens = listen_specs(os.environ.get(LISTEN_ENV, ""))
        asyncio.run(Server(identity, listens).serve_forever())
        return 0
    if command in ("calls", "probe"):
        config = json.loads(argv[1])
        runner = run_calls if command == "calls" else run_probes
        print(json.dumps(asyncio.run(runner(config))))
        return 0
    if command == "seen":
        print(json.dumps(asyncio.run(ask_server("reset" if "--reset" in argv else "seen"))))
        return 0
    print(f"node_agent: unknown command {command!r}", file=sys.stderr)
    return 64


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
