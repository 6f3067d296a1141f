"""The picture a reviewer reads (graph.dot, graph.svg and report.html's graph): the workload graph
with its nodes placed in groups, the infrastructure apart and outside addresses gathered.

- **Namespaces**: every workload is drawn in its namespace's group, titled by its name (its kind
  is the small print); the captured ones (they get a policy) filled, the others dashed.
- **Infrastructure**: the cluster's nodes and the cluster DNS (its workloads, node-local DNS cache
  addresses) are one group of their own. An edge with an infrastructure end is an infrastructure
  edge, drawn faint; the edges between one infrastructure node and the workloads of one namespace
  are gathered into one edge to (or from) that namespace's group, saying how many workloads it
  stands for. In the demo, 11 of 31 edges are kubelet probes and 4 are DNS: they become two.
- **Outside addresses** (and in-cluster addresses that matched nothing) are gathered by the DNS
  names their clients were told: one picture node per set of names; the addresses without a name
  are drawn one by one up to :data:`MAX_LONE_ADDRESSES`, past that as one node.

Every picture node and edge lists the graph nodes and edges it stands for (``members``), so
report.html can show what is behind each. :func:`namespace_picture` draws one node per group,
for when the full picture is too big to draw. Pure and deterministic: the same graph gives the
same picture, in the same order.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from analyser.graphs import ID_PREFIXES, GraphNode, NodeRole, WorkloadGraph
from analyser.peers import PortSpec

# Addresses without a DNS name, outside or unresolved, are drawn one by one up to this many per
# group; more become one node ("37 addresses"): report.html and report.md list each.
MAX_LONE_ADDRESSES = 8
# An edge's label lists this many ports at most, then how many more there are.
MAX_LABEL_PORTS = 4


class GroupKind(StrEnum):
    NAMESPACE = "namespace"
    INFRASTRUCTURE = "infrastructure"
    OUTSIDE = "outside"
    UNRESOLVED = "unresolved"


# The groups that are not namespaces: their ids, and what their box says.
GROUP_LABELS = {
    GroupKind.INFRASTRUCTURE: "cluster DNS and nodes",
    GroupKind.OUTSIDE: "outside the cluster",
    GroupKind.UNRESOLVED: "unresolved in-cluster addresses",
}
NAMESPACE_GROUP_PREFIX = "namespace:"


def namespace_group(namespace: str) -> str:
    """The group id of a namespace."""
    return NAMESPACE_GROUP_PREFIX + namespace


@dataclass(frozen=True, slots=True)
class PictureGroup:
    """A box of the picture: a namespace, the infrastructure, the outside or the unresolved."""

    id: str  # namespace_group(NAME), or the GroupKind's value
    kind: GroupKind
    label: str  # the namespace's name, or GROUP_LABELS'


@dataclass(frozen=True, slots=True)
class PictureNode:
    """One shape: a workload, a cluster node, an address, or addresses gathered."""

    id: str  # the graph node's id; "addresses:GROUP:N" for gathered addresses
    group: str  # the id of the PictureGroup it is drawn in
    role: NodeRole
    title: str  # the large text: a workload's name, a node's name, a DNS name, an address
    detail: str  # the small text: a workload's kind, a node's addresses, how many addresses
    in_scope: bool  # a captured workload: it gets a policy
    members: tuple[str, ...]  # the graph node ids it stands for, sorted


@dataclass(frozen=True, slots=True)
class PortFlows:
    port: PortSpec
    flows: int


@dataclass(frozen=True, slots=True)
class PictureEdge:
    """An arrow from client to server: picture node ids, or a group id for infrastructure edges
    gathered per namespace (and for every edge of :func:`namespace_picture`)."""

    client: str
    server: str
    infrastructure: bool  # an end is a cluster node or the cluster DNS: drawn faint
    label: tuple[str, ...]  # its lines
    ports: tuple[PortFlows, ...]  # by port
    members: tuple[tuple[str, str], ...]  # the graph edges (client, server) it stands for, sorted

    @property
    def flows(self) -> int:
        return sum(item.flows for item in self.ports)


@dataclass(frozen=True, slots=True)
class Picture:
    """The groups, nodes and edges to draw, in drawing order; ``summary`` when each node is a
    whole group (:func:`namespace_picture`)."""

    groups: tuple[PictureGroup, ...]
    nodes: tuple[PictureNode, ...]
    edges: tuple[PictureEdge, ...]
    summary: bool = False


def infrastructure_ids(
    graph: WorkloadGraph, *, dns_workloads: Collection[str], node_local_dns: Collection[str]
) -> frozenset[str]:
    """The graph nodes that are the cluster's infrastructure: its nodes, the cluster DNS
    workloads (``peers.ClusterDns.workloads``) and the node-local DNS cache addresses."""
    local = {ID_PREFIXES[NodeRole.EXTERNAL] + address for address in node_local_dns}
    return frozenset(
        node.id
        for node in graph.nodes
        if node.role is NodeRole.NODE or node.id in dns_workloads or node.id in local
    )


def _port_lines(ports: Iterable[PortFlows]) -> tuple[str, ...]:
    listed = [f"{item.port.protocol}/{item.port.port} ×{item.flows}" for item in ports]
    if len(listed) <= MAX_LABEL_PORTS:
        return tuple(listed)
    shown = MAX_LABEL_PORTS - 1
    return (*listed[:shown], f"+{len(listed) - shown} more ports")


def _merged_ports(stats: Iterable[Mapping[PortSpec, int]]) -> tuple[PortFlows, ...]:
    flows: dict[PortSpec, int] = defaultdict(int)
    for ports in stats:
        for port, count in ports.items():
            flows[port] += count
    return tuple(PortFlows(port, count) for port, count in sorted(flows.items()))


def _plural(count: int, word: str) -> str:
    """``1 workload``, ``2 workloads``, ``3 addresses``."""
    if count == 1:
        return f"{count} {word}"
    return f"{count} {word}es" if word.endswith("s") else f"{count} {word}s"


class _Placing:
    """Which picture node and group each graph node goes to."""

    def __init__(self, graph: WorkloadGraph, infrastructure: frozenset[str]) -> None:
        self.graph = graph
        self.infrastructure = infrastructure
        self.groups: dict[str, PictureGroup] = {}
        self.nodes: dict[str, PictureNode] = {}
        self.node_of: dict[str, str] = {}  # graph node id → picture node id
        addresses: dict[GroupKind, list[GraphNode]] = defaultdict(list)
        for node in graph.nodes:
            if node.id in infrastructure:
                self.place(node, self.group(GroupKind.INFRASTRUCTURE))
            elif node.role is NodeRole.WORKLOAD:
                self.place(node, self.namespace(node))
            elif node.role is NodeRole.UNRESOLVED:
                addresses[GroupKind.UNRESOLVED].append(node)
            else:
                addresses[GroupKind.OUTSIDE].append(node)
        for kind, found in addresses.items():
            self.gather(self.group(kind), found)

    def group(self, kind: GroupKind) -> str:
        self.groups.setdefault(kind, PictureGroup(kind, kind, GROUP_LABELS[kind]))
        return kind

    def namespace(self, node: GraphNode) -> str:
        assert node.workload is not None  # a workload node has its workload (GraphNode)
        namespace = node.workload.ref.namespace
        group_id = namespace_group(namespace)
        self.groups.setdefault(group_id, PictureGroup(group_id, GroupKind.NAMESPACE, namespace))
        return group_id

    def place(self, node: GraphNode, group: str) -> None:
        if node.workload is not None:
            ref = node.workload.ref
            in_namespace = self.groups[group].kind is GroupKind.NAMESPACE
            title = ref.name
            detail = ref.kind if in_namespace else f"{ref.kind} in {ref.namespace}"
        elif node.role is NodeRole.NODE:
            title = node.id.removeprefix(ID_PREFIXES[NodeRole.NODE])
            detail = ", ".join(node.addresses) or "node"
        else:
            title, detail = node.label, "node-local DNS cache"
        self.add(PictureNode(node.id, group, node.role, title, detail, node.in_scope, (node.id,)))

    def add(self, node: PictureNode) -> None:
        self.nodes[node.id] = node
        for member in node.members:
            self.node_of[member] = node.id

    def gather(self, group: str, found: list[GraphNode]) -> None:
        """Addresses with the same DNS names as one node; those without a name one by one, or
        all as one past MAX_LONE_ADDRESSES."""
        by_names: dict[tuple[str, ...], list[GraphNode]] = defaultdict(list)
        for node in found:
            by_names[node.names].append(node)
        unnamed = by_names.pop((), [])
        sets: list[tuple[tuple[str, ...], list[GraphNode]]] = sorted(by_names.items())
        if len(unnamed) > MAX_LONE_ADDRESSES:
            sets.append(((), unnamed))
        else:
            sets += [((), [node]) for node in unnamed]
        for index, (names, nodes) in enumerate(sets):
            role = nodes[0].role
            members = tuple(sorted(node.id for node in nodes))
            count = _plural(len(nodes), "address")
            if names:
                title = names[0]
                more = f"+{_plural(len(names) - 1, 'name')} · " if len(names) > 1 else ""
                detail = more + (nodes[0].label if len(nodes) == 1 else count)
            elif len(nodes) == 1:
                title, detail = nodes[0].label, ""
            else:
                title, detail = count, "without a DNS name"
            node_id = nodes[0].id if len(nodes) == 1 else f"addresses:{group}:{index}"
            self.add(PictureNode(node_id, group, role, title, detail, False, members))


def _group_order(group: PictureGroup) -> tuple[int, str]:
    order = (GroupKind.NAMESPACE, GroupKind.INFRASTRUCTURE, GroupKind.OUTSIDE, GroupKind.UNRESOLVED)
    return order.index(group.kind), group.label


def picture_of(graph: WorkloadGraph, *, infrastructure: Collection[str] = ()) -> Picture:
    """The picture of ``graph``, with ``infrastructure`` (graph node ids:
    :func:`infrastructure_ids`) apart."""
    infra = frozenset(infrastructure)
    placing = _Placing(graph, infra)
    gathered: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    ports: dict[tuple[str, str], list[Mapping[PortSpec, int]]] = defaultdict(list)
    for edge in graph.edges:
        client, server = placing.node_of[edge.client], placing.node_of[edge.server]
        client_infra, server_infra = edge.client in infra, edge.server in infra
        # An infrastructure node with a workload: gathered per namespace of the workload.
        if client_infra and not server_infra and graph.node(edge.server).workload is not None:
            server = placing.nodes[server].group
        elif server_infra and not client_infra and graph.node(edge.client).workload is not None:
            client = placing.nodes[client].group
        gathered[(client, server)].append((edge.client, edge.server))
        ports[(client, server)].append({port: s.flows for port, s in edge.ports.items()})
    edges = []
    for (client, server), members in sorted(gathered.items()):
        merged = _merged_ports(ports[(client, server)])
        infrastructure_edge = any(end in infra for member in members for end in member)
        group_end = client in placing.groups or server in placing.groups
        if group_end:
            workloads = {end for member in members for end in member if end not in infra}
            label = (_plural(len(workloads), "workload"),) + (
                _port_lines(merged) if len(merged) <= 2 else (_plural(len(merged), "port"),)
            )
        else:
            label = _port_lines(merged)
        edges.append(
            PictureEdge(client, server, infrastructure_edge, label, merged, tuple(sorted(members)))
        )
    groups = tuple(sorted(placing.groups.values(), key=_group_order))
    order = {group.id: index for index, group in enumerate(groups)}
    nodes = tuple(sorted(placing.nodes.values(), key=lambda n: (order[n.group], n.title, n.id)))
    return Picture(groups, nodes, tuple(edges))


def namespace_picture(picture: Picture) -> Picture:
    """``picture`` with one node per group (a namespace with how many workloads, the outside
    with how many addresses) and one edge per pair of groups: for a cluster too big to draw."""
    group_of = {node.id: node.group for node in picture.nodes}
    counts: dict[str, int] = defaultdict(int)
    in_scope: dict[str, bool] = defaultdict(bool)
    for node in picture.nodes:
        counts[node.group] += len(node.members)
        in_scope[node.group] |= node.in_scope
    nouns = {
        GroupKind.NAMESPACE: "workload",
        GroupKind.INFRASTRUCTURE: "member",
        GroupKind.OUTSIDE: "address",
        GroupKind.UNRESOLVED: "address",
    }
    roles = {
        GroupKind.NAMESPACE: NodeRole.WORKLOAD,
        GroupKind.INFRASTRUCTURE: NodeRole.NODE,
        GroupKind.OUTSIDE: NodeRole.EXTERNAL,
        GroupKind.UNRESOLVED: NodeRole.UNRESOLVED,
    }
    nodes = tuple(
        PictureNode(
            group.id,
            group.id,
            roles[group.kind],
            group.label if group.kind is GroupKind.NAMESPACE else GROUP_LABELS[group.kind],
            _plural(counts[group.id], nouns[group.kind]),
            in_scope[group.id],
            tuple(
                sorted(n for node in picture.nodes if node.group == group.id for n in node.members)
            ),
        )
        for group in picture.groups
    )
    gathered: dict[tuple[str, str], list[PictureEdge]] = defaultdict(list)
    for edge in picture.edges:
        ends = (group_of.get(edge.client, edge.client), group_of.get(edge.server, edge.server))
        gathered[ends].append(edge)
    edges = []
    for (client, server), found in sorted(gathered.items()):
        members = tuple(sorted(m for edge in found for m in edge.members))
        merged = _merged_ports({p.port: p.flows for p in edge.ports} for edge in found)
        flows = sum(p.flows for p in merged)
        edges.append(
            PictureEdge(
                client,
                server,
                any(edge.infrastructure for edge in found),
                (_plural(len(members), "edge"), _plural(flows, "flow")),
                merged,
                members,
            )
        )
    return Picture(picture.groups, nodes, tuple(edges), summary=True)


@dataclass(frozen=True, slots=True)
class DrawingIds:
    """The ids a picture's shapes carry in graph.dot and graph.svg (``n0``, ``cluster_0``,
    ``e0``): generated, never from data, so report.html finds each shape by its id and the data
    behind it by the picture's ids."""

    nodes: Mapping[str, str]  # picture node id → its shape's id
    groups: Mapping[str, str]  # group id → its box's id (Graphviz draws cluster_* as boxes)
    edges: tuple[str, ...]  # in the picture's edge order


def drawing_ids(picture: Picture, prefix: str = "") -> DrawingIds:
    """The ids of ``picture``'s shapes; ``prefix`` (generated too, letters, digits and ``_``:
    ``v1_``) keeps several pictures' ids apart in one page. A box's id starts with ``cluster``:
    that is how Graphviz knows a subgraph is drawn as a box."""
    return DrawingIds(
        nodes={node.id: f"{prefix}n{index}" for index, node in enumerate(picture.nodes)},
        groups={group.id: f"cluster_{prefix}{index}" for index, group in enumerate(picture.groups)},
        edges=tuple(f"{prefix}e{index}" for index in range(len(picture.edges))),
    )


def namespace_part(graph: WorkloadGraph, namespace: str) -> WorkloadGraph:
    """The part of ``graph`` a namespace's own picture draws: its workloads, every edge with one
    of them at an end, and the nodes at the other ends (workloads of other namespaces, nodes,
    the cluster DNS, addresses). report.html shows it when a reviewer chooses the namespace: in
    a cluster of many namespaces, the whole picture is too wide to read one namespace in."""
    inside = {
        node.id
        for node in graph.with_role(NodeRole.WORKLOAD)
        if node.workload is not None and node.workload.ref.namespace == namespace
    }
    edges = tuple(edge for edge in graph.edges if edge.client in inside or edge.server in inside)
    ends = inside | {end for edge in edges for end in (edge.client, edge.server)}
    return WorkloadGraph(tuple(node for node in graph.nodes if node.id in ends), edges)
