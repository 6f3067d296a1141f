"""Analysing: the whole pipeline as functions, shared by the ``analyse`` CLI, ``verify``,
``lab`` and ``demo``.

    bundle = open_bundle(path)                      # bundles: what there is, what is damaged
    analysis = analyse(bundle, default_deny=True)   # captures → flows → graph → policies → text
    write_output(analysis.files, out)               # the only place files are written

:func:`observe` stops at the graph (what ``verify`` needs); :func:`analyse` goes on to the
policies and the rendered files; the rendered files live in memory in ``Analysis.files``, and
the safety check (every observed flow allowed by the rendered policies) runs on them before
anyone can write them. :func:`write_output` owns the output directory: it refuses one that holds
other files (unless forced) and removes what an earlier run wrote and this one does not.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import shutil
import subprocess
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from analyser import dns
from analyser.addresses import parse_address
from analyser.adopting import Adoption, adopt
from analyser.bundles import Bundle, FileProblem
from analyser.evaluation import PolicySet, policy_name
from analyser.explaining import explain, explain_cilium
from analyser.flows import Evidence, Flow, FlowTable
from analyser.fqdnselectors import MAX_NAMES_PER_SUFFIX
from analyser.graphs import NodeRole, UnvouchedPair, WorkloadGraph, build_graph, is_loopback
from analyser.identities import Resolver, Scope, Vantage
from analyser.peers import ClusterDns, Exposure, SpecialAddress
from analyser.periods import (
    CaptureWindow,
    CronJobSchedule,
    UncoveredCronJob,
    cronjob_schedules,
    uncovered_cronjobs,
    within_window,
)
from analyser.pictures import (
    GroupKind,
    Picture,
    infrastructure_ids,
    namespace_part,
    namespace_picture,
    picture_of,
)
from analyser.policies import (
    MAX_OUTSIDE_ADDRESSES,
    DefaultDeny,
    LeftOut,
    Policy,
    PolicyPlan,
    RuleLeftOut,
    SelectorWarning,
    SideLeftOut,
    node_blocks,
    selector_warnings,
    sides_left_out,
    synthesize,
    unselectable_reasons,
    unselectable_workloads,
)
from analyser.policysets import parse_policy_texts
from analyser.reading import CaptureMap, Orientation, Traffic, no_cyclic_gc, read_captures
from analyser.rendering import (
    KUSTOMIZATION,
    Provenance,
    ReportFacts,
    baseline_path,
    policy_path,
    render_cilium_files,
    render_dot,
    render_policy_files,
    render_report,
    render_review,
)
from analyser.replaying import ClusterFacts, cluster_facts, ensure_policies_allow
from analyser.reviewing import Drawing, review_of
from analyser.rings import RingLoss, bundle_ring_losses
from analyser.snapshot import (
    CaptureMeta,
    NodeCaptureMeta,
    PodIpEvent,
    Snapshot,
    load_capture_meta,
    load_node_capture_meta,
    load_pod_ip_history,
    load_snapshot,
)
from analyser.sources import DEFAULT_MAX_BYTES
from analyser.vantages import (
    Coverage,
    coverage,
    is_node_meta,
    loose_node_pods,
    node_captures,
    opted_in,
    place_node_captures,
    pods_covered,
    readable_nodes,
)
from analyser.verifying import change_json
from analyser.vouching import Witnesses
from kernel.bundles import CAPTURES, NODE_CAPTURES, SNAPSHOT_KINDS, Window
from kernel.errors import CaptureError, CaptureTooLarge, OutputError, RenderError, SnapshotError

if TYPE_CHECKING:
    # analyser.baselines and analyser.cilium are imported where --baseline cluster and the
    # Cilium format need them, not by every analyse (issue 13).
    from analyser.baselines import Baseline

GRAPH_DOT = "graph.dot"
GRAPH_SVG = "graph.svg"
REPORT = "report.md"
REPORT_HTML = "report.html"
# Marks a directory as analyse output and lists what it wrote (with sha256s), so a later run may
# replace it and can tell hand edits. No .json suffix: tools reading the folder as manifests
# (kubectl apply -f DIR, Argo CD) would try to decode it. Earlier versions wrote the legacy one.
OUTPUT_MARKER = ".netpol-sniffer-output"
LEGACY_OUTPUT_MARKER = ".netpol-sniffer-output.json"
# graph.svg is drawn up to this size: Graphviz's dot took 0.5 s on 200 workloads and 400 edges,
# 14 s on 500 and 1,000, more than 2 minutes on 1,000 and 2,000 (and a bigger picture cannot be
# read anyway). graph.dot is always written.
MAX_SVG_NODES = 400
MAX_SVG_EDGES = 1000
# report.html has a picture of each namespace of its own up to this many namespaces (a dot run
# each, most of them small); past it, choosing a namespace fades the rest of graph.svg.
MAX_NAMESPACE_PICTURES = 50
DOT_TIMEOUT = 120.0  # seconds; past it graph.svg is left out, with a note


@dataclass(frozen=True, slots=True)
class Observation:
    """What a bundle shows, before any policy: the facts at every stage of reading it."""

    bundle: Bundle
    snapshot: Snapshot
    resolver: Resolver
    scope: Scope  # the captured workloads: they get policies
    traffic: Traffic  # without its conversations and flows: ``flows`` holds them
    # Sorted by (protocol, client, server, first seen): a FlowTable, or for several bundles a
    # tuple (analyser.windows).
    flows: Sequence[Flow]
    graph: WorkloadGraph
    problems: tuple[FileProblem, ...]  # damaged or skipped inputs: warnings, never fatal
    coverage: tuple[Coverage, ...]  # per captured pod, the vantage points that covered it
    rings: tuple[RingLoss, ...]  # capture rings that wrapped: what they lost (analyser.rings)
    # Several bundles analysed together (analyser.windows): each one's label and window, oldest
    # first; empty for one bundle.
    windows: tuple[CaptureWindow, ...] = field(default=(), kw_only=True)

    @property
    def source(self) -> str:
        """What was analysed: the bundle's name, or the labels of the bundles."""
        return ", ".join(w.label for w in self.windows) if self.windows else self.bundle.name

    @property
    def capture_windows(self) -> tuple[CaptureWindow, ...]:
        """The capture windows: the bundles', or this bundle's one."""
        return self.windows or (CaptureWindow(self.bundle.name, self.window),)

    @property
    def window(self) -> Window | None:
        """The capture window: bundle.json's, else (a plain folder) from the first to the last
        packet of any flow; None without either. For several bundles, from the first start to
        the last end (:attr:`windows` says which times they covered)."""
        known = [w.window for w in self.windows if w.window is not None]
        if known:
            return Window(min(w.start for w in known), max(w.end for w in known))
        if self.bundle.manifest is not None and self.bundle.manifest.window is not None:
            return self.bundle.manifest.window
        if self.bundle.manifest is None and self.flows:
            flows = FlowTable.of(self.flows)
            return Window(flows.first_seen(), flows.last_seen())
        return None

    @property
    def evidence_counts(self) -> dict[Evidence, int]:
        counts = FlowTable.of(self.flows).evidence_counts()
        return {evidence: counts.get(evidence, 0) for evidence in Evidence}


