"""The who-talks-to-whom graph: flows + identities → a :class:`WorkloadGraph` of workloads, the
cluster's nodes and addresses outside the cluster (or in it, matching nothing known).

The schema is the records below, a contract for policies, rendering, verify and the report:

- :class:`GraphNode`: one per workload (all its pods), node, outside or unresolved address; its
  ``id`` says which (``NS/Kind/name``, ``node:NAME``, ``ip:ADDRESS``, ``unresolved:ADDRESS``:
  checked on construction), with its ``role``, display ``label``, ``workload``, DNS ``names``,
  whether it is ``in_scope`` (captured: it gets a policy) and the ``addresses`` peers saw.
- :class:`GraphEdge`: from client to server, with :class:`EdgeStats` per *target* port (which
  sides some flow on it was vouched for at: ``EdgeStats.vouched``; when several bundles were
  analysed together, which capture windows saw it: ``EdgeStats.windows``, one
  :class:`EdgeWindow` per bundle, and ``FlowAttribution.window``), and the DNS ``names`` the
  client side's own captures saw an outside server's address told (a policy takes a peer's names
  from its own edges only, so one pod's capture cannot name another pod's peers).
- :class:`WorkloadGraph`: the nodes and edges, plus which flow made which edge
  (:class:`FlowAttribution`, :meth:`WorkloadGraph.flows_on_edge`), the TCP connections never
  established (:class:`AttemptGroup`, one per client, server and port), how many flows were on
  a loopback address, the unresolved addresses and the traffic a side's captures did not vouch
  for (:meth:`WorkloadGraph.unvouched_pairs`). Immutable, sorted on construction, so the same flows
  give the same graph whatever their order.

No graph library: nothing here needs one (no graph algorithm runs on it, only lookups by node and
by edge), and ``networkx`` cost a tenth of a second to import in every process that analyses.

How flows become edges (details in ``docs/semantics.md``):

- A TCP connection that was never established (``Flow.established``: refused with a RST, or its
  SYN never answered) makes no edge: nothing listened, or something already dropped it, so a rule
  would only widen what works today. It is counted in an :class:`AttemptGroup` for the report
  (a client retrying a blocked port all day makes one, not one per attempt).
- A flow on a loopback address (``127.0.0.0/8``, ``::1``: ``tcpdump -i any`` in a pod sees its
  containers talking to each other over ``lo``) makes no edge: it never leaves the pod, and no
  NetworkPolicy applies to it. Only their number is kept.
- Both ends are resolved at the flow's first packet. A workload's pods are one node; traffic
  between two pods of one workload is a self loop.
- A flow to a Service ClusterIP is joined to the server side's own capture of the same connection
  (same client address and port, same protocol, first packets within :data:`TWIN_WINDOW` seconds):
  one edge to the pod that really answered, on the port it answered on, counted once. Without such
  a twin, the flow goes to every backend of the Service at that time, each on its target port
  (``EdgeStats.assumed``).
- Each side of a flow is vouched for by the captures at that side (``analyser.vouching``, given
  as ``witness``): a pod's capture speaks for its own side only. ``EdgeStats.vouched`` and
  ``FlowAttribution.vouched`` say which sides were; policies write the client's egress rule
  only for a vouched client side and the server's ingress rule only for a vouched server side
  (:meth:`WorkloadGraph.unvouched_pairs` lists the rest).
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from itertools import pairwise
from sys import intern
from typing import Any, NamedTuple, Protocol, TypeVar

from analyser.addresses import address_key, is_loopback_address
from analyser.flows import Evidence, Flow, FlowGroup, FlowTable
from analyser.flows import Protocol as IpProtocol
from analyser.identities import EndpointKind, Identity, Resolver, Scope, ServiceBackend
from analyser.peers import PortSpec
from analyser.workloads import Workload, WorkloadRef

# Two captures of one connection (client side to the ClusterIP, server side from the client) see
# its first packets within this many seconds of each other: latency plus clock skew between nodes.
TWIN_WINDOW = 5.0


class NodeRole(StrEnum):
    WORKLOAD = "workload"
    EXTERNAL = "external"
    NODE = "node"
    UNRESOLVED = "unresolved"


# How the id of a node that is no workload starts (a workload's is ``str(WorkloadRef)``).
ID_PREFIXES = {NodeRole.EXTERNAL: "ip:", NodeRole.NODE: "node:", NodeRole.UNRESOLVED: "unresolved:"}
# The roles of a node that is a single address (outside the cluster, or unresolved): a workload
# may have any number of such peers (their text equals their role: a StrEnum).
ADDRESS_ROLES = frozenset({NodeRole.EXTERNAL, NodeRole.UNRESOLVED})


@dataclass(frozen=True, order=True, slots=True)
class Sides:
    """Which ends of a flow (or of an edge on one port) the captures vouch for: the client's
    side makes its egress rule, the server's its ingress rule (``analyser.vouching``)."""

    client: bool = True
    server: bool = True

    def __or__(self, other: Sides) -> Sides:
        return Sides(self.client or other.client, self.server or other.server)

    @property
    def both(self) -> bool:
        return self.client and self.server


BOTH_SIDES = Sides()
# Every Sides by (client, server), shared: a day's graph has one per group of connections.
_SIDES = {
    (client, server): Sides(client, server) for client in (False, True) for server in (False, True)
}


class Span(NamedTuple):
    """From ``start`` until ``end`` (exclusive), in UTC epoch seconds."""

    start: float
    end: float

    def __contains__(self, at: object) -> bool:
        return isinstance(at, float | int) and self.start <= at < self.end


ALWAYS = Span(-math.inf, math.inf)


class Witness(Protocol):
    """Whether a side of a flow is vouched for (``vouching.Witnesses``): at one time, or over
    time (``span``: when it is)."""

    def vouches(self, identity: Identity, at: float, captures: Collection[str]) -> bool: ...

    def span(self, identity: Identity, captures: Collection[str]) -> Span: ...


@dataclass(frozen=True, order=True, slots=True)
class EdgeWindow:
    """One capture window (a bundle, when several were analysed together: ``analyser.windows``)
    that saw traffic on an edge's port: its flows there, and when."""

    bundle: str  # the bundle's label (``windows.CaptureWindow.label``)
    flows: int
    first_seen: float
    last_seen: float

    def merged(self, other: EdgeWindow) -> EdgeWindow:
        return EdgeWindow(
            self.bundle,
            self.flows + other.flows,
            min(self.first_seen, other.first_seen),
            max(self.last_seen, other.last_seen),
        )


def merge_windows(*groups: Iterable[EdgeWindow]) -> tuple[EdgeWindow, ...]:
    """The windows of several stats as one, a bundle once, sorted by first packet and bundle."""
    by_bundle: dict[str, EdgeWindow] = {}
    for group in groups:
        for window in group:
            known = by_bundle.get(window.bundle)
            by_bundle[window.bundle] = window if known is None else known.merged(window)
    return tuple(sorted(by_bundle.values(), key=lambda w: (w.first_seen, w.bundle)))


# One empty set for every edge's port without a Service (``frozenset()`` makes a new one: 216
# bytes, on each port of an edge with each of a public ingress's clients).
_NO_SERVICES: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class EdgeStats:
    """What was observed on one edge for one target port."""

    flows: int
    packets: int
    bytes: int
    first_seen: float
    last_seen: float
    evidence: frozenset[Evidence]
    services: frozenset[str] = frozenset()  # "NS/name" of Services the traffic went through
    # True when no capture saw this server answer: it was taken from the Service's backends.
    assumed: bool = False
    # False when every flow went one way only (``Flow.answered``): nothing came back.
    answered: bool = True
    # The sides some flow on it was vouched for at (``analyser.vouching``): only those get rules.
    vouched: Sides = BOTH_SIDES
    # Which capture windows saw it, when several bundles were analysed together (one entry per
    # bundle, by first packet); empty for one bundle's analysis: its one window saw everything.
    windows: tuple[EdgeWindow, ...] = ()

    def merged(self, other: EdgeStats) -> EdgeStats:
        return EdgeStats(
            flows=self.flows + other.flows,
            packets=self.packets + other.packets,
            bytes=self.bytes + other.bytes,
            first_seen=min(self.first_seen, other.first_seen),
            last_seen=max(self.last_seen, other.last_seen),
            evidence=self.evidence | other.evidence,
            services=self.services | other.services,
            assumed=self.assumed and other.assumed,
            answered=self.answered or other.answered,
            vouched=self.vouched | other.vouched,
            windows=merge_windows(self.windows, other.windows),
        )


@dataclass(frozen=True, slots=True)
class FlowAttribution:
    """One captured flow and the edge (and target port) it was counted on."""

    flow: Flow  # as the client side captured it (to the ClusterIP, for Service traffic)
    client: str  # graph node ids
    server: str
    port: PortSpec
    service: str | None = None  # "NS/name" when the client addressed a Service
    twin: Flow | None = None  # the server side's capture of the same connection
    assumed: bool = False  # the server was taken from the Service's backends
    vouched: Sides = BOTH_SIDES  # see analyser.vouching
    # The label of the bundle whose captures saw it, when several were analysed together.
    window: str = ""
    # How many connections it stands for: 1 for ``flow`` alone; past the first ``LISTED_FLOWS`` of
    # its edge and port, those of connections counted alike (same addresses, Service, twin's
    # address and vouched sides), ``flow`` the first of them (see ``_trimmed``).
    connections: int = 1


@dataclass(frozen=True, slots=True)
class AttemptGroup:
    """The TCP connections one client tried at one server and port but never established (a
    client retrying makes many): how many, and when the first began and the last ended. The
    client and the server are who they were at each attempt's first packet (``NS/Kind/name``,
    ``service:NS/name``, ``node:NAME``, ``ip:ADDRESS`` or ``unresolved:ADDRESS``)."""

    client: str
    server: str
    port: PortSpec
    servers: tuple[str, ...]  # the addresses tried, sorted
    attempts: int
    packets: int
    first_seen: float
    last_seen: float

    def key(self) -> AttemptKey:
        return (self.client, self.server, self.port)


