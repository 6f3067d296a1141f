"""The webhook's Prometheus metrics, in a registry of their own (one per app, so tests and two
apps in one process never collide).

With several worker processes (webhook.workers), prometheus_client's multiprocess mode keeps each
worker's values in files under ``PROMETHEUS_MULTIPROC_DIR``, and ``/metrics``, whichever worker
answers it, sums them: counters keep counting across a worker's restart.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

# Set by the supervisor for its workers; prometheus_client reads it when it is imported.
MULTIPROCESS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"

# Admission latency is sub-millisecond when healthy; the API server gives up at timeoutSeconds (5).
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass(frozen=True, slots=True)
class WebhookMetrics:
    registry: CollectorRegistry
    requests: Counter
    injected: Counter
    skipped: Counter
    errors: Counter
    latency: Histogram
    wait: Histogram
    tls_reloads: Counter
    certificate_expiry: Gauge
    connections_refused: Counter

    def exposition(self) -> bytes:
        """The Prometheus text format: this registry, or every worker's values together."""
        if os.environ.get(MULTIPROCESS_DIR_VARIABLE):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)


def create_metrics() -> WebhookMetrics:
    registry = CollectorRegistry(auto_describe=True)
    return WebhookMetrics(
        registry=registry,
        requests=Counter(
            "netpol_sniffer_admission_requests",
            "AdmissionReview requests received on /mutate",
            registry=registry,
        ),
        injected=Counter(
            "netpol_sniffer_injected", "Pods that got the capture sidecar", registry=registry
        ),
        skipped=Counter(
            "netpol_sniffer_skipped",
            "Pods admitted without the sidecar, by reason",
            ["reason"],
            registry=registry,
        ),
        errors=Counter(
            "netpol_sniffer_errors",
            "Requests that could not be understood (answered allowed, no patch), TLS reload "
            "failures and internal errors, by kind",
            ["kind"],
            registry=registry,
        ),
        latency=Histogram(
            "netpol_sniffer_admission_duration_seconds",
            "Time to answer an AdmissionReview, from body received to answer ready",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        ),
        wait=Histogram(
            "netpol_sniffer_admission_wait_seconds",
            "Time an AdmissionReview waited in its worker between arriving and its turn "
            "(past maxWaitMilliseconds it is answered at once, without the sidecar)",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        ),
        tls_reloads=Counter(
            "netpol_sniffer_tls_reloads",
            "Serving certificates reloaded from disk (by each worker process)",
            registry=registry,
        ),
        certificate_expiry=Gauge(
            "netpol_sniffer_tls_certificate_expiry_timestamp_seconds",
            "When the serving certificate in use expires (Unix time)",
            registry=registry,
            multiprocess_mode="mostrecent",
        ),
        connections_refused=Counter(
            "netpol_sniffer_connections_refused",
            "New connections closed before their TLS handshake because the worker held its "
            "share of maxConnections",
            registry=registry,
        ),
    )
