"""Collecting from a cluster into a bundle, in three steps:

1. **Watch** pods in all namespaces for the window and append every pod IP change to
   ``pod-ips.jsonl`` (:mod:`collector.history`).
2. **Snapshot**: list the snapshot kinds in *all* namespaces (:mod:`collector.snapshotting`), so
   every peer (kube-system's DNS, a database in another namespace) resolves.
3. **Pull** each opted-in pod's captures through the exec API (:mod:`collector.pulling`) in a
   bounded pool, then write ``bundle.json`` (``kernel.bundles``' writer). With node captures,
   also each node's capture from the node-capture DaemonSet's pod on it (into
   ``captures/_node/NODE/``); a pod without a sidecar on a node whose capture is pulled is
   covered by it, not skipped.

A second run into the same bundle fetches only what is missing."""

from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path

from analyser.snapshot import load_capture_meta, load_node_capture_meta
from collector.history import PodIPHistory, record_pod_ips, utc_now
from collector.kinds import NAMESPACES, Cluster, KubeObject
from collector.pulling import PodPuller, PullReport, PullTarget
from collector.snapshotting import take_snapshot
from kernel.bundles import (
    CAPTURE_META,
    CAPTURES,
    MANIFEST,
    NODE_CAPTURES,
    POD_IPS,
    SNAPSHOT_FILE,
    Manifest,
    SkippedCapture,
    Window,
    entries_for_layout,
    write_json,
    write_manifest,
)
from kernel.capture import CaptureMode, capture_filter
from kernel.errors import AccessDenied, BundleError, CollectError, SnapshotError
from kernel.names import (
    CAPTURE_ENABLED,
    CAPTURE_LABEL,
    CAPTURES_DIRECTORY,
    CAPTURES_VOLUME,
    NODE_CAPTURE_NAMESPACE,
    NODE_CAPTURE_SELECTOR,
)
from kernel.names import CONTAINER_NAME as SIDECAR_CONTAINER
from kernel.times import rfc3339

log = logging.getLogger(__name__)

# Files being fetched, per NAMESPACE/POD; outside captures/ so no reader sees half a file.
PARTIALS = ".partial"

DEFAULT_PARALLEL = 4
DEFAULT_DURATION_S = 0.0


def resolve_namespaces(
    cluster: Cluster, namespaces: Sequence[str], *, all_labelled: bool, restart: bool = True
) -> list[str]:
    """The namespaces to pull from; each must carry the opt-in label. ``restart``: whether the
    error says to restart the workloads (their sidecars need it; a node's capture does not)."""
    selector = f"{CAPTURE_LABEL}={CAPTURE_ENABLED}"
    if all_labelled:
        listed = cluster.list(NAMESPACES, label_selector=selector)
        names = sorted(item["metadata"]["name"] for item in listed.get("items") or [])
        if not names:
            raise CollectError(f"no namespace is opted in (label {selector})")
        return names
    for name in namespaces:
        labels = cluster.get(NAMESPACES, name)["metadata"].get("labels") or {}
        if labels.get(CAPTURE_LABEL) != CAPTURE_ENABLED:
            then = ", then restart its workloads" if restart else ""
            raise CollectError(
                f"namespace {name} is not opted in: it lacks the label {selector} "
                f"(kubectl label namespace {name} {selector}{then})"
            )
    return sorted(set(namespaces))


def sidecar_of(pod: KubeObject) -> KubeObject | None:
    spec = pod.get("spec") or {}
    for container in (spec.get("initContainers") or []) + (spec.get("containers") or []):
        if container.get("name") == SIDECAR_CONTAINER:
            found: KubeObject = container
            return found
    return None


def _sidecar_state(pod: KubeObject) -> KubeObject:
    status = pod.get("status") or {}
    for entry in (status.get("initContainerStatuses") or []) + (
        status.get("containerStatuses") or []
    ):
        if entry.get("name") == SIDECAR_CONTAINER:
            state: KubeObject = entry.get("state") or {}
            return state
    return {}


def pull_target(pod: KubeObject) -> PullTarget | SkippedCapture:
    """Where to pull this pod's captures from, or why it cannot be pulled."""
    metadata = pod["metadata"]

    def skipped(reason: str, *, finished: bool = False) -> SkippedCapture:
        return SkippedCapture(metadata["namespace"], metadata["name"], reason, finished=finished)

    sidecar = sidecar_of(pod)
    if sidecar is None:
        return skipped(
            f"no {SIDECAR_CONTAINER} sidecar (created before its namespace was opted in, "
            "opted out, or not injectable)"
        )
    phase = (pod.get("status") or {}).get("phase", "Unknown")
    state = _sidecar_state(pod)
    if "running" not in state:
        if phase in {"Succeeded", "Failed"}:
            return skipped(
                f"pod has ended (phase {phase}); its sidecar no longer runs", finished=True
            )
        for condition in ("waiting", "terminated"):
            if condition in state:
                reason = state[condition].get("reason") or "no reason given"
                return skipped(f"sidecar not running: {condition} ({reason})")
        return skipped(f"sidecar not running yet (pod phase {phase})")
    directory = CAPTURES_DIRECTORY
    for mount in sidecar.get("volumeMounts") or []:
        if mount.get("name") == CAPTURES_VOLUME:
            directory = mount["mountPath"]
    return PullTarget(
        namespace=metadata["namespace"],
        pod=metadata["name"],
        container=SIDECAR_CONTAINER,
        directory=directory,
    )