# An AttemptGroup's client, server and port: what it is one group of.
AttemptKey = tuple[str, str, PortSpec]

# Attempt groups a graph keeps, at most (~700 bytes each, and a row of the report): past them,
# the attempts of new groups (a port scan, SYNs forged to or from every address) are counted
# together (WorkloadGraph.attempts_left_out). The groups kept are the first in the flows' order.
MAX_ATTEMPT_GROUPS = 10_000


@dataclass(frozen=True, slots=True)
class AttemptTotals:
    """Attempts counted together, not in groups (see :data:`MAX_ATTEMPT_GROUPS`): how many,
    their packets, and when the first began and the last ended."""

    attempts: int = 0
    packets: int = 0
    first_seen: float = 0.0
    last_seen: float = 0.0


def merge_attempts(
    groups: Iterable[AttemptGroup], left_out: Iterable[AttemptTotals] = ()
) -> tuple[list[AttemptGroup], AttemptTotals]:
    """``groups`` (several graphs' attempts), those of one client, server and port as one, and
    the attempts left out of groups (theirs, and the groups' past :data:`MAX_ATTEMPT_GROUPS`)."""
    tallies = _AttemptTallies()
    for group in groups:
        tallies.of(group.key()).add(
            group.servers, group.attempts, group.packets, group.first_seen, group.last_seen
        )
    for totals in left_out:
        if totals.attempts:
            tallies.left_out.add(
                (), totals.attempts, totals.packets, totals.first_seen, totals.last_seen
            )
    return tallies.groups(), tallies.totals_left_out()


# Addresses a workload side gets edges and rules for in one direction, at most, over all ports,
# of those that never widen to anywhere (policies.MAX_OUTSIDE_ADDRESSES): addresses (outside the
# cluster, or unresolved) of traffic that went one way only, and as many again unresolved
# addresses of conversations. Each is a graph node, an edge, attributions and rows of the report
# and its checks (~7 KB and ~0.5 ms) and a rule of its own: datagrams sprayed at (or spoofed from)
# every address, or conversations with every free pod address forged in a pod's own capture,
# would make them grow without bound (100,000 one-way addresses took 1.7 GB and 101 s). Past
# this, such a flow makes no edge and gets no rule: it is counted (WorkloadGraph.flows_left_out),
# by port. The addresses kept are the first in the flows' order; one kept gets rules on every
# port it was seen on. Outside addresses that answered are not bounded here: past 32 on a port
# they widen to anywhere, and a public ingress's or a crawler's must all be allowed.
MAX_ADDRESSES = 10_000


@dataclass(frozen=True, slots=True)
class FlowsLeftOut:
    """Flows on one port between a workload side (``side``, as :class:`AttemptGroup` names it)
    and addresses past the first ``kept`` of that side in one ``direction`` (``to`` the
    addresses, or ``from`` them), ``answered`` (conversations) or one way only: made no edge and
    got no rule (:data:`MAX_ADDRESSES`)."""

    side: str
    direction: str
    port: PortSpec
    answered: bool
    kept: int  # addresses with rules, of that side in that direction and kind (on any port)
    flows: int
    packets: int
    first_seen: float
    last_seen: float

    def key(self) -> tuple[str, str, PortSpec, bool]:
        return (self.side, self.direction, self.port, self.answered)


def merge_flows_left_out(left_out: Iterable[FlowsLeftOut]) -> list[FlowsLeftOut]:
    """Several graphs' flows left out, those of one side, direction, port and kind as one."""
    kept: dict[tuple[str, str, PortSpec, bool], int] = {}
    tallies: dict[tuple[str, str, PortSpec, bool], _Tally] = {}
    for found in left_out:
        key = found.key()
        kept[key] = max(kept.get(key, 0), found.kept)
        tally = tallies.setdefault(key, _Tally(keeps_servers=False))
        tally.add((), found.flows, found.packets, found.first_seen, found.last_seen)
    return [FlowsLeftOut(*key, kept[key], *tally.totals()) for key, tally in tallies.items()]


@dataclass(frozen=True, slots=True)
class EdgeRow:
    """One line of the report's table: an edge and one of its target ports."""

    client: str
    server: str
    client_label: str
    server_label: str
    port: PortSpec
    stats: EdgeStats


# The ports a warning or a report row names one by one: a capture may claim thousands.
LISTED_PORTS = 10


def ports_text(ports: Sequence[PortSpec]) -> str:
    """``TCP/9090, UDP/53``; past :data:`LISTED_PORTS`, ``and N more ports``."""
    listed = ", ".join(f"{port.protocol}/{port.port}" for port in ports[:LISTED_PORTS])
    more = len(ports) - LISTED_PORTS
    return f"{listed} and {more} more ports" if more > 0 else listed


@dataclass(frozen=True, slots=True)
class UnvouchedPair:
    """Traffic from ``client`` to ``server`` (graph node ids) on ``ports`` that the captures at a
    side did not vouch for: that side's policy has no rule for it (``analyser.vouching``)."""

    client: str
    server: str
    ports: tuple[PortSpec, ...]
    vouched: Sides  # never both

    @property
    def ports_text(self) -> str:
        return ports_text(self.ports)

    @property
    def sides(self) -> int:
        """How many rules (egress at the client, ingress at the server) were not written."""
        return len(self.ports) * ((not self.vouched.client) + (not self.vouched.server))

    @property
    def why(self) -> str:
        if not self.vouched.client and not self.vouched.server:
            return "seen by neither side's own capture while it ran: no rule for it"
        side, rule = (self.server, "ingress") if self.vouched.client else (self.client, "egress")
        return (
            f"not seen by the capture of {side} while it ran (or dated before that pod existed): "
            f"no {rule} rule for it at {side}; only the other side's captures claim it"
        )


@dataclass(frozen=True, slots=True)
class GraphNode:
    """A workload (all its pods), a node of the cluster, an address outside the cluster, or an
    address in it that matched nothing known at the time."""

    # ``str(workload.ref)`` for a workload, else its ID_PREFIXES prefix and its name or address.
    id: str
    role: NodeRole
    label: str  # display text: the id, a node's name with its addresses, the address
    workload: Workload | None = None  # a workload node's, and only theirs
    # Every DNS name some client was told for an outside address (the ``names`` of its edges).
    names: tuple[str, ...] = ()
    # A workload's: every name its pods' own captures saw them look up on port 53 (answered,
    # NXDOMAIN included), sorted; what a DNS rule listing names must allow.
    lookups: tuple[str, ...] = ()
    in_scope: bool = False  # a workload whose pods were captured: it gets a policy
    # The addresses seen for a node, an outside or unresolved address, or a hostNetwork workload
    # (the addresses peers saw), by ``address_key``; none for other workloads.
    addresses: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.role is NodeRole.WORKLOAD:
            if self.workload is None or self.id != str(self.workload.ref):
                raise ValueError(
                    f"graph node {self.id!r}: a workload node has its workload, and its id is "
                    "the workload's NS/Kind/name"
                )
        elif self.workload is not None or not self.id.startswith(ID_PREFIXES[self.role]):
            raise ValueError(
                f"graph node {self.id!r}: a {self.role} node has no workload and an id "
                f"starting with {ID_PREFIXES[self.role]!r}"
            )


@dataclass(frozen=True, slots=True)
class GraphEdge:
    """What ``client`` sent ``server`` (graph node ids), per target port."""

    client: str
    server: str
    ports: Mapping[PortSpec, EdgeStats] = field(hash=False)  # by port, never empty
    # The DNS names of an outside server's address that the client side's own captures saw it
    # told (``dns.DnsNames.names_for_flow``), sorted; none for any other server.
    names: tuple[str, ...] = ()
    # Of those, the names the client asked for (the question whose CNAME chain led to the
    # address): what a policy by name must name.
    asked: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.ports:
            raise ValueError(f"graph edge {self.client} → {self.server}: no port")