@dataclass(frozen=True, slots=True)
class Analysis(Observation):
    """An observation plus the policies made from it and every rendered file (not yet written)."""

    plan: PolicyPlan  # the policies, the default-denies and what they leave out (synthesize)
    unselectable: tuple[str, ...]  # captured workloads without a stable label: no policy
    files: Mapping[str, str]  # output path (relative, POSIX) → text, sorted
    notes: tuple[str, ...] = ()  # what the output leaves out, and why (graph.svg too big to draw)
    # Workloads with a policy that the snapshot shows exposed outside the cluster (node id →
    # how), and whether their exposed ports were allowed from anywhere (or the clients seen only).
    exposures: Mapping[str, tuple[Exposure, ...]] = field(default_factory=dict)
    exposed_anywhere: bool = True
    # The policies against the cluster's current ones: collisions, combinations, changes.
    adoption: Adoption = field(default_factory=Adoption)
    baseline: Baseline | None = None  # --baseline cluster: the ClusterNetworkPolicy written
    # CronJobs whose runs the capture windows may all have missed (analyser.periods).
    uncovered_cronjobs: tuple[UncoveredCronJob, ...] = ()

    @property
    def policies(self) -> tuple[Policy, ...]:
        """One per workload that got a policy (``plan.policies``)."""
        return self.plan.policies

    @property
    def default_denies(self) -> tuple[DefaultDeny, ...]:
        """One per namespace that got a default-deny (``plan.default_denies``)."""
        return self.plan.default_denies

    @property
    def unselectable_reasons(self) -> dict[str, str]:
        """Why each workload of :attr:`unselectable` got no policy."""
        return unselectable_reasons(self.graph, self.unselectable)

    @property
    def policy_files(self) -> tuple[str, ...]:
        return tuple(p for p in self.files if p.endswith(".yaml") and p != KUSTOMIZATION)

    @property
    def selector_warnings(self) -> tuple[SelectorWarning, ...]:
        """Workloads whose selector from the snapshot selected more than their pods."""
        return selector_warnings(self.graph)

    @property
    def left_out(self) -> tuple[LeftOut, ...]:
        """Observed traffic with special addresses that the policies leave out on purpose."""
        return self.plan.left_out

    @property
    def rules_left_out(self) -> tuple[SideLeftOut, ...]:
        """Observed traffic with peers whose rules did not fit in their policy, by policy side
        (``policies.MAX_RULE_BYTES``)."""
        return sides_left_out(self.plan.rules_left_out)

    @property
    def unvouched(self) -> tuple[UnvouchedPair, ...]:
        """Traffic a side's own captures did not vouch for: no rule on that side."""
        return self.graph.unvouched_pairs()

    def summary(self) -> dict[str, object]:
        """The machine-readable summary (``analyse --json``): plain JSON types, stable order."""
        manifest = self.bundle.manifest
        window = self.window
        return {
            "bundle": self.source,
            "window": None
            if window is None
            else {"start": window.start_text, "end": window.end_text},
            "producer": manifest.producer if manifest is not None else None,
            "captures": len(self.traffic.reports),
            "packets": self.traffic.packets,
            "packets_without_flow": dict(self.traffic.skipped),
            "flows": len(self.flows),
            "never_established": sum(group.attempts for group in self.graph.attempts)
            + self.graph.attempts_left_out.attempts,
            "one_way_left_out": sum(
                found.flows for found in self.graph.flows_left_out if not found.answered
            ),
            "answered_left_out": sum(
                found.flows for found in self.graph.flows_left_out if found.answered
            ),
            "loopback_flows": self.graph.loopback,
            "foreign_flows": sum(self.traffic.foreign.values()),
            "unvouched_sides": sum(pair.sides for pair in self.unvouched),
            "evidence": {str(e): n for e, n in self.evidence_counts.items()},
            "workloads": len(self.graph.with_role(NodeRole.WORKLOAD)),
            "external_addresses": len(self.graph.with_role(NodeRole.EXTERNAL)),
            "unresolved_addresses": list(self.graph.unresolved),
            "policies": list(self.policy_files),
            "without_policy": list(self.unselectable),
            "selector_warnings": [
                {"workload": item.workload, "warning": item.warning}
                for item in self.selector_warnings
            ],
            "left_out": [
                {
                    "workload": item.workload,
                    "direction": item.direction,
                    "address": item.address,
                    "protocol": str(item.port.protocol),
                    "port": item.port.port,
                    "class": str(item.kind),
                }
                for item in self.left_out
            ],
            "rules_left_out": [
                {
                    "workload": side.workload,
                    "direction": side.direction,
                    "peers": len(side.peers),
                    "flows": side.flows,
                    "ports": [f"{port.protocol}/{port.port}" for port in side.ports],
                }
                for side in self.rules_left_out
            ],
            "problems": [{"path": p.path, "problem": p.problem} for p in self.problems],
            "coverage": {item.pod: list(item.vantages) for item in self.coverage},
            "wrapped_rings": [loss.as_json() for loss in self.rings],
            "windows": [window.as_json() for window in self.capture_windows],
            "uncovered_cronjobs": [item.as_json() for item in self.uncovered_cronjobs],
            "notes": list(self.notes),
            "exposed": [
                {
                    "workload": workload,
                    "protocol": str(exposure.port.protocol),
                    "port": exposure.port.port,
                    "by": exposure.by,
                    "from": "anywhere" if self.exposed_anywhere else "observed clients",
                }
                for workload, items in self.exposures.items()
                for exposure in items
            ],
            "current_policies": {
                "read": list(self.adoption.current),
                "collisions": [
                    {"policy": item.policy, "workload": item.workload, "ours": item.ours}
                    for item in self.adoption.collisions
                ],
                "combined": {
                    workload: list(names) for workload, names in self.adoption.combined.items()
                },
                "workloads": {
                    workload: {
                        "pairs_gaining_ports": len(changes.gained),
                        "pairs_losing_ports": changes.lost,
                        "newly_allowed": [change_json(change) for change in changes.gained],
                    }
                    for workload, changes in self.adoption.by_workload(
                        p.workload for p in self.policies
                    ).items()
                    if self.adoption.changes  # none: no current policy, or past the cap (notes)
                },
                "notes": list(self.adoption.notes),
            },
            "baseline": None
            if self.baseline is None
            else {
                "file": baseline_path(self.baseline),
                "exempt_namespaces": list(self.baseline.exempt_namespaces),
            },
            "files": list(self.files),
        }


# -- inputs ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _OptionalInputs:
    """The pod IP history and the ``meta.json`` files (pods' and nodes'), and what was wrong with
    any of them."""

    history: list[PodIpEvent]
    metas: list[CaptureMeta]
    node_metas: list[NodeCaptureMeta]
    problems: list[FileProblem]


def _optional_inputs(bundle: Bundle) -> _OptionalInputs:
    """Pod IP history and meta.json files improve resolution; a bad one is a warning."""
    problems: list[FileProblem] = []
    history: list[PodIpEvent] = []
    if bundle.pod_ips is not None:
        try:
            history = load_pod_ip_history(bundle.pod_ips)
        except SnapshotError as error:
            problems.append(FileProblem(bundle.relative(bundle.pod_ips), f"not used: {error}"))
    metas: list[CaptureMeta] = []
    node_metas: list[NodeCaptureMeta] = []
    for path in bundle.capture_metas:
        try:
            if is_node_meta(bundle, path):
                node_metas.append(load_node_capture_meta(path))  # the snapshot says the rest
            else:
                metas.append(load_capture_meta(path))
        except SnapshotError as error:
            problems.append(FileProblem(bundle.relative(path), f"not used: {error}"))
    return _OptionalInputs(history, metas, node_metas, problems)


