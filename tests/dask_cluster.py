"""A real Dask cluster for tests: a ``dask scheduler`` and ``dask worker`` processes on loopback,
started as the docs tell users to start them, and stopped (also when a test fails).

Usage::

    with dask_cluster(tmp_path / "cluster") as cluster:
        cluster.start_worker("healthy")
        cluster.wait_for_workers(1)
        main(["analyse", ..., "--scheduler", cluster.address])
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from distributed import Client

# The venv's `dask` command, beside this interpreter.
DASK = str(Path(sys.executable).parent / "dask")
# A guard against a cluster that never comes up, not a measure: it comes up in seconds.
START_DEADLINE = 120.0
PR_SET_PDEATHSIG = 1  # prctl(2)


def free_port() -> int:
    """A loopback port nobody listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _die_with_parent() -> None:
    """In the child: SIGKILL when the test process goes away without stopping it (killed, or
    interrupted before its clean-up ran)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class DaskCluster:
    """The processes of one cluster; their logs in ``directory``."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.address = f"tcp://127.0.0.1:{free_port()}"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def _start(self, name: str, argv: Sequence[str], env: Mapping[str, str] | None) -> None:
        with (self.directory / f"{name}.log").open("wb") as log:
            # A session of its own: stopping it stops what it started.
            self.processes[name] = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                env={**os.environ, **(env or {})},
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    def start_scheduler(self) -> None:
        host, port = self.address.removeprefix("tcp://").split(":")
        argv = [DASK, "scheduler", "--host", host, "--port", port, "--no-dashboard"]
        self._start("scheduler", argv, None)

    def start_worker(
        self,
        name: str,
        *,
        preload: Path | None = None,
        env: Mapping[str, str] | None = None,
        wrapper: Sequence[str] = (),
    ) -> None:
        """A worker process of one thread, without a nanny (killed, it stays dead); it waits for
        the scheduler if that is still starting. ``wrapper``: a command that runs it (``unshare
        ...``)."""
        argv = [
            *wrapper,
            DASK,
            "worker",
            self.address,
            "--name",
            name,
            "--nthreads",
            "1",
            "--no-nanny",
            "--no-dashboard",
            "--local-directory",
            str(self.directory / name),
        ]
        if preload is not None:
            argv += ["--preload", str(preload)]
        self._start(name, argv, env)

    def wait_for_workers(self, count: int) -> None:
        """Until ``count`` workers are registered with the scheduler."""
        deadline = time.monotonic() + START_DEADLINE
        with Client(self.address, timeout=START_DEADLINE, set_as_default=False) as client:
            while len(client.scheduler_info()["workers"]) < count:
                exited = {n: p.returncode for n, p in self.processes.items() if p.poll()}
                assert not exited, f"exited: {exited}\n{self.logs()}"
                assert time.monotonic() < deadline, f"no {count} workers\n{self.logs()}"
                time.sleep(0.1)

    def kill(self, name: str) -> None:
        """SIGKILL: no goodbye to the scheduler, as when a machine goes away."""
        os.killpg(self.processes[name].pid, signal.SIGKILL)
        self.processes[name].wait()

    def stop(self) -> None:
        """Every process killed (a graceful close of each takes seconds, and nothing here needs
        one), the scheduler last."""
        for name in sorted(self.processes, key=lambda name: name == "scheduler"):
            process = self.processes[name]
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def logs(self) -> str:
        return "\n".join(
            f"== {log.name}\n{log.read_text(errors='replace')[-3000:]}"
            for log in sorted(self.directory.glob("*.log"))
        )


@contextmanager
def dask_cluster(directory: Path) -> Iterator[DaskCluster]:
    """A started scheduler (workers: :meth:`DaskCluster.start_worker`), stopped after."""
    cluster = DaskCluster(directory)
    try:
        cluster.start_scheduler()
        yield cluster
    finally:
        cluster.stop()
