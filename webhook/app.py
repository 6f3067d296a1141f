"""The HTTP shell: FastAPI routes around :func:`webhook.admission.admit`, the overload gate in
front of them, and ``main()`` for ``netpol-sniffer-webhook``.

``POST /mutate`` never answers 500 and never refuses a pod: whatever goes wrong, a request with a
readable uid is allowed without a patch (HTTP 200); only a body without one gets 400. When its
worker is overloaded (webhook.shedding), the gate answers it at once, before FastAPI and without
admitting, allowed without a patch and with a warning.
``GET /healthz`` (the process answers), ``GET /readyz`` (a certificate is loaded and unexpired),
``GET /metrics`` (Prometheus).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kernel.errors import ConfigError
from webhook.admission import (
    Outcome,
    UnreadableReview,
    admit,
    allowed_without_patch,
    request_uid,
    skip_overloaded,
)
from webhook.metrics import WebhookMetrics, create_metrics
from webhook.serving import (
    ARRIVED,
    GRACEFUL_SHUTDOWN_SECONDS,
    MUTATE_PATH,
    Answer,
    InFlight,
    listen,
    serve,
)
from webhook.settings import (
    ServingLimits,
    WebhookSettings,
    build_settings,
    environment_config,
    parse_config_text,
)
from webhook.shedding import (
    OVERFLOW_MEMORY_SECONDS,
    OverloadCause,
    in_flight_limit,
    overflows,
    overload_cause,
    shed_summary,
    worker_limits,
)
from webhook.tls import DEFAULT_POLL_SECONDS, CertificateInfo, TlsReloader, load_context
from webhook.workers import supervise, worker_count

PROG = "netpol-sniffer-webhook"
DEFAULT_HOST = "0.0.0.0"  # inside a pod; use --host 127.0.0.1 on a workstation
DEFAULT_PORT = 8443
JSON_TYPE = "application/json"
# Shed pods are logged together, in one line per this many seconds.
SHED_LOG_SECONDS = 1.0

log = logging.getLogger("webhook")


def _json(data: object, status: int = 200) -> Answer:
    return Answer(status, json.dumps(data, separators=(",", ":")).encode())


def _unreadable(body: bytes, error: UnreadableReview, metrics: WebhookMetrics) -> Answer:
    metrics.errors.labels(kind="unreadable").inc()
    log.warning("unreadable AdmissionReview (%d bytes): %s", len(body), error)
    return _json({"error": f"unreadable AdmissionReview: {error}"}, status=400)


def _answer(body: bytes, settings: WebhookSettings, metrics: WebhookMetrics) -> Answer:
    """admit()'s answer to a request body, counted and logged."""
    try:
        admission = admit(body, settings)
    except UnreadableReview as error:
        return _unreadable(body, error, metrics)
    except Exception:  # the safety net: a bug here must not refuse or delay pods
        metrics.errors.labels(kind="internal").inc()
        log.exception("internal error while admitting a pod")
        uid = request_uid(body)
        if uid is None:
            return _json({"error": "unreadable AdmissionReview"}, status=400)
        return _json(allowed_without_patch(uid, "internal error in the webhook"))
    uid = admission.review["response"]["uid"]
    if admission.outcome is Outcome.INJECTED:
        metrics.injected.inc()
        log.info("%s uid=%s: injected", admission.pod, uid)
    elif admission.outcome is Outcome.SKIPPED:
        metrics.skipped.labels(reason=admission.reason).inc()
        log.info(
            "%s uid=%s: skipped (%s) %s", admission.pod, uid, admission.reason, admission.message
        )
    else:
        metrics.errors.labels(kind=admission.reason).inc()
        log.warning("uid=%s: not understood (%s) %s", uid, admission.reason, admission.message)
    return _json(admission.review)


class ShedLog:
    """The pods a worker shed, logged as one warning a second that names them (a line per
    pod would cost a shed request a third more, at the moment it must be cheapest)."""

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._pods: Counter[str] = Counter()
        self._causes: Counter[OverloadCause] = Counter()

    def add(self, pod: str, cause: OverloadCause) -> None:
        if not self._pods:
            asyncio.get_running_loop().call_later(self._seconds, self.flush)
        self._pods[pod] += 1
        self._causes[cause] += 1

    def flush(self) -> None:
        if self._pods:
            log.warning(shed_summary(self._pods, self._causes, seconds=self._seconds))
        self._pods.clear()
        self._causes.clear()


