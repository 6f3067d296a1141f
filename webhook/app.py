"""The HTTP shell: FastAPI routes around :func:`webhook.admission.admit`, and ``main()`` for
``netpol-sniffer-webhook``.

``POST /mutate`` never answers 500 and never refuses a pod: whatever goes wrong, a request with a
readable uid is allowed without a patch (HTTP 200); only a body without one gets 400.
``GET /healthz`` (the process answers), ``GET /readyz`` (a certificate is loaded and unexpired),
``GET /metrics`` (Prometheus).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import ssl
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kernel.errors import ConfigError
from webhook.admission import (
    Outcome,
    UnreadableReview,
    admit,
    allowed_without_patch,
    request_uid,
)
from webhook.metrics import WebhookMetrics, create_metrics
from webhook.settings import (
    WebhookSettings,
    build_settings,
    environment_config,
    parse_config_text,
)
from webhook.tls import DEFAULT_POLL_SECONDS, CertificateInfo, TlsReloader

PROG = "netpol-sniffer-webhook"
DEFAULT_HOST = "0.0.0.0"  # inside a pod; use --host 127.0.0.1 on a workstation
DEFAULT_PORT = 8443
# Requests still in flight when SIGTERM arrives get this long to finish.
GRACEFUL_SHUTDOWN_SECONDS = 20

log = logging.getLogger("webhook")


def _json(data: object, status_code: int = 200) -> Response:
    body = json.dumps(data, separators=(",", ":")).encode()
    return Response(content=body, status_code=status_code, media_type="application/json")


def create_app(
    settings: WebhookSettings,
    *,
    metrics: WebhookMetrics | None = None,
    ready: Callable[[], bool] = lambda: True,
) -> FastAPI:
    """The webhook's routes. ``ready`` tells /readyz whether a usable certificate is loaded."""
    metrics = metrics or create_metrics()
    app = FastAPI(title=PROG, docs_url=None, redoc_url=None, openapi_url=None)

    def answer(body: bytes) -> Response:
        try:
            admission = admit(body, settings)
        except UnreadableReview as error:
            metrics.errors.labels(kind="unreadable").inc()
            log.warning("unreadable AdmissionReview (%d bytes): %s", len(body), error)
            return _json({"error": f"unreadable AdmissionReview: {error}"}, status_code=400)
        except Exception:  # the safety net: a bug here must not refuse or delay pods
            metrics.errors.labels(kind="internal").inc()
            log.exception("internal error while admitting a pod")
            uid = request_uid(body)
            if uid is None:
                return _json({"error": "unreadable AdmissionReview"}, status_code=400)
            return _json(allowed_without_patch(uid, "internal error in the webhook"))
        uid = admission.review["response"]["uid"]
        if admission.outcome is Outcome.INJECTED:
            metrics.injected.inc()
            log.info("%s uid=%s: injected", admission.pod, uid)
        elif admission.outcome is Outcome.SKIPPED:
            metrics.skipped.labels(reason=admission.reason).inc()
            log.info(
                "%s uid=%s: skipped (%s) %s",
                admission.pod,
                uid,
                admission.reason,
                admission.message,
            )
        else:
            metrics.errors.labels(kind=admission.reason).inc()
            log.warning("uid=%s: not understood (%s) %s", uid, admission.reason, admission.message)
        return _json(admission.review)

    @app.post("/mutate")
    async def mutate(request: Request) -> Response:
        started = time.perf_counter()
        metrics.requests.inc()
        response = answer(await request.body())
        metrics.latency.observe(time.perf_counter() - started)
        return response

    @app.get("/healthz")
    async def healthz() -> Response:
        return _json({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> Response:
        if ready():
            return _json({"status": "ready"})
        return _json({"status": "no usable TLS certificate"}, status_code=503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="The netpol-sniffer mutating admission webhook: injects the tcpdump capture "
        "sidecar into new pods of namespaces labelled netpol-sniffer.io/capture=enabled. Every "
        "option can also be set with the environment variable named in its help.",
        epilog="What is injected (image, capture mode, ring size, resources, namespaces to skip) "
        "comes from --config and NETPOL_SNIFFER_<SETTING> variables: see docs/webhook.md.",
    )

    def option(
        flag: str, env: str, help_text: str, default: str | None = None, metavar: str | None = None
    ) -> None:
        parser.add_argument(
            flag, default=environ.get(env, default), metavar=metavar, help=f"{help_text} (${env})"
        )

    option(
        "--tls-cert", "NETPOL_SNIFFER_TLS_CERT", "serving certificate chain, PEM", metavar="FILE"
    )
    option("--tls-key", "NETPOL_SNIFFER_TLS_KEY", "its private key, PEM", metavar="FILE")
    option(
        "--host",
        "NETPOL_SNIFFER_HOST",
        f"address to listen on [{DEFAULT_HOST}]",
        metavar="H",
        default=DEFAULT_HOST,
    )
    option(
        "--port",
        "NETPOL_SNIFFER_PORT",
        f"port [{DEFAULT_PORT}]",
        metavar="N",
        default=str(DEFAULT_PORT),
    )
    option("--config", "NETPOL_SNIFFER_CONFIG", "settings file, YAML or JSON", metavar="FILE")
    option(
        "--tls-poll-seconds",
        "NETPOL_SNIFFER_TLS_POLL_SECONDS",
        f"how often to look for a renewed certificate [{DEFAULT_POLL_SECONDS:g}]",
        metavar="S",
        default=str(DEFAULT_POLL_SECONDS),
    )
    option(
        "--log-level",
        "NETPOL_SNIFFER_LOG_LEVEL",
        "debug, info, warning or error [info]",
        metavar="LEVEL",
        default="info",
    )
    return parser


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


def _number(text: str, name: str, *, minimum: float) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {text!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum:g}, got {text!r}")
    return value


async def _serve(config: uvicorn.Config, reloader: TlsReloader, poll_seconds: float) -> None:
    server = uvicorn.Server(config)
    watcher = asyncio.create_task(reloader.watch(poll_seconds))
    try:
        await server.serve()
    finally:
        watcher.cancel()


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    args = _parser(environ).parse_args(argv)
    level = getattr(logging, str(args.log_level).upper(), None)
    if not isinstance(level, int):
        print(f"{PROG}: error: unknown log level {args.log_level!r}", file=sys.stderr)
        return 2
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if not args.tls_cert or not args.tls_key:
            raise ConfigError(
                "--tls-cert and --tls-key (or NETPOL_SNIFFER_TLS_CERT/_KEY) are required"
            )
        port = int(_number(args.port, "--port", minimum=0))
        if port > 65535 or str(port) != str(args.port).strip():
            raise ConfigError(f"--port must be a port number, got {args.port!r}")
        poll_seconds = _number(args.tls_poll_seconds, "--tls-poll-seconds", minimum=0.05)
        settings = load_settings(args.config, environ)
        metrics = create_metrics()

        def reloaded(info: CertificateInfo) -> None:
            metrics.tls_reloads.inc()
            metrics.certificate_expiry.set(info.not_after.timestamp())

        reloader = TlsReloader(
            Path(args.tls_cert),
            Path(args.tls_key),
            on_reload=reloaded,
            on_error=lambda _: metrics.errors.labels(kind="tls-reload").inc(),
        )
    except ConfigError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    metrics.certificate_expiry.set(reloader.info.not_after.timestamp())
    log.info(
        "serving %s (serial %x, valid until %s); capture image %s, mode %s, %s sidecar",
        reloader.info.subject,
        reloader.info.serial,
        reloader.info.not_after,
        settings.capture_image,
        settings.capture.mode,
        "native" if settings.native_sidecar else "plain",
    )

    def context_factory(
        _config: uvicorn.Config, _default: Callable[[], ssl.SSLContext]
    ) -> ssl.SSLContext:
        return reloader.context

    config = uvicorn.Config(
        create_app(settings, metrics=metrics, ready=reloader.is_valid),
        host=args.host,
        port=port,
        ssl_context_factory=context_factory,
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )
    # uvicorn's loop choice (uvloop when installed), as uvicorn.run would make it.
    with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
        runner.run(_serve(config, reloader, poll_seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
