"""Vantages: where a bundle's capture files were taken, and which pods each one covers.

A pod's sidecar captures that pod (``captures/NAMESPACE/POD/``). A node's capture
(``captures/_node/NODE/``, the node-capture DaemonSet's tcpdump on every interface of the node)
covers every pod on that node, but only of the namespaces opted in: the ones ``collect`` pulled
for (``bundle.json``'s ``namespaces``), else the ones the snapshot shows labelled
``netpol-sniffer.io/capture=enabled``. Its flows in which no such pod is an end are dropped as
foreign, like a pod's capture's flows in which that pod is no end.

Pure: a bundle's parts (already opened), the snapshot and the resolver in; placements out.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from analyser.bundles import Bundle, FileProblem
from analyser.identities import Resolver, Vantage
from analyser.snapshot import Snapshot
from kernel.bundles import CAPTURES, NODE_CAPTURES
from kernel.names import CAPTURE_ENABLED, CAPTURE_LABEL


def is_node_meta(bundle: Bundle, meta: Path) -> bool:
    """Whether a ``meta.json`` is a node capture's (``captures/_node/NODE/meta.json``)."""
    parts = PurePosixPath(bundle.relative(meta)).parts
    return len(parts) == 4 and parts[:2] == (CAPTURES, NODE_CAPTURES)


def node_captures(bundle: Bundle) -> dict[str, set[str]]:
    """Each node with a capture in the bundle → its capture files (bundle-relative; also those
    bundle.json lists but that are missing): bundle.json's entries with a ``node``, and the
    files under ``captures/_node/NODE/``."""
    nodes: dict[str, set[str]] = defaultdict(set)
    if bundle.manifest is not None:
        for entry in bundle.manifest.captures:
            if entry.node:
                nodes[entry.node].add(entry.path)
    for path in bundle.captures:
        relative = bundle.relative(path)
        parts = PurePosixPath(relative).parts
        if len(parts) >= 4 and parts[:2] == (CAPTURES, NODE_CAPTURES):
            nodes[parts[2]].add(relative)
    return dict(nodes)


def opted_in(bundle: Bundle, snapshot: Snapshot) -> tuple[str, ...]:
    """The namespaces whose pods a node's capture speaks for: those ``collect`` pulled for, else
    those the snapshot shows labelled for capture."""
    if bundle.manifest is not None and bundle.manifest.namespaces:
        return tuple(sorted(bundle.manifest.namespaces))
    return tuple(
        sorted(
            namespace.name
            for namespace in snapshot.namespaces
            if namespace.labels.get(CAPTURE_LABEL) == CAPTURE_ENABLED
        )
    )


@dataclass(frozen=True, slots=True)
class NodePlacement:
    """The bundle's node captures, placed: each file's vantage (the node, for the opted-in
    namespaces), and a warning for each node whose capture can speak for nobody."""

    vantages: dict[str, Vantage]  # capture file → its node's vantage
    problems: tuple[FileProblem, ...]


def place_node_captures(
    nodes: Mapping[str, set[str]], namespaces: tuple[str, ...]
) -> NodePlacement:
    """Each node capture's vantage: its node, speaking for the pods of ``namespaces``. Without
    an opted-in namespace, a node's capture speaks for nobody: its files are warned about and
    get no vantage (the caller leaves them unread)."""
    if not namespaces:
        return NodePlacement(
            {},
            tuple(
                FileProblem(
                    f"{CAPTURES}/{NODE_CAPTURES}/{node}",
                    f"a node's capture, but no namespace is opted in (labelled {CAPTURE_LABEL}="
                    f"{CAPTURE_ENABLED}, or named by collect): it speaks for no pod, not read",
                )
                for node in sorted(nodes)
            ),
        )
    return NodePlacement(
        {
            capture: Vantage(node=node, namespaces=namespaces)
            for node, files in nodes.items()
            for capture in files
        },
        (),
    )


OWN_CAPTURE = "its own capture"


@dataclass(frozen=True, order=True, slots=True)
class Coverage:
    """A captured pod and the vantage points whose captures covered it (:data:`OWN_CAPTURE`: its
    sidecar's or a file tied to it; ``node NAME``: its node's)."""

    pod: str  # NS/NAME
    vantages: tuple[str, ...]


def coverage(
    pod_vantages: Mapping[str, Iterable[Vantage]],
    node_pods: Mapping[str, Iterable[tuple[str, str]]],
) -> tuple[Coverage, ...]:
    """Per captured pod, sorted, the vantage points that covered it: ``pod_vantages`` maps
    capture files of pods (their sidecars', loose files') to where they were taken,
    ``node_pods`` each node whose capture was read to the pods it covered."""
    covered: dict[str, set[str]] = defaultdict(set)
    for found in pod_vantages.values():
        for vantage in found:
            if vantage.pod:
                covered[f"{vantage.namespace}/{vantage.pod}"].add(OWN_CAPTURE)
    for node, pods in node_pods.items():
        for namespace, pod in pods:
            covered[f"{namespace}/{pod}"].add(str(Vantage(node=node)))
    return tuple(Coverage(pod, tuple(sorted(found))) for pod, found in sorted(covered.items()))


def readable_nodes(nodes: Mapping[str, set[str]], usable: set[str]) -> list[str]:
    """The nodes with at least one capture file that could be read (one without packets counts:
    nothing of the opted-in pods passed)."""
    return sorted(node for node, files in nodes.items() if files & usable)


def pods_covered(
    resolver: Resolver, nodes: Iterable[str], namespaces: tuple[str, ...]
) -> dict[str, tuple[tuple[str, str], ...]]:
    """Each node → the pods (namespace, name) of ``namespaces`` the inputs place on it."""
    return {node: resolver.pods_on(node, namespaces) for node in nodes}


def loose_node_pods(
    vantages: Mapping[str, Iterable[Vantage]], pods: Iterable[tuple[str, str]], resolver: Resolver
) -> dict[str, tuple[tuple[str, str], ...]]:
    """Each node a loose file was read as the capture of → the pods of ``pods`` (the ones loose
    files made captured) on that node."""
    nodes = {vantage.node for found in vantages.values() for vantage in found if vantage.node}
    pods = set(pods)
    namespaces = {namespace for namespace, _ in pods}
    return {
        node: tuple(pod for pod in resolver.pods_on(node, namespaces) if pod in pods)
        for node in sorted(nodes)
    }
