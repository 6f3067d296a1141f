"""Opening a bundle: the format between ``collect``, ``lab`` and ``analyse`` (``kernel.bundles``,
see docs/analyse.md), read and checked.

A bundle directory is turned into its parts here: the manifest (``bundle.json``), where the
snapshot, the pod IP history and the sidecars' ``meta.json`` files are, and which capture files
to read. Parsing those files is left to ``snapshot`` and ``reading``. A plain folder holding a
``snapshot.json`` and loose capture files is accepted as well: the extra files improve results,
they are not required.

Damage that still leaves something to analyse (a capture listed but missing, a size or sha256
that differs from the manifest) is collected as :class:`FileProblem`; input that leaves nothing
to analyse raises :class:`~kernel.errors.BundleError` naming what is missing. A file that is a
symbolic link to outside the bundle is never read (a tampered bundle could point at any file of
the machine that analyses it, and error messages quote what they read): a capture, meta.json or
pod-ips.jsonl is skipped with a :class:`FileProblem`, a snapshot is a :class:`BundleError`. File
I/O only; no heavy library.

    BUNDLE/
      bundle.json     {"format_version": 1 or 2, "producer": "collect"|"lab", "capture_mode": ...,
                       "window": {"start": RFC 3339, "end": RFC 3339},
                       "captures": [{"path", "namespace", "pod", "sha256", "size"}
                                    or {"path", "node", "sha256", "size"}, ...]}
      snapshot.json   (or snapshot/, a folder of such files)
      pod-ips.jsonl   optional
      captures/NAMESPACE/POD/*.pcap[ng][.gz] with meta.json beside them (a pod's sidecar)
      captures/_node/NODE/*.pcap[ng][.gz] with meta.json beside them (a node's capture)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath

from analyser.documents import DocumentError, json_value
from analyser.objects import NAMESPACE_NAME, OBJECT_NAME, TextRule
from kernel.bundles import (
    CAPTURE_META,
    CAPTURES,
    FORMAT_VERSION,
    FORMAT_VERSIONS,
    MANIFEST,
    POD_IPS,
    PRODUCERS,
    SNAPSHOT_FILE,
    SNAPSHOT_FILES,
    SNAPSHOT_FOLDER,
    SNAPSHOT_KINDS,
    CaptureEntry,
    Manifest,
    Window,
    file_sha256,
    find_captures,
)
from kernel.errors import BundleError
from kernel.times import possible


@dataclass(frozen=True, slots=True)
class FileProblem:
    """A file that was skipped or only partly usable, and why (for the report and warnings)."""

    path: str  # relative to the bundle
    problem: str


@dataclass(frozen=True, slots=True)
class Bundle:
    """A bundle's parts, found and checked. Paths are absolute."""

    root: Path
    manifest: Manifest | None  # None for a plain folder without bundle.json
    snapshot: Path  # a file, or a folder of files
    pod_ips: Path | None
    capture_metas: tuple[Path, ...]
    captures: tuple[Path, ...]  # the files to read, sorted
    problems: tuple[FileProblem, ...]  # damage found while opening; none of it is fatal

    @property
    def name(self) -> str:
        return self.root.name

    def relative(self, path: Path) -> str:
        """``path`` relative to the bundle, POSIX form (how reports and flows name files)."""
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return path.as_posix()


# -- reading ----------------------------------------------------------------------------------


def _text(record: Mapping[str, object], key: str, where: str) -> str:
    value = record.get(key)
    if not isinstance(value, str) or not value:
        raise BundleError(f"{where}: '{key}' must be a non-empty string, got {value!r}")
    return value


def _name(record: Mapping[str, object], key: str, rule: TextRule, where: str) -> str:
    """``record[key]``, a name that follows ``rule`` (it reaches reports and file names)."""
    value = _text(record, key, where)
    if not rule.holds(value):
        raise BundleError(f"{where}: '{key}' must be {rule.says}, got {value!r:.60}")
    return value


def _count(record: Mapping[str, object], key: str, where: str) -> int:
    value = record.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BundleError(f"{where}: '{key}' must be a whole number, got {value!r}")
    return value


