"""Distributing: the map step of reading (capture file → partial aggregates) on a Dask cluster.

The only module that imports Dask (``distributed``), an optional extra:
``pip install 'netpol-sniffer[dask]'``. :func:`dask_capture_map` connects to a running scheduler
and gives a :class:`~analyser.reading.CaptureMap` that runs ``reading.read_capture`` on its
workers, one task per file; what that returns comes back unchanged, in input order, and the
merge, resolution and rendering stay in this process. So the output is the same as a local run's.

The workers open the files at the absolute paths this machine gives them: the bundle must be at
the same path on every worker (a shared file system mounted at the same place), and every worker
must run the same netpol-sniffer code (:func:`code_fingerprint`; else a ClusterError naming the
worker). A worker that cannot read a file, or sees one of another size there, raises
:class:`~kernel.errors.CaptureUnseen` naming the file and the worker: it would otherwise count as
a damaged file, or another capture, and change the output. A worker that dies with files in hand
(killed, out of memory, its machine gone) loses nothing: the scheduler gives them to another
worker (Dask's own retry, at most ``distributed.scheduler.allowed-failures`` deaths per file, then
:class:`~kernel.errors.ClusterError`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import CancelledError
from contextlib import contextmanager
from dataclasses import astuple
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from analyser.reading import CaptureTask
from kernel import errors
from kernel.errors import CaptureUnseen, ClusterError

if TYPE_CHECKING:
    from distributed import Client, Future

Result = TypeVar("Result")

INSTALL = "pip install 'netpol-sniffer[dask]'"
SHARED = (
    "every worker must see the bundle at the path this machine reads it from (a shared file "
    "system mounted at the same place)"
)


# How long analyse waits for a file while the scheduler has no worker at all (all died, or were
# stopped) before it gives up, rather than wait for ever: a restarted worker is back in seconds.
NO_WORKER_GRACE = 60.0
_POLL = 1.0  # how often a long wait checks that workers are there


class DaskCaptureMap:
    """A :class:`~analyser.reading.CaptureMap` on a Dask cluster (see the module's docstring)."""

    def __init__(
        self, client: Client, address: str, *, no_worker_grace: float = NO_WORKER_GRACE
    ) -> None:
        self._client = client
        self.address = address
        self.no_worker_grace = no_worker_grace

    def workers(self) -> int:
        """How many workers the scheduler has now."""
        return len(self._client.nthreads())

    def map(
        self, function: Callable[[CaptureTask], Result], tasks: Iterable[CaptureTask], /
    ) -> Iterator[Result]:
        from distributed import KilledWorker

        ordered = list(tasks)
        # Plain values travel, not CaptureTask: a worker (or scheduler) with other code could not
        # even unpickle it, before _read_on_worker can tell. pure=False: a file read again
        # (changed since, or by another run) is read, not reused.
        futures: deque[Future[Result]] = deque(
            self._client.map(
                _read_on_worker,
                [astuple(task) for task in ordered],
                read=function,
                code=code_fingerprint(),
                pure=False,
            )
        )
        try:
            for task in ordered:
                future = futures.popleft()
                try:
                    result = self._wait_for(future, task)
                except KilledWorker as error:
                    raise ClusterError(
                        f"{task.name}: the Dask workers that read it died, one after another "
                        f"({error}): a file that kills its reader (out of memory?); analysing "
                        "it on one machine tells more"
                    ) from error
                except CancelledError as error:
                    why = str(error).splitlines()[0] if str(error) else "cancelled"
                    raise ClusterError(
                        f"{task.name}: the Dask cluster at {self.address} stopped reading it "
                        f"(the scheduler went away, or the task was cancelled there: {why})"
                    ) from error
                future.release()
                yield result
        finally:
            # An error, or the caller stopped early: the files not yet read are not read.
            self._client.cancel(list(futures))

    def _wait_for(self, future: Future[Result], task: CaptureTask) -> Result:
        """The future's result; ClusterError once the scheduler has had no worker for
        ``no_worker_grace`` seconds."""
        alone_since: float | None = None
        while True:
            try:
                result: Result = future.result(timeout=_POLL)
                return result
            except TimeoutError:
                if self.workers():
                    alone_since = None
                    continue
            now = time.monotonic()
            alone_since = now if alone_since is None else alone_since
            if now - alone_since >= self.no_worker_grace:
                raise ClusterError(
                    f"{task.name}: the Dask scheduler at {self.address} has had no worker for "
                    f"{self.no_worker_grace:g} s while this file waits to be read (they died or "
                    f"were stopped): start workers with `dask worker {self.address}`, or analyse "
                    "without --scheduler"
                )


def _read_on_worker(
    fields: tuple[Any, ...], *, read: Callable[[CaptureTask], Result], code: str
) -> Result:
    """On a worker: ``read(CaptureTask(*fields))``, once the worker has shown it runs the
    ``code`` this machine runs and sees the file this machine sees (as big)."""
    from distributed import get_worker

    if code_fingerprint() != code:
        raise ClusterError(
            f"the Dask worker {get_worker().address} runs other netpol-sniffer code than this "
            "machine (its analyser or kernel sources, or its dpkt version, differ), so its "
            f"reading could differ: install the same netpol-sniffer there ({INSTALL})"
        )
    task = CaptureTask(*fields)
    try:
        with open(task.path, "rb") as stream:
            seen = os.fstat(stream.fileno()).st_size
    except OSError as error:
        raise CaptureUnseen(
            f"{task.name}: the Dask worker {get_worker().address} cannot read {task.path}: "
            f"{error.strerror or error}; {SHARED}"
        ) from None
    if seen != task.size:
        raise CaptureUnseen(
            f"{task.name}: the Dask worker {get_worker().address} sees another file at "
            f"{task.path}: {seen:,} bytes there, {task.size:,} here; {SHARED}"
        )
    return read(task)


@cache
def code_fingerprint() -> str:
    """What decides what reading a file gives, as this process runs it: the sources of the
    analyser and kernel packages (as imported: an installed copy or a checkout) and dpkt's
    version. A worker with another fingerprint could give other output."""
    digest = hashlib.sha256()
    for package in (Path(__file__).parent, Path(errors.__file__).parent):
        for source in sorted(package.glob("*.py")):
            digest.update(f"{package.name}/{source.name}\0".encode())
            digest.update(source.read_bytes())
    digest.update(metadata.version("dpkt").encode())
    return digest.hexdigest()


@contextmanager
def dask_capture_map(
    address: str, *, no_worker_grace: float = NO_WORKER_GRACE
) -> Iterator[DaskCaptureMap]:
    """A :class:`DaskCaptureMap` on the scheduler at ``address`` (``tcp://HOST:8786``), closed
    after. :class:`~kernel.errors.ClusterError` when Dask is not installed, the scheduler cannot
    be reached (within Dask's ``distributed.comm.timeouts.connect``, 30 s by default) or it has
    no worker, now or for ``no_worker_grace`` seconds while a file waits."""
    try:
        from distributed import Client
    except ImportError as error:
        raise ClusterError(
            f"reading captures on the Dask cluster at {address} needs Dask, which is not "
            f"installed: {INSTALL}"
        ) from error
    with _dask_logs_quiet():
        try:
            client = Client(address, set_as_default=False)
        except (OSError, ValueError, TypeError) as error:
            raise ClusterError(f"cannot reach the Dask scheduler at {address}: {error}") from error
        try:
            capture_map = DaskCaptureMap(client, address, no_worker_grace=no_worker_grace)
            if not capture_map.workers():
                raise ClusterError(
                    f"the Dask scheduler at {address} has no worker: start some with "
                    f"`dask worker {address}` where the bundle is shared ({SHARED})"
                )
            yield capture_map
        finally:
            client.close()


@contextmanager
def _dask_logs_quiet() -> Iterator[None]:
    """Dask's own logs held back (unless the root logger shows debug logs: ``--debug``): it logs
    what it sees go wrong as it happens, tracebacks and all (a lost scheduler, its reconnection
    attempts), where the errors raised here say it once, naming the file or the address."""
    logger = logging.getLogger("distributed")
    if logging.getLogger().isEnabledFor(logging.DEBUG):
        yield
        return
    # A handler of its own, so that Python's last-resort handler does not print them either.
    sink = logging.NullHandler()
    propagate, logger.propagate = logger.propagate, False
    logger.addHandler(sink)
    try:
        yield
    finally:
        logger.removeHandler(sink)
        logger.propagate = propagate
