"""What report.html shows a reviewer: the picture as drawn (its shapes by their SVG ids and the
graph nodes and edges behind each), every connection with its flows and the rules that allow it,
every workload with its policy files and what they allow that was never observed.

Pure: the graph, the picture, the rendered policy files and verify's answers in, plain data out
(:meth:`Review.as_json`, which rendering embeds in the page). The rules behind a connection are
found as verify finds what a policy set allows (``evaluation.PolicySet.rules_allowing`` on the
connections ``replaying.observed_on_edge`` replays), and shown as the lines of the policy file
that hold them; "allowed but not observed" is verify's list (``verifying.unobserved_allowances``).

Every text from input leaves through ``texts.inert`` (one printable line): the page puts it in
the document as text, never as markup (see ``templates/report/review.js``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from xml.etree import ElementTree

import yaml

from analyser import documents
from analyser.evaluation import Address, Direction, PolicySet, policy_name
from analyser.graphs import (
    ADDRESS_ROLES,
    LISTED_FLOWS,
    GraphEdge,
    NodeRole,
    WorkloadGraph,
    ports_text,
)
from analyser.peers import PortSpec
from analyser.pictures import GroupKind, Picture, drawing_ids
from analyser.replaying import ClusterFacts, observed_on_edge, verification_inputs
from analyser.texts import inert
from analyser.verifying import Allowance, unobserved_allowances
from kernel.bundles import Window

# An edge's panel lists this many of its flows per target port, then how many more there were
# (report.md's table has them all by edge; the capture files each one). The graph keeps them.
MAX_LISTED_FLOWS = LISTED_FLOWS

# A workload's connections with single addresses (outside the cluster, or unresolved): the page
# reviews the first this many of one workload in one direction, in the graph's order, and sums
# up the others (a public ingress has thousands of clients, a forged capture any number; each
# connection reviewed takes a few KB of the page). report.md lists them by port.
MAX_ADDRESS_EDGES = 50

# verify's allowed-but-never-observed is worked out up to this many pairs of its universe (every
# ordered pair of workloads with a captured one, each captured workload with each address block,
# both ways): about 5 s at verify's rate (bench/verify_universe.py); past it the page says so.
MAX_CHECKED_PAIRS = 250_000

_SVG = "http://www.w3.org/2000/svg"
_XLINK = "http://www.w3.org/1999/xlink"
# What Graphviz draws with: anything else in an SVG is not put into the page.
_SVG_TAGS = frozenset(
    f"{{{_SVG}}}{tag}"
    for tag in ("svg", "g", "title", "polygon", "polyline", "path", "ellipse", "text", "a")
)


@dataclass(frozen=True, slots=True)
class Drawing:
    """A picture as Graphviz drew it: graph.svg (``namespace`` None), or one namespace's own
    (``pictures.namespace_part``), its shapes' ids made with ``prefix``."""

    namespace: str | None
    picture: Picture
    svg: str
    prefix: str = ""


@dataclass(frozen=True, slots=True)
class View:
    """A drawing as the page holds it: the SVG made fit for it (:func:`svg_for_page`), and its
    shapes by SVG id with the edges (indices into ``Review.edges``) and graph nodes behind each:
    plain JSON."""

    namespace: str | None
    svg: str
    shapes: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class RuleLines:
    """A rule that allows a connection, where it is written: lines ``first``..``last``
    (1-based, the comment lines just above it included) of the policy file ``file``."""

    direction: Direction
    subject: str  # the workload whose side it is
    policy: str  # "ns/name"
    file: str
    first: int
    last: int


@dataclass(frozen=True, slots=True)
class FlowLine:
    client: str  # ip:port, as the client's capture saw it (a Service's address for its traffic)
    server: str
    service: str | None
    first_seen: str
    last_seen: str
    packets: int
    bytes: int
    evidence: str


@dataclass(frozen=True, slots=True)
class PortReview:
    """One target port of a connection: what was observed and why the policies allow it."""

    port: PortSpec
    flows: int
    packets: int
    bytes: int
    first_seen: str
    last_seen: str
    evidence: tuple[str, ...]
    services: tuple[str, ...]
    rules: tuple[RuleLines, ...]
    notes: tuple[str, ...]  # a side without a rule for it, and why
    listed: tuple[FlowLine, ...]
    unlisted: int  # flows past MAX_LISTED_FLOWS


