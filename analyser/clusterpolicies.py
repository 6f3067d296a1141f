"""ClusterNetworkPolicy semantics (``policy.networking.k8s.io`` v1beta1 and v1alpha2, the
standard channel of network-policy-api v0.3.0, whose two versions share one schema) and the
tiers: what a set of NetworkPolicies and ClusterNetworkPolicies allows together.

Pure, like ``evaluation``: Kubernetes JSON in, answers out. The rules implemented, as the API
documents them:

- Each side of a connection (egress at the client, ingress at the server) goes through the tiers
  in order: **Admin** ClusterNetworkPolicies, then the **NetworkPolicy** tier, then **Baseline**
  ClusterNetworkPolicies; what no tier decides is allowed.
- In a ClusterNetworkPolicy tier, the policies whose ``subject`` selects the pod are taken by
  ``priority`` (lower first; equal priorities by name, where the API leaves the order to the
  implementation), and their rules of that direction in the order written. The first rule one of
  whose peers matches and whose ``protocols`` hold the port decides: ``Accept`` allows, ``Deny``
  denies, ``Pass`` hands the connection to the next tier (from Admin to the NetworkPolicy tier;
  from Baseline to the default, allowed). A policy without rules of a direction does not affect
  it.
- The NetworkPolicy tier decides everything for a pod a NetworkPolicy isolates in that direction
  (``evaluation.PolicySet``); for other pods it decides nothing.
- Subjects and peers: ``namespaces`` selects every pod of the namespaces it matches; ``pods`` the
  pods its ``podSelector`` matches in the namespaces its ``namespaceSelector`` matches (absent or
  empty: every namespace). Pods on the host network are never selected: they are addresses here.
  ``networks`` (egress only) matches addresses that are not pods: as for a NetworkPolicy's
  ipBlock (``evaluation``), whether a network also matches pod addresses is not counted on, so
  pods are matched by ``namespaces`` and ``pods`` only.
- ``protocols``: ``tcp``, ``udp`` or ``sctp`` with a ``destinationPort`` ``number`` or ``range``
  (``start`` < ``end``); none matches every port.
- Traffic between a pod and the node it runs on is allowed whatever the policies say, as in
  ``evaluation``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from analyser.evaluation import (
    EVERY_PORT,
    MAX_PORT,
    NO_PORTS,
    Address,
    Direction,
    IpBlock,
    Peer,
    Pod,
    PolicySet,
    PortRange,
    PortSet,
    Selector,
    SideVerdict,
    _Invalid,
    _list,
    _mapping,
    _network,
    _selector,
)
from analyser.flows import Protocol
from kernel.errors import PolicyError

GROUP = "policy.networking.k8s.io"
API_VERSIONS = (f"{GROUP}/v1beta1", f"{GROUP}/v1alpha2")
KIND = "ClusterNetworkPolicy"
MAX_PRIORITY = 1000


class Tier(StrEnum):
    ADMIN = "Admin"
    BASELINE = "Baseline"


class Action(StrEnum):
    ACCEPT = "Accept"
    DENY = "Deny"
    PASS = "Pass"


@dataclass(frozen=True, slots=True)
class _ClusterPeer:
    """A subject or peer: ``namespaces`` (namespace selector only), ``pods`` (both selectors,
    the namespace one None when absent) or ``networks``."""

    namespace_selector: Selector | None = None
    pod_selector: Selector | None = None
    networks: tuple[IpBlock, ...] = ()

    def matches(self, peer: Peer) -> bool:
        if self.networks:
            return isinstance(peer, Address) and any(n.matches(peer.parsed) for n in self.networks)
        if not isinstance(peer, Pod):
            return False
        namespaces = self.namespace_selector
        pods = self.pod_selector
        return (namespaces is None or namespaces.matches(peer.namespace_labels)) and (
            pods is None or pods.matches(peer.labels)
        )


@dataclass(frozen=True, slots=True)
class _ClusterRule:
    name: str
    action: Action
    peers: tuple[_ClusterPeer, ...]
    ports: PortSet  # every port when the rule has no protocols

    def matches(self, peer: Peer) -> bool:
        return any(p.matches(peer) for p in self.peers)


@dataclass(frozen=True, slots=True)
class CompiledClusterPolicy:
    name: str
    source: str  # the file it came from, for messages
    tier: Tier
    priority: int
    subject: _ClusterPeer
    ingress: tuple[_ClusterRule, ...]
    egress: tuple[_ClusterRule, ...]

    def __str__(self) -> str:
        return f"{KIND} {self.name} ({self.tier})"

    def rules(self, direction: Direction) -> tuple[_ClusterRule, ...]:
        return self.ingress if direction is Direction.INGRESS else self.egress

    def selects(self, subject: Pod, direction: Direction) -> bool:
        """Whether it has a say on ``subject``'s traffic in ``direction``."""
        return bool(self.rules(direction)) and self.subject.matches(subject)


# --------------------------------------------------------------------------------------------
# Parsing


def _selectors(spec: Mapping[str, Any], kind: str, where: str) -> _ClusterPeer:
    """A ``namespaces``/``pods`` subject or peer, or ``networks`` (peers only)."""
    if kind == "namespaces":
        return _ClusterPeer(namespace_selector=_selector(spec, where))
    if kind == "pods":
        if spec.get("podSelector") is None:
            raise _Invalid(f"{where}: podSelector is required")
        namespaces = spec.get("namespaceSelector")
        return _ClusterPeer(
            namespace_selector=None
            if namespaces is None
            else _selector(namespaces, f"{where}.namespaceSelector"),
            pod_selector=_selector(spec["podSelector"], f"{where}.podSelector"),
        )
    raise _Invalid(f"{where}: unknown {kind!r}")


def _one_key(value: Any, where: str, allowed: Sequence[str]) -> tuple[str, Any]:
    spec = _mapping(value, where)
    if len(spec) != 1:
        raise _Invalid(f"{where}: exactly one of {', '.join(allowed)} is required")
    ((key, item),) = spec.items()
    if key not in allowed:
        raise _Invalid(f"{where}: unknown {key!r} (one of {', '.join(allowed)})")
    return str(key), item


def _peer(value: Any, where: str, direction: Direction) -> _ClusterPeer:
    kinds = (
        ("namespaces", "pods", "networks")
        if direction is Direction.EGRESS
        else ("namespaces", "pods")
    )
    kind, item = _one_key(value, where, kinds)
    if kind != "networks":
        return _selectors(_mapping(item, f"{where}.{kind}"), kind, f"{where}.{kind}")
    cidrs = _list(item, f"{where}.networks")
    if not cidrs:
        raise _Invalid(f"{where}.networks: at least one CIDR is required")
    networks = []
    for index, text in enumerate(cidrs):
        at = f"{where}.networks[{index}]"
        network = _network(text, at)
        if "/" not in text:
            raise _Invalid(f"{at}: {text!r} is not a CIDR (write {network})")
        try:
            ipaddress.ip_network(text)
        except ValueError:
            raise _Invalid(f"{at}: {text!r} has host bits set (write {network})") from None
        networks.append(IpBlock(network))
    return _ClusterPeer(networks=tuple(networks))


def _port_range(value: Any, where: str) -> PortRange:
    name, spec = _one_key(value, where, ("tcp", "udp", "sctp"))
    protocol = Protocol(name.upper())
    kind, port = _one_key(
        _mapping(spec, f"{where}.{name}").get("destinationPort"),
        f"{where}.{name}.destinationPort",
        ("number", "range"),
    )
    at = f"{where}.{name}.destinationPort.{kind}"

    def number(item: Any, what: str) -> int:
        if isinstance(item, bool) or not isinstance(item, int) or not 1 <= item <= MAX_PORT:
            raise _Invalid(f"{what} must be a port number from 1 to {MAX_PORT}")
        return item

    if kind == "number":
        first = last = number(port, at)
    else:
        bounds = _mapping(port, at)
        first, last = (
            number(bounds.get("start"), f"{at}.start"),
            number(bounds.get("end"), f"{at}.end"),
        )
        if first >= last:
            raise _Invalid(f"{at}: start {first} must be less than end {last}")
    return PortRange(protocol, first, last)


def _rules(value: Any, where: str, direction: Direction) -> tuple[_ClusterRule, ...]:
    peers_key = "to" if direction is Direction.EGRESS else "from"
    rules = []
    for index, item in enumerate(_list(value, where)):
        at = f"{where}[{index}]"
        spec = _mapping(item, at)
        try:
            action = Action(str(spec.get("action")))
        except ValueError:
            raise _Invalid(
                f"{at}.action: {spec.get('action')!r} is not Accept, Deny or Pass"
            ) from None
        peers = _list(spec.get(peers_key), f"{at}.{peers_key}")
        if not peers:
            raise _Invalid(f"{at}.{peers_key}: at least one peer is required")
        protocols = _list(spec.get("protocols"), f"{at}.protocols")
        rules.append(
            _ClusterRule(
                name=str(spec.get("name") or ""),
                action=action,
                peers=tuple(
                    _peer(peer, f"{at}.{peers_key}[{n}]", direction) for n, peer in enumerate(peers)
                ),
                ports=PortSet.of(
                    _port_range(p, f"{at}.protocols[{n}]") for n, p in enumerate(protocols)
                )
                if protocols
                else EVERY_PORT,
            )
        )
    return tuple(rules)


