"""Windows: several bundles (``collect`` runs on different days: capture windows) analysed as one.

One window misses what did not run during it: a nightly CronJob, a Sunday batch, a failover
path. ``analyse BUNDLE BUNDLE…`` makes one policy set from all of them:

- **Each bundle is observed on its own** (``analysing.observe``): its flows are resolved with its
  own snapshot, IP history and ``meta.json`` files (an address means the pod that had it in
  *that* bundle), and each side of a flow is vouched for by that bundle's captures only
  (``analyser.vouching``): one bundle's capture never vouches for another bundle's pods. A
  bundle's flows dated outside its own window are dropped (``periods.within_window``): it
  speaks only for the time it captured.
- **The graphs are merged**: workloads by ``NS/Kind/name`` (the newest bundle's view of each),
  edges by their ends and target ports, their counts added; each edge's port records which
  windows saw it (``graphs.EdgeStats.windows``: one :class:`~analyser.graphs.EdgeWindow` per
  bundle) and each flow its bundle (``FlowAttribution.window``).
- **The cluster is the newest bundle's**, widened by the older ones where a rule depends on it
  (:func:`merged_context`): exposures, cluster DNS, node addresses and the cluster's networks of
  every snapshot (newest first), so that every observed flow stays allowed.
- **Deterministic whatever the order given**: bundles are ordered by window (start, end), then
  name and path; each gets a label (its folder's name, with its window's start when two share a
  name), which names its files in the report.
- **One cluster only**: bundles whose snapshots name different clusters (a different uid of the
  ``kube-system`` namespace, which lives as long as the cluster) are refused; bundles whose
  snapshots lack it are taken to be of one cluster.

Pure but for reading the bundles (``observe``); no writing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from analyser.analysing import (
    CONCLUDING,
    DEFAULT_POLICY_OPTIONS,
    Analysis,
    ClusterContext,
    Observation,
    PolicyOptions,
    conclude,
    observe,
)
from analyser.bundles import Bundle, FileProblem
from analyser.dns import DnsNames
from analyser.evaluation import Pod
from analyser.flows import Flow, FlowTable
from analyser.graphs import (
    AttemptGroup,
    AttemptTotals,
    EdgeStats,
    EdgeWindow,
    FlowAttribution,
    FlowsLeftOut,
    GraphEdge,
    GraphNode,
    NodeRole,
    Sides,
    WorkloadGraph,
    merge_attempts,
    merge_flows_left_out,
    node_label,
)
from analyser.identities import Scope
from analyser.peers import ClusterDns, Exposure
from analyser.periods import CaptureWindow
from analyser.reading import CaptureMap, Traffic, no_cyclic_gc
from analyser.replaying import ClusterFacts
from analyser.sources import DEFAULT_MAX_BYTES
from analyser.vantages import Coverage
from kernel.errors import BundleError

# The namespace whose uid names a cluster: it is made with the cluster and never deleted.
CLUSTER_NAMESPACE = "kube-system"


@dataclass(frozen=True, slots=True)
class Windows:
    """Several bundles observed as one: the merged observation (its ``windows`` name them), the
    merged cluster context, and each bundle's own observation, oldest first."""

    observation: Observation
    cluster: ClusterContext
    observations: tuple[Observation, ...]


def _order(bundle: Bundle) -> tuple[float, float, str, str]:
    window = bundle.manifest.window if bundle.manifest is not None else None
    if window is None:
        return (math.inf, math.inf, bundle.name, str(bundle.root))
    return (window.start, window.end, bundle.name, str(bundle.root))


def ordered_bundles(bundles: Sequence[Bundle]) -> tuple[Bundle, ...]:
    """The bundles by window (start, end; a plain folder without one last), then name and path;
    :class:`BundleError` when one is given twice."""
    ordered = tuple(sorted(bundles, key=_order))
    roots = [bundle.root for bundle in ordered]
    twice = sorted({str(root) for root in roots if roots.count(root) > 1})
    if twice:
        raise BundleError(f"{twice[0]}: given more than once; give each bundle once")
    return ordered


def window_labels(observations: Sequence[Observation]) -> tuple[CaptureWindow, ...]:
    """Each bundle's label and window: its folder's name, with its window's start when another
    bundle has the same name, and its place in the order when that is not enough."""
    names = [seen.bundle.name for seen in observations]
    labels = []
    for seen in observations:
        label = seen.bundle.name
        if names.count(label) > 1 and seen.window is not None:
            label = f"{label}@{seen.window.start_text}"
        labels.append(label)
    unique = [
        label if labels.count(label) == 1 else f"{label}#{index}"
        for index, label in enumerate(labels, start=1)
    ]
    return tuple(
        CaptureWindow(label, seen.window) for label, seen in zip(unique, observations, strict=True)
    )