@dataclass(frozen=True, slots=True)
class EdgeReview:
    client: str  # graph node ids
    server: str
    client_label: str
    server_label: str
    ports: tuple[PortReview, ...]


@dataclass(frozen=True, slots=True)
class FoldedEdges:
    """A workload's connections with single addresses in one direction past the first
    :data:`MAX_ADDRESS_EDGES`: summed up, not reviewed one by one."""

    subject: str  # the workload's graph node id
    subject_label: str
    direction: Direction  # egress: it connected to the addresses; ingress: they to it
    edges: int
    flows: int
    packets: int
    bytes: int
    ports: str  # their target ports (``graphs.ports_text``)


@dataclass(frozen=True, slots=True)
class Unobserved:
    """What a workload's side of the policies allows with ``peer`` that was never observed."""

    direction: Direction  # egress: the workload may connect to peer; ingress: peer to it
    peer: str
    ports: str  # e.g. "53/TCP", "all UDP ports"
    observed: str  # the ports that were observed with that peer ("" for none)


@dataclass(frozen=True, slots=True)
class WorkloadReview:
    id: str
    namespace: str
    kind: str
    name: str
    in_scope: bool
    files: tuple[str, ...]  # the policy files of the policies that select it
    unobserved: tuple[Unobserved, ...]


@dataclass(frozen=True, slots=True)
class Review:
    source: str
    window: str
    namespaces: tuple[str, ...]
    # graph.svg (the namespace summary past the drawing limits), then each namespace's own
    # picture; none when Graphviz drew nothing.
    views: tuple[View, ...]
    workloads: tuple[WorkloadReview, ...]
    edges: tuple[EdgeReview, ...]
    files: Mapping[str, str]  # the policy files, by name
    unchecked: str = ""  # why the unobserved allowances were not worked out ("": they were)
    folded: tuple[FoldedEdges, ...] = ()  # connections with single addresses not in ``edges``

    def as_json(self) -> dict[str, Any]:
        """The page's data (plain JSON types): rendering embeds it, the page's script reads it."""
        return _review_json(self)


# -- the rules' lines ----------------------------------------------------------------------------


def _scalar(node: yaml.Node, key: str) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for name, value in node.value:
            if isinstance(name, yaml.ScalarNode) and name.value == key:
                return value  # type: ignore[no-any-return]
    return None


# The kinds whose rules are lists under spec.ingress and spec.egress, in the order evaluated.
_RULE_KINDS = ("NetworkPolicy", "CiliumNetworkPolicy")


def rule_lines(text: str) -> dict[tuple[str, Direction, int], tuple[int, int]]:
    """Where each rule of each NetworkPolicy (or CiliumNetworkPolicy) in ``text`` (a policy
    file) is written: (policy, direction, index) → (first, last) line, 1-based, the policy named
    as ``evaluation.policy_name`` names it; a rule's first line is the first of the comment
    lines just above it, which say why it is there."""
    lines = text.split("\n")
    found = {}
    for document in yaml.compose_all(text, Loader=documents.RENDERED_TEXT_LOADER):
        kind = _scalar(document, "kind") if document is not None else None
        if not isinstance(kind, yaml.ScalarNode) or kind.value not in _RULE_KINDS:
            continue  # a ClusterNetworkPolicy (the baseline) is shown whole, not by rule
        metadata = _scalar(document, "metadata")
        name, namespace = _scalar(metadata, "name"), _scalar(metadata, "namespace")  # type: ignore[arg-type]
        spec = _scalar(document, "spec") if document is not None else None
        if name is None or spec is None:
            continue
        for direction in Direction:
            rules = _scalar(spec, str(direction))
            if not isinstance(rules, yaml.SequenceNode):
                continue
            for index, rule in enumerate(rules.value):
                first = rule.start_mark.line  # 0-based: the line of its "- "
                while first > 0 and lines[first - 1].lstrip().startswith("#"):
                    first -= 1
                # It ends where the next item (or key) starts: before that line when only
                # indentation precedes it there; the next rule's comments are not its own.
                end = rule.end_mark
                last = end.line if lines[end.line][: end.column].strip() else end.line - 1
                while last > first and (not lines[last].strip() or lines[last].lstrip()[0] == "#"):
                    last -= 1
                policy = policy_name(
                    kind.value, namespace.value if namespace else "default", name.value
                )
                found[(policy, direction, index)] = (first + 1, last + 1)
    return found


