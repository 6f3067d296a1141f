"""Pulling capture files out of a pod through the exec API: frames → files, checksums, resume.

No kubernetes import: an exec is anything that opens a stream of channel frames
(:class:`ExecOpener`), so tests replay recorded frames or run the commands locally, and
``collecting`` wires in the real client. Files on disk are this module's only side effect.

The protocol, all of it run in the capture sidecar (Debian, coreutils):

1. ``LISTING_SCRIPT`` prints one ``SHA256 SIZE NAME`` line per file, the checksum taken over
   exactly the first ``SIZE`` bytes. tcpdump only appends to the file it is writing, so those
   bytes are a consistent copy of it that cannot change while they are read; no copy is made in
   the pod, whose captures volume has a size limit the webhook sets to what the ring needs
   (exceeding it would get the pod evicted).
2. Each missing file is fetched with ``dd skip=OFFSET count=COUNT`` (bytes, GNU dd): exactly the
   listed bytes, raw on the stdout channel. The v4/v5 channel protocols carry them in binary
   websocket frames, so no encoding is needed, and the bytes are written to disk frame by frame,
   never held whole.
3. The error channel (3) carries the command's Status; a stream that ends without one was cut:
   the bytes received so far are kept and the next attempt resumes after them.
4. The whole local file is checked against the pod's sha256; a mismatch discards it and a fresh
   listing (next round) fetches it again (tcpdump's ring may have reused the name meanwhile).
   Files are fetched into a partial directory outside the captures and renamed into place once
   verified, so a second run into the same bundle fetches only what is missing. Local files keep
   the sidecar's names (``capture.pcap3``), which the reader groups into one ring (one vantage
   point).

tcpdump's ring reuses names (``capture.pcap0`` … ``capture.pcapN``). A local file whose remote
namesake has changed is either the same file grown (its bytes are a prefix of the remote one, as
the pod confirms by hashing that prefix): only the rest is fetched; or a new generation: the old
local file is kept under a name carrying its checksum, so nothing pulled before is lost.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import BinaryIO, Protocol

from kernel.bundles import file_sha256
from kernel.errors import ChecksumMismatch, CollectError, ExecFailed, StreamCut

log = logging.getLogger(__name__)

STDOUT_CHANNEL = 1
STDERR_CHANNEL = 2
ERROR_CHANNEL = 3

DEFAULT_ATTEMPTS = 3
# Kept from a failing command's stderr for the error message.
STDERR_LIMIT = 4096

# $1 = the captures directory. head -c: the checksum covers exactly the bytes listed, however
# much tcpdump appends meanwhile.
LISTING_SCRIPT = r"""set -eu
cd "$1"
for name in *; do
  [ -f "$name" ] || continue
  size=$(stat -c %s -- "$name")
  sum=$(head -c "$size" -- "$name" | sha256sum | cut -d ' ' -f 1)
  printf '%s %s %s\n' "$sum" "$size" "$name"
done
"""
# One process (no pipe), so a failure to read reaches the exit status.
_FETCH_SCRIPT = (
    'cd "$1" && exec dd if="$3" bs=65536 skip="$2" count="$4" '
    "iflag=skip_bytes,count_bytes status=none"
)
_PREFIX_SCRIPT = 'cd "$1" && test -f "$3" && head -c "$2" -- "$3" | sha256sum | cut -d " " -f 1'

_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")

Frame = tuple[int, bytes]


class ExecOpener(Protocol):
    """Run ``command`` in a container; the context yields the stream's (channel, bytes) frames."""

    def __call__(
        self, *, namespace: str, pod: str, container: str, command: Sequence[str]
    ) -> AbstractContextManager[Iterable[Frame]]: ...


@dataclass(frozen=True, slots=True)
class PullTarget:
    """Where the captures of one pod live: a sidecar's, or the node capture's pod on ``node``."""

    namespace: str
    pod: str
    container: str
    directory: str  # the captures volume's mount path in the sidecar
    node: str = ""  # the node whose capture this pod holds (the node-capture DaemonSet's pods)

    def __str__(self) -> str:
        return f"{self.namespace}/{self.pod}"