def _captured_pods(
    bundle: Bundle, metas: Iterable[CaptureMeta]
) -> tuple[dict[tuple[str, str], set[str]], set[str]]:
    """(namespace, pod) of every captured pod as the bundle says it (the manifest, meta.json
    beside the files, the ``captures/NAMESPACE/POD/`` layout) with its capture files (relative
    paths, also those listed but missing), and the capture files that nothing ties to a pod, e.g.
    loose pcaps in a plain folder."""
    pods: dict[tuple[str, str], set[str]] = defaultdict(set)
    meta_pods = {Path(m.source).resolve().parent: (m.namespace, m.pod) for m in metas}
    for pod in meta_pods.values():
        pods.setdefault(pod, set())
    listed = set()
    if bundle.manifest is not None:
        for entry in bundle.manifest.captures:
            if not entry.node:
                pods[(entry.namespace, entry.pod)].add(entry.path)
        listed = {e.path for e in bundle.manifest.captures}
    unplaced = set()
    for path in bundle.captures:
        relative = bundle.relative(path)
        parts = PurePosixPath(relative).parts
        if len(parts) >= 4 and parts[:2] == (CAPTURES, NODE_CAPTURES):
            continue  # a node's capture: vantages.node_captures
        if len(parts) >= 4 and parts[0] == CAPTURES:
            pods[(parts[1], parts[2])].add(relative)
        elif path.parent in meta_pods:
            pods[meta_pods[path.parent]].add(relative)
        elif relative not in listed:
            unplaced.add(relative)
    return dict(pods), unplaced


def _readable_pods(
    pods: Mapping[tuple[str, str], set[str]], traffic: Traffic
) -> tuple[set[tuple[str, str]], list[FileProblem]]:
    """The captured pods with at least one capture that could be read (a valid capture without
    packets counts: the pod was silent). A pod whose captures are all missing or unreadable is
    not silent but unknown: a policy from nothing would deny it everything."""
    usable = {report.path for report in traffic.reports if report.ok or report.packets}
    readable = {pod for pod, files in pods.items() if files & usable}
    problems = [
        FileProblem(
            f"{CAPTURES}/{namespace}/{pod}",
            "no capture of this pod could be read: no policy (one made from nothing would deny "
            "it everything)",
        )
        for namespace, pod in sorted(pods.keys() - readable)
    ]
    return readable, problems


def _names_pod(capture: str, pod: tuple[str, str], resolver: Resolver) -> bool:
    """Whether a capture's path names the pod, or its workload (``web.pcap``, ``web-7d9f/``)."""
    words = set(re.split(r"[^a-z0-9-]+|\.pcap|\.cap", capture.lower()))
    workload = resolver.workload_of_pod(*pod)
    names = {pod[1], workload.name if workload is not None else pod[1]}
    return any(word == name or word.startswith(f"{name}-") for word in words for name in names)


def _to_everyone(flow: Flow) -> bool:
    """Broadcast or multicast, or from an address not yet configured (DHCP): a node's noise that
    says nothing about whose capture a file is."""
    return any(
        address.is_multicast or address.is_unspecified or address == _BROADCAST
        for address in map(parse_address, (flow.client.ip, flow.server.ip))
    )


_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


@dataclass(slots=True)
class _LooseCapture:
    """What one unplaced capture file saw: the pods and addresses in every one of its flows, the
    nodes one of whose pods (or addresses) is in every flow, and every pod seen with its node."""

    pods_in_all: set[tuple[str, str]]
    addresses_in_all: set[str]
    nodes_in_all: set[str]
    pods_seen: dict[tuple[str, str], str | None]


@dataclass(frozen=True, slots=True)
class _LooseVantages:
    """What unplaced capture files turned out to be: the pods they make captured, where each
    file tied to a pod or a node was taken, and a warning for each file that is neither."""

    pods: set[tuple[str, str]]
    vantages: dict[str, tuple[Vantage, ...]]
    problems: list[FileProblem]


def _vantage_pods(
    flows: Iterable[Flow], resolver: Resolver, unplaced: set[str], *, damaged: set[str]
) -> _LooseVantages:
    """Whose capture an unplaced file is: the one pod that is an end of every flow it saw (a
    sidecar or ``tcpdump`` in a pod sees only its own traffic, on any of its addresses). Failing
    that, a node's: when no pod and no address is in every flow but every flow has an end on one
    node (``tcpdump -i any`` on the node sees all its pods' traffic), that node's pods seen in it
    are captured. ``damaged`` files already have a warning of their own when they gave no flow."""
    seen: dict[str, _LooseCapture] = {}
    with_flows: set[str] = set()
    # Only the flows of unplaced files are looked at (usually none): by group, the rest at once.
    groups = FlowTable.of(flows).groups
    for flow in (flow for g in groups if not g.captures.isdisjoint(unplaced) for flow in g.flows()):
        captures = flow.captures & unplaced
        with_flows |= captures
        if not captures or is_loopback(flow) or _to_everyone(flow):
            continue
        identities = (
            resolver.resolve(flow.client.ip, flow.first_seen),
            resolver.resolve(
                flow.server.ip, flow.first_seen, port=flow.server.port, protocol=flow.protocol
            ),
        )
        ends = {
            (identity.pod.namespace, identity.pod.name): resolver.node_of(identity)
            for identity in identities
            if identity.pod is not None
        }
        nodes = {node for identity in identities if (node := resolver.node_of(identity))}
        addresses = {flow.client.ip, flow.server.ip}
        for capture in captures:
            loose = seen.get(capture)
            if loose is None:
                seen[capture] = _LooseCapture(set(ends), addresses, nodes, dict(ends))
                continue
            loose.pods_in_all &= ends.keys()
            loose.addresses_in_all &= addresses
            loose.nodes_in_all &= nodes
            loose.pods_seen.update(ends)
    pods: set[tuple[str, str]] = set()
    vantages: dict[str, tuple[Vantage, ...]] = {}
    problems = []
    for capture in sorted(unplaced):
        loose = seen.get(capture)
        if loose is None:
            if capture in with_flows:
                why = "its only flows are on loopback, broadcast or multicast addresses"
                problems.append(FileProblem(capture, f"{why}: nothing ties it to a pod"))
            elif capture not in damaged:
                problems.append(
                    FileProblem(capture, "holds no TCP, UDP or SCTP traffic: nothing to analyse")
                )
            continue
        found = sorted(loose.pods_in_all)
        if len(found) > 1:
            # One conversation between pods: the file's name may say whose capture it is.
            named = [pod for pod in found if _names_pod(capture, pod, resolver)]
            found = named if len(named) == 1 else found
        if len(found) == 1:
            pods.add(found[0])
            vantages[capture] = (Vantage(*found[0]),)
            continue
        if not found and not loose.addresses_in_all and len(loose.nodes_in_all) == 1:
            (node,) = loose.nodes_in_all
            on_node = sorted(p for p, n in loose.pods_seen.items() if n == node)
            pods.update(on_node)
            vantages[capture] = (Vantage(node=node),)
            problems.append(
                FileProblem(
                    capture,
                    f"not tied to a pod, but every flow has an end on node {node}: read as that "
                    f"node's capture; its {len(on_node)} pods seen in it get policies",
                )
            )
            continue
        why = (
            f"several pods ({', '.join('/'.join(p) for p in found)}) are in every flow"
            if found
            else "no pod is in every flow it saw"
        )
        problems.append(
            FileProblem(
                capture,
                f"not tied to a known pod (by bundle.json, meta.json or its captures/NS/POD/ "
                f"folder) and {why}: its flows count, but it makes no workload get a policy",
            )
        )
    return _LooseVantages(pods, vantages, problems)


