"""The webhook served by uvicorn over real TLS on loopback, with certificates from certs/.

Each server is the real ``netpol-sniffer-webhook`` process (``python -m webhook.app``)."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from starlette.types import Message

from certs.make_certs import LOOPBACK_NAMES, make_certs
from tests.webhook.podchecks import DATA
from tests.webhook.servers import (
    HOST,
    Server,
    post_start,
    read_response,
    running_webhook,
    wait_until,
)
from webhook.admission import OVERLOADED_MESSAGE, admit
from webhook.app import OverloadGate, Shedder, ShedLog, create_app, main
from webhook.metrics import create_metrics
from webhook.serving import ARRIVED
from webhook.settings import ServingLimits, WebhookSettings
from webhook.tls import TlsReloader


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with running_webhook(tmp_path) as running:
        yield running


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
    wait_until(lambda: server.served_serial() != old, "the new certificate served")
    return server.served_serial()


def test_swapped_certificate_is_served_without_restart_or_dropped_requests(
    server: Server,
) -> None:
    old_serial = server.served_serial()
    body = (DATA / "deployment-pod.json").read_bytes()
    # A request in flight across the swap: headers and half the body before, the rest after.
    in_flight = server.connect()
    post_start(in_flight, body, sent=len(body) // 2)
    make_certs(server.certs, names=list(LOOPBACK_NAMES), reuse_ca=True)
    new_serial = _wait_for_serial(server, old_serial)
    expected = x509.load_pem_x509_certificate((server.certs / "tls.crt").read_bytes())
    assert new_serial == expected.serial_number
    in_flight.sendall(body[len(body) // 2 :])
    response = read_response(in_flight)
    assert response.status == 200
    assert json.loads(response.read())["response"]["patchType"] == "JSONPatch"
    in_flight.close()
    assert server.process.poll() is None
    assert server.metric("netpol_sniffer_tls_reloads_total") == 1


def test_unloadable_certificate_keeps_the_old_one(server: Server) -> None:
    serial = server.served_serial()
    (server.certs / "tls.crt").write_text("not a certificate\n")
    wait_until(
        lambda: server.metric('netpol_sniffer_errors_total{kind="tls-reload"}') >= 1,
        "the broken certificate noticed",
    )
    assert server.served_serial() == serial
    with server.client() as client:
        assert client.get("/readyz").status_code == 200


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "--tls-cert and --tls-key"),
        (["--tls-cert", "/nonexistent.crt", "--tls-key", "/nonexistent.key"], "/nonexistent.crt"),
        (
            ["--tls-cert", "c", "--tls-key", "k", "--port", "http"],
            "--port: must be a port number (0-65535), got 'http'",
        ),
    ],
)
def test_bad_start_is_a_clear_error(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv, environ={}) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("variable", "value", "allowed"),
    [
        ("NETPOL_SNIFFER_PORT", "70000", "must be a port number (0-65535)"),
        ("NETPOL_SNIFFER_PORT", "http", "must be a port number (0-65535)"),
        ("NETPOL_SNIFFER_TLS_POLL_SECONDS", "0", "must be a number of seconds, at least 0.05"),
        ("NETPOL_SNIFFER_TLS_POLL_SECONDS", "nan", "must be a number of seconds, at least 0.05"),
        ("NETPOL_SNIFFER_LOG_LEVEL", "loud", "must be one of debug, info, warning, error"),
        ("NETPOL_SNIFFER_SNAPLEN", "10", "must be an integer between 96 and 262144"),
        ("NETPOL_SNIFFER_WORKERS", "0", "must be auto or an integer between 1 and 64"),
    ],
)
def test_bad_environment_variable_is_named_with_its_value(
    variable: str, value: str, allowed: str, capsys: pytest.CaptureFixture[str]
) -> None:
    environ = {"NETPOL_SNIFFER_TLS_CERT": "c", "NETPOL_SNIFFER_TLS_KEY": "k", variable: value}
    assert main([], environ=environ) == 2
    error = capsys.readouterr().err
    assert f"error: environment variable {variable}: {allowed}, got {value!r}" in error
    assert "Traceback" not in error


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
    assert f"{config}: captureMode: must be one of handshake, full" in capsys.readouterr().err


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


BURST = 12
OVERLOAD_WARNING = f"netpol-sniffer: no capture sidecar: {OVERLOADED_MESSAGE}"


def reviews(count: int, prefix: str) -> list[bytes]:
    """The Deployment pod's review, ``count`` times, with uids ``prefix-0``, ``prefix-1``…"""
    review = json.loads((DATA / "deployment-pod.json").read_text())
    bodies = []
    for index in range(count):
        review["request"]["uid"] = f"{prefix}-{index}"
        bodies.append(json.dumps(review).encode())
    return bodies