def _ensure_one_cluster(observations: Sequence[Observation]) -> None:
    """:class:`BundleError` when two snapshots name different clusters."""
    clusters: dict[str, str] = {}
    for seen in observations:
        namespace = seen.snapshot.get("Namespace", "", CLUSTER_NAMESPACE)
        if namespace is not None and namespace.meta.uid:
            clusters.setdefault(namespace.meta.uid, seen.bundle.name)
    if len(clusters) > 1:
        (uid, first), (other, second) = sorted(clusters.items(), key=lambda item: item[1])[:2]
        raise BundleError(
            f"{first} and {second} come from different clusters (namespace "
            f"{CLUSTER_NAMESPACE} has uid {uid} in one, {other} in the other): analyse each "
            "cluster's bundles on their own"
        )


def observe_windows(
    bundles: Sequence[Bundle],
    *,
    workers: int | None = None,
    on_progress: Callable[[int], None] | None = None,
    max_capture_size: int = DEFAULT_MAX_BYTES,
    capture_map: CaptureMap | None = None,
    on_step: Callable[[str], None] | None = None,
) -> Windows:
    """Observe each bundle on its own (with its own window: ``observe``'s ``within``), then
    merge: see the module's docstring. Raises what ``observe`` raises, naming the bundle, and
    :class:`BundleError` for a bundle given twice or bundles of different clusters."""
    observations = []
    for bundle in ordered_bundles(bundles):
        window = bundle.manifest.window if bundle.manifest is not None else None
        observations.append(
            observe(
                bundle,
                workers=workers,
                on_progress=on_progress,
                max_capture_size=max_capture_size,
                within=window,
                capture_map=capture_map,
                on_step=on_step,
            )
        )
    _ensure_one_cluster(observations)
    if on_step is not None:
        on_step(f"merging {len(observations)} capture windows")
    windows = window_labels(observations)
    labelled = [(window.label, seen) for window, seen in zip(windows, observations, strict=True)]
    return Windows(
        observation=_merged_observation(labelled, windows),
        cluster=merged_context([ClusterContext.of(seen) for seen in observations]),
        observations=tuple(observations),
    )


@no_cyclic_gc()
def analyse_windows(
    bundles: Sequence[Bundle],
    options: PolicyOptions = DEFAULT_POLICY_OPTIONS,
    *,
    workers: int | None = None,
    on_progress: Callable[[int], None] | None = None,
    max_capture_size: int = DEFAULT_MAX_BYTES,
    capture_map: CaptureMap | None = None,
    on_step: Callable[[str], None] | None = None,
) -> Analysis:
    """One policy set from several bundles (:func:`observe_windows`, then ``conclude`` with the
    merged cluster context and ``options``); reading as ``analysing.observe``, and ``on_step``
    told also before ``conclude``. One bundle is analysed as ``analyse`` does: ``conclude``
    with its own context."""
    if len(bundles) == 1:
        seen = observe(
            bundles[0],
            workers=workers,
            on_progress=on_progress,
            max_capture_size=max_capture_size,
            capture_map=capture_map,
            on_step=on_step,
        )
        cluster = ClusterContext.of(seen)
    else:
        found = observe_windows(
            bundles,
            workers=workers,
            on_progress=on_progress,
            max_capture_size=max_capture_size,
            capture_map=capture_map,
            on_step=on_step,
        )
        seen, cluster = found.observation, found.cluster
    if on_step is not None:
        on_step(CONCLUDING)
    return conclude(seen, cluster, options)


# -- merging ----------------------------------------------------------------------------------


def merged_context(contexts: Sequence[ClusterContext]) -> ClusterContext:
    """The cluster contexts of several bundles, oldest first, as one: the newest bundle's view of
    a workload, node address, namespace or CronJob wins; the cluster DNS, exposures, networks
    and the nodes each workload ran on are every bundle's together."""
    exposures: dict[str, tuple[Exposure, ...]] = {}
    nodes: dict[str, str] = {}
    networks: set[str] = set()
    workloads: dict[str, Pod] = {}
    nodes_of: dict[str, frozenset[str]] = {}
    host_network: dict[str, tuple[str, ...]] = {}
    node_of_address: dict[str, str] = {}
    namespace_labels: dict[str, Mapping[str, str]] = {}
    apiservers: set[str] = set()
    cronjobs = {}
    for context in contexts:
        exposures.update(context.exposures)
        nodes.update(context.node_addresses)
        networks.update(context.internal_networks)
        facts = context.facts
        workloads.update(facts.workloads)
        for workload, found in facts.nodes_of.items():
            nodes_of[workload] = nodes_of.get(workload, frozenset()) | found
        for workload, addresses in facts.host_network.items():
            host_network[workload] = tuple(sorted({*host_network.get(workload, ()), *addresses}))
        node_of_address.update(facts.node_of_address)
        namespace_labels.update(facts.namespace_labels)
        apiservers |= facts.apiservers
        cronjobs.update({cronjob.name: cronjob for cronjob in context.cronjobs})
    dns = [context.cluster_dns for context in contexts]
    return ClusterContext(
        cluster_dns=ClusterDns(
            peers=tuple(sorted({peer for item in dns for peer in item.peers})),
            workloads=frozenset().union(*(item.workloads for item in dns)),
            ports=tuple(sorted({port for item in dns for port in item.ports})),
            node_local=tuple(sorted({peer for item in dns for peer in item.node_local})),
        ),
        exposures=dict(sorted(exposures.items())),
        node_addresses=nodes,
        internal_networks=tuple(sorted(networks)),
        facts=ClusterFacts(
            workloads=workloads,
            nodes_of=nodes_of,
            host_network=host_network,
            node_of_address=node_of_address,
            namespace_labels=namespace_labels,
            apiservers=frozenset(apiservers),
        ),
        cronjobs=tuple(cronjobs[name] for name in sorted(cronjobs)),
    )