def _time(value: object, where: str) -> float:
    if not isinstance(value, str):
        raise BundleError(f"{where}: expected an RFC 3339 time, got {value!r}")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as error:
        raise BundleError(f"{where}: {value!r} is not an RFC 3339 time") from error
    if moment.tzinfo is None:
        raise BundleError(f"{where}: {value!r} has no time zone (use Z for UTC)")
    try:
        epoch = moment.timestamp()
    except OverflowError:
        epoch = math.nan
    if not possible(epoch):
        raise BundleError(f"{where}: {value!r} is not a time from 1970 to 9999")
    return epoch


def _entry(record: object, where: str) -> CaptureEntry:
    if not isinstance(record, dict):
        raise BundleError(f"{where}: expected an object, got {record!r}")
    path = _text(record, "path", where)
    pure = PurePosixPath(path)
    if pure.is_absolute() or ".." in pure.parts:
        raise BundleError(f"{where}: path {path!r} must be relative and stay inside the bundle")
    sha256, size = _text(record, "sha256", where).lower(), _count(record, "size", where)
    if "node" in record:
        if "namespace" in record or "pod" in record:
            raise BundleError(f"{where}: a capture is a node's or a pod's, not both")
        node = _name(record, "node", OBJECT_NAME, where)
        return CaptureEntry(pure.as_posix(), "", "", sha256, size, node=node)
    return CaptureEntry(
        path=pure.as_posix(),
        namespace=_text(record, "namespace", where),
        pod=_text(record, "pod", where),
        sha256=sha256,
        size=size,
    )


def parse_manifest(text: str, *, source: str) -> Manifest:
    """``bundle.json`` text → :class:`Manifest`; :class:`BundleError` naming the bad field."""
    try:
        document = json_value(text)
    except DocumentError as error:
        raise BundleError(f"{source}: {error}") from None
    if not isinstance(document, dict):
        raise BundleError(f"{source}: expected a JSON object")
    version = _count(document, "format_version", source)
    if version not in FORMAT_VERSIONS:
        raise BundleError(
            f"{source}: format_version {version} is not supported (this netpol-sniffer reads "
            f"versions {FORMAT_VERSIONS[0]} to {FORMAT_VERSION})"
        )
    producer = _text(document, "producer", source)
    if producer not in PRODUCERS:
        raise BundleError(f"{source}: producer must be one of {', '.join(PRODUCERS)}")
    window = None
    if document.get("window") is not None:
        span = document["window"]
        if not isinstance(span, dict):
            raise BundleError(f"{source}: 'window' must be an object with 'start' and 'end'")
        window = Window(
            _time(span.get("start"), f"{source}: window.start"),
            _time(span.get("end"), f"{source}: window.end"),
        )
        if window.end < window.start:
            raise BundleError(f"{source}: the window ends before it starts")
    entries = document.get("captures", [])
    if not isinstance(entries, list):
        raise BundleError(f"{source}: 'captures' must be a list")
    captures = tuple(_entry(e, f"{source}: captures[{i}]") for i, e in enumerate(entries))
    if version < FORMAT_VERSION and any(entry.node for entry in captures):
        raise BundleError(
            f"{source}: a node's capture needs format_version {FORMAT_VERSION}, got {version}"
        )
    namespaces = document.get("namespaces", [])
    if not isinstance(namespaces, list):
        raise BundleError(f"{source}: 'namespaces' must be a list of namespace names")
    return Manifest(
        producer=producer,
        capture_mode=str(document.get("capture_mode") or "unknown"),
        window=window,
        captures=captures,
        namespaces=tuple(
            _name({"namespace": name}, "namespace", NAMESPACE_NAME, f"{source}: namespaces[{i}]")
            for i, name in enumerate(namespaces)
        ),
    )


def _check_entry(root: Path, entry: CaptureEntry, *, check_sums: bool) -> FileProblem | None:
    path = root / entry.path
    if not path.is_file():
        return FileProblem(entry.path, "listed in bundle.json but missing")
    size = path.stat().st_size
    if size != entry.size:
        return FileProblem(
            entry.path, f"size {size} bytes, bundle.json says {entry.size}: damaged, read anyway"
        )
    if check_sums and file_sha256(path) != entry.sha256:
        return FileProblem(entry.path, "sha256 differs from bundle.json: damaged, read anyway")
    return None


OUTSIDE = "a symbolic link to outside the bundle: not read (copy the file into the bundle)"


def _inside(root: Path, path: Path) -> bool:
    """Whether ``path`` is inside ``root`` (a resolved path) once every symbolic link on the way
    is followed."""
    return path.resolve().is_relative_to(root)


