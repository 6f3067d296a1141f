"""How many worker processes serve, and keeping them running.

One worker runs in the webhook's own process, as it always has. With more, this process binds the
socket (webhook.serving.listen) and spawns the workers, which share it: one accept queue, so an
idle worker takes the next connection while a busy one does not. The supervisor replaces a worker
that dies, passes SIGTERM and SIGINT on, and returns once every worker has finished its requests.
The workers' metrics go through prometheus_client's multiprocess files (webhook.metrics), in a
directory made for the run and removed after it.

``workers: auto`` is one worker per whole CPU of the container's CPU limit (cgroup v2 ``cpu.max``
or v1 ``cpu.cfs_quota_us``), at least one, at most the CPUs the process may run on; without a CPU
limit, one (the process was given no number of CPUs: set ``workers``).
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType
from typing import TypeVar

from prometheus_client.multiprocess import mark_process_dead

from webhook.metrics import MULTIPROCESS_DIR_VARIABLE
from webhook.settings import ServingLimits

CGROUP_V2_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1_CPU = Path("/sys/fs/cgroup/cpu")
# A worker that dies is replaced after this long (a crash loop must not spin).
RESTART_DELAY_SECONDS = 1.0
# How often the supervisor looks at its workers when nothing happens.
POLL_SECONDS = 0.5

log = logging.getLogger(__name__)

Spec = TypeVar("Spec")


def cpu_quota_v2(cpu_max: str) -> float | None:
    """cgroup v2 ``cpu.max`` ("QUOTA PERIOD", or "max PERIOD" for no limit) → CPUs, or None."""
    quota, _, period = cpu_max.strip().partition(" ")
    if quota == "max" or not period:
        return None
    return int(quota) / int(period)


def cpu_quota_v1(quota_us: str, period_us: str) -> float | None:
    """cgroup v1 ``cpu.cfs_quota_us`` (-1: no limit) and ``cpu.cfs_period_us`` → CPUs, or None."""
    quota = int(quota_us)
    return None if quota <= 0 else quota / int(period_us)


def whole_cpus(quota: float | None, available: int) -> int:
    """Workers for a CPU quota. A worker uses one CPU at most, and two workers sharing 1.5 CPUs
    are throttled in every CFS period, so only whole CPUs count: floor, at least one, at most
    ``available``. No quota: one."""
    if quota is None:
        return 1
    return max(1, min(available, math.floor(quota + 1e-9)))


def container_cpu_quota() -> float | None:
    """The CPU limit of the cgroup this process runs in, in CPUs; None if none or unreadable."""
    try:
        return cpu_quota_v2(CGROUP_V2_CPU_MAX.read_text())
    except (OSError, ValueError):
        pass
    try:
        return cpu_quota_v1(
            (CGROUP_V1_CPU / "cpu.cfs_quota_us").read_text(),
            (CGROUP_V1_CPU / "cpu.cfs_period_us").read_text(),
        )
    except (OSError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class WorkerCount:
    workers: int
    why: str  # for the start-up log line


def worker_count(limits: ServingLimits) -> WorkerCount:
    if limits.workers is not None:
        return WorkerCount(limits.workers, "set by workers")
    quota = container_cpu_quota()
    available = len(os.sched_getaffinity(0))
    count = whole_cpus(quota, available)
    if quota is None:
        return WorkerCount(count, "no CPU limit")
    return WorkerCount(count, f"CPU limit {quota:g}, {available} CPUs")


def supervise(target: Callable[[Spec], object], spec: Spec, count: int, *, grace: float) -> int:
    """Run ``count`` spawned processes of ``target(spec)`` until SIGTERM or SIGINT; 0 when they
    all stopped, 1 if one had to be killed after ``grace`` seconds."""
    metrics_dir = tempfile.mkdtemp(prefix="netpol-sniffer-metrics-")
    os.environ[MULTIPROCESS_DIR_VARIABLE] = metrics_dir  # the spawned workers inherit it
    context = multiprocessing.get_context("spawn")
    stopping: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stopping.append(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    workers: dict[int, BaseProcess] = {}
    restarts: dict[int, float] = {}  # slot → when to start its replacement

    def start(slot: int) -> None:
        process = context.Process(target=target, args=(spec,), name=f"worker-{slot}")
        process.start()
        workers[slot] = process

    try:
        for slot in range(1, count + 1):
            start(slot)
        log.info("started %d workers, pids %s", count, [p.pid for p in workers.values()])
        while not stopping:
            running = [p.sentinel for p in workers.values() if p.exitcode is None]
            if running:
                multiprocessing.connection.wait(running, timeout=POLL_SECONDS)
            else:
                time.sleep(POLL_SECONDS)
            now = time.monotonic()
            for slot, process in list(workers.items()):
                if process.exitcode is not None and slot not in restarts and not stopping:
                    log.error(
                        "%s (pid %d) exited with status %s; replacing it",
                        process.name,
                        process.pid,
                        process.exitcode,
                    )
                    mark_process_dead(process.pid, metrics_dir)  # type: ignore[no-untyped-call]
                    restarts[slot] = now + RESTART_DELAY_SECONDS
            for slot, when in list(restarts.items()):
                if now >= when and not stopping:
                    del restarts[slot]
                    start(slot)
        return _stop(list(workers.values()), grace)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        shutil.rmtree(metrics_dir, ignore_errors=True)
        os.environ.pop(MULTIPROCESS_DIR_VARIABLE, None)


def _stop(workers: list[BaseProcess], grace: float) -> int:
    """SIGTERM to every worker, then wait for them; those still running after ``grace`` are
    killed (status 1)."""
    log.info("stopping %d workers", len(workers))
    for process in workers:
        if process.exitcode is None and process.pid is not None:
            os.kill(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    status = 0
    for process in workers:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.exitcode is None:
            log.error(
                "%s (pid %d) did not stop in %g s: killing it", process.name, process.pid, grace
            )
            process.kill()
            process.join()
            status = 1
    return status