@dataclass(frozen=True, slots=True)
class WorkloadGraph:
    """Who talked to whom (the schema: this module's docstring), as :func:`build_graph` makes it.
    Sorted on construction (nodes by id, edges by client and server, attributions by edge, port
    and flow); every edge's ends are nodes."""

    nodes: tuple[GraphNode, ...] = ()
    edges: tuple[GraphEdge, ...] = ()
    attributions: tuple[FlowAttribution, ...] = ()  # which flow made which edge
    # TCP connections never established (no edge), by client, server and port; sorted by them.
    attempts: tuple[AttemptGroup, ...] = ()
    loopback: int = 0  # how many flows were on a loopback address (no edge)
    # The never established connections past MAX_ATTEMPT_GROUPS groups, counted together.
    attempts_left_out: AttemptTotals = AttemptTotals()
    # Flows to or from addresses past MAX_ADDRESSES (no edge), sorted.
    flows_left_out: tuple[FlowsLeftOut, ...] = ()
    # In-cluster addresses that matched nothing known at the time (UNRESOLVED nodes), sorted.
    unresolved: tuple[str, ...] = field(init=False)
    _node: dict[str, GraphNode] = field(init=False, repr=False, compare=False)
    _by_role: dict[NodeRole, tuple[GraphNode, ...]] = field(init=False, repr=False, compare=False)
    _edge: dict[tuple[str, str], GraphEdge] = field(init=False, repr=False, compare=False)
    _to: dict[str, tuple[GraphEdge, ...]] = field(init=False, repr=False, compare=False)
    _from: dict[str, tuple[GraphEdge, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        def set_field(name: str, value: object) -> None:
            object.__setattr__(self, name, value)

        nodes = tuple(sorted(self.nodes, key=_node_id))
        edges = tuple(sorted(self.edges, key=_edge_ends))
        by_id = {node.id: node for node in nodes}
        by_ends = {(edge.client, edge.server): edge for edge in edges}
        if len(by_id) != len(nodes) or len(by_ends) != len(edges):
            raise ValueError("a workload graph has each node and each edge once")
        to: dict[str, list[GraphEdge]] = defaultdict(list)
        from_: dict[str, list[GraphEdge]] = defaultdict(list)
        for edge in edges:
            if edge.client not in by_id or edge.server not in by_id:
                raise ValueError(f"graph edge {edge.client} → {edge.server}: an end is no node")
            to[edge.server].append(edge)
            from_[edge.client].append(edge)
        by_role: dict[NodeRole, list[GraphNode]] = defaultdict(list)
        for node in nodes:
            by_role[node.role].append(node)
        set_field("nodes", nodes)
        set_field("edges", edges)
        set_field("attributions", _sorted_attributions(self.attributions))
        set_field("attempts", tuple(sorted(self.attempts, key=AttemptGroup.key)))
        set_field("flows_left_out", tuple(sorted(self.flows_left_out, key=FlowsLeftOut.key)))
        set_field("_node", by_id)
        set_field("_by_role", {role: tuple(found) for role, found in by_role.items()})
        set_field("_edge", by_ends)
        set_field("_to", {node_id: tuple(found) for node_id, found in to.items()})
        set_field("_from", {node_id: tuple(found) for node_id, found in from_.items()})
        unresolved = (a for n in by_role[NodeRole.UNRESOLVED] for a in n.addresses)
        set_field("unresolved", tuple(sorted(unresolved, key=address_key)))

    def node(self, node_id: str) -> GraphNode:
        """The node ``node_id`` (KeyError when there is none)."""
        return self._node[node_id]

    def with_role(self, role: NodeRole) -> tuple[GraphNode, ...]:
        """The nodes of ``role``, by id."""
        return self._by_role.get(role, ())

    def edge(self, client: str, server: str) -> GraphEdge:
        """The edge ``client`` → ``server`` (KeyError when there is none)."""
        return self._edge[(client, server)]

    def edges_to(self, node_id: str) -> tuple[GraphEdge, ...]:
        """The edges whose server is ``node_id`` (from its clients), by client."""
        return self._to.get(node_id, ())

    def edges_from(self, node_id: str) -> tuple[GraphEdge, ...]:
        """The edges whose client is ``node_id`` (to its servers), by server."""
        return self._from.get(node_id, ())

    def edge_rows(self) -> tuple[EdgeRow, ...]:
        """The report's table: one row per edge and target port, by client, server and port."""
        return tuple(
            EdgeRow(
                edge.client,
                edge.server,
                self._node[edge.client].label,
                self._node[edge.server].label,
                port,
                stats,
            )
            for edge in self.edges
            for port, stats in sorted(edge.ports.items())
        )

    def flows_on_edge(
        self, client: str, server: str, port: PortSpec | None = None
    ) -> tuple[FlowAttribution, ...]:
        """The flows counted on the edge ``client`` → ``server`` (on ``port`` only, when given),
        sorted by port and time. Found by bisection: the attributions are sorted by edge."""
        found = self.attributions
        wanted: tuple[Any, ...] = (client, server) if port is None else (client, server, port)

        def place(a: FlowAttribution) -> tuple[Any, ...]:
            return (a.client, a.server) if port is None else (a.client, a.server, a.port)

        return found[bisect_left(found, wanted, key=place) : bisect_right(found, wanted, key=place)]

    def unvouched_pairs(self) -> tuple[UnvouchedPair, ...]:
        """Per pair of nodes, the ports with a side no flow was vouched for at, by the sides
        that were; sorted by client, server and sides."""
        grouped: dict[tuple[str, str, Sides], list[PortSpec]] = defaultdict(list)
        for edge in self.edges:
            for port, stats in sorted(edge.ports.items()):
                if not stats.vouched.both:
                    grouped[(edge.client, edge.server, stats.vouched)].append(port)
        return tuple(
            UnvouchedPair(client, server, tuple(ports), vouched)
            for (client, server, vouched), ports in sorted(grouped.items())
        )


def _node_id(node: GraphNode) -> str:
    return node.id


def _edge_ends(edge: GraphEdge) -> tuple[str, str]:
    return (edge.client, edge.server)


class NameTable(Protocol):
    """DNS names a flow's client was told for its server's address (``dns.DnsNames``)."""

    def names_for_flow(
        self, flow: Flow, *, asked_by: Callable[[str], bool] | None = None, asked: bool = False
    ) -> Iterable[str]: ...

    def lookups_for_flow(
        self, flow: Flow, *, asked_by: Callable[[str], bool] | None = None
    ) -> Iterable[str]: ...


@dataclass(slots=True)
class _Node:
    role: NodeRole
    label: str
    workload: Workload | None = None
    in_scope: bool = False
    names: set[str] = field(default_factory=set)
    addresses: set[str] = field(default_factory=set)
    lookups: set[str] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class _Names:
    """The DNS names a flow's client was told for its outside server, and those it asked for."""

    told: frozenset[str] = frozenset()
    asked: frozenset[str] = frozenset()


_DNS_PORT = (53,)


# How many connections of an edge and port are kept one by one, the first by time: what
# report.html lists (the rest it counts).
LISTED_FLOWS = 20


class _Bucket:
    """Connections counted alike (see ``_Builder._add``): their totals so far, and the first
    of them by :func:`_flow_key` (each with its twin): at most
    ``LISTED_FLOWS`` + 1, and once its edge and port has ``LISTED_FLOWS``, only those that
    started no later than the last of them (they may be among the ones report.html lists one by
    one) and the first after them, which stands for the rest (:meth:`prune`)."""

    __slots__ = (
        "answered",
        "attribution",
        "bytes",
        "connections",
        "evidence",
        "first",
        "first_seen",
        "last_seen",
        "packets",
    )

    def __init__(self, attribution: FlowAttribution) -> None:
        self.attribution = attribution
        self.connections = self.packets = self.bytes = 0
        self.first_seen, self.last_seen = math.inf, -math.inf
        self.evidence: frozenset[Evidence] = frozenset()  # shared (see _Builder._add)
        self.answered = False
        self.first: list[_Pair] = []

    def keep(self, pairs: Sequence[_Pair], *, ordered: bool = False) -> list[float]:
        """Keep the first connections among ``pairs`` (each a flow and its twin, by the flow's
        first packet; ``ordered``: by :func:`_flow_key`) with the ones kept. Returns the first
        packets of those of ``pairs`` it looked at: every one that may be among the first of its
        edge and port (the others come after ``LISTED_FLOWS`` + 1 of this bucket's)."""
        kept = LISTED_FLOWS + 1
        if ordered and not self.first:
            self.first = list(pairs[:kept])
            return [flow.first_seen for flow, _ in self.first]
        bound = self.first[-1][0].first_seen if len(self.first) == kept else math.inf
        if len(pairs) > kept:
            bound = min(bound, pairs[kept - 1][0].first_seen)
        candidates = [
            pair for pair in _earliest(pairs, kept, _pair_first_seen) if pair[0].first_seen <= bound
        ]
        if not candidates:
            return []
        self.first = sorted([*self.first, *candidates], key=_kept_key)[:kept]
        return [flow.first_seen for flow, _ in candidates]

    def prune(self, last_listed: float) -> None:
        """Forget the connections that started after ``last_listed`` (the first packet of the
        last connection of the edge and port so far that report.html would list) but the first
        of them: no later one can be listed (:func:`_flow_key` starts with the first packet),
        and the first stands for the rest (:meth:`attributions`)."""
        del self.first[bisect_right(self.first, last_listed, key=_pair_first_seen) + 1 :]

    def attributions(self) -> list[FlowAttribution]:
        """One per connection kept, the last standing for the rest when there are more
        (``connections``: how many)."""
        singles = len(self.first) if self.connections == len(self.first) else len(self.first) - 1
        listed = [self._attribution(flow, twin, 1) for flow, twin in self.first[:singles]]
        if self.connections > singles:
            flow, twin = self.first[singles]
            listed.append(self._attribution(flow, twin, self.connections - singles))
        return listed

    def _attribution(self, flow: Flow, twin: Flow | None, connections: int) -> FlowAttribution:
        # What dataclasses.replace would make, made directly (it takes three times as long, and a
        # day's graph lists hundreds of thousands).
        a = self.attribution
        return FlowAttribution(
            flow,
            a.client,
            a.server,
            a.port,
            service=a.service,
            twin=twin,
            assumed=a.assumed,
            vouched=a.vouched,
            window=a.window,
            connections=connections,
        )


# A connection as counted: the flow the client side saw, and the server side's (its twin) or None.
_Pair = tuple[Flow, Flow | None]
_Item = TypeVar("_Item")


def _earliest(
    items: Sequence[_Item], kept: int, first_seen: Callable[[_Item], float]
) -> Sequence[_Item]:
    """The first ``kept`` of ``items`` (by ``first_seen``) and any at the same time as the last:
    all that may be among the first ``kept`` by :func:`_flow_key`."""
    end = min(kept, len(items))
    if end:
        last = first_seen(items[end - 1])
        while end < len(items) and first_seen(items[end]) <= last:
            end += 1
    return items[:end]


def _pair_first_seen(pair: _Pair) -> float:
    return pair[0].first_seen


def _itself(first_seen: float) -> float:
    return first_seen


class _Seen(NamedTuple):
    """What the flows seen of some connections add up to (``_Builder._add``)."""

    first_seen: float
    last_seen: float
    evidence: set[Evidence]
    answered: bool


def _kept_key(kept: _Pair) -> _FlowKey:
    return _flow_key(kept[0])


class _Builder:
    def __init__(
        self,
        resolver: Resolver,
        dns: NameTable | None,
        scope: frozenset[WorkloadRef],
        witness: Witness | None,
    ):
        self.resolver = resolver
        self.dns = dns
        self.scope = scope
        self.witness = witness
        self.nodes: dict[str, _Node] = {}
        self.buckets: dict[tuple[Any, ...], _Bucket] = {}
        # Per edge and port, the first packets of its first LISTED_FLOWS connections so far.
        self._listed: dict[tuple[Any, ...], list[float]] = {}
        self.names: dict[tuple[str, str], set[str]] = defaultdict(set)
        self.asked: dict[tuple[str, str], set[str]] = defaultdict(set)
        self._spans: dict[tuple[Identity, frozenset[str]], Span] = {}
        self._unions: dict[tuple[frozenset[str], frozenset[str]], frozenset[str]] = {}
        self.attempts = _AttemptTallies()
        self._addresses = _AddressTallies()
        self._ports: dict[tuple[IpProtocol, int], PortSpec] = {}  # each once, shared
        self._evidence: dict[frozenset[Evidence], frozenset[Evidence]] = {}  # likewise
        self.loopback = 0

    def port(self, protocol: IpProtocol, port: int) -> PortSpec:
        found = self._ports.get((protocol, port))
        if found is None:
            found = self._ports[(protocol, port)] = PortSpec(protocol, port)
        return found

    def workload_node(self, workload: Workload) -> str:
        # Interned: one string per node, for every attribution and edge that names it.
        node_id = intern(str(workload.ref))
        if node_id not in self.nodes:
            ref = workload.ref
            self.nodes[node_id] = _Node(
                NodeRole.WORKLOAD,
                node_id,
                workload=workload,
                in_scope=ref in self.scope,
            )
        return node_id

    def node_for(self, identity: Identity) -> str:
        ip = identity.ip
        if identity.kind is EndpointKind.POD and identity.pod is not None:
            workload = self.resolver.workload(identity.pod.workload)
            node_id = self.workload_node(workload)
            if workload.host_network:
                self.nodes[node_id].addresses.add(ip)
            return node_id
        if identity.kind is EndpointKind.NODE and identity.node is not None:
            node_id = intern(f"node:{identity.node}")
            node = self.nodes.setdefault(node_id, _Node(NodeRole.NODE, identity.node))
        elif identity.kind is EndpointKind.EXTERNAL:
            node_id = intern(f"ip:{ip}")
            node = self.nodes.setdefault(node_id, _Node(NodeRole.EXTERNAL, ip))
        else:  # unresolved, or a Service address on the client side (a direction mistake)
            node_id = intern(f"unresolved:{ip}")
            node = self.nodes.setdefault(node_id, _Node(NodeRole.UNRESOLVED, ip))
        node.addresses.add(ip)
        return node_id

    def names_for(self, flow: Flow, client: Identity, server: Identity) -> _Names:
        """The DNS names of an outside server for this flow (none for anything else), and of
        those the names asked for: from answers sent to the flow's client, on this address or
        another its pod (or node) had."""
        if self.dns is None or server.kind is not EndpointKind.EXTERNAL:
            return _Names()
        accepts = asked_by(self.resolver, flow, client)
        return _Names(
            frozenset(self.dns.names_for_flow(flow, asked_by=accepts)),
            frozenset(self.dns.names_for_flow(flow, asked_by=accepts, asked=True)),
        )

    def note_lookups(self, flow: Flow, client: Identity) -> None:
        """The names a pod looked up in a DNS flow (to port 53) that its own side vouches for,
        on its workload's node."""
        if (
            self.dns is None
            or flow.server.port not in _DNS_PORT
            or client.kind is not EndpointKind.POD
            or client.pod is None
            or flow.first_seen not in self.span(client, flow.captures)
        ):
            return
        looked_up = self.dns.lookups_for_flow(flow, asked_by=asked_by(self.resolver, flow, client))
        node_id = self.workload_node(self.resolver.workload(client.pod.workload))
        self.nodes[node_id].lookups.update(looked_up)

    def union(self, one: frozenset[str], other: frozenset[str]) -> frozenset[str]:
        """The captures of a flow and its twin: one set per pair of sets (few), not per flow."""
        found = self._unions.get((one, other))
        if found is None:
            found = self._unions[(one, other)] = one | other
        return found

    def forget_joins(self) -> None:
        """Forget the unions of captures of one client address's joined connections, and the
        spans asked of them: another client address's are of other captures (its own), and a
        day has hundreds of thousands."""
        self._unions.clear()
        self._spans.clear()

    def span(self, identity: Identity, captures: frozenset[str]) -> Span:
        """When the side of a connection that was ``identity``, seen by ``captures``, is
        vouched for (every time without a witness)."""
        if self.witness is None:
            return ALWAYS
        key = (identity, captures)
        found = self._spans.get(key)
        if found is None:
            found = self._spans[key] = self.witness.span(identity, captures)
        return found

    def count(
        self, attribution: FlowAttribution, pairs: Sequence[_Pair], names: _Names | None = None
    ) -> None:
        """Connections each seen as a flow and perhaps its twin (``pairs``, by :func:`_flow_key`
        of the flows), counted alike (``attribution``: the first stands for all): each connection
        once, with the larger count of packets of its two views."""
        packets = size = 0
        for flow, twin in pairs:
            if twin is None:
                packets += flow.packets
                size += flow.bytes
            else:
                packets += max(flow.packets, twin.packets)
                size += max(flow.bytes, twin.bytes)
        views = [view for pair in pairs for view in pair if view is not None]
        seen = _Seen(
            min(view.first_seen for view in views),
            max(view.last_seen for view in views),
            {view.evidence for view in views},
            any(view.answered for view in views),
        )
        self._add(attribution, len(pairs), packets, size, pairs, seen, names, ordered=True)

    def count_group(
        self, attribution: FlowAttribution, flows: FlowGroup, names: _Names | None = None
    ) -> None:
        """Connections each seen by one flow (of one group, by time): each counted.
        ``attribution``'s flow is their first (``_count_group``): kept as it is, the others that
        may be listed made from the columns."""
        earliest = len(_earliest(flows.firsts, LISTED_FLOWS + 1, _itself))
        seen = _Seen(flows.firsts[0], max(flows.lasts), flows.evidence(), flows.any_answered())
        kept = [attribution.flow, *flows.flows(1, earliest)]
        self._add(
            attribution,
            len(flows),
            sum(flows.packets),
            sum(flows.sizes),
            [(flow, None) for flow in kept],
            seen,
            names,
        )

    def _add(
        self,
        attribution: FlowAttribution,
        connections: int,
        packets: int,
        size: int,
        earliest: Sequence[_Pair],
        seen: _Seen,
        names: _Names | None,
        *,
        ordered: bool = False,
    ) -> None:
        """Add to the bucket of connections counted alike (same edge, port, Service, sides and
        addresses seen: what the attributions tell), whose first attribution stands for all.
        ``earliest``: the first connections (at least those that may be listed), ``seen``: what
        every flow seen of them adds up to."""
        key = (attribution.client, attribution.server, attribution.port)
        key += _counted_alike(attribution)
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = self.buckets[key] = _Bucket(attribution)
        bucket.connections += connections
        bucket.packets += packets
        bucket.bytes += size
        looked_at = bucket.keep(earliest, ordered=ordered)
        if looked_at:
            # When the first connections of the edge and port so far started: a bucket keeps
            # only those of its own that may be listed, so the memory follows buckets, not
            # connections.
            place = key[:3]
            first = sorted([*self._listed.get(place, ()), *looked_at])[:LISTED_FLOWS]
            self._listed[place] = first
            if len(first) == LISTED_FLOWS:
                bucket.prune(first[-1])
        bucket.first_seen = min(bucket.first_seen, seen.first_seen)
        bucket.last_seen = max(bucket.last_seen, seen.last_seen)
        evidence = bucket.evidence | seen.evidence
        bucket.evidence = self._evidence.setdefault(evidence, evidence)
        bucket.answered = bucket.answered or seen.answered
        if names is not None and names.told:
            edge = (attribution.client, attribution.server)
            self.names[edge].update(names.told)
            self.asked[edge].update(names.asked)
            self.nodes[attribution.server].names.update(names.told)

    def graph(self) -> WorkloadGraph:
        edges_ports: dict[tuple[str, str], dict[PortSpec, EdgeStats]] = defaultdict(dict)
        by_place: dict[tuple[str, str, PortSpec], list[_Bucket]] = defaultdict(list)
        for bucket in self.buckets.values():
            attribution = bucket.attribution
            by_place[(attribution.client, attribution.server, attribution.port)].append(bucket)
            stats = EdgeStats(
                flows=bucket.connections,
                packets=bucket.packets,
                bytes=bucket.bytes,
                first_seen=bucket.first_seen,
                last_seen=bucket.last_seen,
                evidence=bucket.evidence,
                services=frozenset({attribution.service}) if attribution.service else _NO_SERVICES,
                assumed=attribution.assumed,
                answered=bucket.answered,
                vouched=attribution.vouched,
            )
            ports = edges_ports[(attribution.client, attribution.server)]
            known = ports.get(attribution.port)
            ports[attribution.port] = stats if known is None else known.merged(stats)
        # Listed one edge and port at a time (what WorkloadGraph would do with them all): a day's
        # graph would otherwise hold millions of attributions at its peak, most to be trimmed.
        attributions = []
        for place in sorted(by_place):
            buckets = by_place.pop(place)
            listed = [attribution for bucket in buckets for attribution in bucket.attributions()]
            for bucket in buckets:
                bucket.first = []  # now in its attributions
            attributions += _trimmed(sorted(listed, key=_attributed_flow_key))
        nodes = []
        for node_id, node in self.nodes.items():
            addresses = tuple(sorted(node.addresses, key=address_key))
            label = node.label
            if node.role is NodeRole.NODE:
                label = node_label(node.label, addresses)
            nodes.append(
                GraphNode(
                    node_id,
                    node.role,
                    label,
                    workload=node.workload,
                    names=tuple(sorted(node.names)),
                    lookups=tuple(sorted(node.lookups)),
                    in_scope=node.in_scope,
                    addresses=addresses,
                )
            )
        edges = [
            GraphEdge(
                client,
                server,
                dict(sorted(ports.items())),
                tuple(sorted(self.names.get((client, server), ()))),
                tuple(sorted(self.asked.get((client, server), ()))),
            )
            for (client, server), ports in edges_ports.items()
        ]
        return WorkloadGraph(
            tuple(nodes),
            tuple(edges),
            tuple(attributions),
            tuple(self.attempts.groups()),
            self.loopback,
            self.attempts.totals_left_out(),
            tuple(self._addresses.left_out()),
        )

    def past_address_bound(self, members: FlowGroup) -> bool:
        """Whether ``members`` (established flows) are between a workload side and an address
        past the first :data:`MAX_ADDRESSES` of that side in their direction and of their kind
        (one way only, or answered by an unresolved address): then counted here, by port, not
        drawn. Outside addresses that answered are never past it."""
        start = members.first_seen()
        protocol, server = members.protocol, members.server
        client = _describe(self.resolver.resolve(members.client_ip, start))
        target = _describe(
            self.resolver.resolve(server.ip, start, port=server.port, protocol=protocol)
        )
        port = self.port(protocol, server.port)
        answered = members.any_answered()
        bounded = _UNRESOLVED_PREFIX if answered else _ADDRESS_PREFIXES
        if target.startswith(bounded):
            key, address = (client, "to", port, answered), server.ip
        elif client.startswith(bounded):
            key, address = (target, "from", port, answered), members.client_ip
        else:
            return False
        return self._addresses.past_bound(key, address, members)


def node_label(name: str, addresses: Iterable[str]) -> str:
    """A cluster node's label: its name and the addresses seen for it."""
    return f"{name} ({', '.join(addresses)})"


def asked_by(resolver: Resolver, flow: Flow, client: Identity) -> Callable[[str], bool]:
    """Whether a DNS answer sent to an address went to ``flow``'s client (``client``, as
    resolved at the flow's first packet): its address, or another its pod (or node) had then."""

    def accepts(ip: str) -> bool:
        if ip == client.ip:
            return True
        asker = resolver.resolve(ip, flow.first_seen)
        if client.pod is not None:
            return asker.pod == client.pod
        return client.kind is EndpointKind.NODE and asker.node == client.node

    return accepts


def is_loopback(flow: Flow) -> bool:
    """Whether ``flow`` is on a loopback address: between containers of one pod (or processes of
    one node), never on the pod network, so no NetworkPolicy sees it."""
    return is_loopback_address(flow.client.ip) or is_loopback_address(flow.server.ip)


def _split_at_handovers(flows: FlowGroup, resolver: Resolver) -> FlowGroup:
    """Each flow, plus a copy starting at its last packet when an end was someone else by then.

    A flow is one 5-tuple over the whole capture: when an address passes from one pod to another
    and the new pod happens to reuse the old one's port towards the same server, both
    connections are one flow. Resolved at its first packet only, the second pod's traffic would
    be the first pod's, and its policy would miss it.
    """
    split: list[Flow] = []
    for flow in flows.flows():
        split.append(flow)
        if flow.last_seen <= flow.first_seen or (
            resolver.timeless(flow.client.ip, flow.first_seen)
            and resolver.timeless(flow.server.ip, flow.first_seen)
        ):
            continue  # nobody else by then
        if any(
            resolver.resolve(ip, flow.first_seen, port=port, protocol=protocol)
            != resolver.resolve(ip, flow.last_seen, port=port, protocol=protocol)
            for ip, port, protocol in (
                (flow.client.ip, None, None),
                (flow.server.ip, flow.server.port, flow.protocol),
            )
        ):
            split.append(replace(flow, first_seen=flow.last_seen))
    return flows if len(split) == len(flows) else FlowGroup.of(split)


def _describe(identity: Identity) -> str:
    """Who an address was, for an :class:`AttemptGroup` (no graph node is made for it)."""
    if identity.pod is not None:
        return str(identity.pod.workload)
    if identity.service is not None:
        return "service:" + "/".join(identity.service)
    if identity.kind is EndpointKind.NODE and identity.node is not None:
        return f"node:{identity.node}"
    prefix = "ip" if identity.kind is EndpointKind.EXTERNAL else "unresolved"
    return f"{prefix}:{identity.ip}"


_FlowKey = tuple[float, str, str, str, float, int, int]


def _flow_key(flow: Flow) -> _FlowKey:
    return (
        flow.first_seen,
        str(flow.protocol),
        str(flow.client),
        str(flow.server),
        flow.last_seen,
        flow.packets,
        flow.bytes,
    )


def _sorted_attributions(
    attributions: Iterable[FlowAttribution],
) -> tuple[FlowAttribution, ...]:
    """``attributions`` by edge, port and :func:`_flow_key`, :func:`_trimmed`: per edge and
    port, so that the sort keys of a day's millions never all exist at once."""
    by_place: dict[tuple[str, str, PortSpec], list[FlowAttribution]] = defaultdict(list)
    for attribution in attributions:
        by_place[(attribution.client, attribution.server, attribution.port)].append(attribution)
    ordered: list[FlowAttribution] = []
    for place in sorted(by_place):
        ordered += _trimmed(sorted(by_place.pop(place), key=_attributed_flow_key))
    return tuple(ordered)


def _trimmed(ordered: list[FlowAttribution]) -> list[FlowAttribution]:
    """One edge and port's attributions (sorted): the first ``LISTED_FLOWS``, what report.html
    lists one by one; of the rest, the first of each group of connections counted alike
    (:func:`_counted_alike`) standing for all of the group's (``connections``): what the count
    of the connections not listed and the addresses an end used need (``replaying``)."""
    if len(ordered) <= LISTED_FLOWS:
        return ordered
    rest: dict[tuple[Any, ...], list[Any]] = {}  # group → [its first attribution, connections]
    for attribution in ordered[LISTED_FLOWS:]:
        group = _counted_alike(attribution)
        found = rest.get(group)
        if found is None:
            rest[group] = [attribution, attribution.connections]
        else:
            found[1] += attribution.connections
    return ordered[:LISTED_FLOWS] + [
        first if first.connections == connections else replace(first, connections=connections)
        for first, connections in rest.values()
    ]


def _counted_alike(attribution: FlowAttribution) -> tuple[Any, ...]:
    """What the attributions of connections counted alike on one edge and port share (their
    bucket, ``_Builder._add``): all but the flow, its twin and their count, and the addresses
    they were between."""
    twin = attribution.twin
    return (
        attribution.service,
        attribution.assumed,
        attribution.vouched,
        attribution.window,
        attribution.flow.client.ip,
        attribution.flow.server.ip,
        None if twin is None else twin.server.ip,
    )


def _attributed_flow_key(attribution: FlowAttribution) -> _FlowKey:
    return _flow_key(attribution.flow)


def build_graph(
    flows: Iterable[Flow],
    resolver: Resolver,
    dns: NameTable | None = None,
    *,
    scope: Scope | Collection[WorkloadRef],
    witness: Witness | None = None,
) -> WorkloadGraph:
    """The workload graph of ``flows``. ``scope``: the workloads whose pods were captured
    (``Resolver.scope_of``); they are marked ``in_scope`` and present even when silent. ``dns``
    gives the names each flow's client was told for an outside server. ``witness`` says which
    sides of each flow its captures vouch for (``vouching.Witnesses``); without one, every side
    is.

    The cost grows with the distinct endpoint pairs, not the connections: flows with the same
    protocol, client address, server address and port, seen by the same captures, are a group
    (a client that opens a connection per request makes thousands), resolved once when its
    addresses and a Service's backends are the same throughout (``Resolver.timeless``,
    ``Resolver.steady_backends``) and counted once per stretch of time in which the same sides
    are vouched for. A group whose client may have twins (a Service or an unknown address
    called from the same client address, and a flow from it elsewhere) or whose identities
    change (an address reused) is counted flow by flow, as each flow is, with the same result.
    """
    scope_refs = scope.workloads if isinstance(scope, Scope) else frozenset(scope)
    builder = _Builder(resolver, dns, frozenset(scope_refs), witness)
    for ref in sorted(scope_refs):
        try:
            builder.workload_node(resolver.workload(ref))
        except KeyError:
            continue  # a workload this resolver never placed a pod in: nothing to draw
    # A flow's twin is from its client address (and port): the groups are counted one client
    # address at a time, so what a client's groups need (sorted copies, the twin join) lasts
    # as long as that. The graph is the same in any order.
    by_client: dict[tuple[IpProtocol, str], list[FlowGroup]] = defaultdict(list)
    for members in FlowTable.of(flows).groups:
        by_client[(members.protocol, members.client_ip)].append(members)
    for client_groups in by_client.values():
        groups: list[_Group] = []
        for members in client_groups:
            members = members.loaded()  # read from disk once (a day's, see analyser.spilling)
            client_ip, server_ip, start = members.client_ip, members.server.ip, members.first_seen()
            if not (resolver.timeless(client_ip, start) and resolver.timeless(server_ip, start)):
                members = _split_at_handovers(members, resolver)
            if is_loopback_address(client_ip) or is_loopback_address(server_ip):
                builder.loopback += len(members)
                continue
            attempts = members.places(established=False)
            if attempts:
                _count_attempts(builder, members, attempts, resolver)
                members = members.taken(members.places(established=True))
            if not len(members):
                continue
            if builder.past_address_bound(members):
                continue
            groups.append(_resolved_group(members, resolver))
        _count_client(builder, groups)
    return builder.graph()


def _count_attempts(
    builder: _Builder, members: FlowGroup, places: Iterable[int], resolver: Resolver
) -> None:
    """Count the flows of ``members`` at ``places``, never established, in their
    :class:`AttemptGroup`: none is kept on its own."""
    server, protocol = members.server, members.protocol
    port = builder.port(protocol, server.port)
    firsts, lasts, packets = members.firsts, members.lasts, members.packets
    for place in places:
        first_seen = firsts[place]
        client = resolver.resolve(members.client_ip, first_seen)
        target = resolver.resolve(server.ip, first_seen, port=server.port, protocol=protocol)
        key = (_describe(client), _describe(target), port)
        builder.attempts.of(key).add((server.ip,), 1, packets[place], first_seen, lasts[place])


# How _describe names an address that is no pod, Service or node.
_ADDRESS_PREFIXES = tuple(ID_PREFIXES[role] for role in sorted(ADDRESS_ROLES))
_UNRESOLVED_PREFIX = ID_PREFIXES[NodeRole.UNRESOLVED]


class _AddressTallies:
    """Per workload side, direction and kind (answered or one way only): the addresses its flows
    were kept for (at most :data:`MAX_ADDRESSES`, over all ports); per port too, the flows past
    them, counted."""

    def __init__(self) -> None:
        self._kept: dict[tuple[str, str, bool], set[str]] = {}
        self._past: dict[tuple[str, str, PortSpec, bool], _Tally] = {}

    def past_bound(
        self, key: tuple[str, str, PortSpec, bool], address: str, members: FlowGroup
    ) -> bool:
        side, direction, _, answered = key
        kept = self._kept.setdefault((side, direction, answered), set())
        if address in kept or len(kept) < MAX_ADDRESSES:
            kept.add(address)
            return False
        past = self._past.setdefault(key, _Tally(keeps_servers=False))
        past.add((), len(members), sum(members.packets), members.first_seen(), max(members.lasts))
        return True

    def left_out(self) -> Iterator[FlowsLeftOut]:
        for key, tally in self._past.items():
            side, direction, _, answered = key
            kept = len(self._kept[(side, direction, answered)])
            yield FlowsLeftOut(*key, kept, *tally.totals())


class _AttemptTallies(dict[AttemptKey, "_Tally"]):
    """Attempt groups being counted (:class:`_Tally`), by client, server and port: at
    most :data:`MAX_ATTEMPT_GROUPS`, the attempts of any other group counted in ``left_out``."""

    def __init__(self) -> None:
        super().__init__()
        self.left_out = _Tally(keeps_servers=False)

    def of(self, key: AttemptKey) -> _Tally:
        found = self.get(key)
        if found is None:
            if len(self) >= MAX_ATTEMPT_GROUPS:
                return self.left_out
            found = self[key] = _Tally()
        return found

    def groups(self) -> list[AttemptGroup]:
        return [tally.group(*key) for key, tally in self.items()]

    def totals_left_out(self) -> AttemptTotals:
        tally = self.left_out
        return AttemptTotals(*tally.totals()) if tally.count else AttemptTotals()


class _Tally:
    """Connections counted together: an :class:`AttemptGroup` as it is counted, attempt by
    attempt (``build_graph``) or group by group (:func:`merge_attempts`), with the servers'
    addresses; without them, attempts past the groups (:class:`AttemptTotals`) or flows past
    the addresses with rules (:class:`FlowsLeftOut`)."""

    __slots__ = ("count", "first_seen", "last_seen", "packets", "servers")

    def __init__(self, *, keeps_servers: bool = True) -> None:
        self.servers: set[str] | None = set() if keeps_servers else None
        self.count = 0
        self.packets = 0
        self.first_seen = math.inf
        self.last_seen = -math.inf

    def add(
        self,
        servers: Iterable[str],
        count: int,
        packets: int,
        first_seen: float,
        last_seen: float,
    ) -> None:
        if self.servers is not None:
            self.servers.update(servers)
        self.count += count
        self.packets += packets
        self.first_seen = min(self.first_seen, first_seen)
        self.last_seen = max(self.last_seen, last_seen)

    def group(self, client: str, server: str, port: PortSpec) -> AttemptGroup:
        return AttemptGroup(
            client,
            server,
            port,
            tuple(sorted(self.servers or (), key=address_key)),
            *self.totals(),
        )

    def totals(self) -> tuple[int, int, float, float]:
        """How many, their packets, the first seen and the last."""
        return self.count, self.packets, self.first_seen, self.last_seen


def _count_client(builder: _Builder, groups: Sequence[_Group]) -> None:
    """The established flows of one client address, by group: a group whose identities stay
    the same counted at once, unless the client may have twins (:func:`_may_have_twins`);
    the others joined flow by flow."""
    if _may_have_twins(groups):
        one_by_one = list(groups)
    else:
        one_by_one = [group for group in groups if group.steady is None]
        for group in groups:
            if group.steady is not None:
                _count_group(builder, group.members, group.steady)
    if one_by_one:
        _count_flows(builder, _in_flow_order(_resolved_flows(one_by_one, builder.resolver)))
        builder.forget_joins()


# A flow and who its client and server were at its first packet.
_Resolved = tuple[Flow, Identity, Identity]


def _resolved_flow(flow: Flow, resolver: Resolver) -> _Resolved:
    return (
        flow,
        resolver.resolve(flow.client.ip, flow.first_seen),
        resolver.resolve(
            flow.server.ip, flow.first_seen, port=flow.server.port, protocol=flow.protocol
        ),
    )


def _resolved_flows(groups: Iterable[_Group], resolver: Resolver) -> list[_Resolved]:
    """The flows of ``groups`` with their ends: a group's own when they stay the same."""
    resolved: list[_Resolved] = []
    for group in groups:
        if group.steady is None:
            resolved += (_resolved_flow(flow, resolver) for flow in group.members.flows())
        else:
            ends = (group.steady.client, group.steady.server)
            resolved += ((flow, *ends) for flow in group.members.flows())
    return resolved


def _in_flow_order(resolved: list[_Resolved]) -> list[_Resolved]:
    """``resolved`` sorted by :func:`_flow_key` of the flows, which is made only for flows whose
    first packets are at the same time (the text of their ends takes time to make)."""
    resolved.sort(key=_first_seen)
    start = 0
    while start < len(resolved):
        end = start + 1
        at = resolved[start][0].first_seen
        while end < len(resolved) and resolved[end][0].first_seen == at:
            end += 1
        if end - start > 1:
            resolved[start:end] = sorted(resolved[start:end], key=_resolved_key)
        start = end
    return resolved


def _first_seen(resolved: _Resolved) -> float:
    return resolved[0].first_seen


def _resolved_key(resolved: _Resolved) -> _FlowKey:
    return _flow_key(resolved[0])


@dataclass(frozen=True, slots=True)
class _Steady:
    """Who a group's ends were, the same for each of its flows; a Service's backends too."""

    client: Identity
    server: Identity
    backends: tuple[ServiceBackend, ...] = ()


@dataclass(frozen=True, slots=True)
class _Group:
    members: FlowGroup  # established, by time (FlowGroup.by_time)
    servers: frozenset[EndpointKind]  # what the server address was, over the flows
    steady: _Steady | None  # None: the identities may differ from flow to flow


# One set per kind, shared by the groups (a day has a hundred thousand).
_ONE_KIND = {kind: frozenset({kind}) for kind in EndpointKind}


def _resolved_group(members: FlowGroup, resolver: Resolver) -> _Group:
    members = members.by_time()
    protocol, client_ip, server_ip, server_port = (
        members.protocol,
        members.client_ip,
        members.server.ip,
        members.server.port,
    )
    start = members.firsts[0]
    if resolver.timeless(client_ip, start) and resolver.timeless(server_ip, start):
        client = resolver.resolve(client_ip, start)
        server = resolver.resolve(server_ip, start, port=server_port, protocol=protocol)
        servers = _ONE_KIND[server.kind]
        if server.service is None:
            return _Group(members, servers, _Steady(client, server))
        backends = resolver.steady_backends(
            server.service,
            server_port,
            protocol,
            start,
            family=address_key(server.ip)[0],
        )
        steady = None if backends is None else _Steady(client, server, backends)
        return _Group(members, servers, steady)
    servers = frozenset(
        resolver.resolve(server_ip, first_seen, port=server_port, protocol=protocol).kind
        for first_seen in members.firsts
    )
    return _Group(members, servers, None)


def _may_have_twins(groups: Iterable[_Group]) -> bool:
    """Whether the flows of one client address (and protocol), by group, may be twins of each
    other: a flow to a Service and one to anything else, or one to an unknown address and one
    to a pod (see ``_Twins``). Its flows are then counted one by one."""
    kinds: set[EndpointKind] = set()
    for group in groups:
        kinds |= group.servers
    return (EndpointKind.SERVICE in kinds and len(kinds) > 1) or (
        EndpointKind.POD in kinds and not kinds.isdisjoint(_UNKNOWN)
    )


def _pieces(members: FlowGroup, spans: Iterable[Span]) -> Iterator[FlowGroup]:
    """A group's flows (by first packet) cut where a span starts or ends: within a piece, each
    span holds every flow's first packet or none."""
    times = members.firsts
    cuts = {0, len(members)}
    cuts.update(bisect_left(times, edge) for span in spans for edge in span if math.isfinite(edge))
    ordered = sorted(cuts)
    if len(ordered) == 2:
        yield members
        return
    for begin, end in pairwise(ordered):
        if begin < end:
            yield members.taken(range(begin, end))


def _count_group(builder: _Builder, members: FlowGroup, steady: _Steady) -> None:
    """A group whose identities stay the same and that has no twins: counted once per piece of
    time with the same vouched sides (as its flows one by one would be, in sum)."""
    client, server = steady.client, steady.server
    client_node = builder.node_for(client)
    client_span = builder.span(client, members.captures)
    if server.service is None:
        server_node = builder.node_for(server)
        server_span = builder.span(server, members.captures)
        port = PortSpec(members.protocol, members.server.port)
        for piece in _pieces(members, (client_span, server_span)):
            first = piece.flow(0)
            builder.note_lookups(first, client)  # the same for each flow of a piece
            at = first.first_seen
            vouched = Sides(at in client_span, at in server_span)
            # DNS names told up to a flow's first packet only add up: the last flow's are all.
            names = builder.names_for(piece.flow(len(piece) - 1), client, server)
            attribution = FlowAttribution(
                first, client_node, server_node, port, vouched=vouched, connections=len(piece)
            )
            builder.count_group(attribution, piece, names)
        return
    service = "/".join(server.service)
    # A Service with nothing behind it (or not on this port) keeps its address visible; else
    # each target (a workload and port) is vouched for when one of its pods could be.
    targets: dict[tuple[str, PortSpec], list[Span]] = {}
    if not steady.backends:
        unbacked = builder.node_for(Identity(EndpointKind.UNRESOLVED, server.ip))
        targets[(unbacked, PortSpec(members.protocol, members.server.port))] = [ALWAYS]
    for backend in steady.backends:
        target = (builder.node_for(backend.identity), PortSpec(members.protocol, backend.port))
        targets.setdefault(target, []).append(builder.span(backend.identity, members.captures))
    spans = [client_span, *(span for found in targets.values() for span in found)]
    assumed = bool(steady.backends)
    for piece in _pieces(members, spans):
        first = piece.flow(0)
        builder.note_lookups(first, client)  # the same for each flow of a piece
        at = first.first_seen
        for (server_node, port), server_spans in sorted(targets.items()):
            vouched = Sides(at in client_span, any(at in span for span in server_spans))
            attribution = FlowAttribution(
                first,
                client_node,
                server_node,
                port,
                service=service,
                assumed=assumed,
                vouched=vouched,
                connections=len(piece),
            )
            builder.count_group(attribution, piece)


def _count_flows(builder: _Builder, resolved: Sequence[_Resolved]) -> None:
    """Established flows with their ends, by :func:`_flow_key`, counted one by one: a flow to a
    Service joined to its twin (the server side's capture of the connection), else to the
    Service's backends; a flow to an unknown address joined to its twin; any other flow as it
    is. Each flow is joined (or not) in that order, then the connections counted alike are
    counted together (:class:`_Joins`): the cost of a connection is its join."""
    for flow, client, _ in resolved:
        builder.note_lookups(flow, client)
    twins = _Twins(resolved)
    joins = _Joins()
    for flow, client, server in resolved:
        if server.kind is EndpointKind.SERVICE:
            _join_service_flow(builder.resolver, resolved, twins, joins, flow, client, server)
    for index, (flow, client, server) in enumerate(resolved):
        if server.kind in _UNKNOWN and index not in twins.consumed:
            # To an address that is no pod and no Service the snapshot knows, joined to the
            # server side's capture (_Twins.of_unknown_flow: other captures than this flow's):
            # DNAT by a Service missing from the snapshot. Two real connections from one client
            # port to two places would both be in the client's capture.
            twin_index = twins.of_unknown_flow(flow)
            if twin_index is not None:
                twins.consumed.update((index, twin_index))
                twin, _, twin_server = resolved[twin_index]
                joins.twinned(None, flow, client, twin, twin_server)
    for index, (flow, client, server) in enumerate(resolved):
        if server.kind is not EndpointKind.SERVICE and index not in twins.consumed:
            joins.plain(flow, client, server)
    joins.count(builder)


_UNKNOWN = (EndpointKind.UNRESOLVED, EndpointKind.EXTERNAL)


class _Near(NamedTuple):
    """A flow found near a moment: how far apart in time, and its index (lower wins a tie)."""

    apart: float
    flow_index: int


class _ByTime:
    """Flows (their indices) sorted by first packet, then index, for the nearest one in time not
    yet taken. Taken flows are jumped over through links that path compression keeps short, so
    finding twins for every flow costs about n log n, not n² when thousands of flows share a
    client address and port (one UDP source port to many servers)."""

    def __init__(self, entries: list[tuple[float, int]]) -> None:
        entries.sort()
        self.times = [first_seen for first_seen, _ in entries]
        self.indices = [index for _, index in entries]
        # Per position, where to look on for a flow not taken: itself, until it is taken.
        self._forward = list(range(len(entries)))
        self._backward = list(range(len(entries)))

    def _untaken(self, position: int, step: int, taken: Collection[int]) -> int:
        """The first position from ``position`` on (moving by ``step``, 1 or -1) whose flow is
        not taken; -1 or the length when there is none."""
        links = self._forward if step > 0 else self._backward
        passed = []
        while 0 <= position < len(links):
            if links[position] != position:
                passed.append(position)
                position = links[position]
            elif self.indices[position] in taken:
                passed.append(position)
                position += step
            else:
                break
        for skipped in passed:
            links[skipped] = position
        return position

    def nearest(self, at: float, taken: Collection[int]) -> _Near | None:
        """The flow not taken that is nearest ``at`` and within TWIN_WINDOW, the lowest index
        among equally near ones; None when there is none."""
        start = bisect_left(self.times, at)
        found = []
        after = self._untaken(start, 1, taken)
        if after < len(self.times):
            found.append(_Near(abs(self.times[after] - at), self.indices[after]))
        before = self._untaken(start - 1, -1, taken)
        if before >= 0:
            # The first of the flows not taken at that moment: the lowest index.
            first = self._untaken(bisect_left(self.times, self.times[before]), 1, taken)
            found.append(_Near(abs(self.times[first] - at), self.indices[first]))
        return min((near for near in found if near.apart <= TWIN_WINDOW), default=None)


# More flows than this from one client address and port (one UDP socket to many servers, say)
# are indexed by time (``_Crowd``); fewer are looked through.
CROWDED = 16


class _Crowd:
    """The flows of one crowded client address and port: by the server address they went to
    and, those to a pod, by the captures that saw them, each sorted by time."""

    def __init__(self, indices: Iterable[int], resolved: Sequence[_Resolved]) -> None:
        by_server: dict[str, list[tuple[float, int]]] = defaultdict(list)
        to_pods: dict[frozenset[str], list[tuple[float, int]]] = defaultdict(list)
        for index in indices:
            flow, _, server = resolved[index]
            by_server[flow.server.ip].append((flow.first_seen, index))
            if server.kind is EndpointKind.POD:
                to_pods[flow.captures].append((flow.first_seen, index))
        self.by_server = {ip: _ByTime(entries) for ip, entries in by_server.items()}
        self.to_pods = {captures: _ByTime(entries) for captures, entries in to_pods.items()}


def _nearest(hits: Iterable[_Near | None]) -> int | None:
    found = min((hit for hit in hits if hit is not None), default=None)
    return None if found is None else found.flow_index


class _Twins:
    """Where the server side's capture of a connection is looked for: the flows not to a Service
    address (``resolved``' indices) by the client address and port they saw (with the protocol).
    Of the flows from one client port, the one nearest in time that fits is the twin, the lowest
    index among equally near ones; ``consumed``: flows already counted with a twin."""

    def __init__(self, resolved: Sequence[_Resolved]) -> None:
        self.resolved = resolved
        # One entry per flow of a day's captures, so flat and small: most client ports are used
        # once in a window (an index alone); more make a list, and a crowd a _Crowd when asked.
        places: dict[_ClientKey, int | list[int]] = {}
        for index, (flow, _, server) in enumerate(resolved):
            if server.kind is EndpointKind.SERVICE:
                continue
            key = _client_key(flow)
            known = places.get(key)
            if known is None:
                places[key] = index
            elif isinstance(known, int):
                places[key] = [known, index]
            else:
                known.append(index)
        self.places = places
        self._crowds: dict[_ClientKey, _Crowd] = {}
        self.consumed: set[int] = set()

    def _near(
        self, key: _ClientKey, at: float, fits: Callable[[Flow, Identity], bool]
    ) -> _Near | None:
        """Of the few flows from ``key``'s client port, the nearest to ``at`` that ``fits``."""
        found = self.places.get(key)
        best = None
        for index in (found,) if isinstance(found, int) else found or ():
            if index in self.consumed:
                continue
            flow, _, server = self.resolved[index]
            apart = abs(flow.first_seen - at)
            if apart <= TWIN_WINDOW and fits(flow, server):
                near = _Near(apart, index)
                if best is None or near < best:
                    best = near
        return best

    def _crowd(self, key: _ClientKey) -> _Crowd | None:
        found = self.places.get(key)
        if not isinstance(found, list) or len(found) <= CROWDED:
            return None
        crowd = self._crowds.get(key)
        if crowd is None:
            crowd = self._crowds[key] = _Crowd(found, self.resolved)
        return crowd

    def of_service_flow(self, flow: Flow, backend_ips: Collection[str]) -> int | None:
        """The twin of a flow to a Service: to one of its backends (``backend_ips``) if any,
        else to any pod; the nearest in time, then the lowest index."""
        key, at = _client_key(flow), flow.first_seen
        crowd = self._crowd(key)
        if crowd is None:
            found = self._near(key, at, lambda seen, _: seen.server.ip in backend_ips)
            if found is None:
                found = self._near(key, at, _to_pod)
            return None if found is None else found.flow_index
        by_server = crowd.by_server
        found_index = _nearest(
            by_server[ip].nearest(at, self.consumed) for ip in backend_ips if ip in by_server
        )
        if found_index is None:
            found_index = _nearest(
                by_time.nearest(at, self.consumed) for by_time in crowd.to_pods.values()
            )
        return found_index

    def of_unknown_flow(self, flow: Flow) -> int | None:
        """The twin of a flow to an unknown address: to a pod, seen by other captures than
        ``flow``; the nearest in time, then the lowest index."""
        key, at, seen = _client_key(flow), flow.first_seen, flow.captures
        crowd = self._crowd(key)
        if crowd is None:
            found = self._near(
                key,
                at,
                lambda twin, server: _to_pod(twin, server) and seen.isdisjoint(twin.captures),
            )
            return None if found is None else found.flow_index
        return _nearest(
            by_time.nearest(at, self.consumed)
            for captures, by_time in crowd.to_pods.items()
            if captures.isdisjoint(seen)
        )


def _to_pod(_: Flow, server: Identity) -> bool:
    return server.kind is EndpointKind.POD


_ClientKey = tuple[IpProtocol, str, int]


def _client_key(flow: Flow) -> _ClientKey:
    """What both captures of one connection agree on: protocol, client address and port."""
    return (flow.protocol, flow.client.ip, flow.client.port)


def _join_service_flow(
    resolver: Resolver,
    resolved: Sequence[_Resolved],
    twins: _Twins,
    joins: _Joins,
    flow: Flow,
    client: Identity,
    server: Identity,
) -> None:
    """A flow to a Service, joined to the server side's view of the connection (same client
    address, port and protocol, first seen within TWIN_WINDOW, to one of the Service's backends,
    or to a pod the snapshot did not list behind it: EndpointSlices are from the end of the
    window); else to the Service's backends at the time, or, with none, to its address."""
    assert server.service is not None
    service = intern("/".join(server.service))
    version = address_key(server.ip)[0]
    at, called, protocol = flow.first_seen, flow.server.port, flow.protocol
    backends = resolver.steady_backends(server.service, called, protocol, at, family=version)
    if backends is None:
        backends = resolver.service_backends(server.service, called, protocol, at, family=version)
    index = twins.of_service_flow(flow, {b.identity.ip for b in backends})
    if index is not None:
        twins.consumed.add(index)
        twin, _, twin_server = resolved[index]
        joins.twinned(service, flow, client, twin, twin_server)
    elif not backends:
        joins.unbacked(service, flow, client, server)
    else:
        joins.assumed(service, flow, client, backends)


class _Joins:
    """The connections of :func:`_count_flows` as joined, gathered by what they are counted as
    (the same client and server, Service, captures and addresses seen), each group in flow
    order: what is the same for a group (graph nodes, the spans its sides are vouched for in,
    a Service's targets) is worked out once, and its connections are counted together, per
    vouched sides, as one by one they would be.

    Identities (and a Service's backends) are told apart by ``id`` while gathering: hashing
    them is most of the cost of a connection, and they live as long as the joins (the
    resolved flows hold them). Equal ones told apart only make two groups of one bucket."""

    def __init__(self) -> None:
        self._twinned: dict[tuple[Any, ...], list[_Pair]] = defaultdict(list)
        self._unbacked: dict[tuple[Any, ...], list[Flow]] = defaultdict(list)
        self._assumed: dict[tuple[Any, ...], list[Flow]] = defaultdict(list)
        self._plain: dict[tuple[Any, ...], list[Flow]] = defaultdict(list)
        self._known: dict[int, Any] = {}  # id → identity or backends

    def _id(self, thing: object) -> int:
        self._known.setdefault(id(thing), thing)
        return id(thing)

    def twinned(
        self, service: str | None, flow: Flow, client: Identity, twin: Flow, server: Identity
    ) -> None:
        """``flow`` seen by the client's capture (to the address it called) and as ``twin`` by
        the server's (from the pod that answered, ``server``)."""
        key = (
            service,
            self._id(client),
            self._id(server),
            flow.protocol,
            twin.server.port,
            flow.captures,
            twin.captures,
            flow.client.ip,
            flow.server.ip,
            twin.server.ip,
        )
        self._twinned[key].append((flow, twin))

    def unbacked(self, service: str, flow: Flow, client: Identity, server: Identity) -> None:
        """A flow to a Service with nothing behind it (or not on this port)."""
        key = (service, self._id(client), server.ip, flow.protocol, flow.server.port)
        self._unbacked[(*key, flow.captures, flow.client.ip)].append(flow)

    def assumed(
        self, service: str, flow: Flow, client: Identity, backends: tuple[ServiceBackend, ...]
    ) -> None:
        """A flow to a Service whose server side was not captured: its backends at the time."""
        key = (service, self._id(client), self._id(backends), flow.protocol, flow.captures)
        self._assumed[(*key, flow.client.ip, flow.server.ip)].append(flow)

    def plain(self, flow: Flow, client: Identity, server: Identity) -> None:
        """Any other flow, counted as it is."""
        key = (self._id(client), self._id(server), flow.protocol, flow.server.port)
        self._plain[(*key, flow.captures, flow.client.ip, flow.server.ip)].append(flow)

    def count(self, builder: _Builder) -> None:
        known = self._known
        for (service, client, server, *rest), pairs in self._twinned.items():
            _count_twinned(builder, service, known[client], known[server], rest, pairs)
        for (service, client, address, protocol, port, seen, _), flows in self._unbacked.items():
            # The Service's address stays visible; only the client's side can be vouched for.
            client_node = builder.node_for(known[client])
            server_node = builder.node_for(Identity(EndpointKind.UNRESOLVED, address))
            for client_vouched, members in _split(flows, builder.span(known[client], seen)).items():
                attribution = FlowAttribution(
                    members[0][0],
                    client_node,
                    server_node,
                    builder.port(protocol, port),
                    service=service,
                    vouched=Sides(client=client_vouched),
                )
                builder.count(attribution, members)
        for (service, client, backends, protocol, seen, *_), flows in self._assumed.items():
            _count_assumed(builder, service, known[client], known[backends], protocol, seen, flows)
        for (client, server, *rest), flows in self._plain.items():
            _count_plain(builder, known[client], known[server], rest, flows)


def _count_twinned(
    builder: _Builder,
    service: str | None,
    client: Identity,
    server: Identity,
    key: Sequence[Any],
    pairs: Sequence[_Pair],
) -> None:
    """Connections seen from both ends (``_Joins.twinned``; ``key``: the rest of its key): each
    side is vouched for at the time its own view was resolved, by the captures of both views."""
    protocol, port, seen, twin_seen, *_ = key
    captures = builder.union(seen, twin_seen)
    client_span, server_span = builder.span(client, captures), builder.span(server, captures)
    client_node, server_node = builder.node_for(client), builder.node_for(server)
    by_sides: dict[tuple[bool, bool], list[_Pair]] = defaultdict(list)
    for flow, twin in pairs:
        assert twin is not None
        by_sides[(flow.first_seen in client_span, twin.first_seen in server_span)].append(
            (flow, twin)
        )
    for sides, members in by_sides.items():
        flow, twin = members[0]
        attribution = FlowAttribution(
            flow,
            client_node,
            server_node,
            builder.port(protocol, port),
            service=service,
            twin=twin,
            vouched=_SIDES[sides],
        )
        builder.count(attribution, members)


def _count_plain(
    builder: _Builder, client: Identity, server: Identity, key: Sequence[Any], flows: Sequence[Flow]
) -> None:
    """Flows counted as they are (``_Joins.plain``; ``key``: the rest of its key), with the DNS
    names each was told."""
    protocol, port, seen, *_ = key
    client_span, server_span = builder.span(client, seen), builder.span(server, seen)
    client_node, server_node = builder.node_for(client), builder.node_for(server)
    by_sides: dict[tuple[bool, bool], list[Flow]] = defaultdict(list)
    for flow in flows:
        by_sides[(flow.first_seen in client_span, flow.first_seen in server_span)].append(flow)
    for sides, members in by_sides.items():
        told: set[str] = set()
        asked: set[str] = set()
        for flow in members:
            names = builder.names_for(flow, client, server)
            if names.told:
                told |= names.told
                asked |= names.asked
        attribution = FlowAttribution(
            members[0],
            client_node,
            server_node,
            builder.port(protocol, port),
            vouched=_SIDES[sides],
        )
        builder.count(
            attribution,
            [(flow, None) for flow in members],
            _Names(frozenset(told), frozenset(asked)),
        )


def _split(flows: Sequence[Flow], span: Span) -> dict[bool, list[_Pair]]:
    """``flows`` (as connections without twins) by whether ``span`` holds their first packet."""
    split: dict[bool, list[_Pair]] = defaultdict(list)
    for flow in flows:
        split[flow.first_seen in span].append((flow, None))
    return split


def _count_assumed(
    builder: _Builder,
    service: str,
    client: Identity,
    backends: tuple[ServiceBackend, ...],
    protocol: IpProtocol,
    seen: frozenset[str],
    flows: Sequence[Flow],
) -> None:
    """Flows to a Service whose server side was not captured, counted on its backends at the time
    (``assumed``). Several pods of one workload on one port are one edge, and a flow counts
    once on it. Its server side is vouched for when one of those pods could not have seen it (no
    capture of it ran then): a captured backend whose capture did not see it was not the one."""
    client_node = builder.node_for(client)
    targets: dict[tuple[str, PortSpec], list[Span]] = defaultdict(list)
    for backend in backends:
        target = (builder.node_for(backend.identity), PortSpec(protocol, backend.port))
        targets[target].append(builder.span(backend.identity, seen))
    for client_vouched, members in _split(flows, builder.span(client, seen)).items():
        for (server_node, port), spans in sorted(targets.items()):
            by_server: dict[bool, list[_Pair]] = defaultdict(list)
            for pair in members:
                at = pair[0].first_seen
                by_server[any(at in span for span in spans)].append(pair)
            for server_vouched, counted in by_server.items():
                attribution = FlowAttribution(
                    counted[0][0],
                    client_node,
                    server_node,
                    port,
                    service=service,
                    assumed=True,
                    vouched=Sides(client_vouched, server_vouched),
                )
                builder.count(attribution, counted)