def _inside_only(root: Path, paths: Iterable[Path], problems: list[FileProblem]) -> list[Path]:
    """``paths`` that are inside ``root``; the others become problems (:data:`OUTSIDE`)."""
    inside = []
    for path in paths:
        if _inside(root, path):
            inside.append(path)
        else:
            problems.append(FileProblem(path.relative_to(root).as_posix(), OUTSIDE))
    return inside


def find_snapshot(root: Path) -> Path | None:
    """A bundle's snapshot: ``snapshot.json`` (or ``.yaml``, ``.yml``), else the ``snapshot/``
    folder; None when there is none."""
    for name in (*SNAPSHOT_FILES, SNAPSHOT_FOLDER):
        if (root / name).exists():
            return root / name
    return None


def _snapshot(root: Path) -> Path:
    found = find_snapshot(root)
    if found is not None:
        files = sorted(found.iterdir()) if found.is_dir() else [found]
        for path in (found, *files):
            if not _inside(root, path):
                raise BundleError(
                    f"{path}: {OUTSIDE}; the snapshot must be a file (or folder) of the bundle"
                )
        return found
    below = sorted(
        child
        for child in root.iterdir()
        if child.is_dir() and ((child / MANIFEST).is_file() or find_snapshot(child) is not None)
    )
    if below:
        raise BundleError(
            f"{root}: no {SNAPSHOT_FILE} here, but {', '.join(map(str, below))} "
            f"{'is a bundle' if len(below) == 1 else 'are bundles'}: give that folder instead"
        )
    raise BundleError(
        f"{root}: no {SNAPSHOT_FILE} (nor snapshot.yaml, nor a {SNAPSHOT_FOLDER}/ folder): the "
        "analyser needs the "
        f"cluster's objects to tell who an address is; write one with "
        f"`kubectl get {SNAPSHOT_KINDS} -A -o json > {root / SNAPSHOT_FILE}`"
    )


def open_bundle(path: Path, *, check_sums: bool = True) -> Bundle:
    """A bundle directory (or a plain folder with a ``snapshot.json`` and capture files) →
    :class:`Bundle`. ``check_sums=False`` skips hashing the captures (sizes are still checked)."""
    if not path.exists():
        raise BundleError(f"{path}: no such bundle directory")
    if not path.is_dir():
        raise BundleError(
            f"{path}: not a directory (a bundle is a directory with {SNAPSHOT_FILE} and captures)"
        )
    root = path.resolve()
    manifest_path = root / MANIFEST
    manifest = None
    problems: list[FileProblem] = []
    if manifest_path.is_file():
        if not _inside(root, manifest_path):
            raise BundleError(f"{manifest_path}: {OUTSIDE}")
        try:
            text = manifest_path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as error:
            raise BundleError(f"{manifest_path}: cannot read: {error}") from error
        manifest = parse_manifest(text, source=str(manifest_path))
    snapshot = _snapshot(root)
    search = root / CAPTURES if (root / CAPTURES).is_dir() else root
    found = set(find_captures(search))
    if manifest is not None:
        for entry in manifest.captures:
            path = root / entry.path
            if path.is_file() and not _inside(root, path):
                found.add(path)  # reported and left out below: never hashed
                continue
            problem = _check_entry(root, entry, check_sums=check_sums)
            if problem is not None:
                problems.append(problem)
            if path.is_file():
                found.add(path)
    missing = len(problems)
    found = set(_inside_only(root, sorted(found), problems))
    if not found:
        why = [f"{missing} listed in {MANIFEST} but missing"] if missing else []
        if len(problems) > missing:
            why.append(f"{len(problems) - missing} symbolic links to outside the bundle")
        detail = f" ({'; '.join(why)})" if why else ""
        raise BundleError(
            f"{root}: no capture files found{detail}: expected *.pcap, *.pcapng or *.cap "
            f"(optionally .gz) under {search}"
        )
    pod_ips = root / POD_IPS
    history = _inside_only(root, [pod_ips] if pod_ips.is_file() else [], problems)
    return Bundle(
        root=root,
        manifest=manifest,
        snapshot=snapshot,
        pod_ips=history[0] if history else None,
        capture_metas=tuple(_inside_only(root, sorted(search.rglob(CAPTURE_META)), problems)),
        captures=tuple(sorted(found)),
        problems=tuple(problems),
    )