@dataclass(frozen=True, slots=True)
class _PlacedCapture:
    """Where the bundle says a capture file was taken (one pod, unless bundle.json and its
    folder disagree): what it speaks for, as ``read_captures`` asks (``flows.CaptureVantage``)."""

    vantages: tuple[Vantage, ...]
    resolver: Resolver

    def __str__(self) -> str:
        return ", ".join(map(str, self.vantages))

    def holds(self, ip: str, first: float, last: float) -> bool:
        return any(
            self.resolver.holds(vantage, ip, at)
            for vantage in self.vantages
            for at in {first, last}  # once when they are the same (an unanswered SYN)
        )

    def steady(self, ip: str, at: float) -> bool:
        return self.resolver.timeless(ip, at)


def _placed_captures(
    pods: Mapping[tuple[str, str], set[str]], resolver: Resolver
) -> dict[str, _PlacedCapture]:
    """Each capture file tied to pods (``_captured_pods``) → where it was taken."""
    vantages: dict[str, list[Vantage]] = defaultdict(list)
    for (namespace, pod), files in sorted(pods.items()):
        for capture in files:
            vantages[capture].append(Vantage(namespace, pod))
    return {capture: _PlacedCapture(tuple(found), resolver) for capture, found in vantages.items()}


def _foreign_problems(traffic: Traffic, placed: Mapping[str, _PlacedCapture]) -> list[FileProblem]:
    """A warning for each capture whose foreign conversations were dropped."""
    problems = []
    for capture, count in traffic.foreign.items():
        flows = f"{count} flow{'s' if count != 1 else ''}"
        were = "were" if count != 1 else "was"
        vantage = placed[capture]
        which = (
            "this pod is neither end"
            if len(vantage.vantages) == 1
            else f"neither end is one of the pods it is tied to ({vantage})"
        )
        why = "a pod's capture speaks only for that pod"
        if vantage.vantages[0].node:
            which = f"no pod of {vantage} in an opted-in namespace is an end"
            why = "a node's capture speaks only for the pods of the namespaces opted in"
        if not any(vantage.resolver.knows_addresses(v) for v in vantage.vantages):
            why = (
                "no address of it is known (not in the snapshot's Pod, meta.json or "
                "pod-ips.jsonl), so no flow can be told to be its own"
            )
        problems.append(
            FileProblem(capture, f"{flows} in which {which} {were} dropped as foreign: {why}")
        )
    return problems


def _dns_problems(traffic: Traffic) -> list[FileProblem]:
    """A warning for each capture whose DNS names did not all fit its vantage point's table."""
    return [
        FileProblem(
            capture,
            f"{count:,} DNS name{'s' if count != 1 else ''} (an address's, or a lookup) left out: "
            f"the answers captured where this file was taken name more than {dns.MAX_NAMES:,}, so "
            "the flows to the addresses only they name are taken as unnamed",
        )
        for capture, count in traffic.dns_left_out.items()
    ]


# How many unreadable files the error for a bundle without any readable capture names.
MAX_LISTED_UNREADABLE = 3


def _ensure_something_read(traffic: Traffic) -> None:
    """:class:`CaptureError` when no capture file could be read at all (not one valid file, not
    one packet before damage): nothing is known, and policies made from nothing would deny every
    captured workload everything. Some readable files leave the others as warnings."""
    if any(report.ok or report.packets for report in traffic.reports):
        return
    listed = [
        f"{report.path}: {report.reason or report.error}"
        for report in traffic.reports[:MAX_LISTED_UNREADABLE]
    ]
    more = len(traffic.reports) - len(listed)
    raise CaptureError(
        f"none of the {len(traffic.reports)} capture files could be read, nothing to analyse: "
        + "; ".join(listed)
        + (f"; and {more} more" if more > 0 else "")
    )


def _capture_problems(traffic: Traffic) -> list[FileProblem]:
    problems = []
    for report in traffic.reports:
        if report.impossible_times:
            problems.append(
                FileProblem(
                    report.path,
                    f"{report.impossible_times} packets with a time before 1970 or after 9999 "
                    "were skipped",
                )
            )
        if report.ok:
            continue
        cut = "the cap" if report.error == CaptureTooLarge.__name__ else "the damage"
        used = (
            f"the {report.packets} packets before {cut} were used"
            if report.packets
            else "nothing in it could be used"
        )
        problems.append(FileProblem(report.path, f"{report.reason or report.error}; {used}"))
    return problems


class PolicyFormat(StrEnum):
    """What ``analyse --format`` writes."""

    NETWORKPOLICY = "networkpolicy"  # networking.k8s.io/v1 NetworkPolicies
    CILIUM = "cilium"  # cilium.io/v2 CiliumNetworkPolicies
    ALL = "all"  # both, each set in a folder of its own


def _folders(policy_format: PolicyFormat) -> dict[PolicyFormat, str]:
    """The policy sets a format writes, each with its folder (a path prefix): one set at the
    top, or with ``all`` every set in a folder named after its format, with its own
    Kustomization (apply one of them: ``kubectl apply -k OUT/cilium``)."""
    if policy_format is not PolicyFormat.ALL:
        return {policy_format: ""}
    return {f: f"{f}/" for f in (PolicyFormat.NETWORKPOLICY, PolicyFormat.CILIUM)}


# -- the safety check ------------------------------------------------------------------------


def check_safety(
    policies: PolicySet,
    graph: WorkloadGraph,
    cluster: ClusterFacts,
    *,
    left_out: Iterable[LeftOut] = (),
    rules_left_out: Iterable[RuleLeftOut] = (),
) -> None:
    """THE place generated policies are checked before anything can be written: the rendered
    files, read back as ``verify`` reads files (``policysets.parse_policy_texts``: ``conclude``
    does it) and evaluated with their semantics over ``cluster`` (``replaying.cluster_facts``),
    must allow every observed connection of the graph, but the traffic with special addresses
    they leave out on purpose (``left_out``, and ``rules_left_out``: rules that did not fit,
    reported); else :class:`UnsafePolicies` (nothing
    written).
    """
    ensure_policies_allow(
        policies,
        graph,
        cluster,
        left_out={(item.address, item.port) for item in left_out},
        rules_left_out={
            (item.workload, item.direction, item.peer, port)
            for item in rules_left_out
            for port in item.ports
        },
    )


# -- the pipeline ----------------------------------------------------------------------------