# -- connections ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _PolicyFiles:
    """The policy files and where their rules are."""

    texts: Mapping[str, str]
    file_of: Mapping[str, str]  # policy (evaluation.policy_name) → file
    lines: Mapping[tuple[str, Direction, int], tuple[int, int]]

    @classmethod
    def of(cls, texts: Mapping[str, str]) -> _PolicyFiles:
        file_of, lines = {}, {}
        for file, text in sorted(texts.items()):
            found = rule_lines(text)
            lines.update(found)
            file_of.update({policy: file for policy, _, _ in found})
            for document in yaml.load_all(text, Loader=documents.RENDERED_TEXT_LOADER):
                metadata = document.get("metadata", {}) if isinstance(document, dict) else {}
                if "name" in metadata:
                    namespace = str(metadata.get("namespace") or "default")
                    kind = str(document.get("kind", ""))
                    file_of[policy_name(kind, namespace, str(metadata["name"]))] = file
        return cls(texts, file_of, lines)

    def file(self, policy: str) -> str:
        return self.file_of.get(policy, "")


def _port_review(
    graph: WorkloadGraph,
    client: str,
    server: str,
    port: PortSpec,
    cluster: ClusterFacts,
    policies: PolicySet,
    files: _PolicyFiles,
) -> PortReview:
    stats = graph.edge(client, server).ports[port]
    rules: dict[RuleLines, None] = {}
    notes: dict[str, None] = {}
    for observed in observed_on_edge(graph, client, server, port, cluster):
        found = policies.rules_allowing(
            observed.client, observed.server, observed.protocol, observed.port
        )
        for rule in found:
            first, last = files.lines[(rule.policy, rule.direction, rule.index)]
            rules[
                RuleLines(
                    rule.direction,
                    inert(rule.subject),
                    inert(rule.policy),
                    files.file(rule.policy),
                    first,
                    last,
                )
            ] = None
        for verdict in policies.sides(observed.client, observed.server):
            if verdict is None or any(r.direction is verdict.direction for r in found):
                continue
            direction = verdict.direction
            subject = inert(verdict.subject)
            peer = observed.server if direction is Direction.EGRESS else observed.client
            if not verdict.policies:
                notes[f"{direction} at {subject}: no policy selects it, nothing is blocked"] = None
            elif (
                isinstance(peer, Address)
                and peer.node is not None
                and peer.node == verdict.subject.node
            ):
                notes[
                    f"{direction} at {subject}: allowed because it is its own node's traffic "
                    "(NetworkPolicy never blocks a pod's own node)"
                ] = None
            elif verdict.ports.contains(observed.protocol, observed.port):
                by = ", ".join(inert(policy) for policy in verdict.policies)
                notes[f"{direction} at {subject}: allowed by {by}"] = None
            elif direction not in observed.vouched:
                notes[
                    f"{direction} at {subject}: no rule, on purpose: its own capture did not see "
                    "this traffic (report.md, 'traffic one side did not vouch for')"
                ] = None
            else:
                notes[
                    f"{direction} at {subject}: no rule, on purpose: left out of the policies "
                    "(report.md says why)"
                ] = None
    flows = graph.flows_on_edge(client, server, port)
    listed = tuple(
        FlowLine(
            client=inert(attribution.flow.client),
            server=inert(attribution.flow.server),
            service=inert(attribution.service) if attribution.service else None,
            first_seen=Window.text(attribution.flow.first_seen),
            last_seen=Window.text(attribution.flow.last_seen),
            packets=attribution.flow.packets,
            bytes=attribution.flow.bytes,
            evidence=str(attribution.flow.evidence),
        )
        for attribution in flows[:MAX_LISTED_FLOWS]
    )
    return PortReview(
        port=port,
        flows=stats.flows,
        packets=stats.packets,
        bytes=stats.bytes,
        first_seen=Window.text(stats.first_seen),
        last_seen=Window.text(stats.last_seen),
        evidence=tuple(sorted(str(e) for e in stats.evidence)),
        services=tuple(sorted(inert(s) for s in stats.services)),
        rules=tuple(rules),
        notes=tuple(notes),
        listed=listed,
        unlisted=max(0, sum(a.connections for a in flows) - MAX_LISTED_FLOWS),
    )


