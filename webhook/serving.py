"""One worker's server: uvicorn over TLS on a listening socket bound beforehand, taking
connections only while it has room (:class:`GatedServer`), and stamping every request with the
time it arrived.

The socket is bound by the caller (:func:`listen`), once, so that several worker processes can
share it (webhook.workers). uvicorn creates one asyncio task per request as soon as its headers
are parsed; :func:`stamp_arrival`, the loop's task factory, records that moment in
:data:`ARRIVED`, so the overload gate (webhook.app) can tell how long a request waited for its
turn in a busy event loop. How many requests are in flight is counted by the protocol
(:class:`Unanswered`).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import socket
import ssl
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httptools
import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from kernel.errors import ConfigError
from webhook.settings import ServingLimits
from webhook.tls import TlsReloader

# Requests still in flight when SIGTERM arrives get this long to finish.
GRACEFUL_SHUTDOWN_SECONDS = 20
# TLS handshakes a worker runs at once (GatedServer), and how long one may take: the API server
# gives up on a request after timeoutSeconds (5 in the shipped configuration) anyway.
MAX_HANDSHAKES = 8
HANDSHAKE_TIMEOUT_SECONDS = 10.0
# While it has no room, a worker looks again this often, and takes a connection anyway after
# ACCEPT_AT_LEAST_EVERY (kubelet probes open a new connection each time).
ACCEPT_PAUSE_SECONDS = 0.001
ACCEPT_AT_LEAST_EVERY = 0.1

log = logging.getLogger(__name__)

# time.perf_counter() when the task running this request was created (its headers parsed).
ARRIVED: contextvars.ContextVar[float] = contextvars.ContextVar("arrived")

# The number of requests a worker has received and not yet answered.
InFlight = Callable[[], int]
MUTATE_PATH = "/mutate"


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes  # JSON


# Given the requests in flight, the new one included: whether the worker is too full for it.
Full = Callable[[int], bool]


@dataclass(slots=True)
class Unanswered:
    """The requests a worker has taken in (handed to its app) and not yet answered: its requests in
    flight. Counted by :class:`SheddingProtocol` from the request's headers to the end of its
    answer, not by uvicorn's tasks, which outlive the answer by a turn of the loop: a client that
    sends the next request as soon as it has the answer would find the worker fuller than it is.
    """

    count: int = 0


# A request body → the answer for a request the worker will not admit (webhook.app.Shedder).
Shed = Callable[[bytes], Answer]
# Called for each new connection a worker closes because it holds its share of maxConnections.
Refused = Callable[[], None]
# SO_LINGER on, 0 s: close() resets the connection (the client's dial fails at once, and the
# worker keeps no TIME_WAIT socket for it).
RESET_ON_CLOSE = struct.pack("ii", 1, 0)


def stamp_arrival(
    loop: asyncio.AbstractEventLoop, coro: Any, /, **options: Any
) -> asyncio.Future[Any]:
    """A task factory: every task starts with :data:`ARRIVED` set to its creation time."""
    context = options.pop("context", None) or contextvars.copy_context()
    context.run(ARRIVED.set, time.perf_counter())
    return asyncio.Task(coro, loop=loop, context=context, **options)


def listen(host: str, port: int, backlog: int) -> socket.socket:
    """A listening TCP socket that worker processes can inherit; ConfigError if it cannot bind.

    ``backlog`` bounds the connections the kernel queues before a worker accepts them.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as error:
        sock.close()
        raise ConfigError(f"cannot listen on {host} port {port}: {error}") from None
    sock.set_inheritable(True)
    return sock


class SheddingProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol, shedding a ``POST /mutate`` itself when the worker is too full
    for it (``full``): it reads the body and writes the answer in one go, with no task,
    no ASGI call and no FastAPI, for less than half of what shedding in the ASGI app costs
    (uvicorn's request cycle and the answer's two writes are most of that; docs/webhook.md,
    "Under load"). Requests it does not shed, and every request while one is in progress on the
    connection, go through uvicorn as usual.

    It works on uvicorn's parser callbacks, so it follows uvicorn's own code (httptools_impl) and
    the version range pinned in pyproject.toml.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        *,
        unanswered: Unanswered,
        full: Full,
        shed: Shed,
    ) -> None:
        super().__init__(config=config, server_state=server_state, app_state=app_state)
        self._mutate_path = MUTATE_PATH.encode()
        self._unanswered = unanswered
        self._full = full
        self._shed = shed
        self._shed_body: bytearray | None = None  # the body of the request being shed

    def on_headers_complete(self) -> None:
        if (
            self._full(self._unanswered.count + 1)
            and (self.cycle is None or self.cycle.response_complete)
            and not self.expect_100_continue
            and self.parser.get_method() == b"POST"
            and httptools.parse_url(self.url).path == self._mutate_path
        ):
            self._shed_body = bytearray()
            return
        before = self.cycle
        super().on_headers_complete()
        if self.cycle is not before:  # a request for the app (not a refused upgrade)
            self._unanswered.count += 1

    def on_response_complete(self) -> None:
        # uvicorn's callback when the app's answer is complete (the shed path skips this method).
        self._unanswered.count -= 1
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        unfinished = len(self.pipeline)  # pipelined requests that never got their turn
        if self.cycle is not None and not self.cycle.response_complete:
            unfinished += 1
        self._unanswered.count -= unfinished
        super().connection_lost(exc)

    def on_body(self, body: bytes) -> None:
        if self._shed_body is None:
            super().on_body(body)
        else:
            self._shed_body += body

    def on_message_complete(self) -> None:
        if self._shed_body is None:
            super().on_message_complete()
            return
        answer = self._shed(bytes(self._shed_body))
        self._shed_body = None
        keep_alive = self.parser.get_http_version() != "1.0" and self.parser.should_keep_alive()
        head = [STATUS_LINE[answer.status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head.append(b"content-type: application/json\r\ncontent-length: %d\r\n" % len(answer.body))
        if not keep_alive:
            head.append(b"connection: close\r\n")
        self.transport.write(b"".join([*head, b"\r\n", answer.body]))
        if not keep_alive:
            self.transport.close()
        super().on_response_complete()  # keep-alive and the next request, as uvicorn does


class GatedServer(uvicorn.Server):
    """uvicorn, taking connections from the listening socket itself: only while the worker has
    room for more requests, a few TLS handshakes at a time, and at most ``max_connections`` open.

    A handshake costs a worker about twice a whole admission. When it falls behind, an API server
    opens a new connection for each request it cannot send on an idle one (it keeps 25 idle), so
    handshakes pile on a worker that is already late. Left in the kernel's accept queue (at most
    ``listen_backlog``), those connections cost nothing; the requests behind them go out on the
    connections that the overload gate frees at once; another worker with room takes them. At
    least one connection is taken every ``ACCEPT_AT_LEAST_EVERY`` seconds, so that probes get in
    during a long overload.

    Still, every connection a worker takes costs it a handshake, and under a long overload the
    API server keeps dialing (a request that finds no idle connection dials one; the idle ones
    beyond 25 it closes again). So a worker that already holds ``max_connections`` (its
    handshakes included) resets a new one as soon as it takes it, before the handshake, for an
    accept and a close: the API server's call fails at once, and it fails open.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        *,
        listener: socket.socket,
        limits: ServingLimits,
        full: Full,
        shed: Shed,
        refused: Refused,
    ) -> None:
        super().__init__(config)
        self._listener = listener
        self._max_in_flight = limits.max_in_flight
        self._max_connections = limits.max_connections
        self._full = full
        self._shed = shed
        self._refused = refused
        self.unanswered = Unanswered()
        self._acceptor: asyncio.Task[None] | None = None

    def _has_room(self) -> bool:
        return self.unanswered.count < self._max_in_flight

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=[])  # uvicorn itself listens on nothing
        self._listener.setblocking(False)
        self._acceptor = asyncio.create_task(self._accept())

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self._acceptor is not None:
            self._acceptor.cancel()
        await super().shutdown(sockets=[self._listener])

    def _protocol(self) -> SheddingProtocol:
        return SheddingProtocol(
            self.config,
            self.server_state,
            self.lifespan.state,
            unanswered=self.unanswered,
            full=self._full,
            shed=self._shed,
        )

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        handshakes: set[asyncio.Task[None]] = set()
        last_accept = loop.time()
        while True:
            while (
                len(handshakes) >= MAX_HANDSHAKES or not self._has_room()
            ) and loop.time() - last_accept < ACCEPT_AT_LEAST_EVERY:
                await asyncio.sleep(ACCEPT_PAUSE_SECONDS)
            try:
                connection, _ = await loop.sock_accept(self._listener)
            except OSError as error:  # out of file descriptors or memory: try again later
                log.error("cannot accept a connection: %s", error)
                await asyncio.sleep(ACCEPT_AT_LEAST_EVERY)
                continue
            last_accept = loop.time()
            # uvicorn's protocols register themselves once their handshake is done.
            if len(self.server_state.connections) + len(handshakes) >= self._max_connections:
                connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET_ON_CLOSE)
                connection.close()
                self._refused()
                continue
            handshake = loop.create_task(self._handshake(connection))
            handshakes.add(handshake)
            handshake.add_done_callback(handshakes.discard)

    async def _handshake(self, connection: socket.socket) -> None:
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                self._protocol,
                connection,
                ssl=self.config.ssl,
                ssl_handshake_timeout=HANDSHAKE_TIMEOUT_SECONDS,
            )
        except (OSError, TimeoutError) as error:  # ssl.SSLError is an OSError
            log.debug("TLS handshake failed: %s", error)


def serve(
    build_app: Callable[[InFlight], ASGIApp],
    *,
    listener: socket.socket,
    limits: ServingLimits,
    full: Full,
    shed: Shed,
    refused: Refused,
    reloader: TlsReloader,
    poll_seconds: float,
) -> None:
    """Serve HTTPS on ``listener`` until SIGTERM or SIGINT, then let requests in flight finish.

    ``build_app`` gets the worker's count of requests in flight and returns the ASGI app;
    ``limits`` are the worker's; ``full`` and ``shed`` decide and answer for the requests the
    protocol sheds itself (:class:`SheddingProtocol`); ``refused`` counts the connections closed
    past ``limits.max_connections`` (:class:`GatedServer`).
    """
    server: GatedServer | None = None

    def in_flight() -> int:
        return server.unanswered.count if server else 0

    def context_factory(
        _config: uvicorn.Config, _default: Callable[[], ssl.SSLContext]
    ) -> ssl.SSLContext:
        return reloader.context

    config = uvicorn.Config(
        build_app(in_flight),
        ssl_context_factory=context_factory,
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )
    server = GatedServer(
        config,
        listener=listener,
        limits=limits,
        full=full,
        shed=shed,
        refused=refused,
    )

    async def run(server: uvicorn.Server) -> None:
        asyncio.get_running_loop().set_task_factory(stamp_arrival)
        watcher = asyncio.create_task(reloader.watch(poll_seconds))
        try:
            await server.serve()
        finally:
            watcher.cancel()

    # uvicorn's loop choice (uvloop when installed), as uvicorn.run would make it.
    with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
        runner.run(run(server))