def observe(
    bundle: Bundle,
    *,
    workers: int | None = None,
    on_progress: Callable[[int], None] | None = None,
    max_capture_size: int = DEFAULT_MAX_BYTES,
    within: Window | None = None,
    capture_map: CaptureMap | None = None,
    on_step: Callable[[str], None] | None = None,
) -> Observation:
    """Read ``bundle``: snapshot and history → resolver; captures → flows → workload graph.

    ``workers`` processes read capture files (default: one per core), or ``capture_map`` does
    (e.g. a Dask cluster's: ``analyser.distributing``). ``on_progress`` gets the
    size in bytes of each capture file once it is read (total: the sum of ``bundle.captures``'
    sizes); ``on_step`` is told what runs once they are all read (``read_captures``), then
    before the graph is built. At most ``max_capture_size`` bytes of each capture file
    (decompressed) are read; a file with more is a problem, and the packets before the cap
    count. Raises
    :class:`~kernel.errors.SnapshotError` for an unusable snapshot and
    :class:`~kernel.errors.CaptureError` when not one capture file could be read; damaged
    captures, history or meta.json files become ``problems``. With ``within`` (several bundles
    analysed together: ``analyser.windows``), flows dated outside that window are dropped, and
    a problem names each file that held some (``periods.within_window``).
    """
    snapshot = load_snapshot(bundle.snapshot)
    inputs = _optional_inputs(bundle)
    history, metas, problems = inputs.history, inputs.metas, inputs.problems
    problems += [
        FileProblem(
            bundle.relative(bundle.snapshot),
            f"{gap}; a complete snapshot: kubectl get {SNAPSHOT_KINDS} -A -o json",
        )
        for gap in snapshot.gaps()
    ]
    problems += [
        FileProblem(bundle.relative(bundle.snapshot), problem)
        for problem in snapshot.owner_problems()
    ]
    resolver = Resolver(snapshot, ip_history=history, captures=metas)
    captured, unplaced = _captured_pods(bundle, metas)
    # A folder or bundle.json entry naming a pod nobody knows (a Deployment's name, a typo):
    # its files are tied by their traffic instead, like loose files.
    present = {bundle.relative(path) for path in bundle.captures}
    misnamed = sorted(pod for pod in captured if resolver.workload_of_pod(*pod) is None)
    for pod in misnamed:
        unplaced |= captured.pop(pod) & present
    problems += [
        FileProblem(
            f"{CAPTURES}/{namespace}/{pod}",
            f"pod {namespace}/{pod} is not in the snapshot: its captures are tied to pods by "
            "their traffic instead",
        )
        for namespace, pod in misnamed
    ]
    placed = _placed_captures(captured, resolver)
    nodes = node_captures(bundle)
    namespaces = opted_in(bundle, snapshot)
    on_nodes = place_node_captures(nodes, namespaces)
    placed |= {c: _PlacedCapture((v,), resolver) for c, v in on_nodes.vantages.items()}
    unread = {file for files in nodes.values() for file in files} - on_nodes.vantages.keys()
    traffic = read_captures(
        [path for path in bundle.captures if bundle.relative(path) not in unread],
        root=bundle.root,
        workers=workers,
        on_progress=on_progress,
        vantages=placed,
        capture_map=capture_map,
        max_bytes=max_capture_size,
        node_captures=on_nodes.vantages.keys(),
        orientation=Orientation(resolver.known_listener),
        on_step=on_step,
    )
    _ensure_something_read(traffic)
    # Kept once (a day holds millions): in the observation, not also in its traffic.
    flows, traffic = traffic.flows, replace(traffic, flows=())
    if within is not None:
        inside = within_window(flows, within)
        flows = inside.kept
        problems += [
            FileProblem(
                capture,
                f"{count} flow{'s' if count != 1 else ''} dated outside this bundle's capture "
                f"window ({within.start_text} to {within.end_text}) dropped: with several "
                "bundles, each speaks only for its own window",
            )
            for capture, count in inside.outside.items()
        ]
    damaged = {report.path for report in traffic.reports if not report.ok}
    loose = _vantage_pods(flows, resolver, unplaced, damaged=damaged)
    readable, unread_problems = _readable_pods(captured, traffic)
    usable = {report.path for report in traffic.reports if report.ok or report.packets}
    node_pods = pods_covered(resolver, readable_nodes(nodes, usable), namespaces)
    scope = resolver.scope_of(readable | loose.pods | {p for ps in node_pods.values() for p in ps})
    vantages = {**{c: p.vantages for c, p in placed.items()}, **loose.vantages}
    witnesses = Witnesses(vantages, traffic.reports, resolver)
    if on_step is not None:
        on_step(f"building the workload graph of {len(flows):,} flows")
    graph = build_graph(flows, resolver, traffic.dns, scope=scope, witness=witnesses)
    rings = bundle_ring_losses(
        bundle,
        snapshot,
        metas=[*inputs.metas, *inputs.node_metas],
        reports=traffic.reports,
        flows=flows,
    )
    problems = [
        *bundle.problems,
        *problems,
        *_capture_problems(traffic),
        *_foreign_problems(traffic, placed),
        *_dns_problems(traffic),
        *loose.problems,
        *unread_problems,
        *on_nodes.problems,
        *(FileProblem(loss.ring, loss.text) for loss in rings),
    ]
    return Observation(
        bundle=bundle,
        snapshot=snapshot,
        resolver=resolver,
        scope=scope,
        traffic=traffic,
        flows=flows,
        graph=graph,
        problems=tuple(problems),
        coverage=coverage(
            vantages, {**loose_node_pods(loose.vantages, loose.pods, resolver), **node_pods}
        ),
        rings=rings,
    )


@dataclass(frozen=True, slots=True)
class ClusterContext:
    """What the policies need of the cluster besides the graph: the cluster DNS, the workloads
    exposed outside it, the nodes' addresses, its own networks, the facts policies see of its
    workloads (for the safety check) and its CronJobs. One bundle's comes from its snapshot
    (:meth:`of`); several bundles' is merged (``analyser.windows``)."""

    cluster_dns: ClusterDns
    exposures: Mapping[str, tuple[Exposure, ...]]  # workload node id → how it is exposed
    node_addresses: Mapping[str, str]  # a node's address → the node's name
    internal_networks: tuple[str, ...]
    facts: ClusterFacts
    cronjobs: tuple[CronJobSchedule, ...] = ()

    @staticmethod
    def of(seen: Observation) -> ClusterContext:
        """One bundle's: from its snapshot and resolver."""
        return ClusterContext(
            cluster_dns=seen.resolver.cluster_dns(seen.flows),
            exposures=seen.resolver.exposures(),
            node_addresses=dict(seen.snapshot.node_by_address),
            internal_networks=seen.resolver.cluster_networks,
            facts=cluster_facts(seen.snapshot, seen.resolver),
            cronjobs=cronjob_schedules(seen.snapshot),
        )


@dataclass(frozen=True, slots=True)
class PolicyOptions:
    """What the policies are made with: ``analyse``'s options (see :func:`conclude`), the
    command line's flags."""

    default_deny: bool = False
    baseline: bool = False
    node_cidrs: Sequence[str] = ()
    max_outside_addresses: int = MAX_OUTSIDE_ADDRESSES
    allowed_special: Collection[SpecialAddress] = ()
    expose_anywhere: bool = True
    policy_format: PolicyFormat = PolicyFormat.NETWORKPOLICY
    max_names_per_suffix: int = MAX_NAMES_PER_SUFFIX