@dataclass(frozen=True, slots=True)
class _EdgePlaces:
    """Where each graph edge (by its ends) is in the review: reviewed (its index in
    ``Review.edges``), or summed up (its index in ``Review.folded``)."""

    reviewed: Mapping[tuple[str, str], int]
    folded: Mapping[tuple[str, str], int]


# A workload side (its graph node id) and a direction.
_Side = tuple[str, Direction]


def _edge_places(
    graph: WorkloadGraph,
) -> tuple[list[GraphEdge], dict[_Side, list[GraphEdge]], _EdgePlaces]:
    """The graph's edges to review, in its order, and those summed up, by workload side and
    direction (:data:`MAX_ADDRESS_EDGES`)."""
    reviewed: list[GraphEdge] = []
    folded: dict[_Side, list[GraphEdge]] = {}
    by_side: dict[_Side, int] = defaultdict(int)
    for edge in graph.edges:
        client, server = graph.node(edge.client).role, graph.node(edge.server).role
        if server in ADDRESS_ROLES and client not in ADDRESS_ROLES:
            side = (edge.client, Direction.EGRESS)
        elif client in ADDRESS_ROLES and server not in ADDRESS_ROLES:
            side = (edge.server, Direction.INGRESS)
        else:
            reviewed.append(edge)
            continue
        if by_side[side] < MAX_ADDRESS_EDGES:
            by_side[side] += 1
            reviewed.append(edge)
        else:
            folded.setdefault(side, []).append(edge)
    places = _EdgePlaces(
        {(edge.client, edge.server): index for index, edge in enumerate(reviewed)},
        {
            (edge.client, edge.server): index
            for index, edges in enumerate(folded.values())
            for edge in edges
        },
    )
    return reviewed, folded, places


def _edge_reviews(
    graph: WorkloadGraph,
    edges: Iterable[GraphEdge],
    cluster: ClusterFacts,
    policies: PolicySet,
    files: _PolicyFiles,
) -> tuple[EdgeReview, ...]:
    return tuple(
        EdgeReview(
            client=inert(edge.client),
            server=inert(edge.server),
            client_label=inert(graph.node(edge.client).label),
            server_label=inert(graph.node(edge.server).label),
            ports=tuple(
                _port_review(graph, edge.client, edge.server, port, cluster, policies, files)
                for port in sorted(edge.ports)
            ),
        )
        for edge in edges
    )


def _folded_edges(graph: WorkloadGraph, side: _Side, edges: Sequence[GraphEdge]) -> FoldedEdges:
    """One workload side's connections with single addresses in one direction, summed up."""
    subject, direction = side
    stats = [port for edge in edges for port in edge.ports.values()]
    return FoldedEdges(
        subject=inert(subject),
        subject_label=inert(graph.node(subject).label),
        direction=direction,
        edges=len(edges),
        flows=sum(port.flows for port in stats),
        packets=sum(port.packets for port in stats),
        bytes=sum(port.bytes for port in stats),
        ports=ports_text(sorted({port for edge in edges for port in edge.ports})),
    )


# -- workloads -----------------------------------------------------------------------------------


def _workload_reviews(
    graph: WorkloadGraph,
    cluster: ClusterFacts,
    policies: PolicySet,
    files: _PolicyFiles,
    allowances: Iterable[Allowance],
) -> tuple[WorkloadReview, ...]:
    unobserved: dict[str, list[Unobserved]] = defaultdict(list)
    for allowance in allowances:
        observed = str(allowance.observed) if allowance.observed else ""
        unobserved[allowance.client].append(
            Unobserved(
                Direction.EGRESS, inert(allowance.server), str(allowance.unobserved), observed
            )
        )
        unobserved[allowance.server].append(
            Unobserved(
                Direction.INGRESS, inert(allowance.client), str(allowance.unobserved), observed
            )
        )
    reviews = []
    for node in graph.with_role(NodeRole.WORKLOAD):
        assert node.workload is not None  # a workload node has its workload (GraphNode)
        selecting: dict[str, None] = {}
        if not (node.workload.host_network or node.id in cluster.host_network):
            facts = cluster.facts_for(node.workload)
            for direction in Direction:
                for policy in policies.selecting(facts, direction):
                    selecting[files.file(str(policy))] = None
        ref = node.workload.ref
        reviews.append(
            WorkloadReview(
                id=inert(node.id),
                namespace=inert(ref.namespace),
                kind=inert(ref.kind),
                name=inert(ref.name),
                in_scope=node.in_scope,
                files=tuple(sorted(file for file in selecting if file)),
                unobserved=tuple(unobserved.get(node.id, ())),
            )
        )
    return tuple(reviews)