@dataclass(frozen=True, slots=True)
class RemoteFile:
    """One file in the pod's captures directory, as the listing saw it."""

    name: str  # as the sidecar named it, e.g. capture.pcap3
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class PullReport:
    """What pulling one pod did: files fetched this run, bytes moved, files that failed."""

    target: PullTarget
    fetched: tuple[str, ...]
    bytes_fetched: int
    failures: tuple[tuple[str, str], ...]  # (remote file name, reason)


def exec_failure(status: bytes) -> str | None:
    """The failure an error-channel payload reports, or None for success.

    v4/v5 send a Status object; older protocols send plain text (empty means success).
    """
    text = status.decode("utf-8", "replace").strip()
    if not text:
        return None
    try:
        parsed = json.loads(text)
    except ValueError:
        return text
    if not isinstance(parsed, dict):
        return text
    if parsed.get("status") == "Success":
        return None
    message = str(parsed.get("message") or parsed.get("reason") or text)
    return message


def drain(frames: Iterable[Frame], sink: BinaryIO, *, what: str) -> int:
    """Write the stdout channel to ``sink`` as it arrives; return the bytes written.

    Raises :class:`StreamCut` when the stream ends without a status (what was written stays
    written: it is a correct prefix), :class:`ExecFailed` when the command failed.
    """
    written = 0
    stderr = bytearray()
    status: bytearray | None = None
    for channel, data in frames:
        if channel == STDOUT_CHANNEL:
            sink.write(data)
            written += len(data)
        elif channel == STDERR_CHANNEL:
            stderr += data
            del stderr[:-STDERR_LIMIT]
        elif channel == ERROR_CHANNEL:
            status = bytearray() if status is None else status
            status += data
    if status is None:
        raise StreamCut(f"{what}: the exec stream broke after {written} bytes")
    failure = exec_failure(bytes(status))
    if failure is not None:
        detail = stderr.decode("utf-8", "replace").strip()
        raise ExecFailed(f"{what}: {failure}" + (f" ({detail})" if detail else ""))
    return written


def parse_listing(text: str, *, target: PullTarget) -> list[RemoteFile]:
    """The listing script's output → remote files; anything unexpected names the pod."""
    files = []
    for line in text.splitlines():
        parts = line.split(" ")
        if len(parts) != 3 or not _SHA256.fullmatch(parts[0]) or not parts[1].isdigit():
            raise CollectError(f"{target}: unexpected line from the capture listing: {line!r}")
        sha256, size, name = parts
        if not _SAFE_NAME.fullmatch(name):
            raise CollectError(f"{target}: unexpected file name in the capture listing: {line!r}")
        files.append(RemoteFile(name=name, size=int(size), sha256=sha256))
    return files


def generation_name(path: Path, sha256: str) -> Path:
    """Where an older generation of a ring file is kept, beside the current one:
    ``capture.pcap3`` → ``capture.0123456789ab.pcap3`` (its checksum in the name)."""
    return path.with_name(f"{path.stem}.{sha256[:12]}{path.suffix}")


def listing_command(target: PullTarget) -> list[str]:
    return ["sh", "-c", LISTING_SCRIPT, "sh", target.directory]


def fetch_command(target: PullTarget, name: str, *, offset: int, count: int) -> list[str]:
    return ["sh", "-c", _FETCH_SCRIPT, "sh", target.directory, str(offset), name, str(count)]


def prefix_command(target: PullTarget, name: str, *, size: int) -> list[str]:
    return ["sh", "-c", _PREFIX_SCRIPT, "sh", target.directory, str(size), name]