DEFAULT_POLICY_OPTIONS = PolicyOptions()


# The analysis keeps millions of objects alive and makes no reference cycles worth collecting:
# with 20,000 outside addresses the collector's full passes were two fifths of the time.
@no_cyclic_gc()
def analyse(
    bundle: Bundle,
    *,
    default_deny: bool = False,
    baseline: bool = False,
    node_cidrs: Sequence[str] = (),
    max_outside_addresses: int = MAX_OUTSIDE_ADDRESSES,
    allowed_special: Collection[SpecialAddress] = (),
    expose_anywhere: bool = True,
    workers: int | None = None,
    on_progress: Callable[[int], None] | None = None,
    max_capture_size: int = DEFAULT_MAX_BYTES,
    policy_format: PolicyFormat = PolicyFormat.NETWORKPOLICY,
    max_names_per_suffix: int = MAX_NAMES_PER_SUFFIX,
    capture_map: CaptureMap | None = None,
    on_step: Callable[[str], None] | None = None,
) -> Analysis:
    """:func:`observe` ``bundle``, then make its policies and render every output file (in
    memory; :func:`write_output` writes them): :func:`conclude` with the bundle's own
    :class:`ClusterContext`. ``max_capture_size``, ``workers``, ``capture_map``, ``on_progress``
    and ``on_step`` (told also before :func:`conclude`): see :func:`observe`; the other options:
    see :func:`conclude`. Raises what :func:`observe` and :func:`conclude` raise."""
    seen = observe(
        bundle,
        workers=workers,
        on_progress=on_progress,
        max_capture_size=max_capture_size,
        capture_map=capture_map,
        on_step=on_step,
    )
    options = PolicyOptions(
        default_deny=default_deny,
        baseline=baseline,
        node_cidrs=node_cidrs,
        max_outside_addresses=max_outside_addresses,
        allowed_special=allowed_special,
        expose_anywhere=expose_anywhere,
        policy_format=policy_format,
        max_names_per_suffix=max_names_per_suffix,
    )
    if on_step is not None:
        on_step(CONCLUDING)
    return conclude(seen, ClusterContext.of(seen), options)


# What ``on_step`` is told before :func:`conclude`.
CONCLUDING = "making the policies, their review, the report and the pictures"


def conclude(
    seen: Observation,
    cluster: ClusterContext,
    options: PolicyOptions = DEFAULT_POLICY_OPTIONS,
) -> Analysis:
    """Make the policies of an observation with ``options`` and render every output file (in
    memory). Traffic
    with a node (from or to a node address) is allowed with every node the snapshot knows, or
    with ``node_cidrs`` when given (``policies.node_blocks``). More than
    ``max_outside_addresses`` outside addresses on one port of a policy side become one rule
    from or to anywhere on that port. Traffic with special addresses (cloud metadata endpoints,
    link-local, multicast, ...: ``policies.SpecialAddress``) is left out of the policies and
    reported, unless its class is in ``allowed_special``. Workloads the snapshot shows exposed
    outside the cluster (``Resolver.exposures``) get ingress from anywhere on their exposed ports,
    unless ``expose_anywhere`` is False (then only from the outside addresses seen).
    ``baseline`` adds the cluster baseline (``analyser.baselines``): one Baseline-tier
    ClusterNetworkPolicy instead of (or besides) ``default_deny``'s policy per namespace, with
    each policy set written. ``policy_format``:
    NetworkPolicies, Cilium's CiliumNetworkPolicies (``analyser.cilium``; more than
    ``max_names_per_suffix`` names one label under one suffix become one ``matchPattern``), or
    both side by side in folders of their own (:func:`_folders`); each set is checked on its own.

    Raises :class:`~kernel.errors.RenderError` if output fails to render, and
    :class:`~kernel.errors.UnsafePolicies` if the policies would deny an observed flow (see
    :func:`check_safety`).
    """
    cluster_dns = cluster.cluster_dns
    exposures = cluster.exposures
    plan = synthesize(
        seen.graph,
        cluster_dns=cluster_dns,
        default_deny=options.default_deny,
        baseline=options.baseline,
        node_addresses=cluster.node_addresses,
        node_cidrs=options.node_cidrs,
        max_outside_addresses=options.max_outside_addresses,
        allowed_special=options.allowed_special,
        exposures=exposures if options.expose_anywhere else None,
        internal_networks=cluster.internal_networks,
    )
    policies = plan.policies
    # With a default-deny or the baseline, also those that keep their namespace from it.
    unselectable = unselectable_workloads(
        seen.graph, default_deny=options.default_deny or options.baseline
    )
    manifest = seen.bundle.manifest
    window = seen.window
    provenance = (
        Provenance(window.start_text, window.end_text) if window is not None else Provenance()
    )
    exposed = {p.workload: exposures[p.workload] for p in policies if p.workload in exposures}
    written_baseline: Baseline | None = None
    if options.baseline:
        from analyser.baselines import baseline_for

        written_baseline = baseline_for(
            plan,
            namespaces=seen.snapshot.namespace_names,
            cluster_dns=cluster_dns,
            nodes=node_blocks(seen.graph, cluster.node_addresses, options.node_cidrs),
        )
    reasons = explain(plan, seen.graph, cluster_dns=cluster_dns)
    files: dict[str, str] = {}
    folders = _folders(options.policy_format)
    if PolicyFormat.NETWORKPOLICY in folders:
        files |= render_policy_files(
            policies,
            default_denies=plan.default_denies,
            baseline=written_baseline,
            provenance=provenance,
            folder=folders[PolicyFormat.NETWORKPOLICY],
            reasons=reasons,
        )
    cilium_notes: tuple[str, ...] = ()
    if PolicyFormat.CILIUM in folders:
        from analyser.cilium import cilium_plan, size_notes

        cilium = cilium_plan(
            plan,
            seen.graph,
            exposures=exposures if options.expose_anywhere else None,
            apiservers=cluster.facts.apiservers,
            max_names_per_suffix=options.max_names_per_suffix,
        )
        files |= render_cilium_files(
            cilium,
            baseline=written_baseline,
            provenance=provenance,
            folder=folders[PolicyFormat.CILIUM],
            reasons=explain_cilium(cilium, seen.graph, cluster_dns=cluster_dns),
        )
        cilium_notes = size_notes(cilium)
    # Each set read back once, as verify reads files: checked, then compared and reviewed.
    read_back = {
        folder: parse_policy_texts(
            {path: text for path, text in files.items() if path.startswith(folder)}
        ).policies
        for folder in folders.values()
    }
    for policy_set in read_back.values():
        check_safety(
            policy_set,
            seen.graph,
            cluster.facts,
            left_out=plan.left_out,
            rules_left_out=plan.rules_left_out,
        )
    first_folder = next(iter(folders.values()))
    # Against the newest snapshot's NetworkPolicies (what the cluster has now): the first set
    # written, the NetworkPolicies when there are both.
    kind = (
        "CiliumNetworkPolicy" if options.policy_format is PolicyFormat.CILIUM else "NetworkPolicy"
    )
    adoption = adopt(
        (
            (f"snapshot: NetworkPolicy {p.display_name}", p.raw)
            for p in seen.snapshot.network_policies
        ),
        read_back[first_folder],
        {p.workload: policy_name(kind, p.namespace, p.name) for p in policies},
        cluster.facts.workloads,
        nodes=cluster.node_addresses,
    )
    infrastructure = infrastructure_ids(
        seen.graph,
        dns_workloads=cluster_dns.workloads,
        node_local_dns=[cache.cidr.partition("/")[0] for cache in cluster_dns.node_local],
    )
    picture = picture_of(seen.graph, infrastructure=infrastructure)
    files[GRAPH_DOT] = render_dot(picture)
    drawn = graph_svg(picture, files[GRAPH_DOT])
    if drawn.svg is not None:
        files[GRAPH_SVG] = drawn.svg
    notes: tuple[str, ...] = (drawn.note,) if drawn.note is not None else ()
    notes += cilium_notes
    if options.baseline:
        notes += _baseline_notes(written_baseline, seen.snapshot)
    uncovered = uncovered_cronjobs(
        cluster.cronjobs,
        [w.window for w in seen.capture_windows if w.window is not None],
        seen={
            *(end for edge in seen.graph.edges for end in (edge.client, edge.server)),
            *(str(ref) for ref in seen.scope.workloads),
        },
    )
    facts = ReportFacts(
        source=seen.source,
        provenance=provenance,
        producer=manifest.producer if manifest is not None else None,
        capture_mode=manifest.capture_mode if manifest is not None else None,
        captures_read=len(seen.traffic.reports),
        packets=seen.traffic.packets,
        flows=len(seen.flows),
        foreign_flows=sum(seen.traffic.foreign.values()),
        evidence_counts=seen.evidence_counts,
        file_problems=seen.problems,
        policy_files=tuple(p for p in files if p.endswith(".yaml")),
        workload_policies={
            p.workload: first_folder + policy_path(p.namespace, p.name) for p in policies
        },
        unselectable=unselectable,
        unselectable_reasons=unselectable_reasons(seen.graph, unselectable),
        skipped_packets=seen.traffic.skipped,
        node_local_dns=tuple(cache.cidr.partition("/")[0] for cache in cluster_dns.node_local),
        notes=notes,
        exposures=exposed,
        exposed_anywhere=options.expose_anywhere,
        left_out=plan.left_out,
        rules_left_out=sides_left_out(plan.rules_left_out),
        selector_warnings=selector_warnings(seen.graph),
        unvouched=seen.graph.unvouched_pairs(),
        coverage=seen.coverage,
        adoption=adoption,
        rings=seen.rings,
        windows=seen.windows,
        uncovered_cronjobs=uncovered,
    )
    files[REPORT] = render_report(facts, seen.graph)
    drawings = (
        (
            Drawing(None, drawn.picture, drawn.svg),
            *draw_namespaces(seen.graph, infrastructure, picture),
        )
        if drawn.svg is not None and drawn.picture is not None
        else ()
    )
    review = review_of(
        seen.graph,
        source=seen.source,
        window=provenance.window or "unknown",
        drawings=drawings,
        # One set is reviewed: with both formats, the NetworkPolicies (the first folder).
        policy_files={
            name: text
            for name, text in files.items()
            if name.endswith(".yaml") and name.startswith(first_folder)
        },
        policies=read_back[first_folder],
        cluster=cluster.facts,
    )
    files[REPORT_HTML] = render_review(review)
    return Analysis(
        **{f.name: getattr(seen, f.name) for f in fields(Observation)},
        plan=plan,
        unselectable=unselectable,
        files=dict(sorted(files.items())),
        notes=notes,
        exposures=exposed,
        exposed_anywhere=options.expose_anywhere,
        adoption=adoption,
        baseline=written_baseline,
        uncovered_cronjobs=uncovered,
    )


