"""tcpdump inside each simulated pod, with the very argv the webhook's sidecar runs
(``webhook.capture.tcpdump_argv``), writing where a bundle keeps captures, plus the sidecar's
``meta.json`` beside them."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from analyser.errors import LabError
from lab import netns
from webhook.capture import CaptureOptions, tcpdump_argv

READY_TIMEOUT = 10.0


def capture_argv(options: CaptureOptions, directory: Path) -> list[str]:
    """The sidecar's tcpdump command, pointed at ``directory``."""
    return tcpdump_argv(replace(options, directory=str(directory)))


def write_meta(directory: Path, meta: dict[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


@dataclass
class Capture:
    netns: str
    directory: Path
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        """SIGINT lets tcpdump flush and close its file."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stderr is not None:
            self.process.stderr.close()


def start(netns_name: str, directory: Path, options: CaptureOptions) -> Capture:
    """Start tcpdump in ``netns_name``; return once it listens (it says so on stderr)."""
    directory.mkdir(parents=True, exist_ok=True)
    argv = netns.in_namespace(netns_name, capture_argv(options, directory))
    process = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    capture = Capture(netns_name, directory, process)
    assert process.stderr is not None
    said = b""
    deadline = time.monotonic() + READY_TIMEOUT
    while b"listening on" not in said:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or process.poll() is not None:
            capture.stop()
            raise LabError(
                f"tcpdump in {netns_name} did not start: "
                f"{said.decode(errors='replace').strip() or 'no output'}"
            )
        ready, _, _ = select.select([process.stderr], [], [], remaining)
        if ready:
            chunk = os.read(process.stderr.fileno(), 4096)
            if not chunk:
                continue
            said += chunk
    return capture
