"""A tiny API server on 127.0.0.1 for the kubernetes client's real code paths.

REST requests get canned JSON (or a Status with any HTTP code, for RBAC errors). Exec requests
are upgraded to a websocket speaking ``v4.channel.k8s.io`` (or v5 when asked): the command runs
on this machine (``localexec``) and its stdout, stderr and Status go back as channel frames,
exactly as the kubelet sends them through the API server. A fault can cut the TCP connection
mid-stream (no close frame, no Status) or flip a byte.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from tests.collector.localexec import Fault, Frame, command_frames

_WEBSOCKET_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Cut(Exception):
    """Raised inside a frame iterator to drop the connection."""


def cut_connection_after(limit: int) -> Fault:
    """Send ``limit`` stdout bytes, then drop the TCP connection without a close frame."""

    def fault(frames: Iterator[Frame]) -> Iterator[Frame]:
        sent = 0
        for channel, data in frames:
            if channel == 1 and sent + len(data) >= limit:
                yield (1, data[: limit - sent])
                raise Cut
            if channel == 1:
                sent += len(data)
            yield (channel, data)

    return fault


def websocket_frame(payload: bytes, opcode: int = 0x2) -> bytes:
    """A server → client frame (final, unmasked)."""
    header = bytearray([0x80 | opcode])
    if len(payload) < 126:
        header.append(len(payload))
    elif len(payload) < 1 << 16:
        header.append(126)
        header += len(payload).to_bytes(2, "big")
    else:
        header.append(127)
        header += len(payload).to_bytes(8, "big")
    return bytes(header) + payload


def status_body(code: int, message: str) -> dict[str, Any]:
    reasons = {401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 410: "Expired"}
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reasons.get(code, "InternalError"),
        "code": code,
    }


@dataclass
class FakeAPIServer:
    """``with FakeAPIServer() as api: api.host`` → ``http://127.0.0.1:PORT``."""

    routes: dict[tuple[str, str], tuple[int, Any]] = field(default_factory=dict)
    exec_refusal: tuple[int, dict[str, Any]] | None = None
    faults: list[tuple[str, Fault]] = field(default_factory=list)
    protocol: str = "v4.channel.k8s.io"
    requests: list[tuple[str, str]] = field(default_factory=list)
    authorizations: list[str | None] = field(default_factory=list)
    exec_commands: list[list[str]] = field(default_factory=list)
    # (certificate, key): serve HTTPS, e.g. as a kubelet behind a real API server
    tls: tuple[Path, Path] | None = None

    def __enter__(self) -> FakeAPIServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                # as Go's servers do: without it Nagle's algorithm holds back small frames
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def do_GET(self) -> None:
                self.handle_request("GET")

            def do_PATCH(self) -> None:
                self.handle_request("PATCH")

            def handle_request(self, method: str) -> None:
                url = urlparse(self.path)
                server.requests.append((method, self.path))
                server.authorizations.append(self.headers.get("Authorization"))
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                # the API server's path, or the kubelet's (/exec/NS/POD/CONTAINER)
                if url.path.endswith("/exec") or url.path.startswith("/exec/"):
                    self.handle_exec(parse_qs(url.query))
                    return
                status, body = server.routes.get(
                    (method, url.path), (404, status_body(404, f"{url.path} not found"))
                )
                self.send_json(status, body)

            def send_json(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def handle_exec(self, query: dict[str, list[str]]) -> None:
                if server.exec_refusal is not None:
                    self.send_json(*server.exec_refusal)
                    return
                key = self.headers["Sec-WebSocket-Key"]
                accept = base64.b64encode(
                    hashlib.sha1((key + _WEBSOCKET_GUID).encode()).digest()
                ).decode()
                self.send_response(101)
                self.send_header("Upgrade", "websocket")
                self.send_header("Connection", "Upgrade")
                self.send_header("Sec-WebSocket-Accept", accept)
                self.send_header("Sec-WebSocket-Protocol", server.protocol)
                self.end_headers()
                command = query["command"]
                server.exec_commands.append(command)
                frames = command_frames(command)
                for index, (needle, fault) in enumerate(server.faults):
                    if needle in " ".join(command):
                        del server.faults[index]
                        frames = fault(frames)
                        break
                try:
                    for channel, data in frames:
                        self.wfile.write(websocket_frame(bytes([channel]) + data))
                except Cut:
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self.wfile.write(websocket_frame((1000).to_bytes(2, "big"), opcode=0x8))
                self.close_connection = True

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        if self.tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self.tls)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def host(self) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