def _baseline_notes(baseline: Baseline | None, snapshot: Snapshot) -> tuple[str, ...]:
    """What the user must know about the cluster baseline: that none was written, that the
    snapshot's namespaces are only those its objects name, that an exempt label keeps a captured
    namespace out of it."""
    from analyser.baselines import EXEMPT_LABEL, EXEMPT_VALUE, labelled_exempt

    if baseline is None:
        return (
            "no cluster baseline: no namespace could be isolated (see the workloads without "
            "a policy)",
        )
    notes = []
    if not snapshot.namespaces:
        notes.append(
            "the snapshot lists no Namespace objects: the cluster baseline leaves out only the "
            "namespaces its other objects are in, and covers (denies) any other namespace that "
            "exists; add the Namespaces (kubectl get namespaces -o json) to the snapshot"
        )
    labels = {ns.name: ns.labels for ns in snapshot.namespaces}
    notes += [
        f"namespace {namespace} is labelled {EXEMPT_LABEL}={EXEMPT_VALUE}: the cluster baseline "
        "does not cover it until the label is removed"
        for namespace in labelled_exempt(baseline, labels)
    ]
    return tuple(notes)


@dataclass(frozen=True, slots=True)
class DrawnGraph:
    """graph.svg's text (None: left out), and what the report says about it (None: nothing)."""

    svg: str | None
    note: str | None = None
    picture: Picture | None = None  # what svg draws: the picture, or its namespace summary


def graph_svg(picture: Picture, dot: str) -> DrawnGraph:
    """graph.svg of ``picture`` (its DOT text: ``dot``). A picture too big to draw, or one
    Graphviz cannot lay out (its ranking fails on some clusters), is drawn one node per namespace
    (``pictures.namespace_picture``), or left out when even that is too big or fails: the
    picture is a convenience, it never costs the policies. No note when Graphviz is not
    installed (the CLI's help says graph.svg needs it)."""
    if shutil.which("dot") is None:
        return DrawnGraph(None)
    nodes, edges = len(picture.nodes), len(picture.edges)
    if nodes > MAX_SVG_NODES or edges > MAX_SVG_EDGES:
        return _drawn_by_namespace(
            picture,
            f"the graph has {nodes:,} nodes and {edges:,} edges to draw (drawn up to "
            f"{MAX_SVG_NODES:,} and {MAX_SVG_EDGES:,})",
        )
    try:
        return DrawnGraph(render_svg(dot), None, picture)
    except RenderError as error:
        return _drawn_by_namespace(picture, f"{error} with every workload")


def _drawn_by_namespace(picture: Picture, why: str) -> DrawnGraph:
    summary = namespace_picture(picture)
    if len(summary.nodes) > MAX_SVG_NODES or len(summary.edges) > MAX_SVG_EDGES:
        return DrawnGraph(
            None,
            f"{GRAPH_SVG} not drawn: {why}, and {len(summary.nodes):,} namespaces and groups are "
            f"too many too; {GRAPH_DOT} is written",
        )
    try:
        svg = render_svg(render_dot(summary))
    except RenderError as error:
        return DrawnGraph(None, f"{GRAPH_SVG} not drawn: {error}; {GRAPH_DOT} is written")
    note = f"{GRAPH_SVG} shows one box per namespace: {why}; {GRAPH_DOT} has every workload"
    return DrawnGraph(svg, note, summary)


