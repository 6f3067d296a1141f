"""A pod's exec, run on this machine: the command runs for real (sh, coreutils) and its output
comes back as the channel frames the API server would send, with the same Status objects on the
error channel. Faults can be injected per command: cut the stream, flip a byte.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

FRAME_BYTES = 4096
Frame = tuple[int, bytes]


def exit_status(code: int, command: Sequence[str]) -> bytes:
    """The Status the kubelet sends on channel 3 (v4/v5 protocols) for an exit code."""
    if code == 0:
        return json.dumps({"metadata": {}, "status": "Success"}).encode()
    return json.dumps(
        {
            "metadata": {},
            "status": "Failure",
            "message": (
                "command terminated with non-zero exit code: error executing command "
                f"[{' '.join(command)}], exit code {code}"
            ),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
        }
    ).encode()


def command_frames(command: Sequence[str]) -> Iterator[Frame]:
    """Run ``command`` and yield its stdout in frames, then stderr, then the Status."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    try:
        while chunk := process.stdout.read(FRAME_BYTES):
            yield (1, chunk)
        stderr = process.stderr.read()
        code = process.wait()
    finally:
        process.kill()
        process.wait()
        process.stdout.close()
        process.stderr.close()
    if stderr:
        yield (2, stderr)
    yield (3, exit_status(code, command))


def cut_after(frames: Iterator[Frame], limit: int) -> Iterator[Frame]:
    """The stream breaks after ``limit`` stdout bytes: no more frames, no Status."""
    sent = 0
    for channel, data in frames:
        if channel == 1 and sent + len(data) >= limit:
            yield (1, data[: limit - sent])
            return
        if channel == 1:
            sent += len(data)
        yield (channel, data)


def flip_first_byte(frames: Iterator[Frame]) -> Iterator[Frame]:
    """One bit of stdout arrives wrong (a corrupting proxy, a bad disk in the pod)."""
    flipped = False
    for channel, data in frames:
        if channel == 1 and data and not flipped:
            flipped = True
            data = bytes([data[0] ^ 0x01]) + data[1:]
        yield (channel, data)


Fault = Callable[[Iterator[Frame]], Iterator[Frame]]


@dataclass
class LocalExec:
    """An ExecOpener for one machine. ``faults`` are applied, in order, to the commands whose
    script contains the key (e.g. ``"exec dd"`` for fetches); each is used once."""

    faults: list[tuple[str, Fault]] = field(default_factory=list)
    commands: list[list[str]] = field(default_factory=list)

    @contextmanager
    def __call__(
        self, *, namespace: str, pod: str, container: str, command: Sequence[str]
    ) -> Iterator[Iterator[Frame]]:
        self.commands.append(list(command))
        frames = command_frames(command)
        for index, (key, fault) in enumerate(self.faults):
            if key in " ".join(command):
                del self.faults[index]
                frames = fault(frames)
                break
        yield frames

    def fetches(self) -> list[tuple[str, int, int]]:
        """(source, offset, count) of each fetch command run so far."""
        return [
            (command[6], int(command[5]), int(command[7]))
            for command in self.commands
            if "exec dd" in command[2]
        ]
