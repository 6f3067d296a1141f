"""CiliumNetworkPolicy output (``analyse --format cilium``): the policy model's least-privilege
content (``policies.PolicyPlan``) said the way Cilium enforces it best.

- Pods are ``fromEndpoints``/``toEndpoints`` selectors that always name their namespace
  (``k8s:io.kubernetes.pod.namespace``).
- The cluster's nodes (every node block, a hostNetwork workload) are the entities ``host`` and
  ``remote-node``: Cilium knows nodes by identity, and a CIDR never matches them.
- An address serving the cluster's API (an endpoint of the ``kubernetes`` Service) is the
  ``kube-apiserver`` entity; an exposed workload's ingress from anywhere is ``world``.
- An outside address that a DNS answer named for the workload is ``toFQDNs`` ``matchName`` of
  the name the application asked for (the CNAME chain resolved back to the question), rules by
  name instead of by address: the addresses of cloud APIs and CDNs rotate, their names do not.
  A rule to anywhere on a port (more outside addresses than ``--max-outside-addresses``) is a
  rule by name too when every one of those addresses had a name.
  More than a threshold of names one label under one suffix become one ``matchPattern``
  (``fqdnselectors.selectors_for``). Addresses no answer named stay ``toCIDRSet``, rules from or
  to anywhere keep their ``except`` networks.
- Every egress rule on port 53 carries an L7 ``dns`` rule listing the names the workload was
  seen to look up (and those of its ``toFQDNs``): Cilium's DNS proxy learns the addresses of
  ``toFQDNs`` names from it, and refuses other lookups.
- A policy stays a size a cluster takes: past :data:`MAX_FQDN_BYTES` of names its rules are by
  address, past :data:`MAX_DNS_NAME_BYTES` its DNS rule allows every name (:func:`size_notes`).

Pure: the plan, the graph and the cluster's facts in, :class:`CiliumPolicy` records out;
``rendering`` writes them through its template.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

from analyser.flows import Protocol
from analyser.fqdnselectors import MAX_NAMES_PER_SUFFIX, FqdnSelector, selectors_for
from analyser.graphs import NodeRole, WorkloadGraph
from analyser.peers import Exposure, IpPeer, PodPeer, PortSpec, special_address
from analyser.policies import (
    ANYWHERE,
    NODE_BLOCK_DESCRIPTION,
    DefaultDeny,
    Policy,
    PolicyPlan,
    Rule,
)
from analyser.selectors import LabelSelector

NAMESPACE_LABEL = "k8s:io.kubernetes.pod.namespace"

# The most bytes a CiliumNetworkPolicy's name selectors may take in its JSON: those of all its
# ``toFQDNs`` together, and those of its DNS rule, every time it is written (on each egress rule
# on port 53).
# A workload that talks with thousands of names under domains of their own (a crawler, a webhook
# sender: no pattern folds them), or a capture forging as many answers, would otherwise make a
# policy that the API server refuses (`kubectl apply` keeps the whole object in an annotation of
# at most 256 KiB), and a refused policy isolates nothing. Past the first, the rules by name go
# back to the addresses they stand for, as the NetworkPolicy has them; past the second, the DNS
# rule allows every name (``matchPattern: "*"``), still only through the cluster's DNS.
MAX_FQDN_BYTES = 40 * 1024
MAX_DNS_NAME_BYTES = 40 * 1024
ANY_NAME = FqdnSelector("*", pattern=True)
NODES = ("host", "remote-node")
KUBE_APISERVER = "kube-apiserver"
WORLD = "world"
DNS_PORT = 53
_DNS_PROTOCOLS = (Protocol.UDP, Protocol.TCP)


@dataclass(frozen=True, order=True, slots=True)
class CiliumRule:
    """One ingress or egress rule: exactly one kind of peer (``endpoints``, ``entities``,
    ``cidrs``, ``fqdns``), its ports, and for DNS the names the L7 rule allows (``dns``);
    ``sources``: the policy's rules it was made from (on these ports and others), for saying
    why it exists (``explaining.explain_cilium``); provenance, not content, so left out of
    equality."""

    ports: tuple[PortSpec, ...]
    endpoints: LabelSelector | None = None
    entities: tuple[str, ...] = ()
    cidrs: tuple[IpPeer, ...] = ()
    fqdns: tuple[FqdnSelector, ...] = ()
    dns: tuple[FqdnSelector, ...] = ()
    comment: str = ""  # what the peer stands for
    sources: tuple[Rule, ...] = field(default=(), compare=False)


@dataclass(frozen=True, slots=True)
class CiliumPolicy:
    """One CiliumNetworkPolicy for one workload, made from its :class:`~policies.Policy`."""

    policy: Policy  # names, selector, labels; its rules as NetworkPolicy writes them
    ingress: tuple[CiliumRule, ...]
    egress: tuple[CiliumRule, ...]
    # Past MAX_FQDN_BYTES: rules by address, not by name; past MAX_DNS_NAME_BYTES: DNS of any name.
    names_left_out: int = 0  # name selectors its toFQDNs would have listed (0: none left out)
    lookups_left_out: int = 0  # name selectors its DNS rule would have listed (0: none)


@dataclass(frozen=True, slots=True)
class CiliumPlan:
    """What ``--format cilium`` writes: a policy per workload, and the default-denies."""

    policies: tuple[CiliumPolicy, ...] = ()
    default_denies: tuple[DefaultDeny, ...] = ()


def endpoint_selector(peer: PodPeer, own_namespace: str) -> LabelSelector:
    """A pod peer as a Cilium endpoint selector naming its namespace."""
    namespace = peer.namespace or own_namespace
    labels = tuple(sorted((*peer.pod_selector.match_labels, (NAMESPACE_LABEL, namespace))))
    return LabelSelector(labels, peer.pod_selector.match_expressions)


def _address(peer: IpPeer) -> str | None:
    """The address of a single-address block, None for a wider one."""
    network = ipaddress.ip_network(peer.cidr, strict=False)
    return str(network.network_address) if network.num_addresses == 1 else None


def _is_anywhere(peer: IpPeer) -> bool:
    return peer.cidr in ANYWHERE.values()


def asked_names(graph: WorkloadGraph, workload: str) -> dict[str, set[str]]:
    """Outside address → the names this workload asked for and was answered with it."""
    asked: dict[str, set[str]] = defaultdict(set)
    for edge in graph.edges_from(workload):
        server = graph.node(edge.server)
        if server.role is NodeRole.EXTERNAL and edge.asked:
            for address in server.addresses:
                asked[address] |= set(edge.asked)
    return asked


@dataclass(slots=True)
class _PortNames:
    """The outside servers a workload reached on one port: the names asked for them, and
    whether each had one."""

    names: set[str]
    every_one_named: bool = True


def _names_by_port(graph: WorkloadGraph, workload: str) -> dict[PortSpec, _PortNames]:
    """Per port of ``workload``'s egress to ordinary outside addresses (answered, vouched for
    by its own side, none special): the names it asked for them, and whether every one of them
    had a name. Where each had, a rule to anywhere on that port (more addresses than
    ``--max-outside-addresses``: a cloud API's rotating ones) can be a rule by name."""
    found: dict[PortSpec, _PortNames] = {}
    for edge in graph.edges_from(workload):
        server = graph.node(edge.server)
        if server.role is not NodeRole.EXTERNAL:
            continue
        if any(special_address(address) is not None for address in server.addresses):
            continue
        for port, stats in edge.ports.items():
            if not (stats.answered and stats.vouched.client):
                continue
            entry = found.setdefault(port, _PortNames(set()))
            entry.names |= set(edge.asked)
            entry.every_one_named &= bool(edge.asked)
    return found


def _split_dns(ports: Iterable[PortSpec]) -> tuple[tuple[PortSpec, ...], tuple[PortSpec, ...]]:
    """(port 53 of UDP and TCP, the rest), each sorted."""
    ports = sorted(set(ports))
    dns = tuple(
        p for p in ports if p.port == DNS_PORT and p.protocol in (Protocol.UDP, Protocol.TCP)
    )
    return dns, tuple(p for p in ports if p not in dns)


@dataclass(slots=True)
class _Merged:
    """What several of the policy's rules merge into: the ports (of an entity rule) or the
    names (of a rule by name) gathered, and the rules they came from, in the policy's order."""

    ports: set[PortSpec] = field(default_factory=set)
    names: set[str] = field(default_factory=set)
    sources: dict[Rule, None] = field(default_factory=dict)  # an ordered set

    def add(
        self, source: Rule, *, ports: Iterable[PortSpec] = (), names: Iterable[str] = ()
    ) -> None:
        self.ports |= set(ports)
        self.names |= set(names)
        self.sources[source] = None


@dataclass(slots=True)
class _Rules:
    """Rules of one direction being gathered: entity and name rules merged per port set."""

    rules: list[CiliumRule]
    entities: dict[tuple[tuple[str, ...], str], _Merged]
    names: dict[tuple[PortSpec, ...], _Merged]

    @classmethod
    def empty(cls) -> _Rules:
        return cls([], defaultdict(_Merged), defaultdict(_Merged))

    def entity(
        self, entities: tuple[str, ...], comment: str, ports: Iterable[PortSpec], source: Rule
    ) -> None:
        self.entities[(entities, comment)].add(source, ports=ports)

    def done(self, threshold: int) -> list[CiliumRule]:
        rules = list(self.rules)
        rules += [
            CiliumRule(
                tuple(sorted(merged.ports)),
                entities=entities,
                comment=comment,
                sources=tuple(merged.sources),
            )
            for (entities, comment), merged in self.entities.items()
            if merged.ports
        ]
        rules += [
            CiliumRule(
                ports,
                fqdns=selectors_for(merged.names, max_per_suffix=threshold),
                sources=tuple(merged.sources),
            )
            for ports, merged in self.names.items()
        ]
        return rules


def selectors_bytes(selectors: Iterable[FqdnSelector]) -> int:
    """The bytes ``selectors`` take in a policy's compact JSON, with a comma each."""
    return sum(len(s.text) + (20 if s.pattern else 17) for s in selectors)


def _translate(
    policy: Policy,
    *,
    asked: Mapping[str, set[str]],
    by_port: Mapping[PortSpec, _PortNames],
    lookups: Collection[str],
    exposed: Collection[PortSpec],
    apiservers: Collection[str],
    threshold: int,
) -> CiliumPolicy:
    """``policy`` as a :class:`CiliumPolicy`; by address, not by name, when its names would pass
    :data:`MAX_FQDN_BYTES`; with DNS of any name when its lookups would pass
    :data:`MAX_DNS_NAME_BYTES`."""
    ingress, egress = _Rules.empty(), _Rules.empty()
    for rule in policy.ingress:
        peer = rule.peer
        if isinstance(peer, PodPeer):
            selector = endpoint_selector(peer, policy.namespace)
            ingress.rules.append(CiliumRule(rule.ports, endpoints=selector, sources=(rule,)))
        elif peer.description == NODE_BLOCK_DESCRIPTION:
            ingress.entity(NODES, NODE_BLOCK_DESCRIPTION, rule.ports, rule)
        elif _is_anywhere(peer) and exposed and set(rule.ports) <= set(exposed):
            ingress.entity((WORLD,), peer.description, rule.ports, rule)
        else:
            ingress.rules.append(
                CiliumRule(rule.ports, cidrs=(peer,), comment=peer.description, sources=(rule,))
            )
    for source in policy.egress:
        rule = source
        if isinstance(rule.peer, IpPeer) and _is_anywhere(rule.peer):
            rule = _by_name(egress, rule, by_port)
            if not rule.ports:
                continue
        _egress(egress, rule, source, policy.namespace, asked=asked, apiservers=apiservers)
    dns_names = set(lookups) | {name for merged in egress.names.values() for name in merged.names}
    dns = selectors_for(dns_names, max_per_suffix=threshold)
    done = egress.done(threshold)
    # Written again on each rule to port 53 (the DNS pods, a node-local cache, outside servers).
    copies = sum(1 for rule in done if _split_dns(rule.ports)[0])
    lookups_left_out = 0
    if selectors_bytes(dns) * copies > MAX_DNS_NAME_BYTES:
        dns, lookups_left_out = (ANY_NAME,), len(dns)
    egress_rules = [piece for rule in done for piece in _with_dns(rule, dns)]
    translated = CiliumPolicy(
        policy,
        tuple(sorted(ingress.done(threshold), key=_rule_key)),
        tuple(sorted(egress_rules, key=_rule_key)),
        lookups_left_out=lookups_left_out,
    )
    names = {s for rule in translated.egress for s in rule.fqdns}
    if selectors_bytes(names) <= MAX_FQDN_BYTES:
        return translated
    by_address = _translate(
        policy,
        asked={},
        by_port={},
        lookups=lookups,
        exposed=exposed,
        apiservers=apiservers,
        threshold=threshold,
    )
    return dataclasses.replace(by_address, names_left_out=len(names))


def _egress(
    rules: _Rules,
    rule: Rule,
    source: Rule,
    namespace: str,
    *,
    asked: Mapping[str, set[str]],
    apiservers: Collection[str],
) -> None:
    """``rule``: what is left of the policy's rule ``source`` to translate."""
    peer = rule.peer
    if isinstance(peer, PodPeer):
        selector = endpoint_selector(peer, namespace)
        rules.rules.append(CiliumRule(rule.ports, endpoints=selector, sources=(source,)))
        return
    address = _address(peer)
    if peer.description == NODE_BLOCK_DESCRIPTION:
        rules.entity(NODES, NODE_BLOCK_DESCRIPTION, rule.ports, source)
    elif address is not None and address in apiservers:
        rules.entity((KUBE_APISERVER,), "the cluster's API server", rule.ports, source)
    elif address is not None and asked.get(address) and not peer.description:
        rules.names[rule.ports].add(source, names=asked[address])
    else:
        rules.rules.append(
            CiliumRule(rule.ports, cidrs=(peer,), comment=peer.description, sources=(source,))
        )


def _by_name(rules: _Rules, rule: Rule, by_port: Mapping[PortSpec, _PortNames]) -> Rule:
    """A rule to anywhere with the ports on which every outside server had a name taken out,
    those names allowed on them instead (in ``rules``)."""
    kept = []
    for port in rule.ports:
        named = by_port.get(port)
        if named is not None and named.names and named.every_one_named:
            rules.names[(port,)].add(rule, names=named.names)
        else:
            kept.append(port)
    return Rule(rule.peer, tuple(kept))


def _with_dns(rule: CiliumRule, names: tuple[FqdnSelector, ...]) -> list[CiliumRule]:
    """The rule, its port 53 apart with the L7 DNS rule allowing ``names`` (when any)."""
    dns_ports, other = _split_dns(rule.ports)
    if not dns_ports or not names:
        return [rule]
    pieces = [_replace_ports(rule, dns_ports, names)]
    if other:
        pieces.append(_replace_ports(rule, other, ()))
    return pieces


def _replace_ports(
    rule: CiliumRule, ports: tuple[PortSpec, ...], dns: tuple[FqdnSelector, ...]
) -> CiliumRule:
    return dataclasses.replace(rule, ports=ports, dns=dns)


def _rule_key(rule: CiliumRule) -> tuple[object, ...]:
    """Endpoints first, then entities, names and addresses; each by its peer, then ports."""
    if rule.endpoints is not None:
        return (0, rule.endpoints, (), rule.ports)
    if rule.entities:
        return (1, rule.entities, (), rule.ports)
    if rule.fqdns:
        return (2, (), tuple(s.text for s in rule.fqdns), rule.ports)
    networks = [ipaddress.ip_network(peer.cidr) for peer in rule.cidrs]
    return (
        3,
        (),
        tuple((n.version, int(n.network_address), n.prefixlen) for n in networks),
        rule.ports,
    )


def size_notes(plan: CiliumPlan) -> tuple[str, ...]:
    """What the policies of ``plan`` left out to stay a size a cluster takes, one line each."""
    notes = []
    for item in plan.policies:
        workload = item.policy.workload
        if item.names_left_out:
            notes.append(
                f"{workload}: its CiliumNetworkPolicy allows outside servers by address, not by "
                f"name: its {item.names_left_out:,} name selectors would take more than "
                f"{MAX_FQDN_BYTES // 1024} KiB"
            )
        if item.lookups_left_out:
            notes.append(
                f"{workload}: its CiliumNetworkPolicy allows DNS lookups of any name through the "
                f"cluster's DNS: the {item.lookups_left_out:,} name selectors it looked up would "
                f"take more than {MAX_DNS_NAME_BYTES // 1024} KiB"
            )
    return tuple(notes)


def cilium_plan(
    plan: PolicyPlan,
    graph: WorkloadGraph,
    *,
    exposures: Mapping[str, Iterable[Exposure]] | None = None,
    apiservers: Collection[str] = (),
    max_names_per_suffix: int = MAX_NAMES_PER_SUFFIX,
) -> CiliumPlan:
    """The CiliumNetworkPolicies for ``plan`` (see the module's docstring). ``exposures``: the
    workloads whose exposed ports ``plan`` allows from anywhere (``world``); ``apiservers``: the
    API server's addresses; ``max_names_per_suffix``: the pattern threshold."""
    policies = []
    for policy in plan.policies:
        node = graph.node(policy.workload)
        exposed = [item.port for item in (exposures or {}).get(policy.workload, ())]
        policies.append(
            _translate(
                policy,
                asked=asked_names(graph, policy.workload),
                by_port=_names_by_port(graph, policy.workload),
                lookups=node.lookups,
                exposed=exposed,
                apiservers=apiservers,
                threshold=max_names_per_suffix,
            )
        )
    return CiliumPlan(tuple(policies), plan.default_denies)
