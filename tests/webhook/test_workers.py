"""Worker processes: how many a CPU limit gives, and the real webhook with two of them (they share
the port, sum their metrics, reload the certificate, are replaced when they die, stop on
SIGTERM)."""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from certs.make_certs import LOOPBACK_NAMES, make_certs
from tests.webhook.podchecks import DATA
from tests.webhook.servers import Server, running_webhook, wait_until
from webhook.metrics import MULTIPROCESS_DIR_VARIABLE
from webhook.workers import cpu_quota_v1, cpu_quota_v2, whole_cpus

BODY = (DATA / "deployment-pod.json").read_bytes()


@pytest.mark.parametrize(
    ("cpu_max", "cpus"),
    [("max 100000\n", None), ("200000 100000\n", 2.0), ("150000 100000", 1.5), ("5000 10000", 0.5)],
)
def test_cgroup_v2_cpu_max(cpu_max: str, cpus: float | None) -> None:
    assert cpu_quota_v2(cpu_max) == cpus


def test_cgroup_v1_quota() -> None:
    assert cpu_quota_v1("-1\n", "100000\n") is None
    assert cpu_quota_v1("250000\n", "100000\n") == 2.5


@pytest.mark.parametrize(
    ("quota", "available", "workers"),
    [(None, 8, 1), (0.5, 8, 1), (1.5, 8, 1), (2.0, 8, 2), (3.999999999, 8, 4), (4.0, 2, 2)],
)
def test_one_worker_per_whole_cpu(quota: float | None, available: int, workers: int) -> None:
    assert whole_cpus(quota, available) == workers


def worker_pids(server: Server) -> list[int]:
    """The two workers' pids, once both serve."""
    wait_until(
        lambda: server.output().count("Application startup complete") == 2, "both workers serving"
    )
    found = re.search(r"started 2 workers, pids \[(\d+), (\d+)\]", server.output())
    assert found, server.output()
    return [int(pid) for pid in found.groups()]


def admit_on_new_connections(server: Server, count: int) -> None:
    for _ in range(count):
        with server.client() as client:  # a new connection each time
            answer = client.post("/mutate", content=BODY)
            assert answer.status_code == 200
            assert answer.json()["response"]["patchType"] == "JSONPatch"


@pytest.fixture
def two_workers(tmp_path: Path) -> Iterator[Server]:
    with running_webhook(tmp_path, {"NETPOL_SNIFFER_WORKERS": "2"}) as server:
        yield server


def test_two_workers_share_the_port_and_sum_their_metrics(two_workers: Server) -> None:
    server = two_workers
    pids = worker_pids(server)
    sent = 0
    while not all(f"worker-{n}: shop/frontend" in server.output() for n in (1, 2)):
        assert sent < 200, "one worker took every connection"
        admit_on_new_connections(server, 5)
        sent += 5
    # Whichever worker answers /metrics, it counts what both did.
    for _ in range(4):
        assert server.metric("netpol_sniffer_injected_total") == sent
        assert server.metric("netpol_sniffer_admission_requests_total") == sent
    metrics_dir = next(
        line.split("=", 1)[1]
        for line in Path(f"/proc/{pids[0]}/environ").read_bytes().decode().split("\0")
        if line.startswith(f"{MULTIPROCESS_DIR_VARIABLE}=")
    )
    assert Path(metrics_dir).is_dir()
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=60) == 0
    assert not Path(metrics_dir).exists()
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists()


def test_a_worker_that_dies_is_replaced_and_its_counts_kept(two_workers: Server) -> None:
    server = two_workers
    pids = worker_pids(server)
    admit_on_new_connections(server, 10)
    os.kill(pids[0], signal.SIGKILL)
    wait_until(lambda: "exited with status -9; replacing it" in server.output(), "the death seen")
    wait_until(lambda: server.output().count("Application startup complete") == 3, "a new worker")
    admit_on_new_connections(server, 10)
    assert server.metric("netpol_sniffer_injected_total") == 20


def test_every_worker_serves_a_renewed_certificate(two_workers: Server) -> None:
    server = two_workers
    worker_pids(server)
    old = server.served_serial()
    make_certs(server.certs, names=list(LOOPBACK_NAMES), reuse_ca=True)
    wait_until(
        lambda: all(server.served_serial() != old for _ in range(20)),
        "every new connection served the renewed certificate",
    )
    wait_until(
        lambda: server.metric("netpol_sniffer_tls_reloads_total") == 2, "a reload in each worker"
    )