# -- the picture ---------------------------------------------------------------------------------


def svg_for_page(svg: str) -> str:
    """graph.svg as it goes into the page: parsed (well-formed, or ElementTree raises), only the
    elements Graphviz draws with, no event handler or link attribute, written again by
    ElementTree (which escapes every text). Its names are in text and titles: inert there."""
    ElementTree.register_namespace("", _SVG)
    ElementTree.register_namespace("xlink", _XLINK)
    root = ElementTree.fromstring(svg)
    for parent in root.iter():
        for child in list(parent):
            if child.tag not in _SVG_TAGS:
                parent.remove(child)
        for attribute in list(parent.attrib):
            local = attribute.rpartition("}")[2].lower()
            if local.startswith("on") or local == "href":
                del parent.attrib[attribute]
    return ElementTree.tostring(root, encoding="unicode")


def _namespace_of(graph: WorkloadGraph, node_id: str) -> str | None:
    node = graph.node(node_id)
    return node.workload.ref.namespace if node.workload is not None else None


def _picture_json(
    picture: Picture, graph: WorkloadGraph, prefix: str, places: _EdgePlaces
) -> dict[str, Any]:
    """The picture's shapes by SVG id: what each stands for (an edge: the connections it draws,
    reviewed or summed up), and the namespaces each touches (the page's namespace filter keeps a
    shape when one of them is chosen)."""
    ids = drawing_ids(picture, prefix)
    touches: dict[str, set[str]] = defaultdict(set)  # picture node or group id → namespaces
    edges = {}
    for edge, edge_id in zip(picture.edges, ids.edges, strict=True):
        namespaces = {
            namespace
            for member in edge.members
            for end in member
            if (namespace := _namespace_of(graph, end)) is not None
        }
        touches[edge.client] |= namespaces
        touches[edge.server] |= namespaces
        edges[edge_id] = {
            "label": [inert(line) for line in edge.label],
            "infrastructure": edge.infrastructure,
            "edges": sorted(
                places.reviewed[member] for member in edge.members if member in places.reviewed
            ),
            "namespaces": sorted(inert(n) for n in namespaces),
        }
        folded = {places.folded[member] for member in edge.members if member in places.folded}
        if folded:  # only then: the page of a graph with nothing summed up stays as it was
            edges[edge_id]["folded"] = sorted(folded)
    nodes = {}
    for node in picture.nodes:
        own = {n for member in node.members if (n := _namespace_of(graph, member)) is not None}
        nodes[ids.nodes[node.id]] = {
            "title": inert(node.title),
            "detail": inert(node.detail),
            "members": [inert(member) for member in node.members],
            "namespaces": sorted(inert(n) for n in own | touches[node.id]),
        }
        touches[node.group] |= own | touches[node.id]
    groups = {
        ids.groups[group.id]: {
            "label": inert(group.label),
            "namespace": inert(group.label) if group.kind is GroupKind.NAMESPACE else None,
            "namespaces": sorted(inert(n) for n in touches[group.id]),
        }
        for group in picture.groups
    }
    return {"nodes": nodes, "groups": groups, "edges": edges}


# -- the review ----------------------------------------------------------------------------------


def review_of(
    graph: WorkloadGraph,
    *,
    source: str,
    window: str,
    drawings: Sequence[Drawing],
    policy_files: Mapping[str, str],
    policies: PolicySet,
    cluster: ClusterFacts,
) -> Review:
    """What report.html shows for an analysis: ``policy_files`` (the rendered policies, by file
    name), ``policies`` (those files read back as verify reads them:
    ``policysets.parse_policy_texts``) evaluated against ``graph`` over ``cluster``
    (``replaying.cluster_facts``, merged for several bundles) as verify evaluates them
    (:func:`review`)."""
    observed, universe = verification_inputs(policies, graph, cluster)
    pairs = len(universe.pairs())
    if pairs > MAX_CHECKED_PAIRS:
        allowances: list[Allowance] | None = None
    else:
        allowances = unobserved_allowances(policies, observed, universe)
    return review(
        graph,
        source=source,
        window=window,
        drawings=drawings,
        policy_files=policy_files,
        policies=policies,
        cluster=cluster,
        allowances=allowances,
        unchecked=(
            f"not worked out here: {pairs:,} pairs of workloads and address blocks to evaluate "
            f"(up to {MAX_CHECKED_PAIRS:,} are); netpol-sniffer verify BUNDLE POLICIES lists them"
            if allowances is None
            else ""
        ),
    )