def hold_the_only_place(server: Server, body: bytes, *, admitted_before: int = 0) -> ssl.SSLSocket:
    """With maxInFlight 1: a request that takes the worker's one place and keeps it (half its
    body sent), once it is in: the gate has then seen ``admitted_before`` + 1 requests."""
    held = server.connect()
    post_start(held, body, sent=len(body) // 2)
    wait_until(
        lambda: server.metric("netpol_sniffer_admission_wait_seconds_count") == admitted_before + 1,
        "the held request in the webhook",
    )
    return held


def test_a_burst_past_max_in_flight_is_answered_at_once_without_sidecars(tmp_path: Path) -> None:
    """While the worker is full, every request of a burst is answered at once: allowed
    unmodified, with the overload warning, counted in /metrics and named in the log. The
    request that filled the worker is admitted when it completes."""
    held_body, *bodies = reviews(BURST, "burst")
    with running_webhook(tmp_path, {"NETPOL_SNIFFER_MAX_IN_FLIGHT": "1"}) as server:
        held = hold_the_only_place(server, held_body)
        connections = [server.connect() for _ in bodies]
        for connection, body in zip(connections, bodies, strict=True):
            post_start(connection, body, sent=len(body))
        responses = []
        for connection in connections:
            answer = read_response(connection)
            assert answer.status == 200
            responses.append(json.loads(answer.read())["response"])
            connection.close()
        assert [r["uid"] for r in responses] == [f"burst-{i}" for i in range(1, BURST)]
        for response in responses:
            assert response["allowed"] is True and "patch" not in response
            assert response["warnings"] == [OVERLOAD_WARNING]
        held.sendall(held_body[len(held_body) // 2 :])
        admitted = read_response(held)
        assert json.loads(admitted.read())["response"]["patchType"] == "JSONPatch"
        held.close()
        shed = BURST - 1
        assert server.metric('netpol_sniffer_skipped_total{reason="overloaded"}') == shed
        assert server.metric("netpol_sniffer_injected_total") == 1
        assert server.metric("netpol_sniffer_admission_requests_total") == BURST
        wait_until(lambda: "overloaded: " in server.output(), "the shed pods logged")
        summary = next(line for line in server.lines if "overloaded: " in line)
        assert f"{shed} pod(s) admitted without the capture sidecar" in summary
        assert f"({shed} over maxInFlight)" in summary
        assert f"shop/frontend-7c9d8b6f5d-* ×{shed}" in summary


def test_a_connection_carries_on_after_shed_answers(tmp_path: Path) -> None:
    """Shed answers keep the connection alive like any other: the next request on it is shed
    again while the worker is full and admitted once it is not; ``Connection: close`` closes."""
    held_body, first, second, third, last = reviews(5, "kept")
    with running_webhook(tmp_path, {"NETPOL_SNIFFER_MAX_IN_FLIGHT": "1"}) as server:
        held = hold_the_only_place(server, held_body)
        kept = server.connect()
        for body in (first, second):
            post_start(kept, body, sent=len(body))
            response = json.loads(read_response(kept).read())["response"]
            assert response["warnings"] == [OVERLOAD_WARNING]
        held.sendall(held_body[len(held_body) // 2 :])
        assert read_response(held).status == 200
        held.close()
        # Answered is out of flight, even if its task has a turn of the loop left to finish.
        post_start(kept, third, sent=len(third))
        assert json.loads(read_response(kept).read())["response"]["patchType"] == "JSONPatch"
        kept.close()
        # Full again, and a client that wants the connection closed after the answer.
        held = hold_the_only_place(server, held_body, admitted_before=2)
        closing = server.connect()
        closing.sendall(
            f"POST /mutate HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n"
            f"Content-Length: {len(last)}\r\n\r\n".encode()
            + last
        )
        answer = read_response(closing)
        assert json.loads(answer.read())["response"]["warnings"] == [OVERLOAD_WARNING]
        assert answer.getheader("connection") == "close"
        assert closing.recv(1) == b""  # closed by the webhook
        closing.close()
        held.close()


def test_a_full_worker_still_takes_new_connections_now_and_then(tmp_path: Path) -> None:
    """A worker without room leaves new connections in the accept queue, but not for ever: a
    probe on a new connection is answered while the one request it may hold never finishes."""
    body = (DATA / "deployment-pod.json").read_bytes()
    with running_webhook(tmp_path, {"NETPOL_SNIFFER_MAX_IN_FLIGHT": "1"}) as server:
        held = hold_the_only_place(server, body)
        for _ in range(3):
            with server.client() as client:  # a new connection each time
                assert client.get("/healthz").status_code == 200
        held.sendall(body[len(body) // 2 :])
        assert read_response(held).status == 200
        held.close()


@dataclass
class Connecting:
    """New TLS connections to a webhook with few places, retried while it resets them: a
    connection just closed (the probe that saw the webhook start, say) holds its place until the
    webhook has seen it close. ``resets`` counts the attempts it reset."""

    server: Server
    resets: int = 0

    def connect(self) -> ssl.SSLSocket:
        connected: list[ssl.SSLSocket] = []

        def connected_now() -> bool:
            try:
                connected.append(self.server.connect())
            except OSError:
                self.resets += 1
                return False
            return True

        wait_until(connected_now, "a new connection taken")
        return connected[0]

    def metric(self, line_start: str) -> float:
        values: list[float] = []

        def read() -> bool:
            try:
                values.append(self.server.metric(line_start))
            except httpx.TransportError:
                self.resets += 1
                return False
            return True

        wait_until(read, f"{line_start} read")
        return values[0]


def test_a_worker_at_max_connections_resets_new_ones_before_their_handshake(
    tmp_path: Path,
) -> None:
    """With maxConnections 2 and two connections open, a third is reset before its TLS
    handshake and counted; the two open ones still admit, and once one closes a new connection
    is taken again."""
    body = (DATA / "deployment-pod.json").read_bytes()
    with running_webhook(tmp_path, {"NETPOL_SNIFFER_MAX_CONNECTIONS": "2"}) as server:
        connecting = Connecting(server)
        held = [connecting.connect(), connecting.connect()]
        with pytest.raises(OSError):  # reset: ConnectionResetError, or ssl.SSLError on EOF
            server.connect()
        for connection in held:
            post_start(connection, body, sent=len(body))
            assert json.loads(read_response(connection).read())["response"]["patchType"]
        held.pop().close()
        after = connecting.connect()
        post_start(after, body, sent=len(body))
        assert json.loads(read_response(after).read())["response"]["patchType"] == "JSONPatch"
        after.close()
        refused = connecting.metric("netpol_sniffer_connections_refused_total")
        assert refused == 1 + connecting.resets
        held[0].close()


def test_a_request_whose_client_left_is_out_of_flight(tmp_path: Path) -> None:
    """A client that goes away in the middle of its request frees the worker's place."""
    held_body, after = reviews(2, "left")
    with running_webhook(tmp_path, {"NETPOL_SNIFFER_MAX_IN_FLIGHT": "1"}) as server:
        hold_the_only_place(server, held_body).close()
        with server.client() as client:

            def admitted() -> bool:
                answer = client.post("/mutate", content=after).json()["response"]
                return "patch" in answer

            wait_until(admitted, "a request admitted once the first client has gone")


def test_pods_shed_just_before_a_stop_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    """The summary of shed pods is written when the worker stops, not lost with its timer."""
    metrics = create_metrics()
    limits = ServingLimits(max_in_flight=1)
    routes = create_app(WebhookSettings(serving=limits), metrics=metrics)
    gate = OverloadGate(
        routes,
        metrics=metrics,
        in_flight=lambda: 2,
        shedder=Shedder(metrics, ShedLog(3600), limits),
    )
    review = (DATA / "deployment-pod.json").read_bytes()

    async def shed_then_stop() -> list[str]:
        transport = httpx.ASGITransport(app=gate)
        async with httpx.AsyncClient(transport=transport, base_url="http://webhook") as client:
            answer = await client.post("/mutate", content=review)
        assert answer.json()["response"]["warnings"] == [
            f"netpol-sniffer: no capture sidecar: {OVERLOADED_MESSAGE}"
        ]
        assert "overloaded: " not in caplog.text  # the timer is an hour away
        events = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
        sent: list[str] = []

        async def receive() -> Message:
            return next(events)

        async def send(message: Message) -> None:
            sent.append(message["type"])

        await gate({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
        return sent

    with caplog.at_level(logging.WARNING, logger="webhook"):
        sent = asyncio.run(shed_then_stop())
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert "overloaded: 1 pod(s) admitted without the capture sidecar" in caplog.text
    assert "shop/frontend-7c9d8b6f5d-*" in caplog.text
    assert (
        metrics.registry.get_sample_value("netpol_sniffer_skipped_total", {"reason": "overloaded"})
        == 1
    )


def test_a_request_that_waited_too_long_is_shed_by_the_gate(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A request whose turn comes after maxWaitMilliseconds is shed even with room to spare."""
    metrics = create_metrics()
    shed_log = ShedLog(3600)
    settings = WebhookSettings()
    shedder = Shedder(metrics, shed_log, settings.serving)
    app = create_app(settings, metrics=metrics, shedder=shedder)
    late, on_time = reviews(2, "waited")

    async def post(body: bytes, waited: float) -> dict[str, object]:
        ARRIVED.set(time.perf_counter() - waited)  # as the worker's task factory would
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://webhook") as client:
            response: dict[str, object] = (await client.post("/mutate", content=body)).json()
        return response

    assert asyncio.run(post(late, 1.0))["response"] == {
        "uid": "waited-0",
        "allowed": True,
        "warnings": [OVERLOAD_WARNING],
    }
    assert "patch" in asyncio.run(post(on_time, 0.0))["response"]  # type: ignore[operator]
    with caplog.at_level(logging.WARNING, logger="webhook"):
        shed_log.flush()
    assert "(1 over maxWaitMilliseconds): shop/frontend-7c9d8b6f5d-*" in caplog.text


def test_a_worker_that_overflowed_keeps_half_its_places() -> None:
    """A burst past a worker's share of maxInFlight makes it keep only half of it for a second, so
    that a sustained overload leaves a short queue; shedding under the half alone does not renew
    that (a merely busy worker gets its whole share back)."""
    metrics = create_metrics()
    shedder = Shedder(metrics, ShedLog(3600), ServingLimits(max_in_flight=4))
    assert not shedder.full(4) and not shedder.full(3)
    assert shedder.full(5)  # an overflow
    assert not shedder.full(2) and shedder.full(3)  # half, for a second