def node_capture_pods(items: Iterable[KubeObject]) -> list[KubeObject]:
    """The node-capture DaemonSet's pods (manifests/node-capture) among a snapshot's items."""
    labels = dict(pair.split("=", 1) for pair in NODE_CAPTURE_SELECTOR.split(","))
    return [
        item
        for item in items
        if item["kind"] == "Pod"
        and item["metadata"]["namespace"] == NODE_CAPTURE_NAMESPACE
        and labels.items() <= (item["metadata"].get("labels") or {}).items()
    ]


def node_target(pod: KubeObject) -> PullTarget | SkippedCapture:
    """Where to pull a node's capture from (the node-capture pod on it), or why not."""
    target = pull_target(pod)
    node = (pod.get("spec") or {}).get("nodeName") or ""
    if isinstance(target, SkippedCapture) or not node:
        return (
            target
            if isinstance(target, SkippedCapture)
            else SkippedCapture(target.namespace, target.pod, "not scheduled on a node yet")
        )
    return replace(target, node=node)


def capture_mode(pod: KubeObject) -> str | None:
    """The sidecar's capture mode, read back from its tcpdump filter."""
    sidecar = sidecar_of(pod)
    if sidecar is None:
        return None
    argv = (sidecar.get("command") or []) + (sidecar.get("args") or [])
    for mode in CaptureMode:
        if argv and argv[-1] == capture_filter(mode):
            return mode.value
    return None


# --- the bundle -------------------------------------------------------------------------------


def remove_empty_directories(root: Path) -> None:
    if not root.is_dir():
        return
    for directory in sorted((p for p in root.rglob("*") if p.is_dir()), reverse=True):
        if not any(directory.iterdir()):
            directory.rmdir()
    if not any(root.iterdir()):
        root.rmdir()


def window_start(bundle: Path, earlier: Iterable[str]) -> float:
    """When the captures begin: the earliest of ``earlier`` (RFC 3339) and the sidecars' start
    times in their ``meta.json`` files (a capture holds packets from then on)."""
    moments = [datetime.datetime.fromisoformat(moment) for moment in earlier]
    for meta in sorted((bundle / CAPTURES).glob(f"*/*/{CAPTURE_META}")):
        load = load_node_capture_meta if meta.parent.parent.name == NODE_CAPTURES else None
        try:
            started = (load or load_capture_meta)(meta).start_time
        except SnapshotError as error:
            log.warning("%s", error)
            continue
        if started is not None:
            moments.append(datetime.datetime.fromtimestamp(started, datetime.UTC))
    return min(moments).timestamp()


def read_previous_bundle(bundle: Path) -> KubeObject | None:
    path = bundle / MANIFEST
    if not path.exists():
        return None
    try:
        previous: KubeObject = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise BundleError(f"{path}: cannot read the previous bundle.json: {error}") from error
    if previous.get("producer") != "collect":
        raise BundleError(
            f"{path}: this bundle was made by {previous.get('producer')!r}; collect into a new "
            "directory"
        )
    return previous


@dataclass(frozen=True, slots=True)
class CollectOptions:
    out: Path
    namespaces: tuple[str, ...] = ()
    all_labelled: bool = False
    duration: float = DEFAULT_DURATION_S
    parallel: int = DEFAULT_PARALLEL
    node_captures: bool = False  # also the node-capture DaemonSet's captures


@dataclass(frozen=True, slots=True)
class CollectResult:
    namespaces: tuple[str, ...]
    pods_pulled: int  # sidecars
    files_fetched: int
    bytes_fetched: int
    ip_changes: int
    skipped: tuple[SkippedCapture, ...]
    nodes_pulled: int = 0  # node captures