def draw_namespaces(
    graph: WorkloadGraph, infrastructure: Collection[str], picture: Picture
) -> tuple[Drawing, ...]:
    """Each namespace of ``picture`` drawn on its own (``pictures.namespace_part``: its
    workloads and their peers), for report.html to show when the namespace is chosen: when
    there are 2 to MAX_NAMESPACE_PICTURES namespaces. A namespace too big to draw, or one
    Graphviz fails on, has none (the page fades the whole picture instead)."""
    namespaces = [group.label for group in picture.groups if group.kind is GroupKind.NAMESPACE]
    if shutil.which("dot") is None or not 2 <= len(namespaces) <= MAX_NAMESPACE_PICTURES:
        return ()
    drawings = []
    for index, namespace in enumerate(namespaces, start=1):
        part = picture_of(namespace_part(graph, namespace), infrastructure=infrastructure)
        if len(part.nodes) > MAX_SVG_NODES or len(part.edges) > MAX_SVG_EDGES:
            continue
        prefix = f"v{index}_"
        try:
            drawings.append(Drawing(namespace, part, render_svg(render_dot(part, prefix)), prefix))
        except RenderError:
            continue
    return tuple(drawings)


def render_svg(dot: str) -> str:
    """``dot -Tsvg`` of a DOT text; RenderError when Graphviz is missing, fails or takes longer
    than ``DOT_TIMEOUT``."""
    binary = shutil.which("dot")
    if binary is None:
        raise RenderError("Graphviz (dot) is not installed")
    try:
        result = subprocess.run(
            [binary, "-Tsvg"],
            input=dot,
            capture_output=True,
            text=True,
            timeout=DOT_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        raise RenderError(f"Graphviz took longer than {DOT_TIMEOUT:.0f}s on {GRAPH_DOT}") from error
    if result.returncode != 0:
        # Its first line says what failed; the rest is its internal state ("%0 7" lines).
        said = (result.stderr.strip().splitlines() or ["no message"])[0]
        raise RenderError(f"Graphviz could not render {GRAPH_DOT}: {said}")
    return result.stdout


# -- writing ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EarlierOutput:
    """What an earlier run wrote into a directory, from its marker: each file with the sha256 of
    what was written (None for files listed by an earlier version's marker, which kept no
    hashes), and the marker files found."""

    files: Mapping[str, str | None]
    markers: tuple[Path, ...]


def _file_digest(path: Path) -> str:
    """The sha256 of a file's bytes, read a block at a time: report.html of a day's bundle is
    tens of megabytes, which as text would take up to four times that."""
    with path.open("rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


def _earlier_output(out: Path) -> EarlierOutput:
    """What an earlier run wrote into ``out``, from its marker (or an older version's)."""
    files: dict[str, str | None] = {}
    markers = []
    for marker in (out / LEGACY_OUTPUT_MARKER, out / OUTPUT_MARKER):
        if not marker.is_file():
            continue
        markers.append(marker)
        try:
            listed = json.loads(marker.read_text(encoding="utf-8"))["files"]
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
            raise OutputError(
                f"{marker}: unreadable ({error!r}); remove it or pass --force"
            ) from error
        if isinstance(listed, list):  # the legacy marker: names only
            files.update((path, None) for path in listed if isinstance(path, str))
        elif isinstance(listed, dict):
            files.update(
                (path, digest)
                for path, digest in listed.items()
                if isinstance(path, str) and isinstance(digest, str)
            )
    return EarlierOutput(files, tuple(markers))


def _present(out: Path) -> set[str]:
    return {
        path.relative_to(out).as_posix()
        for path in out.rglob("*")
        if not path.is_dir() and path.name not in (OUTPUT_MARKER, LEGACY_OUTPUT_MARKER)
    }


def _edited(out: Path, earlier: EarlierOutput, present: set[str]) -> list[str]:
    """The files an earlier run wrote that have been changed since (by hand, most likely)."""
    edited = []
    for path, digest in sorted(earlier.files.items()):
        if digest is None or path not in present:
            continue
        try:
            if _file_digest(out / path) != digest:  # of the UTF-8 bytes written
                edited.append(path)
        except OSError:
            edited.append(path)
    return edited


def _listed(paths: Sequence[str]) -> str:
    return ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")


def _safe_relative(path: str) -> PurePosixPath:
    pure = PurePosixPath(path)
    if pure.is_absolute() or ".." in pure.parts or not pure.parts:
        raise OutputError(f"refusing to write {path!r}: not a path inside the output directory")
    return pure


def write_output(files: Mapping[str, str], out: Path, *, force: bool = False) -> tuple[Path, ...]:
    """Write ``files`` under ``out`` and return their paths.

    ``out`` may be missing, empty, or hold an earlier run's output (files that run wrote and no
    longer needed are removed, so the ``Kustomization`` stays true). Anything else in it, or a
    file of the earlier output changed since it was written (a hand edit), is refused with
    :class:`OutputError` unless ``force``; forced, other files are left alone and edited ones
    are overwritten. What was written is recorded, with each file's sha256, in
    ``OUTPUT_MARKER``: a file without a manifest's suffix, so that no tool reading the folder
    as manifests (``kubectl apply -f``/``-R``, Argo CD, kubeconform) trips over it.
    """
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: exists and is not a directory")
    earlier = _earlier_output(out) if out.is_dir() else EarlierOutput({}, ())
    present = _present(out) if out.is_dir() else set()
    foreign = sorted(present - earlier.files.keys())
    if foreign and not force:
        raise OutputError(
            f"{out}: holds files netpol-sniffer did not write ({_listed(foreign)}); choose an "
            "empty or new directory, or pass --force to write beside them"
        )
    edited = _edited(out, earlier, present)
    if edited and not force:
        raise OutputError(
            f"{out}: {_listed(edited)} changed since netpol-sniffer wrote "
            f"{'it' if len(edited) == 1 else 'them'}; keep the edits elsewhere (this run would "
            "overwrite them) or pass --force to overwrite"
        )
    targets = {path: _safe_relative(path) for path in files}
    written: list[Path] = []
    try:
        for stale in sorted(earlier.files.keys() - set(files)):
            _remove(out, _safe_relative(stale))
        digests = {}
        for path, text in files.items():
            target = out.joinpath(*targets[path].parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            temporary = target.with_name(f".{target.name}.tmp")
            data = text.encode("utf-8")  # once per file, for writing and its digest
            temporary.write_bytes(data)
            digests[path] = hashlib.sha256(data).hexdigest()
            os.replace(temporary, target)
            written.append(target)
        marker = {"generated_by": "netpol-sniffer", "files": dict(sorted(digests.items()))}
        (out / OUTPUT_MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        for legacy in earlier.markers:
            if legacy.name != OUTPUT_MARKER:
                legacy.unlink()
    except OSError as error:
        raise OutputError(f"{out}: cannot write: {error}") from error
    return tuple(written)


def _remove(out: Path, relative: PurePosixPath) -> None:
    """Remove a file an earlier run wrote, and the folders it leaves empty."""
    target = out.joinpath(*relative.parts)
    target.unlink(missing_ok=True)
    parent = target.parent
    while parent != out and parent.is_dir() and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent
