"""The cluster baseline (``analyse --baseline cluster``): one Baseline-tier ClusterNetworkPolicy
(``policy.networking.k8s.io/v1beta1``, network-policy-api v0.3.0) that denies everything for the
captured namespaces, and for every namespace created after the snapshot, except DNS to the cluster
DNS pods (and node-local DNS caches) and egress to the nodes (the address blocks the
NetworkPolicies name them by). A workload's own
NetworkPolicy (the NetworkPolicy tier, evaluated before the Baseline tier) decides everything for
the pods it selects; the baseline decides for the pods no NetworkPolicy selects.

Which namespaces it covers: every namespace except those the snapshot knows that were not
isolated (not captured, or cut off: ``PolicyPlan.isolated_namespaces``), and except namespaces
labelled :data:`EXEMPT_LABEL` = :data:`EXEMPT_VALUE`. So it is a ``NotIn`` list of names, not an
``In`` list (a namespace created later would not be in it) nor the capture opt-in label
(``uninstall-sidecars`` removes it when the capture is over).

Data only, no I/O: rendering lives in ``rendering``; its semantics in ``clusterpolicies``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

from analyser.clusterpolicies import Action
from analyser.evaluation import NAMESPACE_NAME_LABEL
from analyser.peers import DNS_PORTS, ClusterDns, IpPeer, PodPeer, PortSpec
from analyser.policies import ANYWHERE, PolicyPlan
from analyser.selectors import LabelRequirement, LabelSelector
from kernel.errors import RenderError

BASELINE_NAME = "netpol-sniffer-baseline"
# The lowest precedence of the Baseline tier: any other Baseline policy comes first.
BASELINE_PRIORITY = 1000
# A namespace labelled so is not covered: label a namespace added later while capturing it.
EXEMPT_LABEL = "netpol-sniffer.io/baseline"
EXEMPT_VALUE = "exempt"
# The CRD's limits (v1beta1): rules per direction, peers per rule, networks per peer, protocol
# entries per rule.
MAX_RULES = MAX_PEERS = MAX_NETWORKS = MAX_PROTOCOLS = 25


@dataclass(frozen=True, slots=True)
class Baseline:
    """The one Baseline-tier ClusterNetworkPolicy: it covers every namespace but
    ``exempt_namespaces`` (and those labelled exempt); it accepts egress to the ``dns`` pods on
    ``dns_ports``, to the ``node_local_dns`` caches on 53/UDP and 53/TCP and to the ``nodes``
    (the blocks the policies use for them) on every port; it denies every other ingress from
    pods and egress to anything.

    Every port to the nodes: traffic between a pod and its own node is always allowed for
    NetworkPolicy (kubelet probes, node-local agents; ``evaluation`` counts on it), and a
    ClusterNetworkPolicy cannot name "its own node", only all of them. The ports are not the
    ones seen with nodes: this one policy covers the whole cluster, and what one pod's capture
    claims must never widen it (a capture speaks only for its pod)."""

    exempt_namespaces: tuple[str, ...]  # sorted
    dns: tuple[PodPeer, ...]
    dns_ports: tuple[PortSpec, ...]
    node_local_dns: tuple[IpPeer, ...] = ()
    nodes: tuple[IpPeer, ...] = ()
    name: str = BASELINE_NAME
    priority: int = BASELINE_PRIORITY

    @property
    def node_local_ports(self) -> tuple[PortSpec, ...]:
        return DNS_PORTS if self.node_local_dns else ()


def baseline_for(
    plan: PolicyPlan,
    *,
    namespaces: Iterable[str],
    cluster_dns: ClusterDns,
    nodes: tuple[IpPeer, ...],
) -> Baseline | None:
    """The baseline for ``plan`` (synthesized with ``baseline=True``), or None when it isolates
    no namespace. ``namespaces``: every namespace the snapshot knows (the others are created
    later, and covered); ``nodes``: the node blocks the policies use (``policies.node_blocks``)."""
    if not plan.isolated_namespaces:
        return None
    isolated = set(plan.isolated_namespaces)
    return Baseline(
        exempt_namespaces=tuple(sorted(set(namespaces) - isolated)),
        dns=tuple(sorted(cluster_dns.peers)),
        dns_ports=tuple(sorted(set(cluster_dns.ports))),
        node_local_dns=tuple(sorted(cluster_dns.node_local)),
        nodes=nodes,
    )


def labelled_exempt(
    baseline: Baseline, namespace_labels: Mapping[str, Mapping[str, str]]
) -> tuple[str, ...]:
    """The namespaces the baseline is meant to cover that carry the exempt label (so it does
    not): a label left behind after their capture. The report says so."""
    return tuple(
        sorted(
            namespace
            for namespace, labels in namespace_labels.items()
            if namespace not in baseline.exempt_namespaces
            and labels.get(EXEMPT_LABEL) == EXEMPT_VALUE
        )
    )


# -- the rules, as the ClusterNetworkPolicy writes them -------------------------------------------


EVERY_NAMESPACE = LabelSelector()


@dataclass(frozen=True, slots=True)
class NamespacesPeer:
    """Every pod of the namespaces ``selector`` selects (empty: of every namespace)."""

    selector: LabelSelector = EVERY_NAMESPACE


@dataclass(frozen=True, slots=True)
class PodsPeer:
    """The pods ``pod_selector`` selects in the namespace named ``namespace``."""

    namespace: str
    pod_selector: LabelSelector


@dataclass(frozen=True, slots=True)
class NetworksPeer:
    """Addresses in ``cidrs`` (at most :data:`MAX_NETWORKS`); ``description`` says what they
    stand for."""

    cidrs: tuple[str, ...]
    description: str = ""


BaselinePeer = NamespacesPeer | PodsPeer | NetworksPeer


@dataclass(frozen=True, order=True, slots=True)
class DestinationPorts:
    """``first``..``last`` of one protocol, as a ``protocols`` entry (a number when they are
    equal, else a range)."""

    protocol: str  # the CRD's key: tcp, udp, sctp
    first: int
    last: int


@dataclass(frozen=True, slots=True)
class BaselineRule:
    name: str
    action: Action
    peers: tuple[BaselinePeer, ...]
    protocols: tuple[DestinationPorts, ...] = ()  # none: every port


def subject(baseline: Baseline) -> LabelSelector:
    """The namespaces the baseline covers: all but the exempt ones and those labelled exempt."""
    requirements = [LabelRequirement(EXEMPT_LABEL, "NotIn", (EXEMPT_VALUE,))]
    if baseline.exempt_namespaces:
        requirements.insert(
            0, LabelRequirement(NAMESPACE_NAME_LABEL, "NotIn", baseline.exempt_namespaces)
        )
    return LabelSelector(match_expressions=tuple(requirements))


def port_ranges(ports: Iterable[PortSpec]) -> tuple[DestinationPorts, ...]:
    """``ports`` as ranges of consecutive ports per protocol, sorted."""
    ranges: list[DestinationPorts] = []
    for spec in sorted(set(ports)):
        protocol = str(spec.protocol).lower()
        last = ranges[-1] if ranges else None
        if last is not None and last.protocol == protocol and spec.port == last.last + 1:
            ranges[-1] = DestinationPorts(protocol, last.first, spec.port)
        else:
            ranges.append(DestinationPorts(protocol, spec.port, spec.port))
    return tuple(sorted(ranges))


T = TypeVar("T")


def _chunks(items: Sequence[T], size: int) -> list[tuple[T, ...]]:
    return [tuple(items[start : start + size]) for start in range(0, len(items), size)]


def _accepts(
    name: str, peers: Sequence[BaselinePeer], ports: Iterable[PortSpec]
) -> list[BaselineRule]:
    """Accept rules for ``peers`` on ``ports`` (none: every port), split where the CRD's limits
    ask for it."""
    ranges = port_ranges(ports)
    rules = [
        BaselineRule(name, Action.ACCEPT, peer_chunk, protocol_chunk)
        for peer_chunk in _chunks(peers, MAX_PEERS)
        for protocol_chunk in _chunks(ranges, MAX_PROTOCOLS) or [()]
    ]
    if len(rules) == 1:
        return rules
    return [replace(rule, name=f"{name}-{n}") for n, rule in enumerate(rules, start=1)]


def _networks(blocks: Iterable[IpPeer], description: str) -> list[BaselinePeer]:
    cidrs = [block.cidr for block in blocks]
    return [NetworksPeer(chunk, description) for chunk in _chunks(cidrs, MAX_NETWORKS)]


def ingress_rules(baseline: Baseline) -> tuple[BaselineRule, ...]:
    """Deny from every pod. (The standard channel names no other ingress peer: traffic from
    nodes and from outside the cluster is not the baseline's to deny.)"""
    return (BaselineRule("deny-from-pods", Action.DENY, (NamespacesPeer(),)),)


def egress_rules(baseline: Baseline) -> tuple[BaselineRule, ...]:
    """Accept DNS to the DNS pods and node-local caches, and traffic to the nodes; then deny
    everything else (every pod, every address). Raises
    :class:`RenderError` past the CRD's :data:`MAX_RULES`."""
    rules: list[BaselineRule] = []
    # A DNS peer always names its namespace (rendering checks it).
    dns = [PodsPeer(peer.namespace or "", peer.pod_selector) for peer in baseline.dns]
    rules += _accepts("dns", dns, baseline.dns_ports)
    if baseline.node_local_dns:
        caches = _networks(baseline.node_local_dns, "node-local DNS cache")
        rules += _accepts("node-local-dns", caches, baseline.node_local_ports)
    if baseline.nodes:
        rules += _accepts("nodes", _networks(baseline.nodes, "cluster nodes"), ())
    anywhere = NetworksPeer(tuple(ANYWHERE[version] for version in sorted(ANYWHERE)))
    rules.append(BaselineRule("deny-all", Action.DENY, (NamespacesPeer(), anywhere)))
    if len(rules) > MAX_RULES:
        raise RenderError(
            f"the cluster baseline would need {len(rules)} egress rules, more than the "
            f"{MAX_RULES} a ClusterNetworkPolicy may have ({len(baseline.nodes)} node blocks): "
            "give the nodes' networks with --node-cidr"
        )
    return tuple(rules)