def _labelled(label: str, captures: Iterable[str]) -> frozenset[str]:
    """Capture files (bundle-relative) as the merged analysis names them: ``LABEL/...``."""
    return frozenset(f"{label}/{capture}" for capture in captures)


class _Renamed:
    """Each bundle's flows with their capture files named as in the merged analysis
    (``LABEL/captures/...``), each flow renamed once."""

    def __init__(self) -> None:
        self._flows: dict[int, Flow] = {}

    def flow(self, label: str, flow: Flow) -> Flow:
        renamed = self._flows.get(id(flow))
        if renamed is None:
            renamed = replace(flow, captures=_labelled(label, flow.captures))
            self._flows[id(flow)] = renamed
        return renamed

    def twin(self, label: str, flow: Flow | None) -> Flow | None:
        return None if flow is None else self.flow(label, flow)


def merge_graphs(labelled: Sequence[tuple[str, WorkloadGraph]]) -> WorkloadGraph:
    """Several bundles' graphs (label, graph; oldest first) as one. Nodes by id: the newest
    bundle's workload and label, captured when any bundle captured it, names and addresses of
    all. Edges by their ends: per target port the stats added (``EdgeStats.merged``), with one
    :class:`EdgeWindow` per bundle that saw it; flows keep their bundle's label
    (``FlowAttribution.window``) and name their files ``LABEL/captures/...``."""
    return _merge_graphs(labelled, _Renamed())


def _merge_graphs(
    labelled: Sequence[tuple[str, WorkloadGraph]], renamed: _Renamed
) -> WorkloadGraph:
    nodes: dict[str, GraphNode] = {}
    edges: dict[tuple[str, str], GraphEdge] = {}
    attributions: list[FlowAttribution] = []
    attempts: list[AttemptGroup] = []
    attempts_left_out: list[AttemptTotals] = []
    flows_left_out: list[FlowsLeftOut] = []
    captured = {node.id for _, graph in labelled for node in graph.nodes if node.in_scope}
    for label, graph in labelled:
        sides = _Sides(graph, captured)
        for node in graph.nodes:
            known = nodes.get(node.id)
            if known is not None:
                addresses = tuple(sorted({*known.addresses, *node.addresses}))
                node = replace(
                    node,
                    names=tuple(sorted({*known.names, *node.names})),
                    in_scope=known.in_scope or node.in_scope,
                    addresses=addresses,
                )
            nodes[node.id] = node
        for edge in graph.edges:
            ports = {
                port: replace(
                    stats,
                    windows=(_window(label, stats),),
                    vouched=sides.vouched(edge.client, edge.server, stats.vouched),
                )
                for port, stats in edge.ports.items()
            }
            known_edge = edges.get((edge.client, edge.server))
            if known_edge is not None:
                for port, stats in known_edge.ports.items():
                    ports[port] = stats.merged(ports[port]) if port in ports else stats
                names = tuple(sorted({*known_edge.names, *edge.names}))
            else:
                names = edge.names
            edges[(edge.client, edge.server)] = GraphEdge(
                edge.client, edge.server, dict(sorted(ports.items())), names
            )
        attributions += [
            replace(
                attribution,
                flow=renamed.flow(label, attribution.flow),
                twin=renamed.twin(label, attribution.twin),
                window=label,
                vouched=sides.vouched(attribution.client, attribution.server, attribution.vouched),
            )
            for attribution in graph.attributions
        ]
        attempts += graph.attempts
        attempts_left_out.append(graph.attempts_left_out)
        flows_left_out += graph.flows_left_out
    merged_nodes = [
        replace(node, label=node_label(node.id.removeprefix("node:"), node.addresses))
        if node.role is NodeRole.NODE
        else node
        for node in nodes.values()
    ]
    groups, left_out = merge_attempts(attempts, attempts_left_out)
    return WorkloadGraph(
        tuple(merged_nodes),
        tuple(edges.values()),
        tuple(attributions),
        tuple(groups),
        sum(graph.loopback for _, graph in labelled),
        left_out,
        tuple(merge_flows_left_out(flows_left_out)),
    )


