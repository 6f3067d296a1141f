"""The real ``netpol-sniffer-webhook`` process (``python -m webhook.app``) on loopback over TLS,
with certificates from certs/, for the tests that need a server: its output kept, its metrics
read, stopped and cleaned up after."""

from __future__ import annotations

import http.client
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from cryptography import x509

from certs.make_certs import LOOPBACK_NAMES, make_certs

HOST = "127.0.0.1"


@dataclass
class Server:
    port: int
    certs: Path
    process: subprocess.Popen[bytes]
    lines: list[str] = field(default_factory=list)

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.certs / "ca.crt")

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=f"https://{HOST}:{self.port}", verify=self.ssl_context())

    def connect(self) -> ssl.SSLSocket:
        raw = socket.create_connection((HOST, self.port), timeout=5)
        return self.ssl_context().wrap_socket(raw, server_hostname=HOST)

    def served_serial(self) -> int:
        with self.connect() as connection:
            der = connection.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der).serial_number

    def metric(self, line_start: str) -> float:
        with self.client() as client:
            text = client.get("/metrics").text
        values = [
            float(line.split()[-1]) for line in text.splitlines() if line.startswith(line_start)
        ]
        return sum(values)

    def output(self) -> str:
        return "".join(self.lines)


def post_start(connection: ssl.SSLSocket, body: bytes, *, sent: int) -> None:
    """Send a ``POST /mutate``'s headers and the first ``sent`` bytes of its body."""
    connection.sendall(
        f"POST /mutate HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body[:sent]
    )


def read_response(connection: ssl.SSLSocket) -> http.client.HTTPResponse:
    response = http.client.HTTPResponse(connection)
    response.begin()
    return response


def wait_until(condition: Callable[[], bool], what: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {seconds:g} s"
        time.sleep(0.05)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def running_webhook(tmp_path: Path, environ: Mapping[str, str] | None = None) -> Iterator[Server]:
    """The webhook, ready (``/healthz`` answers), with ``environ`` added to its environment."""
    certs = tmp_path / "certs"
    make_certs(certs, names=list(LOOPBACK_NAMES))
    port = _free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "webhook.app",
            "--tls-cert",
            str(certs / "tls.crt"),
            "--tls-key",
            str(certs / "tls.key"),
            "--host",
            HOST,
            "--port",
            str(port),
            "--tls-poll-seconds",
            "0.1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(environ or {})},
    )
    running = Server(port, certs, process)
    stdout = process.stdout
    assert stdout is not None

    def keep_output() -> None:
        for line in stdout:
            running.lines.append(line.decode(errors="replace"))

    reader = threading.Thread(target=keep_output, daemon=True)
    reader.start()
    try:

        def healthy() -> bool:
            assert process.poll() is None, running.output()
            try:
                with running.client() as client:
                    return client.get("/healthz").status_code == 200
            except httpx.TransportError:
                return False

        wait_until(healthy, "the webhook answering /healthz")
        yield running
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        reader.join(timeout=5)