class Shedder:
    """A worker's requests it will not admit: whether to shed one (webhook.shedding, with the
    time of the last shed), and the answer (allowed, no patch, the overload warning), the counts
    and the pod for the summary log line, wherever it is shed (the HTTP protocol when the worker
    is full, the gate when a request waited too long)."""

    def __init__(self, metrics: WebhookMetrics, shed_log: ShedLog, limits: ServingLimits) -> None:
        self._metrics = metrics
        self.shed_log = shed_log
        self._limits = limits  # the worker's (shedding.worker_limits)
        self._overflowed_at = -math.inf

    def cause(self, *, in_flight: int, waited: float) -> OverloadCause | None:
        """Why a request must be shed, or None; ``in_flight`` counts it too."""
        now = time.perf_counter()
        if overflows(in_flight, self._limits):
            self._overflowed_at = now
        return overload_cause(
            in_flight=in_flight,
            waited_seconds=waited,
            overflowed_recently=now - self._overflowed_at < OVERFLOW_MEMORY_SECONDS,
            limits=self._limits,
        )

    def full(self, in_flight: int) -> bool:
        """For the HTTP protocol, which sheds a request that arrives when the worker is full."""
        return self.cause(in_flight=in_flight, waited=0.0) is not None

    def answer(self, body: bytes, cause: OverloadCause, started: float) -> Answer:
        """``started``: when the decision was made (perf_counter), for the latency histogram."""
        self._metrics.requests.inc()
        try:
            admission = skip_overloaded(body)
        except UnreadableReview as error:
            answer = _unreadable(body, error, self._metrics)
        else:
            self._metrics.skipped.labels(reason=admission.reason).inc()
            self.shed_log.add(admission.pod, cause)
            uid = admission.review["response"]["uid"]
            log.debug("%s uid=%s: shed (%s)", admission.pod, uid, cause)
            answer = _json(admission.review)
        self._metrics.latency.observe(time.perf_counter() - started)
        return answer

    def when_full(self, body: bytes) -> Answer:
        """The answer for the HTTP protocol's sheds."""
        return self.answer(body, OverloadCause.IN_FLIGHT, time.perf_counter())


class OverloadGate:
    """The ASGI layer in front of the routes. A ``POST /mutate`` that gets its turn after waiting
    too long, or while its worker is over ``maxInFlight`` (webhook.shedding), is answered here,
    at once: allowed, no patch, a warning. That costs reading the body and a JSON parse for the
    uid and the pod's name, and none of FastAPI's or admit()'s time. (Most sheds happen before:
    webhook.serving.SheddingProtocol answers a request that arrives while the worker is full.)"""

    def __init__(
        self,
        routes: ASGIApp,
        *,
        metrics: WebhookMetrics,
        in_flight: InFlight,
        shedder: Shedder,
    ) -> None:
        self._routes = routes
        self._metrics = metrics
        self._in_flight = in_flight
        self._shedder = shedder

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._routes(scope, self._flushing_at_shutdown(receive), send)
            return
        if scope["type"] == "http" and scope["path"] == MUTATE_PATH and scope["method"] == "POST":
            started = time.perf_counter()
            waited = started - ARRIVED.get(started)
            self._metrics.wait.observe(waited)
            cause = self._shedder.cause(in_flight=self._in_flight(), waited=waited)
            if cause is not None:
                await self._shed(cause, started, receive, send)
                return
        await self._routes(scope, receive, send)

    def _flushing_at_shutdown(self, receive: Receive) -> Receive:
        """``receive`` for the lifespan: the pods shed in the last second are logged before the
        worker stops."""

        async def receiving() -> Message:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                self._shedder.shed_log.flush()
            return message

        return receiving

    async def _shed(
        self, cause: OverloadCause, started: float, receive: Receive, send: Send
    ) -> None:
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client has gone: nobody to answer
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        answer = self._shedder.answer(bytes(body), cause, started)
        headers = [
            (b"content-type", JSON_TYPE.encode()),
            (b"content-length", b"%d" % len(answer.body)),
        ]
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        await send({"type": "http.response.body", "body": answer.body})