class _Sides:
    """Which sides of one bundle's flows count in the merged graph: a workload's side only where
    that bundle captured it, when some bundle did. In a bundle that did not capture a workload,
    nothing could vouch for its side of a flow (``analyser.vouching``), so the bundle took the
    other side's word for it, which was harmless there (no policy for it comes from that
    bundle). Merged, the workload gets a policy from the bundles that captured it, and one
    bundle's capture must not vouch for another bundle's pods."""

    def __init__(self, graph: WorkloadGraph, captured: Collection[str]) -> None:
        self._uncaptured_here = {
            node.id for node in graph.nodes if node.id in captured and not node.in_scope
        }

    def vouched(self, client: str, server: str, sides: Sides) -> Sides:
        return Sides(
            sides.client and client not in self._uncaptured_here,
            sides.server and server not in self._uncaptured_here,
        )


def _window(label: str, stats: EdgeStats) -> EdgeWindow:
    return EdgeWindow(label, stats.flows, stats.first_seen, stats.last_seen)


def _renamed_problems(label: str, problems: Iterable[FileProblem]) -> list[FileProblem]:
    return [FileProblem(f"{label}/{problem.path}", problem.problem) for problem in problems]


def _merged_traffic(labelled: Sequence[tuple[str, Observation]]) -> Traffic:
    """The bundles' traffic as one: files named ``LABEL/...``, counts added."""
    skipped: dict[str, int] = {}
    faults: dict[str, int] = {}
    for _, seen in labelled:
        for reason, count in seen.traffic.skipped.items():
            skipped[reason] = skipped.get(reason, 0) + count
        for reason, count in seen.traffic.dns_faults.items():
            faults[reason] = faults.get(reason, 0) + count
    return Traffic(
        conversations=(),  # an observation keeps its flows, not the conversations they were
        dns=DnsNames.union((label, seen.traffic.dns) for label, seen in labelled),
        reports=tuple(
            replace(report, path=f"{label}/{report.path}")
            for label, seen in labelled
            for report in seen.traffic.reports
        ),
        packets=sum(seen.traffic.packets for _, seen in labelled),
        counted=sum(seen.traffic.counted for _, seen in labelled),
        skipped=dict(sorted(skipped.items())),
        dns_faults=dict(sorted(faults.items())),
        foreign={
            f"{label}/{capture}": count
            for label, seen in labelled
            for capture, count in seen.traffic.foreign.items()
        },
        dns_left_out={
            f"{label}/{capture}": count
            for label, seen in labelled
            for capture, count in seen.traffic.dns_left_out.items()
        },
    )


def _merged_coverage(observations: Iterable[Observation]) -> tuple[Coverage, ...]:
    covered: dict[str, set[str]] = {}
    for seen in observations:
        for item in seen.coverage:
            covered.setdefault(item.pod, set()).update(item.vantages)
    return tuple(Coverage(pod, tuple(sorted(found))) for pod, found in sorted(covered.items()))


def _merged_observation(
    labelled: Sequence[tuple[str, Observation]], windows: tuple[CaptureWindow, ...]
) -> Observation:
    """The observations of several bundles (label, observation; oldest first) as one: the newest
    bundle, snapshot and resolver; the merged graph; every bundle's flows, files, problems and
    rings, named ``LABEL/...``."""
    renamed = _Renamed()
    newest = labelled[-1][1]
    scopes = [seen.scope for _, seen in labelled]
    return Observation(
        bundle=newest.bundle,
        snapshot=newest.snapshot,
        resolver=newest.resolver,
        scope=Scope(
            frozenset().union(*(scope.workloads for scope in scopes)),
            tuple(sorted({pod for scope in scopes for pod in scope.unknown_pods})),
        ),
        traffic=_merged_traffic(labelled),
        flows=FlowTable.sorted(
            group.seen_by(_labelled(label, group.captures))
            for label, seen in labelled
            for group in FlowTable.of(seen.flows).groups
        ),
        graph=_merge_graphs([(label, seen.graph) for label, seen in labelled], renamed),
        problems=tuple(
            problem
            for label, seen in labelled
            for problem in _renamed_problems(label, seen.problems)
        ),
        coverage=_merged_coverage(seen for _, seen in labelled),
        rings=tuple(
            replace(loss, ring=f"{label}/{loss.ring}", oldest=f"{label}/{loss.oldest}")
            for label, seen in labelled
            for loss in seen.rings
        ),
        windows=windows,
    )