class PodPuller:
    """Pulls one pod's captures into ``destination`` (``captures/NS/POD`` of the bundle),
    fetching into ``partial_directory`` (outside the captures, so readers never see half a file).
    """

    def __init__(
        self,
        exec_opener: ExecOpener,
        target: PullTarget,
        destination: Path,
        *,
        partial_directory: Path,
        attempts: int = DEFAULT_ATTEMPTS,
    ) -> None:
        self.exec_opener = exec_opener
        self.target = target
        self.destination = destination
        self.partial_directory = partial_directory
        self.attempts = attempts

    def pull(self) -> PullReport:
        """List and fetch; rounds with failures list again (tcpdump may have rotated meanwhile)."""
        fetched: list[str] = []
        moved = 0
        failures: dict[str, str] = {}
        for _ in range(self.attempts):
            failures = {}
            for remote in self.listing():
                try:
                    count = self.fetch(remote)
                except ExecFailed as error:
                    log.info("%s", error)
                    failures[remote.name] = str(error)
                    continue
                if count is not None:
                    fetched.append(remote.name)
                    moved += count
            if not failures:
                break
        if self.partial_directory.is_dir() and not any(self.partial_directory.iterdir()):
            self.partial_directory.rmdir()
        return PullReport(
            target=self.target,
            fetched=tuple(fetched),
            bytes_fetched=moved,
            failures=tuple(sorted(failures.items())),
        )

    def run(self, command: Sequence[str], sink: BinaryIO, *, what: str) -> int:
        with self.exec_opener(
            namespace=self.target.namespace,
            pod=self.target.pod,
            container=self.target.container,
            command=command,
        ) as frames:
            return drain(frames, sink, what=f"{self.target}: {what}")

    def run_text(self, command: Sequence[str], *, what: str) -> str:
        """Small outputs (listings, checksums); retried when the stream is cut."""
        for attempt in range(1, self.attempts + 1):
            buffer = BytesIO()
            try:
                self.run(command, buffer, what=what)
            except StreamCut:
                if attempt == self.attempts:
                    raise
                continue
            return buffer.getvalue().decode("utf-8", "replace")
        raise AssertionError("unreachable: the loop returns or raises")

    def listing(self) -> list[RemoteFile]:
        text = self.run_text(listing_command(self.target), what="listing the captures")
        return parse_listing(text, target=self.target)

    def fetch(self, remote: RemoteFile) -> int | None:
        """Bring one file up to date; the bytes fetched, or None when it already was."""
        final = self.destination / remote.name
        partial = self.partial_directory / final.name
        if final.exists():
            local_sha = file_sha256(final)
            if local_sha == remote.sha256:
                return None
            self.reuse_or_retire(remote, final, partial, local_sha)
        self.partial_directory.mkdir(parents=True, exist_ok=True)
        self.destination.mkdir(parents=True, exist_ok=True)
        fetched = self.fetch_rest(remote, partial)
        if file_sha256(partial) != remote.sha256:
            partial.unlink()
            raise ChecksumMismatch(
                f"{self.target}: {remote.name}: sha256 of the pulled bytes differs from the pod's"
            )
        os.replace(partial, final)
        log.debug("%s: %s verified (%d bytes)", self.target, final.name, remote.size)
        return fetched

    def reuse_or_retire(
        self, remote: RemoteFile, final: Path, partial: Path, local_sha: str
    ) -> None:
        """A local copy exists but differs: continue from it if the remote file merely grew,
        otherwise keep it under a generation name (tcpdump's ring reused the remote name)."""
        local_size = final.stat().st_size
        if local_size < remote.size:
            remote_prefix = self.run_text(
                prefix_command(self.target, remote.name, size=local_size),
                what=f"checksumming the first {local_size} bytes of {remote.name}",
            ).strip()
            if remote_prefix == local_sha:
                if not partial.exists() or partial.stat().st_size < local_size:
                    self.partial_directory.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(final, partial)
                return
        final.rename(generation_name(final, local_sha))
        partial.unlink(missing_ok=True)

    def fetch_rest(self, remote: RemoteFile, partial: Path) -> int:
        """Append the bytes ``partial`` lacks; a cut stream resumes where it broke."""
        fetched = 0
        for attempt in range(1, self.attempts + 1):
            offset = partial.stat().st_size if partial.exists() else 0
            if offset > remote.size:
                partial.unlink()
                offset = 0
            if offset == remote.size:
                break
            command = fetch_command(
                self.target, remote.name, offset=offset, count=remote.size - offset
            )
            try:
                with partial.open("ab") as sink:
                    self.run(command, sink, what=f"fetching {remote.name}")
            except StreamCut:
                if attempt == self.attempts:
                    raise
                log.info("%s: %s: stream cut, resuming", self.target, remote.name)
                continue
            finally:
                # bytes received before a cut count too: they are kept and not fetched again
                fetched += partial.stat().st_size - offset
            break
        return fetched