def create_app(
    settings: WebhookSettings,
    *,
    metrics: WebhookMetrics | None = None,
    ready: Callable[[], bool] = lambda: True,
    in_flight: InFlight = lambda: 1,
    shedder: Shedder | None = None,
) -> ASGIApp:
    """The webhook's routes behind the overload gate. ``ready`` tells /readyz whether a usable
    certificate is loaded; ``in_flight`` counts the worker's requests (webhook.serving);
    ``shedder`` is the worker's, shared with its HTTP protocol."""
    metrics = metrics or create_metrics()
    shedder = shedder or Shedder(metrics, ShedLog(SHED_LOG_SECONDS), settings.serving)
    routes = FastAPI(title=PROG, docs_url=None, redoc_url=None, openapi_url=None)

    def respond(answer: Answer) -> Response:
        return Response(content=answer.body, status_code=answer.status, media_type=JSON_TYPE)

    @routes.post(MUTATE_PATH)
    async def mutate(request: Request) -> Response:
        started = time.perf_counter()
        metrics.requests.inc()
        answer = _answer(await request.body(), settings, metrics)
        metrics.latency.observe(time.perf_counter() - started)
        return respond(answer)

    @routes.get("/healthz")
    async def healthz() -> Response:
        return respond(_json({"status": "ok"}))

    @routes.get("/readyz")
    async def readyz() -> Response:
        if ready():
            return respond(_json({"status": "ready"}))
        return respond(_json({"status": "no usable TLS certificate"}, status=503))

    @routes.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return OverloadGate(routes, metrics=metrics, in_flight=in_flight, shedder=shedder)


LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True, slots=True)
class ServerOption:
    """A command-line option that an environment variable can set too."""

    flag: str
    variable: str
    help_text: str
    default: str | None = None
    metavar: str = "FILE"


SERVER_OPTIONS = (
    ServerOption("--tls-cert", "NETPOL_SNIFFER_TLS_CERT", "serving certificate chain, PEM"),
    ServerOption("--tls-key", "NETPOL_SNIFFER_TLS_KEY", "its private key, PEM"),
    ServerOption(
        "--host", "NETPOL_SNIFFER_HOST", f"address to listen on [{DEFAULT_HOST}]", DEFAULT_HOST, "H"
    ),
    ServerOption("--port", "NETPOL_SNIFFER_PORT", f"port [{DEFAULT_PORT}]", str(DEFAULT_PORT), "N"),
    ServerOption("--config", "NETPOL_SNIFFER_CONFIG", "settings file, YAML or JSON"),
    ServerOption(
        "--tls-poll-seconds",
        "NETPOL_SNIFFER_TLS_POLL_SECONDS",
        f"how often to look for a renewed certificate [{DEFAULT_POLL_SECONDS:g}]",
        str(DEFAULT_POLL_SECONDS),
        "S",
    ),
    ServerOption(
        "--log-level",
        "NETPOL_SNIFFER_LOG_LEVEL",
        f"{', '.join(LOG_LEVELS)} [info]",
        "info",
        "LEVEL",
    ),
)


@dataclass(frozen=True, slots=True)
class OptionValue:
    """A server option's value and where it came from, for an error about it."""

    text: str | None
    where: str  # "--port", or "environment variable NETPOL_SNIFFER_PORT"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="The netpol-sniffer mutating admission webhook: injects the tcpdump capture "
        "sidecar into new pods of namespaces labelled netpol-sniffer.io/capture=enabled. Every "
        "option can also be set with the environment variable named in its help.",
        epilog="What is injected (image, capture mode, ring size, resources, namespaces to skip) "
        "comes from --config and NETPOL_SNIFFER_<SETTING> variables: see docs/webhook.md.",
    )
    for option in SERVER_OPTIONS:
        parser.add_argument(
            option.flag, metavar=option.metavar, help=f"{option.help_text} (${option.variable})"
        )
    return parser


def server_options(
    argv: Sequence[str] | None, environ: Mapping[str, str]
) -> dict[str, OptionValue]:
    """Each server option by its flag: from the command line, else its environment variable, else
    its default."""
    args = vars(_parser().parse_args(argv))
    values = {}
    for option in SERVER_OPTIONS:
        given = args[option.flag.removeprefix("--").replace("-", "_")]
        if given is not None:
            values[option.flag] = OptionValue(given, option.flag)
        elif option.variable in environ:
            where = f"environment variable {option.variable}"
            values[option.flag] = OptionValue(environ[option.variable], where)
        else:
            values[option.flag] = OptionValue(option.default, option.flag)
    return values


def load_settings(config: str | None, environ: Mapping[str, str]) -> WebhookSettings:
    """The settings from an optional config file and the environment; ConfigError if unusable."""
    file_config: dict[str, object] = {}
    if config:
        try:
            text = Path(config).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"config file {config} cannot be read: {error}") from None
        file_config = parse_config_text(text, source=config)
    return build_settings(file_config, environment_config(environ), source=config or "config")


def _port(option: OptionValue) -> int:
    text = (option.text or "").strip()
    if not text.isdigit() or int(text) > 65535:
        raise ConfigError(f"{option.where}: must be a port number (0-65535), got {option.text!r}")
    return int(text)


def _seconds(option: OptionValue, *, minimum: float) -> float:
    try:
        value = float(option.text or "")
    except ValueError:
        value = math.nan
    if not value >= minimum or math.isinf(value):
        raise ConfigError(
            f"{option.where}: must be a number of seconds, at least {minimum:g}, "
            f"got {option.text!r}"
        )
    return value