def review(
    graph: WorkloadGraph,
    *,
    source: str,
    window: str,
    drawings: Sequence[Drawing],
    policy_files: Mapping[str, str],
    policies: PolicySet,
    cluster: ClusterFacts,
    allowances: Iterable[Allowance] | None,
    unchecked: str = "",
) -> Review:
    """What report.html shows: ``graph`` with its ``drawings`` (graph.svg first, then the
    namespaces' own; none when Graphviz drew nothing), ``policy_files`` compiled as
    ``policies``, the cluster's facts (``replaying.cluster_facts``) and verify's ``allowances``
    (``verifying.unobserved_allowances``; None: not worked out, ``unchecked`` says why)."""
    files = _PolicyFiles.of(policy_files)
    workloads = _workload_reviews(graph, cluster, policies, files, allowances or ())
    reviewed, folded, places = _edge_places(graph)
    return Review(
        source=inert(source),
        window=inert(window),
        namespaces=tuple(sorted({w.namespace for w in workloads})),
        views=tuple(
            View(
                inert(drawing.namespace) if drawing.namespace is not None else None,
                svg_for_page(drawing.svg),
                _picture_json(drawing.picture, graph, drawing.prefix, places),
            )
            for drawing in drawings
        ),
        workloads=workloads,
        edges=_edge_reviews(graph, reviewed, cluster, policies, files),
        files=dict(sorted(policy_files.items())),
        unchecked=unchecked if allowances is None else "",
        folded=tuple(_folded_edges(graph, side, edges) for side, edges in folded.items()),
    )


def _rule_json(rule: RuleLines) -> dict[str, Any]:
    return {
        "direction": str(rule.direction),
        "subject": rule.subject,
        "policy": rule.policy,
        "file": rule.file,
        "first": rule.first,
        "last": rule.last,
    }


def _port_json(port: PortReview) -> dict[str, Any]:
    return {
        "port": f"{port.port.protocol}/{port.port.port}",
        "flows": port.flows,
        "packets": port.packets,
        "bytes": port.bytes,
        "first_seen": port.first_seen,
        "last_seen": port.last_seen,
        "evidence": list(port.evidence),
        "services": list(port.services),
        "rules": [_rule_json(rule) for rule in port.rules],
        "notes": list(port.notes),
        "listed": [
            {
                "client": flow.client,
                "server": flow.server,
                "service": flow.service,
                "first_seen": flow.first_seen,
                "last_seen": flow.last_seen,
                "packets": flow.packets,
                "bytes": flow.bytes,
                "evidence": flow.evidence,
            }
            for flow in port.listed
        ],
        "unlisted": port.unlisted,
    }


def _review_json(review: Review) -> dict[str, Any]:
    return {
        "source": review.source,
        "window": review.window,
        "namespaces": list(review.namespaces),
        "views": [{"namespace": view.namespace, "shapes": view.shapes} for view in review.views],
        "workloads": {
            workload.id: {
                "namespace": workload.namespace,
                "kind": workload.kind,
                "name": workload.name,
                "in_scope": workload.in_scope,
                "files": list(workload.files),
                "unobserved": [
                    {
                        "direction": str(item.direction),
                        "peer": item.peer,
                        "ports": item.ports,
                        "observed": item.observed,
                    }
                    for item in workload.unobserved
                ],
            }
            for workload in review.workloads
        },
        "edges": [
            {
                "client": edge.client,
                "server": edge.server,
                "client_label": edge.client_label,
                "server_label": edge.server_label,
                "ports": [_port_json(port) for port in edge.ports],
            }
            for edge in review.edges
        ],
        "files": dict(review.files),
        "unchecked": review.unchecked,
    } | ({"folded": [_folded_json(folded) for folded in review.folded]} if review.folded else {})


def _folded_json(folded: FoldedEdges) -> dict[str, Any]:
    return {
        "subject": folded.subject,
        "subject_label": folded.subject_label,
        "direction": str(folded.direction),
        "edges": folded.edges,
        "flows": folded.flows,
        "packets": folded.packets,
        "bytes": folded.bytes,
        "ports": folded.ports,
    }