def pull_all(
    cluster: Cluster,
    targets: Sequence[PullTarget],
    bundle: Path,
    *,
    parallel: int,
    on_done: Callable[[PullReport | SkippedCapture], None],
) -> list[PullReport | SkippedCapture]:
    """Pull every target in a bounded pool; a pod that fails is reported, the rest go on.
    Missing RBAC stops everything (every other pod would fail the same way). ``on_done`` runs
    in the calling thread, in completion order; the result is in ``targets`` order."""

    def pull_one(target: PullTarget) -> PullReport | SkippedCapture:
        where = (NODE_CAPTURES, target.node) if target.node else (target.namespace, target.pod)
        destination = bundle / CAPTURES / where[0] / where[1]
        partials = bundle / PARTIALS / where[0] / where[1]
        try:
            return PodPuller(cluster.exec, target, destination, partial_directory=partials).pull()
        except AccessDenied:
            raise
        except CollectError as error:
            return SkippedCapture(target.namespace, target.pod, str(error))

    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        futures = {pool.submit(pull_one, target): index for index, target in enumerate(targets)}
        outcomes: dict[int, PullReport | SkippedCapture] = {}
        try:
            for future in as_completed(futures):
                outcomes[futures[future]] = future.result()
                on_done(outcomes[futures[future]])
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return [outcomes[index] for index in range(len(targets))]


def collect(
    cluster: Cluster,
    options: CollectOptions,
    *,
    on_watch_event: Callable[[], None] = lambda: None,
    on_pull_start: Callable[[int], None] = lambda pods: None,
    on_pod_done: Callable[[PullReport | SkippedCapture], None] = lambda outcome: None,
) -> CollectResult:
    """Watch, snapshot, pull, write ``bundle.json``; a second run into the same bundle fetches
    only what is missing."""
    bundle = options.out
    previous = read_previous_bundle(bundle)
    namespaces = resolve_namespaces(
        cluster,
        options.namespaces,
        all_labelled=options.all_labelled,
        restart=not options.node_captures,
    )
    # captures/ exists from the start, so readers never look for captures in .partial/
    (bundle / CAPTURES).mkdir(parents=True, exist_ok=True)
    start = rfc3339(utc_now().timestamp())
    with (bundle / POD_IPS).open("a") as sink:
        history = PodIPHistory(sink)
        record_pod_ips(cluster, history, duration=options.duration, progress=on_watch_event)
    snapshot = take_snapshot(cluster)
    write_json(bundle / SNAPSHOT_FILE, snapshot)

    pods = [
        item
        for item in snapshot["items"]
        if item["kind"] == "Pod" and item["metadata"]["namespace"] in namespaces
    ]
    targets: list[PullTarget] = []
    skipped: list[SkippedCapture] = []
    capturers = node_capture_pods(snapshot["items"]) if options.node_captures else []
    if options.node_captures and not capturers:
        raise CollectError(
            f"--node-captures: no node capture runs (no pod labelled {NODE_CAPTURE_SELECTOR} in "
            f"namespace {NODE_CAPTURE_NAMESPACE}): kubectl apply -k manifests/node-capture"
        )
    for capturer in capturers:
        target = node_target(capturer)
        if isinstance(target, PullTarget):
            targets.append(target)
        else:
            skipped.append(target)
    captured_nodes = {target.node for target in targets}
    for pod in pods:
        target = pull_target(pod)
        if isinstance(target, PullTarget):
            targets.append(target)
            continue
        node = (pod.get("spec") or {}).get("nodeName") or ""
        if sidecar_of(pod) is not None or not options.node_captures:
            skipped.append(target)
        elif node not in captured_nodes:
            where = f"its node {node}" if node else "it (not scheduled yet)"
            reason = f"no sidecar, and no node capture runs on {where}"
            skipped.append(replace(target, reason=reason))
        # else: covered by its node's capture
    on_pull_start(len(targets))
    outcomes = pull_all(cluster, targets, bundle, parallel=options.parallel, on_done=on_pod_done)
    remove_empty_directories(bundle / PARTIALS)
    reports = [outcome for outcome in outcomes if isinstance(outcome, PullReport)]
    skipped += [outcome for outcome in outcomes if isinstance(outcome, SkippedCapture)]
    for report in reports:
        skipped += [
            SkippedCapture(report.target.namespace, report.target.pod, reason, file=name)
            for name, reason in report.failures
        ]
    modes = sorted({mode for pod in [*pods, *capturers] if (mode := capture_mode(pod)) is not None})
    earlier = [(previous or {}).get("window", {}).get("start", start), start]
    write_manifest(
        bundle,
        Manifest(
            producer="collect",
            capture_mode=modes[0] if len(modes) == 1 else ("mixed" if modes else None),
            window=Window(window_start(bundle, earlier), utc_now().timestamp()),
            captures=tuple(entries_for_layout(bundle)),
            namespaces=tuple(namespaces),
            skipped=tuple(skipped),
        ),
    )
    return CollectResult(
        namespaces=tuple(namespaces),
        pods_pulled=sum(1 for report in reports if not report.target.node),
        nodes_pulled=sum(1 for report in reports if report.target.node),
        files_fetched=sum(len(report.fetched) for report in reports),
        bytes_fetched=sum(report.bytes_fetched for report in reports),
        ip_changes=history.lines,
        skipped=tuple(skipped),
    )
