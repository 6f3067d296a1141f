"""A Dask worker preload for tests (``dask worker --preload THIS_FILE``): the worker's reading of
a capture file starts and never ends, so a test can kill the worker mid-file, deterministically.

It replaces ``analyser.reading.read_capture`` in the worker: the function the map step sends by
name. Starting a file writes its name to the file named by ``$NETPOL_SNIFFER_TEST_STALLED``.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import analyser.reading
from analyser.reading import CaptureTask

STARTED = Path(os.environ["NETPOL_SNIFFER_TEST_STALLED"])


def _stall(task: CaptureTask) -> None:
    STARTED.write_text(task.name)
    threading.Event().wait()


analyser.reading.read_capture = _stall  # type: ignore[assignment]
