"""The webhook served by uvicorn over real TLS on loopback, with certificates from certs/.

Each server is the real ``netpol-sniffer-webhook`` process (``python -m webhook.app``)."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from certs.make_certs import LOOPBACK_NAMES, make_certs
from tests.webhook.podchecks import DATA
from webhook.admission import admit
from webhook.app import create_app, main
from webhook.metrics import create_metrics
from webhook.settings import WebhookSettings
from webhook.tls import TlsReloader

HOST = "127.0.0.1"


@dataclass
class Server:
    port: int
    certs: Path
    process: subprocess.Popen[bytes]

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


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
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
    )
    running = Server(port, certs, process)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, process.communicate()[0].decode()
            try:
                with running.client() as client:
                    if client.get("/healthz").status_code == 200:
                        break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield running
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_mutate_answers_like_the_pure_core(server: Server) -> None:
    with server.client() as client:
        for path in sorted(DATA.glob("*.json")):
            body = path.read_bytes()
            answer = client.post(
                "/mutate", content=body, headers={"Content-Type": "application/json"}
            )
            assert answer.status_code == 200, path.name
            assert answer.json() == admit(body, WebhookSettings()).review, path.name
        assert client.get("/readyz").status_code == 200
    assert server.metric("netpol_sniffer_injected_total") == 5
    assert server.metric('netpol_sniffer_skipped_total{reason="host-network"}') == 1
    assert server.metric("netpol_sniffer_admission_requests_total") == 9
    assert server.metric("netpol_sniffer_admission_duration_seconds_count") == 9


def test_garbage_is_400_without_uid_and_allowed_with_one(server: Server) -> None:
    with server.client() as client:
        for name in ("not-json.txt", "empty.txt", "json-array.json", "no-uid.json"):
            answer = client.post("/mutate", content=(DATA / "garbage" / name).read_bytes())
            assert answer.status_code == 400, name
        for name in ("v1beta1.json", "object-not-a-pod.json", "containers-not-a-list.json"):
            body = (DATA / "garbage" / name).read_bytes()
            answer = client.post("/mutate", content=body)
            assert answer.status_code == 200, name
            response = answer.json()["response"]
            assert response["allowed"] is True and "patch" not in response
            assert response["uid"] == json.loads(body)["request"]["uid"]
    assert server.metric('netpol_sniffer_errors_total{kind="unreadable"}') == 4
    assert server.metric('netpol_sniffer_errors_total{kind="malformed-pod"}') == 1


def _wait_for_serial(server: Server, old: int) -> int:
    deadline = time.monotonic() + 10
    while (serial := server.served_serial()) == old:
        assert time.monotonic() < deadline, "the new certificate was never served"
        time.sleep(0.05)
    return serial


def test_swapped_certificate_is_served_without_restart_or_dropped_requests(
    server: Server,
) -> None:
    old_serial = server.served_serial()
    body = (DATA / "deployment-pod.json").read_bytes()
    # A request in flight across the swap: headers and half the body before, the rest after.
    in_flight = server.connect()
    in_flight.sendall(
        f"POST /mutate HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body[: len(body) // 2]
    )
    make_certs(server.certs, names=list(LOOPBACK_NAMES), reuse_ca=True)
    new_serial = _wait_for_serial(server, old_serial)
    expected = x509.load_pem_x509_certificate((server.certs / "tls.crt").read_bytes())
    assert new_serial == expected.serial_number
    in_flight.sendall(body[len(body) // 2 :])
    response = http.client.HTTPResponse(in_flight)
    response.begin()
    assert response.status == 200
    assert json.loads(response.read())["response"]["patchType"] == "JSONPatch"
    in_flight.close()
    assert server.process.poll() is None
    assert server.metric("netpol_sniffer_tls_reloads_total") == 1


def test_unloadable_certificate_keeps_the_old_one(server: Server) -> None:
    serial = server.served_serial()
    (server.certs / "tls.crt").write_text("not a certificate\n")
    deadline = time.monotonic() + 10
    while server.metric('netpol_sniffer_errors_total{kind="tls-reload"}') < 1:
        assert time.monotonic() < deadline, "the broken certificate was never noticed"
        time.sleep(0.05)
    assert server.served_serial() == serial
    with server.client() as client:
        assert client.get("/readyz").status_code == 200


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "--tls-cert and --tls-key"),
        (["--tls-cert", "/nonexistent.crt", "--tls-key", "/nonexistent.key"], "/nonexistent.crt"),
        (["--tls-cert", "c", "--tls-key", "k", "--port", "http"], "--port must be a number"),
    ],
)
def test_bad_start_is_a_clear_error(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv, environ={}) == 2
    assert message in capsys.readouterr().err


def test_bad_config_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    certs = tmp_path / "certs"
    make_certs(certs, names=["localhost"])
    config = tmp_path / "config.yaml"
    config.write_text("captureMode: everything\n")
    argv = ["--config", str(config)]
    environ = {
        "NETPOL_SNIFFER_TLS_CERT": str(certs / "tls.crt"),
        "NETPOL_SNIFFER_TLS_KEY": str(certs / "tls.key"),
    }
    assert main(argv, environ=environ) == 2
    assert f"{config}: captureMode must be one of handshake, full" in capsys.readouterr().err


def test_reloader_polls_and_reports_expiry(tmp_path: Path) -> None:
    make_certs(tmp_path, names=["localhost"], days=1)
    reloaded: list[int] = []
    reloader = TlsReloader(
        tmp_path / "tls.crt", tmp_path / "tls.key", on_reload=lambda i: reloaded.append(i.serial)
    )
    assert reloader.poll() is False  # nothing changed
    now = datetime.now(UTC)
    assert reloader.is_valid(now) and not reloader.is_valid(now + timedelta(days=2))
    make_certs(tmp_path, names=["localhost"], reuse_ca=True)
    assert reloader.poll() is True
    assert reloaded == [reloader.info.serial]
    assert reloader.is_valid(now + timedelta(days=2))


def test_a_bug_in_admission_still_allows_the_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(body: bytes, settings: WebhookSettings) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr("webhook.app.admit", broken)
    metrics = create_metrics()
    app = create_app(WebhookSettings(), metrics=metrics)
    review = (DATA / "deployment-pod.json").read_bytes()

    async def post(body: bytes) -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://webhook") as client:
            return await client.post("/mutate", content=body)

    answer = asyncio.run(post(review))
    assert answer.status_code == 200
    response = answer.json()["response"]
    assert response["allowed"] is True and "patch" not in response
    assert response["uid"] == json.loads(review)["request"]["uid"]
    assert asyncio.run(post(b"{}")).status_code == 400
    errors = metrics.registry.get_sample_value("netpol_sniffer_errors_total", {"kind": "internal"})
    assert errors == 2