def compile_cluster_policy(
    document: Mapping[str, Any], *, source: str = ""
) -> CompiledClusterPolicy:
    """A ClusterNetworkPolicy dict → :class:`CompiledClusterPolicy`. Raises
    :class:`PolicyError` naming the policy and ``source`` when it is not well-formed."""
    raw_metadata = document.get("metadata")
    metadata: Mapping[str, Any] = raw_metadata if isinstance(raw_metadata, Mapping) else {}
    name = str(metadata.get("name", "?"))
    origin = f" in {source}" if source else ""
    try:
        if document.get("apiVersion") not in API_VERSIONS:
            raise _Invalid(
                f"apiVersion {document.get('apiVersion')!r} is not one of {', '.join(API_VERSIONS)}"
            )
        if name == "?":
            raise _Invalid("metadata.name is required")
        spec = _mapping(document.get("spec"), "spec")
        try:
            tier = Tier(str(spec.get("tier")))
        except ValueError:
            raise _Invalid(f"spec.tier: {spec.get('tier')!r} is not Admin or Baseline") from None
        priority = spec.get("priority")
        if (
            isinstance(priority, bool)
            or not isinstance(priority, int)
            or not 0 <= priority <= MAX_PRIORITY
        ):
            raise _Invalid(f"spec.priority must be a number from 0 to {MAX_PRIORITY}")
        kind, subject = _one_key(spec.get("subject"), "spec.subject", ("namespaces", "pods"))
        return CompiledClusterPolicy(
            name=name,
            source=source,
            tier=tier,
            priority=priority,
            subject=_selectors(
                _mapping(subject, f"spec.subject.{kind}"), kind, f"spec.subject.{kind}"
            ),
            ingress=_rules(spec.get("ingress"), "spec.ingress", Direction.INGRESS),
            egress=_rules(spec.get("egress"), "spec.egress", Direction.EGRESS),
        )
    except _Invalid as error:
        raise PolicyError(f"{KIND} {name}{origin}: {error}") from None


# --------------------------------------------------------------------------------------------
# The tiers


@dataclass(frozen=True, slots=True)
class _TierOutcome:
    """Of the ports a tier was given: those its rules accepted, and those it left to the next
    tier (passed, or matched by no rule)."""

    accepted: PortSet
    undecided: PortSet


def _through_tier(
    policies: Iterable[CompiledClusterPolicy],
    peer: Peer,
    direction: Direction,
    ports: PortSet,
) -> _TierOutcome:
    """The first matching rule of ``policies`` (in precedence order) decides each of ``ports``."""
    remaining, accepted, passed = ports, NO_PORTS, NO_PORTS
    for policy in policies:
        for rule in policy.rules(direction):
            if not remaining:
                break
            if not rule.matches(peer):
                continue
            decided = rule.ports.intersection(remaining)
            if rule.action is Action.ACCEPT:
                accepted = accepted.union(decided)
            elif rule.action is Action.PASS:
                passed = passed.union(decided)
            remaining = remaining.difference(decided)
    return _TierOutcome(accepted, passed.union(remaining))


@dataclass(frozen=True, slots=True)
class TieredPolicySet(PolicySet):
    """NetworkPolicies and ClusterNetworkPolicies, evaluated through the tiers (module
    docstring); asked exactly like :class:`~analyser.evaluation.PolicySet`."""

    cluster_policies: tuple[CompiledClusterPolicy, ...] = ()
    _tiers: Mapping[Tier, tuple[CompiledClusterPolicy, ...]] = field(
        init=False, compare=False, repr=False
    )

    def __post_init__(self) -> None:
        PolicySet.__post_init__(self)
        ordered = sorted(self.cluster_policies, key=lambda p: (p.priority, p.name))
        # Frozen: the index is derived once, here.
        object.__setattr__(
            self, "_tiers", {tier: tuple(p for p in ordered if p.tier is tier) for tier in Tier}
        )

    def side(self, subject: Pod, peer: Peer, direction: Direction) -> SideVerdict:
        network_policies = PolicySet.side(self, subject, peer, direction)
        admin = [p for p in self._tiers[Tier.ADMIN] if p.selects(subject, direction)]
        baseline = [p for p in self._tiers[Tier.BASELINE] if p.selects(subject, direction)]
        node_local = (
            isinstance(peer, Address) and peer.node is not None and peer.node == subject.node
        )
        if node_local or not (admin or baseline):
            return network_policies
        first = _through_tier(admin, peer, direction, EVERY_PORT)
        names = [str(p) for p in admin]
        if network_policies.policies:
            allowed = first.accepted.union(network_policies.ports.intersection(first.undecided))
            names += network_policies.policies
        else:
            last = _through_tier(baseline, peer, direction, first.undecided)
            allowed = first.accepted.union(last.accepted).union(last.undecided)
            names += [str(p) for p in baseline]
        return SideVerdict(direction, subject, tuple(names), allowed)

    def ip_blocks(self) -> tuple[IpBlock, ...]:
        """Every distinct ipBlock and ``networks`` entry the policies name, sorted (IPv4 first)."""
        found = set(PolicySet.ip_blocks(self)) | {
            network
            for policy in self.cluster_policies
            for rule in (*policy.ingress, *policy.egress)
            for peer in rule.peers
            for network in peer.networks
        }
        return tuple(sorted(found, key=lambda b: (b.network.version, b.network, b.excepted)))