def _log_level(option: OptionValue) -> int:
    text = (option.text or "").strip().lower()
    if text not in LOG_LEVELS:
        raise ConfigError(
            f"{option.where}: must be one of {', '.join(LOG_LEVELS)}, got {option.text!r}"
        )
    level: int = getattr(logging, text.upper())
    return level


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# With several workers, each line says which one wrote it.
WORKERS_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(processName)s: %(message)s"


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What one worker needs; pickled into each spawned worker process (webhook.workers)."""

    settings: WebhookSettings
    tls_cert: Path
    tls_key: Path
    tls_poll_seconds: float
    log_level: int
    log_format: str
    listener: socket.socket
    workers: int  # how many share the listener and the settings' maxInFlight


def run_worker(spec: WorkerSpec) -> None:
    """Serve on the spec's socket until SIGTERM or SIGINT: the whole webhook with one worker, one
    of the supervisor's processes with more."""
    logging.basicConfig(level=spec.log_level, format=spec.log_format)  # a spawned worker's own
    metrics = create_metrics()

    def reloaded(info: CertificateInfo) -> None:
        metrics.tls_reloads.inc()
        metrics.certificate_expiry.set(info.not_after.timestamp())

    try:
        reloader = TlsReloader(
            spec.tls_cert,
            spec.tls_key,
            on_reload=reloaded,
            on_error=lambda _: metrics.errors.labels(kind="tls-reload").inc(),
        )
    except ConfigError as error:  # the files went away after main() read them
        log.error("%s", error)
        sys.exit(2)
    metrics.certificate_expiry.set(reloader.info.not_after.timestamp())
    limits = worker_limits(spec.settings.serving, spec.workers)
    shedder = Shedder(metrics, ShedLog(SHED_LOG_SECONDS), limits)
    serve(
        lambda in_flight: create_app(
            spec.settings,
            metrics=metrics,
            ready=reloader.is_valid,
            in_flight=in_flight,
            shedder=shedder,
        ),
        listener=spec.listener,
        limits=limits,
        full=shedder.full,
        shed=shedder.when_full,
        refused=metrics.connections_refused.inc,
        reloader=reloader,
        poll_seconds=spec.tls_poll_seconds,
    )


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    options = server_options(argv, environ)
    tls_cert, tls_key = options["--tls-cert"].text, options["--tls-key"].text
    host = options["--host"].text or DEFAULT_HOST
    try:
        level = _log_level(options["--log-level"])
        if not tls_cert or not tls_key:
            raise ConfigError(
                "--tls-cert and --tls-key (or NETPOL_SNIFFER_TLS_CERT/_KEY) are required"
            )
        port = _port(options["--port"])
        poll_seconds = _seconds(options["--tls-poll-seconds"], minimum=0.05)
        settings = load_settings(options["--config"].text, environ)
        _, certificate = load_context(Path(tls_cert), Path(tls_key))
        count = worker_count(settings.serving)
        listener = listen(host, port, settings.serving.listen_backlog)
    except ConfigError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    log_format = LOG_FORMAT if count.workers == 1 else WORKERS_LOG_FORMAT
    logging.basicConfig(level=level, format=log_format)
    limits = worker_limits(settings.serving, count.workers)
    log.info(
        "serving https://%s:%d/ as %s (serial %x, valid until %s); capture image %s, mode %s, "
        "%s sidecar; %d worker(s) (%s), each shedding past %d requests in flight (%d for a "
        "second after more came) or %g ms of waiting, and holding at most %d connections",
        f"[{host}]" if ":" in host else host,
        port,
        certificate.subject,
        certificate.serial,
        certificate.not_after,
        settings.capture_image,
        settings.capture.mode,
        "native" if settings.native_sidecar else "plain",
        count.workers,
        count.why,
        limits.max_in_flight,
        in_flight_limit(limits, overflowed_recently=True),
        limits.max_wait_seconds * 1000,
        limits.max_connections,
    )
    spec = WorkerSpec(
        settings=settings,
        tls_cert=Path(tls_cert),
        tls_key=Path(tls_key),
        tls_poll_seconds=poll_seconds,
        log_level=level,
        log_format=log_format,
        listener=listener,
        workers=count.workers,
    )
    with listener:
        if count.workers == 1:
            run_worker(spec)
            return 0
        # Each worker gets the full grace period, and a little more to close down.
        return supervise(run_worker, spec, count.workers, grace=GRACEFUL_SHUTDOWN_SECONDS + 5)


if __name__ == "__main__":
    sys.exit(main())
