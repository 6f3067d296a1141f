"""The bundle format between ``collect``, the lab and ``analyse``, and its one writer.

    BUNDLE/
      bundle.json     {"format_version": 1 or 2, "producer": "collect"|"lab", "capture_mode": ...,
                       "window": {"start": RFC 3339, "end": RFC 3339},
                       "captures": [{"path", "namespace", "pod", "sha256", "size"}
                                    or {"path", "node", "sha256", "size"}, ...],
                       collect adds "namespaces" and "skipped": [{"namespace", "pod",
                       "reason"[, "file"]}, ...]}
      snapshot.json   (or snapshot/, a folder of such files)
      pod-ips.jsonl   optional
      captures/NAMESPACE/POD/*.pcap[ng][.gz] with meta.json beside them (a pod's sidecar)
      captures/_node/NODE/*.pcap[ng][.gz] with meta.json beside them (a node's capture)

A bundle holding a node's capture is format version 2: an older reader, which knows only pods'
captures, refuses it instead of reading the node's capture as a pod's. A bundle without one is
still written as version 1, which every reader reads.

Here: the names of its parts, how capture files are named, :class:`Manifest` (``bundle.json``)
and the functions that write a bundle's files: :func:`write_manifest` and :func:`write_json`
(atomic: a crash leaves the old file or the new one). Reading a bundle (checking it, finding
what to analyse) is ``analyser.bundles``'s job. File I/O only, no library.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kernel.times import rfc3339, utc_text

# The newest format this code reads and writes; a bundle is written with the oldest version
# that can hold it (:attr:`Manifest.format_version`).
FORMAT_VERSION = 2
FORMAT_VERSIONS = (1, FORMAT_VERSION)
_NODE_CAPTURES_SINCE = 2
MANIFEST = "bundle.json"
SNAPSHOT_FILE = "snapshot.json"
SNAPSHOT_FILES = (SNAPSHOT_FILE, "snapshot.yaml", "snapshot.yml")  # looked for in this order
SNAPSHOT_FOLDER = "snapshot"
POD_IPS = "pod-ips.jsonl"
CAPTURES = "captures"
# captures/_node/NODE/: a node's capture. No namespace can be called so (an underscore is no
# letter of a DNS label), so the folder never meets a pod's captures/NAMESPACE/.
NODE_CAPTURES = "_node"
CAPTURE_META = "meta.json"
PRODUCERS = ("collect", "lab")
# What a snapshot should hold, as ``kubectl get`` takes it. Not the Gateway API's kinds: kubectl
# refuses the whole line on a cluster without their CRDs.
SNAPSHOT_KINDS = (
    "namespaces,nodes,pods,services,endpointslices,deployments,replicasets,statefulsets,"
    "daemonsets,jobs,cronjobs,ingresses"
)

# Capture file names: *.pcap, *.pcapng, *.cap, tcpdump's ring names (capture.pcap0,
# capture.pcap01, ...), each optionally .gz. DOTALL: a name holding a line break is still a
# capture's (and is reported escaped), not silently skipped.
_CAPTURE_NAME = re.compile(r".+\.(pcap|pcapng|cap)[0-9]*(\.gz)?", re.IGNORECASE | re.DOTALL)
# A ring member's name without its number: "capture.pcap07" → "capture.pcap".
_RING_MEMBER = re.compile(r"(.+\.(?:pcapng|pcap|cap))[0-9]+", re.IGNORECASE | re.DOTALL)

_HASH_CHUNK = 1 << 20


def find_captures(directory: Path) -> list[Path]:
    """Every capture file under ``directory`` (recursively), sorted by path.

    Names: ``*.pcap``, ``*.pcapng``, ``*.cap``, tcpdump's ring names (``capture.pcap0``,
    ``capture.pcap01``, ... as written by ``tcpdump -C -W -w capture.pcap``), each optionally
    ending in ``.gz``.
    """
    return sorted(
        path
        for path in directory.rglob("*")
        if _CAPTURE_NAME.fullmatch(path.name) and path.is_file()
    )


def ring_name(name: str) -> str:
    """The ring a capture file belongs to: ``ns/pod/capture.pcap07.gz`` → ``ns/pod/capture.pcap``.

    Files with the same ring name come from one tcpdump at one place (one vantage point).
    """
    stem = name[:-3] if name.lower().endswith(".gz") else name
    member = _RING_MEMBER.fullmatch(stem)
    return member.group(1) if member else stem


@dataclass(frozen=True, slots=True)
class Window:
    """The capture window, UTC epoch seconds."""

    start: float
    end: float

    @staticmethod
    def text(epoch: float) -> str:
        return utc_text(epoch)

    @property
    def start_text(self) -> str:
        return self.text(self.start)

    @property
    def end_text(self) -> str:
        return self.text(self.end)


@dataclass(frozen=True, order=True, slots=True)
class CaptureEntry:
    """One capture file as the manifest lists it: a pod's (``namespace``, ``pod``) or a node's
    (``node``; then ``namespace`` and ``pod`` are empty)."""

    path: str  # relative to the bundle, POSIX form
    namespace: str
    pod: str
    sha256: str
    size: int
    node: str = ""

    def as_json(self) -> dict[str, object]:
        """The entry as ``bundle.json`` lists it."""
        where: dict[str, object] = (
            {"node": self.node} if self.node else {"namespace": self.namespace, "pod": self.pod}
        )
        return {"path": self.path, **where, "sha256": self.sha256, "size": self.size}


@dataclass(frozen=True, order=True, slots=True)
class SkippedCapture:
    """A pod (or one of its files) that ``collect`` could not pull, and why. ``finished``: the pod
    had ended (a Job's, a CronJob's), so its sidecar was gone: expected, not a failure."""

    namespace: str
    pod: str
    reason: str
    file: str | None = None
    finished: bool = False

    def as_json(self) -> dict[str, object]:
        entry: dict[str, object] = {
            "namespace": self.namespace,
            "pod": self.pod,
            "reason": self.reason,
        }
        if self.file is not None:
            entry["file"] = self.file
        if self.finished:
            entry["finished"] = True
        return entry


@dataclass(frozen=True, slots=True)
class Manifest:
    """The contents of ``bundle.json``."""

    producer: str
    capture_mode: str | None
    window: Window | None
    captures: tuple[CaptureEntry, ...]
    namespaces: tuple[str, ...] = ()  # collect: the namespaces it pulled from
    skipped: tuple[SkippedCapture, ...] = ()  # collect: what it could not pull

    @property
    def format_version(self) -> int:
        """The oldest format that holds this bundle: 2 with a node's capture, else 1."""
        return _NODE_CAPTURES_SINCE if any(entry.node for entry in self.captures) else 1

    def as_json(self) -> dict[str, object]:
        """``bundle.json``'s document. The window to the microsecond: a later ``collect`` into
        the same bundle keeps its start exactly."""
        document: dict[str, object] = {
            "format_version": self.format_version,
            "producer": self.producer,
            "capture_mode": self.capture_mode,
        }
        if self.window is not None:
            document["window"] = {
                "start": rfc3339(self.window.start),
                "end": rfc3339(self.window.end),
            }
        document["captures"] = [entry.as_json() for entry in sorted(self.captures)]
        if self.namespaces:
            document["namespaces"] = list(self.namespaces)
        if self.skipped:
            document["skipped"] = [entry.as_json() for entry in sorted(self.skipped)]
        return document


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def capture_entry(
    root: Path, path: Path, *, namespace: str = "", pod: str = "", node: str = ""
) -> CaptureEntry:
    """The manifest entry for a capture file already in the bundle (hashes the file): a pod's
    (``namespace`` and ``pod``) or a node's (``node``)."""
    return CaptureEntry(
        path=path.relative_to(root).as_posix(),
        namespace=namespace,
        pod=pod,
        sha256=file_sha256(path),
        size=path.stat().st_size,
        node=node,
    )


def node_capture_folder(node: str) -> str:
    """Where a node's capture sits in a bundle, relative to it: ``captures/_node/NODE``."""
    return f"{CAPTURES}/{NODE_CAPTURES}/{node}"


def entries_for_layout(root: Path) -> Iterable[CaptureEntry]:
    """Entries for every capture under ``root/captures/NAMESPACE/POD/`` and
    ``root/captures/_node/NODE/`` (the bundle layout)."""
    for path in find_captures(root / CAPTURES):
        parts = path.relative_to(root / CAPTURES).parts
        if len(parts) < 3:
            continue
        if parts[0] == NODE_CAPTURES:
            yield capture_entry(root, path, node=parts[1])
        else:
            yield capture_entry(root, path, namespace=parts[0], pod=parts[1])


def write_json(path: Path, document: Any) -> Path:
    """A JSON file of the bundle (sorted keys, indented, one trailing newline), atomically: a
    crash leaves the old file or the new one, never half of one."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(temporary, path)
    return path


def write_manifest(root: Path, manifest: Manifest) -> Path:
    """``root/bundle.json``: how every producer writes it."""
    return write_json(root / MANIFEST, manifest.as_json())
