"""Explaining: why each rule of a policy exists, as the comment lines rendering writes above it,
in both formats: a NetworkPolicy's rules (:func:`explain`) and a CiliumNetworkPolicy's
(:func:`explain_cilium`), each Cilium rule said from the policy rules it was made from
(``cilium.CiliumRule.sources``), so both formats say the same in the same words.

A rule comes from the flows that made it (the graph's edges into or out of the policy's workload,
on the rule's ports, at a side vouched for: ``policies.synthesize``), or from a rule every policy
gets whether or not a flow was seen: DNS to the cluster DNS pods (and a node-local cache), and
traffic with every node. Each rule gets a few lines saying which: per port, the flows behind it
(how many, through which Service, first and last seen, and in which capture windows when several
bundles were analysed together), or why the port is allowed without one. A Cilium rule by DNS
name also says, per name, the addresses it was answered with (that the workload then reached),
and per ``matchPattern`` (also in the L7 DNS rule) which names seen it stands for.
Bounded: at most :data:`MAX_PORT_LINES` port lines and :data:`MAX_NAME_LINES` name lines per
rule, and :data:`MAX_LISTED_PEERS` peers (names, addresses) per line, the rest summarised
(report.md lists every edge); the edges of a policy are matched to its rules once, through an
index, not once per rule.

The lines are plain text built from input (workload, node and Service names, addresses):
rendering writes each through its comment filter (``rendering.one_line``), which makes any
character that could end a YAML comment inert.

Pure: the policy plan and the graph in, text out.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

from analyser.fqdnselectors import FqdnSelector
from analyser.graphs import EdgeStats, GraphNode, NodeRole, WorkloadGraph
from analyser.peers import ClusterDns, IpPeer, PodPeer, PortSpec, single_address, special_address
from analyser.policies import EGRESS, INGRESS, NODE_BLOCK_DESCRIPTION, Policy, PolicyPlan, Rule
from kernel.times import utc_text

if TYPE_CHECKING:
    # analyser.cilium is imported where the Cilium format is explained (--format cilium or all),
    # not at every analyse's start (issue 13).
    from analyser.cilium import CiliumPlan, CiliumPolicy, CiliumRule

# Per rule: port and name lines written before the rest is summarised, and peers named in one
# line.
MAX_PORT_LINES = 4
MAX_NAME_LINES = 4
MAX_LISTED_PEERS = 3

# (direction, rule) → the comment lines above it; directions are policies.INGRESS and EGRESS.
RuleReasons = Mapping[tuple[str, Rule], tuple[str, ...]]
CiliumReasons: TypeAlias = "Mapping[tuple[str, CiliumRule], tuple[str, ...]]"

WHY_DNS = (
    "DNS is allowed to every workload, lookups seen or not: "
    "names are looked up at any time, and long answers come over TCP"
)
WHY_NODES = (
    "allowed with every node, also those no flow was seen with: "
    "probes and SNAT'd traffic come from a pod's node, and pods move"
)


def _is_anywhere(peer: IpPeer) -> bool:
    return ipaddress.ip_network(peer.cidr, strict=False).prefixlen == 0


def _is_node_block(peer: PodPeer | IpPeer) -> bool:
    return isinstance(peer, IpPeer) and peer.description == NODE_BLOCK_DESCRIPTION


def _is_dns(peer: PodPeer | IpPeer, policy: Policy, dns: ClusterDns) -> bool:
    """Whether ``peer`` is the DNS rule's every policy gets (``synthesize`` names a DNS peer in
    the policy's own namespace without a namespace), or a node-local cache's."""
    if isinstance(peer, IpPeer):
        return peer in dns.node_local
    namespace = policy.namespace if peer.namespace is None else peer.namespace
    return any(
        peer.pod_selector == own.pod_selector and namespace == own.namespace for own in dns.peers
    )


@dataclass(frozen=True, slots=True)
class _WideRule:
    """A rule for a block wider than one address, its network parsed once."""

    rule: Rule
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    nodes: bool  # a block of the cluster's nodes
    anywhere: bool


@dataclass(frozen=True, slots=True)
class _RuleIndex:
    """The rules of one side of a policy, found by what a graph node is: its workload, one of its
    addresses, or an address inside a wider block (nodes, anywhere)."""

    by_workload: Mapping[str, tuple[Rule, ...]]
    # Blocks of one address (outside addresses, a node's), by that /32 or /128.
    by_address: Mapping[str, tuple[Rule, ...]]
    dns: tuple[Rule, ...]
    wide: tuple[_WideRule, ...]  # node blocks and anywhere rules: few

    @classmethod
    def of(cls, rules: Iterable[Rule], policy: Policy, dns: ClusterDns) -> _RuleIndex:
        by_workload: dict[str, list[Rule]] = defaultdict(list)
        by_address: dict[str, list[Rule]] = defaultdict(list)
        dns_rules: list[Rule] = []
        wide: list[_WideRule] = []
        for rule in rules:
            peer = rule.peer
            if _is_dns(peer, policy, dns):
                dns_rules.append(rule)
            if isinstance(peer, PodPeer):
                by_workload[peer.description].append(rule)
                continue
            network = ipaddress.ip_network(peer.cidr, strict=False)
            if network.num_addresses == 1:
                by_address[single_address(str(network.network_address))].append(rule)
            else:
                wide.append(_WideRule(rule, network, _is_node_block(peer), _is_anywhere(peer)))
        return cls(
            {key: tuple(found) for key, found in by_workload.items()},
            {key: tuple(found) for key, found in by_address.items()},
            tuple(dns_rules),
            tuple(wide),
        )

    def rules_for(self, other: GraphNode, dns: ClusterDns) -> set[Rule]:
        """The rules that ``synthesize`` made from traffic with the graph node ``other``: its
        workload's, its addresses', a node block holding one of a node's (or a hostNetwork
        workload's) addresses, an anywhere rule for an ordinary outside address, the DNS rule
        for the cluster DNS pods."""
        found: set[Rule] = set()
        workload = other.workload
        if other.id in dns.workloads:
            found.update(self.dns)
        if workload is not None and not workload.host_network:
            found.update(self.by_workload.get(str(workload.ref), ()))
            return found
        on_nodes = other.role is NodeRole.NODE or workload is not None
        outside = other.role in (NodeRole.EXTERNAL, NodeRole.UNRESOLVED)
        for text in other.addresses:
            address = ipaddress.ip_address(text)
            for rule in self.by_address.get(single_address(text), ()):
                if on_nodes if _is_node_block(rule.peer) else outside:
                    found.add(rule)
            for wide in self.wide:
                if wide.network.version != address.version:
                    continue
                if wide.nodes:
                    matches = on_nodes and address in wide.network
                elif wide.anywhere:
                    # What widening to anywhere and exposures stand for: ordinary outside
                    # addresses.
                    matches = other.role is NodeRole.EXTERNAL and special_address(text) is None
                else:
                    matches = outside and address in wide.network
                if matches:
                    found.add(wide.rule)
        return found


@dataclass(slots=True)
class _Seen:
    """The flows behind one port of a rule: what was seen on it, and with whom (built up edge
    by edge)."""

    stats: EdgeStats
    peers: set[str]  # labels of the other ends

    def add(self, stats: EdgeStats, peers: Iterable[str]) -> None:
        self.stats = self.stats.merged(stats)
        self.peers.update(peers)


# Per port of a rule, what was seen on it.
_PortsSeen = Mapping[PortSpec, _Seen]


def _flows(count: int) -> str:
    return f"{count} flow{'s' if count != 1 else ''}"


def _listed(names: Sequence[str]) -> str:
    shown = ", ".join(names[:MAX_LISTED_PEERS])
    more = len(names) - MAX_LISTED_PEERS
    return shown + (f" and {more} more" if more > 0 else "")


def _port_line(port: PortSpec, seen: _Seen, *, named: bool, way: str) -> str:
    """``TCP/8080: 12 flows via Service default/frontend, first ..., last ...``; with ``named``
    (a rule standing for many peers: nodes, anywhere) the peers are named too; when several
    bundles were analysed together, the capture windows that saw them, with their flows
    (``; in monday (8), tuesday (4)``)."""
    stats = seen.stats
    text = f"{port.protocol}/{port.port}: {_flows(stats.flows)}"
    if named:
        text += f" {way} {_listed(sorted(seen.peers))}"
    if stats.services:
        text += f" via Service {', '.join(sorted(stats.services))}"
    first, last = utc_text(stats.first_seen), utc_text(stats.last_seen)
    text += f", at {first}" if first == last else f", first {first}, last {last}"
    if not stats.answered:
        text += ", none answered"
    if stats.assumed:
        text += ", the server side taken from the Service's backends"
    if stats.windows:  # several bundles analysed together (empty for one)
        seen_in = [f"{window.bundle} ({window.flows})" for window in stats.windows]
        text += f"; in {_listed(seen_in)}"
    return text


@dataclass(frozen=True, slots=True)
class _Standing:
    """What the rules behind one written rule stand for, as far as the wording goes."""

    dns: bool  # the DNS rule every policy gets
    nodes: bool  # the cluster's nodes
    anywhere: bool  # anywhere (an exposed port's clients, many outside addresses)

    @classmethod
    def of(cls, sources: Iterable[Rule], policy: Policy, dns: ClusterDns) -> _Standing:
        peers = [rule.peer for rule in sources]
        return cls(
            any(_is_dns(peer, policy, dns) for peer in peers),
            any(_is_node_block(peer) for peer in peers),
            any(isinstance(peer, IpPeer) and _is_anywhere(peer) for peer in peers),
        )


def _unseen_line(port: PortSpec, standing: _Standing, *, way: str) -> str:
    """Why a port of a rule is allowed although no flow on it was seen."""
    where = f"{port.protocol}/{port.port}: no flow seen"
    if standing.dns:
        return f"{where}: DNS"
    if standing.nodes:
        return f"{where} {way} these nodes"
    if standing.anywhere:
        return f"{where} {way} outside the cluster"
    return where


@dataclass(frozen=True, slots=True)
class _Evidence:
    """One policy's flows matched to its rules, once: per (direction, rule), what was seen on
    each of its ports."""

    policy: Policy
    dns: ClusterDns
    seen: Mapping[tuple[str, Rule], _PortsSeen]

    @classmethod
    def of(cls, policy: Policy, graph: WorkloadGraph, dns: ClusterDns) -> _Evidence:
        return cls(
            policy, dns, {**_side(policy, INGRESS, graph, dns), **_side(policy, EGRESS, graph, dns)}
        )

    def on(self, direction: str, sources: Sequence[Rule]) -> _PortsSeen:
        """What was seen on the ports of ``sources`` (several: merged, port by port)."""
        if len(sources) == 1:
            return self.seen.get((direction, sources[0]), {})
        merged: dict[PortSpec, _Seen] = {}
        for rule in sources:
            for port, found in self.seen.get((direction, rule), {}).items():
                if port in merged:
                    merged[port].add(found.stats, found.peers)
                else:
                    merged[port] = _Seen(found.stats, set(found.peers))
        return merged

    def lines(
        self,
        direction: str,
        sources: Sequence[Rule],
        ports: Iterable[PortSpec],
        *,
        name_peers: bool = False,
    ) -> list[str]:
        """The lines of a rule made from ``sources`` (the policy's rules, in its order) on
        ``ports``: who it is for, per port the flows behind it or why none is needed, and why a
        DNS or node rule exists at all. ``name_peers``: name the other ends in port lines (a
        rule that stands for several: also nodes and anywhere)."""
        way = "from" if direction == INGRESS else "to"
        standing = _Standing.of(sources, self.policy, self.dns)
        named = name_peers or standing.nodes or standing.anywhere
        seen = self.on(direction, sources)
        lines = [
            f"{way} {rule.peer.description}"
            for rule in sources
            if isinstance(rule.peer, PodPeer) and rule.peer.description
        ]
        ports = sorted(set(ports))
        port_lines: list[str] = []
        unseen = False
        for port in ports:
            found = seen.get(port)
            if found is None:
                unseen = True
                port_lines.append(_unseen_line(port, standing, way=way))
            else:
                port_lines.append(_port_line(port, found, named=named, way=way))
        if len(port_lines) > MAX_PORT_LINES:
            kept = MAX_PORT_LINES - 1
            rest = ports[kept:]
            flows = sum(seen[port].stats.flows for port in rest if port in seen)
            port_lines[kept:] = [f"and {len(rest)} more ports: {_flows(flows)}"]
        lines += port_lines
        if standing.dns and unseen:
            lines.append(WHY_DNS)
        if standing.nodes:
            lines.append(WHY_NODES)
        return lines


def _side(
    policy: Policy, direction: str, graph: WorkloadGraph, dns: ClusterDns
) -> dict[tuple[str, Rule], _PortsSeen]:
    ingress = direction == INGRESS
    rules = policy.ingress if ingress else policy.egress
    index = _RuleIndex.of(rules, policy, dns)
    seen: dict[tuple[str, Rule], dict[PortSpec, _Seen]] = defaultdict(dict)
    edges = graph.edges_to(policy.workload) if ingress else graph.edges_from(policy.workload)
    for edge in edges:
        other = graph.node(edge.client if ingress else edge.server)
        for rule in index.rules_for(other, dns):
            ports = seen[(direction, rule)]
            allowed = set(rule.ports)  # a rule may list thousands: a tuple is searched
            for port, stats in edge.ports.items():
                vouched = stats.vouched.server if ingress else stats.vouched.client
                if port not in allowed or not vouched:
                    continue
                if port in ports:
                    ports[port].add(stats, (other.label,))
                else:
                    ports[port] = _Seen(stats, {other.label})
    return dict(seen)


def explain(
    plan: PolicyPlan, graph: WorkloadGraph, *, cluster_dns: ClusterDns | None = None
) -> dict[str, RuleReasons]:
    """Per policy (by its workload's graph node id), the comment lines of each rule: the flows
    behind it per port, or why it is there without one (see the module's docstring).
    ``cluster_dns``: what ``synthesize`` was given."""
    dns = cluster_dns if cluster_dns is not None else ClusterDns()
    reasons: dict[str, RuleReasons] = {}
    for policy in plan.policies:
        evidence = _Evidence.of(policy, graph, dns)
        reasons[policy.workload] = {
            (direction, rule): tuple(evidence.lines(direction, (rule,), rule.ports))
            for direction, rules in ((INGRESS, policy.ingress), (EGRESS, policy.egress))
            for rule in rules
        }
    return reasons


def _address_key(text: str) -> tuple[int, int]:
    address = ipaddress.ip_address(text)
    return address.version, int(address)


def _selector_line(selector: FqdnSelector, answers: Mapping[str, Iterable[str]]) -> str:
    """``api.example.com: answered with 203.0.113.7``; a pattern says the names seen it stands
    for (``*.cdn.example stands for 40 names seen: a1.cdn.example, ... and 37 more``)."""
    text = selector.text
    if selector.pattern:
        text += f" stands for {selector.folded} names seen: {_listed(selector.names)}"
    addresses = {
        address for name, found in answers.items() if selector.matches(name) for address in found
    }
    if addresses:
        listed = _listed(sorted(addresses, key=_address_key))
        text += f"{';' if selector.pattern else ':'} answered with {listed}"
    return text


def _selector_lines(
    selectors: Sequence[FqdnSelector], answers: Mapping[str, Iterable[str]], *, prefix: str = ""
) -> list[str]:
    """A line per selector, at most :data:`MAX_NAME_LINES`, the rest counted."""
    if len(selectors) <= MAX_NAME_LINES:
        return [prefix + _selector_line(selector, answers) for selector in selectors]
    kept = MAX_NAME_LINES - 1
    lines = [prefix + _selector_line(selector, answers) for selector in selectors[:kept]]
    rest = selectors[kept:]
    patterns = sum(selector.pattern for selector in rest)
    what = "patterns" if patterns == len(rest) else "names and patterns" if patterns else "names"
    return [*lines, f"{prefix}and {len(rest)} more {what}"]


def _answers(graph: WorkloadGraph, workload: str) -> dict[str, set[str]]:
    """Name the workload asked for → the outside addresses it was answered with (and then
    reached)."""
    from analyser.cilium import asked_names

    answers: dict[str, set[str]] = defaultdict(set)
    for address, names in asked_names(graph, workload).items():
        for name in names:
            answers[name].add(address)
    return answers


def _cilium_policy_reasons(
    cilium: CiliumPolicy, graph: WorkloadGraph, dns: ClusterDns
) -> CiliumReasons:
    policy = cilium.policy
    evidence = _Evidence.of(policy, graph, dns)
    answers = _answers(graph, policy.workload) if any(r.fqdns for r in cilium.egress) else {}
    reasons: dict[tuple[str, CiliumRule], tuple[str, ...]] = {}
    for direction, rules in ((INGRESS, cilium.ingress), (EGRESS, cilium.egress)):
        for rule in rules:
            # A rule by name or entity stands for peers it does not list: name them.
            stands_for_peers = bool(rule.fqdns or rule.entities) or len(rule.sources) > 1
            lines = _selector_lines(rule.fqdns, answers)
            lines += evidence.lines(
                direction, rule.sources, rule.ports, name_peers=stands_for_peers
            )
            patterns = [selector for selector in rule.dns if selector.pattern]
            lines += _selector_lines(patterns, {}, prefix="lookups: ")
            reasons[(direction, rule)] = tuple(lines)
    return reasons


def explain_cilium(
    plan: CiliumPlan, graph: WorkloadGraph, *, cluster_dns: ClusterDns | None = None
) -> dict[str, CiliumReasons]:
    """Per CiliumNetworkPolicy (by its workload's graph node id), the comment lines of each
    rule, from the policy rules it was made from, in :func:`explain`'s words; a rule by DNS
    name also names the addresses each name was answered with, and a ``matchPattern`` (of
    ``toFQDNs`` or of the L7 DNS rule) the names seen it stands for. ``cluster_dns``: what
    ``synthesize`` was given."""
    dns = cluster_dns if cluster_dns is not None else ClusterDns()
    return {
        cilium.policy.workload: _cilium_policy_reasons(cilium, graph, dns)
        for cilium in plan.policies
    }
