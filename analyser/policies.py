"""The policy model: frozen dataclasses describing the NetworkPolicies to write, and their
synthesis from the workload graph (``graphs.WorkloadGraph``) into a :class:`PolicyPlan`.

Data only, no I/O: rendering to YAML lives in ``rendering``; the semantics used to check a set of
policies live in ``evaluation``.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import reduce
from typing import Any

from analyser.graphs import EdgeStats, GraphEdge, GraphNode, NodeRole, WorkloadGraph
from analyser.peers import (
    DNS_PORTS,
    SPECIAL_REASONS,
    ClusterDns,
    Exposure,
    IpPeer,
    Peer,
    PodPeer,
    PortSpec,
    SpecialAddress,
    single_address,
    special_address,
    special_networks_left_out,
)
from analyser.selectors import LabelSelector
from analyser.workloads import Workload


@dataclass(frozen=True, order=True, slots=True)
class Rule:
    """Traffic to (egress) or from (ingress) one peer on a set of ports."""

    peer: Peer
    ports: tuple[PortSpec, ...]


INGRESS, EGRESS = "ingress", "egress"

# What every generated object carries, so users (and a later run: ``adopting``) can tell it apart.
MANAGED_BY_LABEL = ("app.kubernetes.io/managed-by", "netpol-sniffer")


@dataclass(frozen=True, order=True, slots=True)
class LeftOut:
    """Observed traffic of a workload with a special address that its policy does not allow."""

    workload: str  # graph node id, "NS/Kind/name"
    direction: str  # INGRESS (from the address) or EGRESS (to it)
    address: str
    port: PortSpec
    kind: SpecialAddress

    @property
    def why(self) -> str:
        return SPECIAL_REASONS[self.kind]


@dataclass(frozen=True, order=True, slots=True)
class RuleLeftOut:
    """Observed traffic of a workload with one peer, on ``ports``, whose rule did not fit in its
    policy (:data:`MAX_RULE_BYTES`): not allowed."""

    workload: str  # graph node id, "NS/Kind/name"
    direction: str  # INGRESS (from the peer) or EGRESS (to it)
    peer: str  # an address, or a workload's graph node id
    ports: tuple[PortSpec, ...]
    flows: int


@dataclass(frozen=True, slots=True)
class SideLeftOut:
    """What one policy side (a workload's ingress or egress) left out for size, together
    (:class:`RuleLeftOut`)."""

    workload: str
    direction: str
    peers: tuple[str, ...]
    ports: tuple[PortSpec, ...]  # every port left out, sorted
    flows: int


def sides_left_out(items: Iterable[RuleLeftOut]) -> tuple[SideLeftOut, ...]:
    """``items`` by workload and direction, in the order given."""
    sides: dict[tuple[str, str], list[RuleLeftOut]] = {}
    for item in items:
        sides.setdefault((item.workload, item.direction), []).append(item)
    return tuple(
        SideLeftOut(
            workload,
            direction,
            tuple(item.peer for item in found),
            tuple(sorted({port for item in found for port in item.ports})),
            sum(item.flows for item in found),
        )
        for (workload, direction), found in sides.items()
    )


@dataclass(frozen=True, slots=True)
class Policy:
    """One NetworkPolicy for one workload, isolating both directions."""

    namespace: str
    name: str
    workload: str  # "NS/Kind/name"
    pod_selector: LabelSelector
    ingress: tuple[Rule, ...] = ()
    egress: tuple[Rule, ...] = ()
    labels: tuple[tuple[str, str], ...] = field(default=())
    # Observed traffic with special addresses that the rules leave out on purpose (not rendered).
    left_out: tuple[LeftOut, ...] = ()
    # Observed traffic with peers whose rules did not fit in the policy (not rendered).
    rules_left_out: tuple[RuleLeftOut, ...] = ()


@dataclass(frozen=True, slots=True)
class DefaultDeny:
    """``--default-deny``: one policy per namespace selecting every pod, allowing nothing."""

    namespace: str
    name: str = "default-deny-all"


@dataclass(frozen=True, slots=True)
class PolicyPlan:
    """What :func:`synthesize` decided: a policy per workload, the default-denies, and (from the
    policies) the traffic they leave out on purpose."""

    policies: tuple[Policy, ...] = ()  # by namespace, then name
    default_denies: tuple[DefaultDeny, ...] = ()  # by namespace
    # With default_deny or baseline: the namespaces in scope whose every workload seen got a
    # policy, which a default-deny or the cluster baseline may therefore isolate (sorted).
    isolated_namespaces: tuple[str, ...] = ()

    @property
    def left_out(self) -> tuple[LeftOut, ...]:
        """Observed traffic with special addresses that the policies do not allow (every
        :attr:`Policy.left_out`), sorted."""
        return tuple(sorted(item for policy in self.policies for item in policy.left_out))

    @property
    def rules_left_out(self) -> tuple[RuleLeftOut, ...]:
        """Observed traffic with peers whose rules did not fit in their policy (every
        :attr:`Policy.rules_left_out`), sorted."""
        return tuple(sorted(item for policy in self.policies for item in policy.rules_left_out))


# An ipBlock of every address of one IP version.
ANYWHERE = {4: "0.0.0.0/0", 6: "::/0"}


# -- synthesis from the workload graph -------------------------------------------------------

MAX_NAME_LENGTH = 253  # a NetworkPolicy name is a DNS-1123 subdomain


def _special(
    node: GraphNode, allowed: Collection[SpecialAddress]
) -> list[tuple[str, SpecialAddress]]:
    """The addresses of the graph ``node`` (outside or unresolved) that are special and not
    ``allowed``, with their class; none for a workload or a node."""
    if node.role not in (NodeRole.EXTERNAL, NodeRole.UNRESOLVED):
        return []
    return [
        (address, kind)
        for address in node.addresses
        if (kind := special_address(address)) is not None and kind not in allowed
    ]


def _peers(
    node: GraphNode,
    own_namespace: str,
    nodes: tuple[IpPeer, ...],
    edge: GraphEdge,
    left_out: Collection[str] = (),
) -> tuple[Peer, ...]:
    """How a policy in ``own_namespace`` names the graph ``node``, a peer on the policy's graph
    ``edge``; ``nodes``: the :func:`node_blocks`; ``left_out``: addresses it is not to name
    (:func:`_special`). An outside address's DNS names come from that edge only: what this
    workload's own captures saw it told, never what another pod's capture says about the
    address."""
    workload = node.workload
    if workload is not None:
        if workload.host_network:
            # Its pods use their node's addresses, and selectors never match them. Like traffic
            # with a node, every node: a DaemonSet runs on all of them, and any other workload
            # can be scheduled onto another node.
            return nodes
        namespace = workload.ref.namespace
        return (
            PodPeer(
                pod_selector=workload.selector,
                namespace=None if namespace == own_namespace else namespace,
                description=str(workload.ref),
            ),
        )
    names = edge.names if node.role is NodeRole.EXTERNAL else ()
    return tuple(IpPeer(single_address(a), names) for a in node.addresses if a not in left_out)


NODE_BLOCK_DESCRIPTION = "cluster nodes"


def node_blocks(
    graph: WorkloadGraph, node_addresses: Iterable[str] = (), node_cidrs: Sequence[str] = ()
) -> tuple[IpPeer, ...]:
    """The ipBlocks standing for every node of the cluster: ``node_cidrs`` when given, else each
    of ``node_addresses`` (the snapshot's) as /32 or /128; plus the node addresses ``graph`` saw
    (a node missing from the snapshot, a node's address on the pod network, a hostNetwork
    workload's) that these do not cover. Collapsed where exactly adjacent or contained, sorted by
    family and address.

    Traffic SNAT'd to a node address (``externalTrafficPolicy: Cluster``) can come from any node,
    and a rescheduled pod meets other nodes: one node's address alone would break it. A special
    address (:func:`special_address`) is never taken for a node's, whatever the snapshot says."""
    seen = {
        address
        for node in graph.nodes
        if node.role is NodeRole.NODE or (node.workload is not None and node.workload.host_network)
        for address in node.addresses
    }
    listed = node_cidrs or tuple(a for a in node_addresses if special_address(a) is None)
    networks = [ipaddress.ip_network(text, strict=False) for text in (*listed, *seen)]
    blocks: list[IpPeer] = []
    for version in (4, 6):
        family = [n for n in networks if n.version == version]
        blocks += [
            IpPeer(str(n), description=NODE_BLOCK_DESCRIPTION)
            for n in ipaddress.collapse_addresses(family)  # type: ignore[type-var]
        ]
    return tuple(blocks)


def _local(peer: PodPeer, namespace: str) -> PodPeer:
    return replace(peer, namespace=None) if peer.namespace == namespace else peer


def rule_sort_key(rule: Rule) -> tuple[int, str, tuple[Any, ...]]:
    """Pod peers first (by namespace, selector), then addresses (by family and value)."""
    peer = rule.peer
    if isinstance(peer, PodPeer):
        return (0, peer.namespace or "", (peer.pod_selector, peer.description, rule.ports))
    network = ipaddress.ip_network(peer.cidr, strict=False)
    return (1, "", (network.version, int(network.network_address), network.prefixlen, rule.ports))


def _rules(ports_by_peer: dict[Peer, set[PortSpec]]) -> tuple[Rule, ...]:
    rules = [Rule(peer, tuple(sorted(ports))) for peer, ports in ports_by_peer.items() if ports]
    return tuple(sorted(rules, key=rule_sort_key))


def policy_names(workloads: Iterable[Workload], *, reserved: Iterable[str] = ()) -> dict[str, str]:
    """Workload node id → policy name: the workload's name; when two workloads of different
    kinds share a name in one namespace (or the name is reserved), ``<name>-<kind>``; a name still
    taken gets ``-2``, ``-3``... Names are cut to 253 characters."""
    refs = sorted(w.ref for w in workloads)
    taken_names: dict[tuple[str, str], int] = defaultdict(int)
    for ref in refs:
        taken_names[(ref.namespace, ref.name)] += 1
    reserved_names = set(reserved)
    names: dict[str, str] = {}
    used: set[tuple[str, str]] = set()
    for ref in refs:
        name = ref.name
        if taken_names[(ref.namespace, name)] > 1 or name in reserved_names:
            name = f"{name}-{ref.kind.lower()}"
        name = name[:MAX_NAME_LENGTH].rstrip("-.")
        candidate, counter = name, 1
        while (ref.namespace, candidate) in used:
            counter += 1
            suffix = f"-{counter}"
            candidate = name[: MAX_NAME_LENGTH - len(suffix)].rstrip("-.") + suffix
        used.add((ref.namespace, candidate))
        names[str(ref)] = candidate
    return names


def _unselectable_reason(workload: Workload) -> str:
    if workload.host_network:
        return "its pods use the host network, where NetworkPolicy does not apply"
    if workload.also_selects:
        return (
            f"its selector {workload.selector} also selects pods of "
            f"{', '.join(workload.also_selects)}, and no stable label selects only its pods"
        )
    return "its pods have no stable label to select them by"


def unselectable_reasons(graph: WorkloadGraph, node_ids: Iterable[str]) -> dict[str, str]:
    """Why no policy can be written for each of these unselectable workloads (graph node ids, as
    :func:`unselectable_workloads` gives them)."""
    reasons = {}
    for node_id in node_ids:
        workload = graph.node(node_id).workload
        if workload is None:
            raise KeyError(f"{node_id}: no workload node of the graph")
        reasons[node_id] = _unselectable_reason(workload)
    return reasons


def _unselectable(workload: Workload) -> bool:
    # No stable label: a policy would select the whole namespace. A selector that also selects
    # other workloads' pods: their policy would apply to them. hostNetwork: NetworkPolicy does
    # not apply to such pods at all.
    return bool(workload.selector.is_empty or workload.also_selects or workload.host_network)


@dataclass(frozen=True, order=True, slots=True)
class SelectorWarning:
    """A workload whose selector from the snapshot selected more than its pods."""

    workload: str  # graph node id, "NS/Kind/name"
    warning: str


def selector_warnings(graph: WorkloadGraph) -> tuple[SelectorWarning, ...]:
    """For every workload of ``graph`` whose selector was narrowed, or still selects other
    workloads' pods (``workloads.exclusive_selector``): what that means for the policies."""
    warnings = []
    for node in graph.nodes:
        workload = node.workload
        if workload is None or workload.host_network:
            continue
        if workload.narrowed_from is not None and not workload.also_selects:
            own = workload.narrowed_from
            why = (
                "is not valid"
                if not all(r.valid for r in own.match_expressions)
                else "names no label value (it would select every pod with those keys)"
                if not own.pins_a_value
                else "also selects other workloads' pods"
            )
            text = f"its selector {own} {why}: narrowed to its pod labels {workload.selector}"
            warnings.append(SelectorWarning(node.id, text))
        elif workload.also_selects:
            text = (
                f"no stable label selects only its pods: where another policy names it as a "
                f"peer, its selector {workload.selector} admits the pods of "
                f"{', '.join(workload.also_selects)} too"
            )
            warnings.append(SelectorWarning(node.id, text))
    return tuple(warnings)


def unselectable_workloads(graph: WorkloadGraph, *, default_deny: bool = False) -> tuple[str, ...]:
    """Workloads no policy can be written for: without any stable label (a policy would select
    every pod of their namespace) or on the host network (NetworkPolicy does not apply to them).
    In-scope ones; with ``default_deny``, also those seen in a namespace in scope (which then gets
    no default-deny: it would cut them off). The report should say so."""
    workloads = [(node, node.workload) for node in graph.nodes if node.workload is not None]
    in_scope_namespaces = {workload.ref.namespace for node, workload in workloads if node.in_scope}
    return tuple(
        node.id
        for node, workload in workloads
        if _unselectable(workload)
        and (
            node.in_scope
            or (
                default_deny
                and not workload.host_network
                and workload.ref.namespace in in_scope_namespaces
            )
        )
    )


# More distinct outside addresses than this on one port of one policy side (the clients of a
# public ingress, the rotating addresses of a cloud API) become one rule from or to anywhere on
# that port: the next client or address would not be on a list of the ones seen.
MAX_OUTSIDE_ADDRESSES = 32


def _widen_outside(
    ports_by_peer: dict[Peer, set[PortSpec]],
    outside: set[IpPeer],
    answered: set[tuple[IpPeer, PortSpec]],
    limit: int,
    excluded: Mapping[int, tuple[str, ...]],
) -> dict[IpPeer, dict[PortSpec, list[IpPeer]]]:
    """Replace, per port, the ``outside`` peers by 0.0.0.0/0 (and ::/0 when IPv6 addresses were
    among them) when more than ``limit`` of them were ``answered`` on that port, in place; the
    anywhere rules except the ``excluded`` networks (per IP version:
    :func:`~analyser.peers.special_networks_left_out`). Return, per anywhere block and port, the
    peers it stands for there.

    Only conversations in which both ends sent packets count: anyone can send datagrams to (or,
    spoofing, seem to send them from) any number of addresses, and one-way traffic shows no more
    than that. Unanswered addresses keep their own rules."""
    by_port: dict[PortSpec, set[IpPeer]] = defaultdict(set)
    for peer in outside:
        for port in ports_by_peer.get(peer, ()):
            by_port[port].add(peer)
    blocks: dict[IpPeer, dict[PortSpec, list[IpPeer]]] = defaultdict(dict)
    why = f"anywhere: more than {limit} outside addresses were seen on these ports"
    for port, peers in by_port.items():
        if sum((peer, port) in answered for peer in peers) <= limit:
            continue
        for peer in peers:
            ports_by_peer[peer].discard(port)
        by_version: dict[int, list[IpPeer]] = defaultdict(list)
        for peer in peers:
            by_version[ipaddress.ip_network(peer.cidr).version].append(peer)
        for version, standing in by_version.items():
            block = IpPeer(ANYWHERE[version], description=why, excluded=excluded[version])
            ports_by_peer[block].add(port)
            blocks[block][port] = standing
    return blocks


def _expose(
    ports_by_peer: dict[Peer, set[PortSpec]],
    outside: set[IpPeer],
    exposures: Iterable[Exposure],
    excluded: Mapping[int, tuple[str, ...]],
) -> None:
    """Allow each exposed port from anywhere (one rule per IP version and what exposes it) except
    the ``excluded`` networks, in place; the ``outside`` clients seen on those ports are then
    covered and lose them."""
    for exposure in exposures:
        for peer in outside:
            ports_by_peer.get(peer, set()).discard(exposure.port)
        for version in exposure.families:
            why = f"anywhere: exposed by {exposure.by}"
            block = IpPeer(ANYWHERE[version], description=why, excluded=excluded[version])
            ports_by_peer[block].add(exposure.port)


def _is_outside(node: GraphNode, peer: IpPeer) -> bool:
    """Whether ``peer`` (naming the graph ``node``) is an ordinary address outside the cluster:
    one that counts towards widening to anywhere. A special address allowed on purpose keeps a
    rule of its own instead."""
    return node.role is NodeRole.EXTERNAL and special_address(peer.cidr.partition("/")[0]) is None


# The most bytes a policy's rules for observed peers (workloads, and single addresses outside
# the cluster or unresolved in it) may take in its JSON, both directions together. Client-side
# `kubectl apply` stores the whole object in an annotation, and an object's annotations may take
# 256 KiB at most: the API server refuses a bigger policy, and a refused policy isolates nothing.
# A capture can make a policy grow: one-way traffic and unresolved addresses never widen to
# anywhere (spoofed datagrams, conversations forged with free pod addresses: a rule each), and a
# pod's own capture can claim connections to another workload on every port. Half the limit
# leaves the rest to the node, DNS and anywhere rules, the metadata, and the CiliumNetworkPolicy's
# longer form of the same rules. Past it, the peers and ports with the least evidence lose their
# rules: listed in Policy.rules_left_out, reported, not allowed.
MAX_RULE_BYTES = 128 * 1024


def peer_bytes(peer: Peer) -> int:
    """At most the bytes a rule for ``peer`` takes in a NetworkPolicy's compact JSON without its
    ports (as `kubectl apply` stores it), with the comma after it."""
    if isinstance(peer, IpPeer):
        # {"from":[{"ipBlock":{"cidr":"C","except":["E",...]}}],"ports":[]},
        excluded = 12 + sum(len(hole) + 3 for hole in peer.excluded) if peer.excluded else 0
        return 46 + len(peer.cidr) + excluded
    # {"from":[{"namespaceSelector":{"matchLabels":{"kubernetes.io/metadata.name":"NS"}},
    #  "podSelector":{"matchLabels":{"K":"V",...},"matchExpressions":[...]}}],"ports":[]},
    selector = peer.pod_selector
    labels = sum(len(key) + len(value) + 6 for key, value in selector.match_labels)
    expressions = sum(
        36 + len(req.key) + len(req.operator) + sum(len(value) + 3 for value in req.values)
        for req in selector.match_expressions
    )
    namespace = 0 if peer.namespace is None else 71 + len(peer.namespace)
    return (
        41 + (16 + labels if labels else 0) + (22 + expressions if expressions else 0) + namespace
    )


def port_bytes(port: PortSpec) -> int:
    """At most the bytes ``port`` takes in a rule's ports: ``{"protocol":"TCP","port":443},``."""
    return 24 + len(port.protocol) + len(str(port.port))


def _bound_rules(
    workload: str,
    sides: Mapping[str, dict[Peer, set[PortSpec]]],
    seen: Mapping[tuple[str, Peer], Mapping[PortSpec, EdgeStats]],
    widened: Mapping[str, Mapping[IpPeer, Mapping[PortSpec, Sequence[IpPeer]]]],
    budget: int,
) -> list[RuleLeftOut]:
    """Drop, in place, the ports of ``sides`` (direction → ports by peer) for the peers of
    ``seen`` (direction and peer → what was seen on each port), and of the anywhere blocks that
    ``widened`` them (direction → block → port → the peers it stands for there), past the first
    ``budget`` bytes (:func:`peer_bytes`, :func:`port_bytes`); return what they leave out of
    ``workload``'s policy (a block's port: each peer it stood for). Each peer's ports keep their
    place in order of evidence: answered before one-way only, then by flows, then by direction,
    peer and port, so the order never depends on the capture's. Once one does not fit, neither
    does any after it."""
    entries = [
        (direction, peer, port, stats[port])
        for (direction, peer), stats in seen.items()
        for port in sides[direction].get(peer, ())  # none: widened to anywhere, or exposed
    ]
    standing: dict[tuple[str, Peer, PortSpec], Sequence[IpPeer]] = {}
    for direction, blocks in widened.items():
        for block, ports in blocks.items():
            for port, peers in ports.items():
                # Counted as the conversations it stands for: answered, their flows together.
                merged = reduce(EdgeStats.merged, (seen[(direction, p)][port] for p in peers))
                entries.append((direction, block, port, merged))
                standing[(direction, block, port)] = peers
    entries.sort(
        key=lambda entry: (
            not entry[3].answered,
            -entry[3].flows,
            entry[0],
            rule_sort_key(Rule(entry[1], ())),
            entry[2],
        )
    )
    used = 0
    kept: set[tuple[str, Peer]] = set()
    left: dict[tuple[str, str], list[tuple[PortSpec, int]]] = {}
    for direction, peer, port, stats in entries:
        if not left:
            used += port_bytes(port) + (peer_bytes(peer) if (direction, peer) not in kept else 0)
            if used <= budget:
                kept.add((direction, peer))
                continue
        sides[direction][peer].discard(port)
        stood_for = standing.get((direction, peer, port))
        if stood_for is None:
            left.setdefault((direction, _peer_name(peer)), []).append((port, stats.flows))
        for other in stood_for or ():
            flows = seen[(direction, other)][port].flows
            left.setdefault((direction, _peer_name(other)), []).append((port, flows))
    return [
        RuleLeftOut(
            workload,
            direction,
            name,
            tuple(sorted(port for port, _ in found)),
            sum(flows for _, flows in found),
        )
        for (direction, name), found in left.items()
    ]


def _peer_name(peer: Peer) -> str:
    """An address, or the workload a pod peer stands for."""
    return peer.description if isinstance(peer, PodPeer) else peer.cidr.partition("/")[0]


def _is_address(node: GraphNode) -> bool:
    """Whether the graph ``node`` is an address of its own (outside the cluster, or unresolved
    in it): its rules name it alone."""
    return node.role in (NodeRole.EXTERNAL, NodeRole.UNRESOLVED)


def _note_peer(
    peers: dict[tuple[str, Peer], dict[PortSpec, EdgeStats]],
    direction: str,
    peer: Peer,
    stats: Mapping[PortSpec, EdgeStats],
) -> None:
    """Add what was seen with ``peer`` in ``direction`` (``stats``) to ``peers``."""
    known = peers.setdefault((direction, peer), {})
    for port, found in stats.items():
        known[port] = known[port].merged(found) if port in known else found


def _answered(peer: IpPeer, stats: Mapping[PortSpec, EdgeStats]) -> set[tuple[IpPeer, PortSpec]]:
    """``(peer, port)`` for the ports of an edge's ``EdgeStats`` on which something came back."""
    return {(peer, port) for port, seen in stats.items() if seen.answered}


def _vouched(stats: Mapping[PortSpec, EdgeStats], *, server: bool) -> dict[PortSpec, EdgeStats]:
    """The ports of an edge's ``EdgeStats`` whose server side (``server``) or client side some
    flow was vouched for at: a policy's rules come only from flows its own side's captures saw,
    or that no capture of it could have seen (``analyser.vouching``)."""
    return {
        port: seen
        for port, seen in stats.items()
        if (seen.vouched.server if server else seen.vouched.client)
    }


def synthesize(
    graph: WorkloadGraph,
    *,
    cluster_dns: ClusterDns | None = None,
    default_deny: bool = False,
    baseline: bool = False,
    node_addresses: Iterable[str] = (),
    node_cidrs: Sequence[str] = (),
    max_outside_addresses: int = MAX_OUTSIDE_ADDRESSES,
    max_rule_bytes: int = MAX_RULE_BYTES,
    allowed_special: Collection[SpecialAddress] = (),
    exposures: Mapping[str, Iterable[Exposure]] | None = None,
    internal_networks: Iterable[str] = (),
) -> PolicyPlan:
    """One :class:`Policy` per in-scope workload of ``graph``, allowing what was observed and DNS
    to the cluster DNS pods, plus, with ``default_deny``, a :class:`DefaultDeny` per namespace in
    scope and a policy for every other workload of those namespaces seen in the graph (a
    namespace where such a workload has no stable label gets no default-deny). ``baseline`` (the
    cluster baseline, ``analyser.baselines``) isolates those namespaces the same way, so it gets
    those policies too; either way :attr:`PolicyPlan.isolated_namespaces` lists the namespaces
    that may be isolated. Workloads without
    a stable label, or on the host network, get no policy (:func:`unselectable_workloads`).

    Traffic with a node (from or to a node address) is allowed on its ports with every node:
    :func:`node_blocks` of ``node_addresses`` (every node address the snapshot knows) or, when
    given, ``node_cidrs`` (the networks the nodes' addresses lie in).

    More than ``max_outside_addresses`` addresses outside the cluster that answered (or were
    answered) on one port of a policy's ingress or egress become one rule from or to anywhere on
    that port (:func:`_widen_outside`).

    The rules for observed peers (workloads, and single addresses outside the cluster or
    unresolved in it) of one policy take at most ``max_rule_bytes`` of its JSON
    (:data:`MAX_RULE_BYTES`): past that, the peers' ports with the least evidence get no rule and
    are listed in :attr:`Policy.rules_left_out` (:func:`_bound_rules`).

    Traffic with a special address (:func:`special_address`) whose class is not in
    ``allowed_special`` gets no rule: it is listed in :attr:`Policy.left_out` instead, and rules
    from or to anywhere except those classes' networks. The NodeLocal DNSCache rule stays: DNS
    to a cache's link-local address is allowed by it.

    ``exposures`` (workload node id → :class:`Exposure`) are allowed from anywhere on their ports
    (:func:`_expose`): a public Service's users are not the few a capture saw.

    Every rule from or to anywhere excepts ``internal_networks`` (the cluster's pod and Service
    ranges): enforcers whose ipBlocks also match pod addresses (Calico, kube-router) would
    otherwise open it to every pod, and traffic inside the cluster stays as exact as ever.

    An ingress rule comes only from flows whose server side was vouched for, an egress rule only
    from flows whose client side was (``EdgeStats.vouched``, see ``analyser.vouching``): one
    pod's capture never opens another workload's policy."""
    dns = cluster_dns if cluster_dns is not None else ClusterDns()
    nodes = node_blocks(graph, node_addresses, node_cidrs)
    dns_ports = set(dns.ports)
    node_local_cidrs = {cache.cidr for cache in dns.node_local}
    excluded = special_networks_left_out(allowed_special, internal_networks)
    workloads = [
        (node.id, node.workload, node.in_scope) for node in graph.nodes if node.workload is not None
    ]
    namespaces = sorted({w.ref.namespace for _, w, in_scope in workloads if in_scope})
    # A default-deny (or the baseline) isolates every pod of its namespace, also those that were
    # not captured; those seen talking to captured pods get a policy too, so what was observed
    # keeps working.
    isolating = default_deny or baseline
    chosen = [
        (node_id, workload)
        for node_id, workload, in_scope in workloads
        if in_scope
        or (isolating and workload.ref.namespace in namespaces and not workload.host_network)
    ]
    reserved = {DefaultDeny("").name} if default_deny else set()
    names = policy_names((w for _, w in chosen), reserved=reserved)
    unselectable = {node_id for node_id, w in chosen if _unselectable(w)}
    policies: list[Policy] = []
    for node_id, workload in chosen:
        if node_id in unselectable:
            continue
        namespace = workload.ref.namespace
        ingress: dict[Peer, set[PortSpec]] = defaultdict(set)
        egress: dict[Peer, set[PortSpec]] = defaultdict(set)
        node_ingress: set[PortSpec] = set()
        node_egress: set[PortSpec] = set()
        outside_clients: set[IpPeer] = set()
        outside_servers: set[IpPeer] = set()
        answered_clients: set[tuple[IpPeer, PortSpec]] = set()
        answered_servers: set[tuple[IpPeer, PortSpec]] = set()
        left_out: set[LeftOut] = set()
        seen: dict[tuple[str, Peer], dict[PortSpec, EdgeStats]] = {}
        for edge in graph.edges_to(node_id):
            client = graph.node(edge.client)
            stats = _vouched(edge.ports, server=True)
            ports = set(stats)
            if not ports:
                continue
            if client.role is NodeRole.NODE:
                node_ingress |= ports
                continue
            special = _special(client, allowed_special)
            left_out |= {
                LeftOut(node_id, INGRESS, address, port, kind)
                for address, kind in special
                for port in ports
            }
            left = {a for a, _ in special}
            for peer in _peers(client, namespace, nodes, edge, left):
                ingress[peer] |= ports
                if isinstance(peer, PodPeer) or _is_address(client):
                    _note_peer(seen, INGRESS, peer, stats)
                if isinstance(peer, IpPeer) and _is_outside(client, peer):
                    outside_clients.add(peer)
                    answered_clients |= _answered(peer, stats)
        for edge in graph.edges_from(node_id):
            server = graph.node(edge.server)
            stats = _vouched(edge.ports, server=False)
            ports = set(stats)
            if not ports:
                continue
            if server.role is NodeRole.NODE:
                node_egress |= ports
                continue
            if server.id in dns.workloads:
                ports -= dns_ports  # allowed by the DNS rule below, to every DNS pod
            special = _special(server, allowed_special)
            for address, kind in special:
                # DNS to a node-local cache is allowed by the cache rule below.
                to_cache = single_address(address) in node_local_cidrs
                left_out |= {
                    LeftOut(node_id, EGRESS, address, port, kind)
                    for port in ports
                    if not (to_cache and port in DNS_PORTS)
                }
            left = {a for a, _ in special}
            for peer in _peers(server, namespace, nodes, edge, left):
                if isinstance(peer, IpPeer) and peer.cidr in node_local_cidrs:
                    # Allowed by the node-local cache rule below, on both protocols.
                    egress[peer] |= ports - set(DNS_PORTS)
                else:
                    egress[peer] |= ports
                    if isinstance(peer, PodPeer) or _is_address(server):
                        _note_peer(seen, EGRESS, peer, stats)
                    if isinstance(peer, IpPeer) and _is_outside(server, peer):
                        outside_servers.add(peer)
                        answered_servers |= _answered(peer, stats)
        exposed = (exposures or {}).get(node_id, ())
        _expose(ingress, outside_clients, exposed, excluded)
        widened = {
            INGRESS: _widen_outside(
                ingress, outside_clients, answered_clients, max_outside_addresses, excluded
            ),
            EGRESS: _widen_outside(
                egress, outside_servers, answered_servers, max_outside_addresses, excluded
            ),
        }
        too_many = _bound_rules(
            node_id, {INGRESS: ingress, EGRESS: egress}, seen, widened, max_rule_bytes
        )
        for block in nodes:
            ingress[block] |= node_ingress
            egress[block] |= node_egress
        for dns_peer in dns.peers:
            egress[_local(dns_peer, namespace)] |= dns_ports
        for cache in dns.node_local:
            egress[cache] |= set(DNS_PORTS)
        policies.append(
            Policy(
                namespace=namespace,
                name=names[node_id],
                workload=node_id,
                pod_selector=workload.selector,
                ingress=_rules(ingress),
                egress=_rules(egress),
                left_out=tuple(sorted(left_out)),
                rules_left_out=tuple(sorted(too_many)),
            )
        )
    isolated: list[str] = []
    if isolating:
        # Not where a workload seen there has no label (or selector) to write its policy with.
        cut_off = {w.ref.namespace for _, w in chosen if _unselectable(w) and not w.host_network}
        isolated = [ns for ns in namespaces if ns not in cut_off]
    return PolicyPlan(
        policies=tuple(sorted(policies, key=lambda p: (p.namespace, p.name))),
        default_denies=tuple(DefaultDeny(ns) for ns in isolated) if default_deny else (),
        isolated_namespaces=tuple(isolated),
    )
