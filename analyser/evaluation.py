"""NetworkPolicy semantics (``networking.k8s.io/v1``): what does a set of policies allow?

Pure: Kubernetes JSON policies (dicts) and plain facts about pods and addresses in, answers out.
No I/O, no YAML; loading files is ``policysets``' job, replaying a bundle is ``replaying``'s.

The rules implemented, as the API documents them:

- A pod is isolated for a direction when at least one policy in its namespace selects it
  (``spec.podSelector``) with that direction in ``policyTypes``. Without ``policyTypes`` a policy
  means Ingress, plus Egress when it has a non-empty ``egress`` list. A pod not isolated for a
  direction allows everything in it; an isolated one allows the union of what its policies allow.
- A connection needs egress allowed at the client (when the client is a pod) *and* ingress allowed
  at the server (when the server is a pod). Traffic between a pod and the node it runs on is always
  allowed.
- Rules: ``from``/``to`` missing or empty matches every peer; ``ports`` missing or empty matches
  every port. ``ingress: []`` allows nothing, ``ingress: [{}]`` allows everything.
- Peers: ``podSelector`` alone selects pods in the policy's namespace; ``namespaceSelector`` alone
  selects every pod in the matching namespaces; both in one peer select the pods matching both
  (AND), while two peers are alternatives (OR). An empty selector ``{}`` matches everything.
  Namespaces always carry the label ``kubernetes.io/metadata.name``.
- ``ipBlock`` (IPv4 or IPv6, with ``except``) matches addresses that are not pods: whether an
  ipBlock also matches pod IPs is left to each network plugin by the API, so an evaluation that
  must hold on every plugin cannot count on it. Pods are matched by selectors only.
- Ports: ``protocol`` defaults to TCP; a numeric ``port`` with ``endPort`` is a range; a named port
  is looked up in the destination pod's containerPorts (the server's, for egress too), so it
  never matches an address outside the cluster; no ``port`` means every port of that protocol.

Allowed ports are computed as :class:`PortSet` values (ranges per protocol), so "all ports" and
"these 3 ports" are answered exactly, without enumerating 65535 numbers.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Generic, TypeVar

from analyser.flows import Protocol
from analyser.fqdnselectors import FqdnSelector
from kernel.errors import PolicyError

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
MAX_PORT = 65535

Labels = tuple[tuple[str, str], ...]
T = TypeVar("T")


class Direction(StrEnum):
    INGRESS = "ingress"
    EGRESS = "egress"


# --------------------------------------------------------------------------------------------
# Port sets


@dataclass(frozen=True, order=True, slots=True)
class PortRange:
    """``first``..``last`` inclusive, for one protocol."""

    protocol: Protocol
    first: int
    last: int

    def __str__(self) -> str:
        if self.first == 1 and self.last == MAX_PORT:
            return f"all {self.protocol} ports"
        if self.first == self.last:
            return f"{self.first}/{self.protocol}"
        return f"{self.first}-{self.last}/{self.protocol}"

    @property
    def size(self) -> int:
        return self.last - self.first + 1


@dataclass(frozen=True, slots=True)
class PortSet:
    """A set of (protocol, port) values as sorted, merged ranges."""

    ranges: tuple[PortRange, ...] = ()

    @classmethod
    def of(cls, ranges: Iterable[PortRange]) -> PortSet:
        merged: list[PortRange] = []
        for item in sorted(ranges):
            last = merged[-1] if merged else None
            if last is not None and last.protocol == item.protocol and item.first <= last.last + 1:
                merged[-1] = PortRange(item.protocol, last.first, max(last.last, item.last))
            else:
                merged.append(item)
        return cls(tuple(merged))

    @classmethod
    def everything(cls) -> PortSet:
        return EVERY_PORT

    @classmethod
    def single(cls, protocol: Protocol, port: int) -> PortSet:
        return cls((PortRange(protocol, port, port),))

    def __bool__(self) -> bool:
        return bool(self.ranges)

    def __iter__(self) -> Iterator[PortRange]:
        return iter(self.ranges)

    def __str__(self) -> str:
        if self == PortSet.everything():
            return "all ports"
        return ", ".join(str(item) for item in self.ranges) if self.ranges else "nothing"

    def contains(self, protocol: Protocol, port: int) -> bool:
        return any(r.protocol == protocol and r.first <= port <= r.last for r in self.ranges)

    def union(self, other: PortSet) -> PortSet:
        if not other.ranges or self is EVERY_PORT:
            return self
        if not self.ranges or other is EVERY_PORT:
            return other
        return PortSet.of((*self.ranges, *other.ranges))

    def intersection(self, other: PortSet) -> PortSet:
        common = (
            PortRange(a.protocol, max(a.first, b.first), min(a.last, b.last))
            for a in self.ranges
            for b in other.ranges
            if a.protocol == b.protocol and max(a.first, b.first) <= min(a.last, b.last)
        )
        return PortSet.of(common)

    def difference(self, other: PortSet) -> PortSet:
        remaining: list[PortRange] = []
        for item in self.ranges:
            pieces = [item]
            for cut in other.ranges:
                if cut.protocol != item.protocol:
                    continue
                next_pieces: list[PortRange] = []
                for piece in pieces:
                    if cut.last < piece.first or cut.first > piece.last:
                        next_pieces.append(piece)
                        continue
                    if piece.first < cut.first:
                        next_pieces.append(PortRange(piece.protocol, piece.first, cut.first - 1))
                    if cut.last < piece.last:
                        next_pieces.append(PortRange(piece.protocol, cut.last + 1, piece.last))
                pieces = next_pieces
            remaining.extend(pieces)
        return PortSet.of(remaining)

    @property
    def count(self) -> int:
        """How many (protocol, port) values the set holds."""
        return sum(item.size for item in self.ranges)

    def covers_all_of(self, protocol: Protocol) -> bool:
        return any(r.protocol == protocol and r.first == 1 and r.last == MAX_PORT for r in self)


NO_PORTS = PortSet()
EVERY_PORT = PortSet(tuple(PortRange(protocol, 1, MAX_PORT) for protocol in sorted(Protocol)))


# --------------------------------------------------------------------------------------------
# Facts about the two ends of a connection


@dataclass(frozen=True, order=True, slots=True)
class ContainerPort:
    """A declared containerPort; ``name`` is empty for unnamed ones."""

    name: str
    protocol: Protocol
    port: int


@dataclass(frozen=True, slots=True)
class Pod:
    """What policies can see of a pod (or of every pod of one workload, which share them).

    Build it with :func:`pod`, which adds the namespace's ``kubernetes.io/metadata.name`` label.
    """

    namespace: str
    labels: Labels
    namespace_labels: Labels
    ports: tuple[ContainerPort, ...] = ()
    name: str = ""  # what reports call it: "NS/Kind/name" or "NS/pod"
    node: str | None = None  # the node it runs on, when known

    def __str__(self) -> str:
        return self.name or f"{self.namespace}/pod{dict(self.labels)}"


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class Address:
    """An address that is not a pod: outside the cluster, or a node (``node`` set); with the DNS
    names the bundle's answers gave it (what a policy by name, Cilium's ``toFQDNs``, matches)
    and whether it serves the cluster's API (``apiserver``: an endpoint of the ``kubernetes``
    Service)."""

    ip: str
    node: str | None = None
    name: str = ""
    dns_names: frozenset[str] = frozenset()
    apiserver: bool = False
    # ``ip`` parsed once: a report asks about one address against every pod.
    parsed: IPAddress = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "parsed", ipaddress.ip_address(self.ip))

    def __str__(self) -> str:
        return self.name or self.ip


Peer = Pod | Address


def pod(
    *,
    namespace: str,
    labels: Mapping[str, str] | None = None,
    namespace_labels: Mapping[str, str] | None = None,
    ports: Iterable[ContainerPort] = (),
    name: str = "",
    node: str | None = None,
) -> Pod:
    """Pod facts with sorted labels and the namespace name label that every namespace has."""
    ns_labels = dict(namespace_labels or {})
    ns_labels[NAMESPACE_NAME_LABEL] = namespace
    return Pod(
        namespace=namespace,
        labels=tuple(sorted((labels or {}).items())),
        namespace_labels=tuple(sorted(ns_labels.items())),
        ports=tuple(sorted(set(ports))),
        name=name,
        node=node,
    )


# --------------------------------------------------------------------------------------------
# Compiled policies


@dataclass(frozen=True, slots=True)
class _Requirement:
    key: str
    operator: str
    values: frozenset[str]

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "In":
            return self.key in labels and labels[self.key] in self.values
        if self.operator == "NotIn":
            return self.key not in labels or labels[self.key] not in self.values
        if self.operator == "Exists":
            return self.key in labels
        return self.key not in labels  # DoesNotExist


@dataclass(frozen=True, slots=True)
class Selector:
    """A compiled ``metav1.LabelSelector``: every matchLabels entry and expression must hold."""

    match_labels: Labels = ()
    requirements: tuple[_Requirement, ...] = ()

    def matches(self, labels: Labels) -> bool:
        present = dict(labels)
        return all(present.get(k) == v for k, v in self.match_labels) and all(
            r.matches(present) for r in self.requirements
        )

    def example(self) -> Labels | None:
        """Labels of one thing the selector matches (None when it can match nothing): its
        matchLabels, the first value of each In, ``*`` for Exists."""
        labels = dict(self.match_labels)
        for requirement in self.requirements:
            if requirement.operator == "In":
                labels.setdefault(requirement.key, min(requirement.values))
            elif requirement.operator == "Exists":
                labels.setdefault(requirement.key, "*")
        example = tuple(sorted(labels.items()))
        return example if self.matches(example) else None


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class IpBlock:
    """An ``ipBlock``: ``network`` minus the ``excepted`` networks inside it."""

    network: Network
    excepted: tuple[Network, ...] = ()

    def __str__(self) -> str:
        holes = ", ".join(str(hole) for hole in self.excepted)
        return f"{self.network} except {holes}" if holes else str(self.network)

    def matches(self, ip: str | IPAddress) -> bool:
        address = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
        if address.version != self.network.version or address not in self.network:
            return False
        return not any(address in hole for hole in self.excepted)

    def representative(self) -> str | None:
        """The lowest address the block matches; None when the exceptions cover it all."""
        remaining: list[Network] = [self.network]
        for hole in self.excepted:
            pieces: list[Network] = []
            for piece in remaining:
                if hole.version == piece.version and hole.subnet_of(piece):  # type: ignore[arg-type]
                    pieces.extend(piece.address_exclude(hole))  # type: ignore[arg-type]
                elif not (hole.version == piece.version and piece.subnet_of(hole)):  # type: ignore[arg-type]
                    pieces.append(piece)
            remaining = pieces
        return str(min(remaining).network_address) if remaining else None


class Entity(StrEnum):
    """The peers Cilium names by what they are (``toEntities``/``fromEntities``) that this
    evaluation knows: a node (``host``: the subject's own, ``remote-node``: any other), the
    cluster's API server, anything outside the cluster (``world``), the cluster, everything."""

    HOST = "host"
    REMOTE_NODE = "remote-node"
    KUBE_APISERVER = "kube-apiserver"
    WORLD = "world"
    CLUSTER = "cluster"
    ALL = "all"


def entity_matches(entity: Entity, peer: Peer) -> bool:
    """Whether Cilium's ``entity`` includes ``peer``. The subject's own node and any other are
    not told apart: the policies name both or neither. The API server's addresses are
    ``kube-apiserver`` (and, on a node, that node)."""
    if entity is Entity.ALL:
        return True
    if isinstance(peer, Pod):
        return entity is Entity.CLUSTER
    if entity in (Entity.HOST, Entity.REMOTE_NODE):
        return peer.node is not None
    if entity is Entity.KUBE_APISERVER:
        return peer.apiserver
    if entity is Entity.CLUSTER:
        return peer.node is not None
    return peer.node is None and not peer.apiserver  # WORLD


@dataclass(frozen=True, slots=True)
class _PeerRule:
    """One ``from``/``to`` entry: selectors (AND) or an ipBlock; or, in a CiliumNetworkPolicy,
    entities (``entities``) or DNS names (``fqdns``, matched against the names an address was
    given). A Cilium CIDR (``outside_only``) never matches a node: Cilium tells nodes by
    identity, not by address."""

    pod_selector: Selector | None
    namespace_selector: Selector | None
    ip_block: IpBlock | None
    entities: frozenset[Entity] = frozenset()
    fqdns: tuple[FqdnSelector, ...] = ()
    outside_only: bool = False

    @property
    def by_address(self) -> bool:
        """Whether it matches addresses by what they are, not by where they lie (no index)."""
        return bool(self.entities or self.fqdns)

    def matches(self, peer: Peer, policy_namespace: str) -> bool:
        if self.entities:
            return any(entity_matches(entity, peer) for entity in self.entities)
        if self.fqdns:
            return isinstance(peer, Address) and any(
                selector.matches(name) for selector in self.fqdns for name in peer.dns_names
            )
        if self.ip_block is not None:
            if not isinstance(peer, Address) or (self.outside_only and peer.node is not None):
                return False
            return self.ip_block.matches(peer.parsed)
        if not isinstance(peer, Pod):
            return False
        if self.namespace_selector is None:
            in_namespace = peer.namespace == policy_namespace
        else:
            in_namespace = self.namespace_selector.matches(peer.namespace_labels)
        pods = self.pod_selector is None or self.pod_selector.matches(peer.labels)
        return in_namespace and pods


@dataclass(frozen=True, slots=True)
class _PortRule:
    protocol: Protocol
    port: int | str | None  # None: every port of the protocol; str: a named containerPort
    end_port: int | None

    def resolve(self, destination: Peer | None) -> PortSet:
        """The ports this allows to ``destination`` (None: a numbered port's, to any)."""
        if self.port is None:
            return PortSet((PortRange(self.protocol, 1, MAX_PORT),))
        if isinstance(self.port, int):
            return PortSet((PortRange(self.protocol, self.port, self.end_port or self.port),))
        if not isinstance(destination, Pod):
            return NO_PORTS
        return PortSet.of(
            PortRange(self.protocol, p.port, p.port)
            for p in destination.ports
            if p.name == self.port and p.protocol == self.protocol
        )


@dataclass(frozen=True, slots=True)
class _Rule:
    peers: tuple[_PeerRule, ...]  # empty: every peer
    ports: tuple[_PortRule, ...]  # empty: every port
    # The ports allowed to any destination, made once: None when a named port makes them depend
    # on the destination. A rule is asked once per flow it may allow, and may list thousands.
    _numbered: PortSet | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        numbered = None
        if not self.ports:
            numbered = PortSet.everything()
        elif not any(isinstance(port.port, str) for port in self.ports):
            numbered = self._merged(None)
        object.__setattr__(self, "_numbered", numbered)

    def allowed(self, peer: Peer, destination: Peer, policy_namespace: str) -> PortSet:
        if self.peers and not any(p.matches(peer, policy_namespace) for p in self.peers):
            return NO_PORTS
        return self.ports_to(destination)

    def ports_to(self, destination: Peer) -> PortSet:
        """The ports the rule allows to ``destination``, once a peer matched."""
        if self._numbered is not None:
            return self._numbered
        return self._merged(destination)

    def _merged(self, destination: Peer | None) -> PortSet:
        # Merged once: a union per port would sort the ranges again for each of a rule's ports.
        return PortSet.of(piece for port in self.ports for piece in port.resolve(destination))


class BlockIndex(Generic[T]):
    """Items keyed by an :class:`IpBlock`, found by address: one dict look-up per prefix length
    in use instead of testing every block, so asking which of 20,000 blocks hold an address
    costs about as much as asking one."""

    __slots__ = ("_by_prefix",)

    def __init__(self, entries: Iterable[tuple[IpBlock, T]]) -> None:
        # (IP version, prefix length) → network address as an integer → (block, item)
        by_prefix: dict[tuple[int, int], dict[int, list[tuple[IpBlock, T]]]] = {}
        for block, item in entries:
            network = block.network
            networks = by_prefix.setdefault((network.version, network.prefixlen), {})
            networks.setdefault(int(network.network_address), []).append((block, item))
        self._by_prefix = by_prefix

    def matching(self, ip: str | IPAddress) -> Iterator[T]:
        """The items whose block matches the address ``ip`` (its ``except`` networks left out),
        by prefix length, then in the order they were given."""
        address = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
        value, bits = int(address), address.max_prefixlen
        for (version, length), networks in self._by_prefix.items():
            if version != address.version:
                continue
            for block, item in networks.get(value >> (bits - length) << (bits - length), ()):
                if not any(address in hole for hole in block.excepted):
                    yield item


@dataclass(frozen=True, slots=True)
class _AddressRules:
    """The rules of one direction of a policy that can match an address: those without peers
    (every peer matches), and those naming an ipBlock, found through a :class:`BlockIndex`, so
    a policy naming thousands of addresses costs as much to ask as one naming a few."""

    rules: tuple[_Rule, ...]
    everyone: tuple[int, ...]  # indices into ``rules``
    blocks: BlockIndex[int]  # → indices into ``rules``
    # Rules with a peer matching addresses by what they are (entities, DNS names): asked each.
    by_address: tuple[int, ...] = ()

    @classmethod
    def of(cls, rules: tuple[_Rule, ...]) -> _AddressRules:
        everyone = tuple(index for index, rule in enumerate(rules) if not rule.peers)
        blocks = BlockIndex(
            (peer.ip_block, index)
            for index, rule in enumerate(rules)
            for peer in rule.peers
            if peer.ip_block is not None
        )
        by_address = tuple(
            index for index, rule in enumerate(rules) if any(p.by_address for p in rule.peers)
        )
        return cls(rules, everyone, blocks, by_address)

    def matching(self, address: Address) -> list[_Rule]:
        """The rules one of whose peers matches ``address``, in rule order."""
        return [self.rules[index] for index in self.places(address)]

    def places(self, address: Address) -> list[int]:
        """The indices of :meth:`matching`'s rules, in rule order."""
        found = {*self.everyone}
        found.update(
            index
            for index in self.blocks.matching(address.parsed)
            if any(
                p.matches(address, "") for p in self.rules[index].peers if p.ip_block is not None
            )
        )
        found.update(
            index
            for index in self.by_address
            if any(p.matches(address, "") for p in self.rules[index].peers if p.by_address)
        )
        return sorted(found)


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    namespace: str
    name: str
    source: str  # the file it came from, for messages
    pod_selector: Selector
    directions: frozenset[Direction]
    ingress: tuple[_Rule, ...]
    egress: tuple[_Rule, ...]
    kind: str = "NetworkPolicy"  # or CiliumNetworkPolicy (``analyser.ciliumsemantics``)
    _for_addresses: Mapping[Direction, _AddressRules] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        # Frozen: the index is derived once, here.
        object.__setattr__(
            self,
            "_for_addresses",
            {
                Direction.INGRESS: _AddressRules.of(self.ingress),
                Direction.EGRESS: _AddressRules.of(self.egress),
            },
        )

    def __str__(self) -> str:
        return policy_name(self.kind, self.namespace, self.name)

    def allowed(self, peer: Peer, destination: Peer, direction: Direction) -> PortSet:
        """The ports this policy's rules of ``direction`` allow with ``peer``, to
        ``destination`` (the server of the connection)."""
        allowed = NO_PORTS
        if isinstance(peer, Address):
            for rule in self._for_addresses[direction].matching(peer):
                allowed = allowed.union(rule.ports_to(destination))
            return allowed
        rules = self.ingress if direction is Direction.INGRESS else self.egress
        for rule in rules:
            allowed = allowed.union(rule.allowed(peer, destination, self.namespace))
        return allowed

    def rules_allowing(
        self, peer: Peer, destination: Peer, direction: Direction, protocol: Protocol, port: int
    ) -> tuple[int, ...]:
        """The indices of this policy's ``direction`` rules that allow ``port`` with ``peer``
        (to ``destination``, the server): the rules an allowed connection owes to."""
        rules = self.ingress if direction is Direction.INGRESS else self.egress
        if isinstance(peer, Address):  # through the index, as allowed() does
            return tuple(
                index
                for index in self._for_addresses[direction].places(peer)
                if rules[index].ports_to(destination).contains(protocol, port)
            )
        return tuple(
            index
            for index, rule in enumerate(rules)
            if rule.allowed(peer, destination, self.namespace).contains(protocol, port)
        )

    def selects(self, subject: Pod, direction: Direction) -> bool:
        return (
            direction in self.directions
            and subject.namespace == self.namespace
            and self.pod_selector.matches(subject.labels)
        )


# --------------------------------------------------------------------------------------------
# Parsing Kubernetes JSON into compiled policies (structural validation, with the API's rules)


class _Invalid(Exception):
    """A structural problem; turned into a PolicyError naming the policy and its source."""


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _Invalid(f"{where} must be a mapping, not {type(value).__name__}")
    return value


def _list(value: Any, where: str) -> Sequence[Any]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _Invalid(f"{where} must be a list, not {type(value).__name__}")
    return value


def _string_values(value: Any, where: str) -> Labels:
    pairs = _mapping(value, where)
    for key, item in pairs.items():
        if not isinstance(key, str) or not isinstance(item, str):
            raise _Invalid(f"{where}: {key!r}: {item!r} must map a string to a string")
    return tuple(sorted(pairs.items()))


def _selector(value: Any, where: str) -> Selector:
    spec = _mapping(value, where)
    requirements = []
    for index, item in enumerate(_list(spec.get("matchExpressions"), f"{where}.matchExpressions")):
        at = f"{where}.matchExpressions[{index}]"
        expression = _mapping(item, at)
        key, operator = expression.get("key"), expression.get("operator")
        values = _list(expression.get("values"), f"{at}.values")
        if not isinstance(key, str) or not key:
            raise _Invalid(f"{at}: key is required")
        if operator in ("In", "NotIn"):
            if not values:
                raise _Invalid(f"{at}: operator {operator} needs at least one value")
        elif operator in ("Exists", "DoesNotExist"):
            if values:
                raise _Invalid(f"{at}: operator {operator} takes no values")
        else:
            raise _Invalid(f"{at}: unknown operator {operator!r}")
        if not all(isinstance(v, str) for v in values):
            raise _Invalid(f"{at}: values must be strings")
        requirements.append(_Requirement(key, operator, frozenset(values)))
    return Selector(
        _string_values(spec.get("matchLabels"), f"{where}.matchLabels"), tuple(requirements)
    )


def _network(text: Any, where: str) -> Network:
    if not isinstance(text, str):
        raise _Invalid(f"{where} must be a CIDR string")
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise _Invalid(f"{where}: {text!r} is not a CIDR") from None


def _ip_block(block: Mapping[str, Any], where: str) -> IpBlock:
    """An address block written as ``{cidr, except}`` (a NetworkPolicy's ipBlock, a Cilium
    toCIDRSet item): every exception inside the block, of its family."""
    network = _network(block.get("cidr"), f"{where}.cidr")
    excepted = tuple(
        _network(item, f"{where}.except[{index}]")
        for index, item in enumerate(_list(block.get("except"), f"{where}.except"))
    )
    for hole in excepted:
        if hole.version != network.version or not hole.subnet_of(network):  # type: ignore[arg-type]
            raise _Invalid(f"{where}: except {hole} is not inside {network}")
    return IpBlock(network, excepted)


def _peer(value: Any, where: str) -> _PeerRule:
    spec = _mapping(value, where)
    if "ipBlock" in spec:
        if "podSelector" in spec or "namespaceSelector" in spec:
            raise _Invalid(f"{where}: ipBlock cannot be combined with selectors")
        block = _mapping(spec["ipBlock"], f"{where}.ipBlock")
        return _PeerRule(None, None, _ip_block(block, f"{where}.ipBlock"))
    if "podSelector" not in spec and "namespaceSelector" not in spec:
        raise _Invalid(f"{where}: a peer needs podSelector, namespaceSelector or ipBlock")
    pods = spec.get("podSelector")
    namespaces = spec.get("namespaceSelector")
    # A key present with null is the same as absent (kubectl would drop it).
    return _PeerRule(
        None if pods is None else _selector(pods, f"{where}.podSelector"),
        None if namespaces is None else _selector(namespaces, f"{where}.namespaceSelector"),
        None,
    )


def _port(value: Any, where: str) -> _PortRule:
    spec = _mapping(value, where)
    protocol_text = spec.get("protocol", "TCP")
    try:
        protocol = Protocol(protocol_text)
    except ValueError:
        raise _Invalid(f"{where}: unknown protocol {protocol_text!r}") from None
    port = spec.get("port")
    end_port = spec.get("endPort")
    if isinstance(port, bool) or not isinstance(port, int | str | None):
        raise _Invalid(f"{where}: port must be a number or a port name")
    if isinstance(port, str):
        if port.isdigit():
            raise _Invalid(f"{where}: port {port!r} is a string; write the number unquoted")
        if end_port is not None:
            raise _Invalid(f"{where}: endPort needs a numeric port, not the name {port!r}")
    elif isinstance(port, int) and not 1 <= port <= MAX_PORT:
        raise _Invalid(f"{where}: port {port} is outside 1-{MAX_PORT}")
    if end_port is not None:
        if port is None:
            raise _Invalid(f"{where}: endPort needs a port")
        if isinstance(end_port, bool) or not isinstance(end_port, int):
            raise _Invalid(f"{where}: endPort must be a number")
        if isinstance(port, int) and not port <= end_port <= MAX_PORT:
            raise _Invalid(
                f"{where}: endPort {end_port} must be between port {port} and {MAX_PORT}"
            )
    return _PortRule(protocol, port, end_port)


def _rules(value: Any, where: str, peers_key: str) -> tuple[_Rule, ...]:
    rules = []
    for index, item in enumerate(_list(value, where)):
        at = f"{where}[{index}]"
        spec = _mapping(item, at)
        peers = tuple(
            _peer(peer, f"{at}.{peers_key}[{n}]")
            for n, peer in enumerate(_list(spec.get(peers_key), f"{at}.{peers_key}"))
        )
        ports = tuple(
            _port(port, f"{at}.ports[{n}]")
            for n, port in enumerate(_list(spec.get("ports"), f"{at}.ports"))
        )
        rules.append(_Rule(peers, ports))
    return tuple(rules)


def compile_policy(document: Mapping[str, Any], *, source: str = "") -> CompiledPolicy:
    """A NetworkPolicy dict → :class:`CompiledPolicy`.

    A missing namespace means ``default``. Raises :class:`PolicyError` naming the policy and
    ``source`` when the document is not a well-formed ``networking.k8s.io/v1`` NetworkPolicy.
    """
    raw_metadata = document.get("metadata")
    metadata: Mapping[str, Any] = raw_metadata if isinstance(raw_metadata, Mapping) else {}
    name = str(metadata.get("name", "?"))
    namespace = str(metadata.get("namespace") or "default")
    origin = f" in {source}" if source else ""
    try:
        if document.get("kind") != "NetworkPolicy":
            raise _Invalid(f"kind is {document.get('kind')!r}, not NetworkPolicy")
        if document.get("apiVersion") != "networking.k8s.io/v1":
            raise _Invalid(f"apiVersion {document.get('apiVersion')!r} is not networking.k8s.io/v1")
        if name == "?":
            raise _Invalid("metadata.name is required")
        spec = _mapping(document.get("spec"), "spec")
        ingress = _rules(spec.get("ingress"), "spec.ingress", "from")
        egress = _rules(spec.get("egress"), "spec.egress", "to")
        types = _list(spec.get("policyTypes"), "spec.policyTypes")
        if types:
            unknown = [t for t in types if t not in ("Ingress", "Egress")]
            if unknown:
                raise _Invalid(f"spec.policyTypes: unknown {unknown}")
            directions = frozenset(Direction(str(t).lower()) for t in types)
        else:
            # The API's default: Ingress always, Egress only when there are egress rules.
            directions = frozenset({Direction.INGRESS} | ({Direction.EGRESS} if egress else set()))
        return CompiledPolicy(
            namespace=namespace,
            name=name,
            source=source,
            pod_selector=_selector(spec.get("podSelector"), "spec.podSelector"),
            directions=directions,
            ingress=ingress,
            egress=egress,
        )
    except _Invalid as error:
        raise PolicyError(f"NetworkPolicy {namespace}/{name}{origin}: {error}") from None


# --------------------------------------------------------------------------------------------
# Evaluation


@dataclass(frozen=True, slots=True)
class SideVerdict:
    """What one end's policies allow in one direction."""

    direction: Direction
    subject: Pod
    policies: tuple[str, ...]  # "ns/name" of the policies isolating it; empty: not isolated
    ports: PortSet


@dataclass(frozen=True, slots=True)
class Denial:
    """A connection one side's policies deny, and why."""

    side: Direction
    client: str
    server: str
    protocol: Protocol
    port: int
    denied_by: str  # the pod/workload whose policies deny it
    policies: tuple[str, ...]  # the policies selecting it in that direction (none allows it)

    def __str__(self) -> str:
        return (
            f"{self.client} → {self.server} {self.port}/{self.protocol}: denied by {self.side} "
            f"at {self.denied_by} (selected by {', '.join(self.policies)}; none allows it)"
        )


def policy_name(kind: str, namespace: str, name: str) -> str:
    """How a policy is named to users: "ns/name", with its kind first when it is not a
    NetworkPolicy ("CiliumNetworkPolicy ns/name")."""
    where = f"{namespace}/{name}"
    return where if kind == "NetworkPolicy" else f"{kind} {where}"


@dataclass(frozen=True, slots=True)
class RuleAllowing:
    """A rule that allows a connection at one side: rule ``index`` of ``direction`` in
    ``policy`` (:func:`policy_name`)."""

    direction: Direction
    subject: str  # the pod/workload whose side it is
    policy: str
    index: int


@dataclass(frozen=True, slots=True)
class PolicySet:
    """Compiled policies, indexed by namespace; ask it what it allows."""

    policies: tuple[CompiledPolicy, ...] = ()
    _by_namespace: Mapping[str, tuple[CompiledPolicy, ...]] = field(
        init=False, compare=False, repr=False
    )
    # Which policies select a pod, per (pod, direction): reports ask for each pod many times.
    _selecting: dict[tuple[Pod, Direction], tuple[CompiledPolicy, ...]] = field(
        init=False, compare=False, repr=False
    )

    def __post_init__(self) -> None:
        index: dict[str, list[CompiledPolicy]] = {}
        for policy in self.policies:
            index.setdefault(policy.namespace, []).append(policy)
        # Frozen: the index is derived once, here.
        object.__setattr__(self, "_by_namespace", {ns: tuple(items) for ns, items in index.items()})
        object.__setattr__(self, "_selecting", {})

    def selecting(self, subject: Pod, direction: Direction) -> tuple[CompiledPolicy, ...]:
        """The policies that isolate ``subject`` for ``direction``."""
        key = (subject, direction)
        found = self._selecting.get(key)
        if found is None:
            found = tuple(
                p
                for p in self._by_namespace.get(subject.namespace, ())
                if p.selects(subject, direction)
            )
            self._selecting[key] = found
        return found

    @classmethod
    def of(cls, policies: Iterable[CompiledPolicy]) -> PolicySet:
        return cls(tuple(sorted(policies, key=lambda p: (p.namespace, p.name))))

    @classmethod
    def from_documents(cls, documents: Iterable[Mapping[str, Any]]) -> PolicySet:
        return cls.of(compile_policy(document) for document in documents)

    def side(self, subject: Pod, peer: Peer, direction: Direction) -> SideVerdict:
        """Ports ``subject`` allows to (egress) or from (ingress) ``peer``."""
        selecting = self.selecting(subject, direction)
        names = tuple(str(p) for p in selecting)
        node_local = (
            isinstance(peer, Address) and peer.node is not None and peer.node == subject.node
        )
        if not selecting or node_local:
            return SideVerdict(direction, subject, names, PortSet.everything())
        destination = subject if direction is Direction.INGRESS else peer
        allowed = NO_PORTS
        for policy in selecting:
            allowed = allowed.union(policy.allowed(peer, destination, direction))
        return SideVerdict(direction, subject, names, allowed)

    def sides(self, client: Peer, server: Peer) -> tuple[SideVerdict | None, SideVerdict | None]:
        """(egress at the client, ingress at the server); None for an end that is not a pod."""
        egress = self.side(client, server, Direction.EGRESS) if isinstance(client, Pod) else None
        ingress = self.side(server, client, Direction.INGRESS) if isinstance(server, Pod) else None
        return egress, ingress

    def allowed_ports(self, client: Peer, server: Peer) -> PortSet:
        """Every (protocol, port) on which ``client`` may open a connection to ``server``."""
        result = PortSet.everything()
        for verdict in self.sides(client, server):
            if verdict is not None:
                result = result.intersection(verdict.ports)
        return result

    def denials(self, client: Peer, server: Peer, protocol: Protocol, port: int) -> list[Denial]:
        """Why ``client`` may not connect to ``server`` on ``port``; empty when it may."""
        found = []
        for verdict in self.sides(client, server):
            if verdict is not None and not verdict.ports.contains(protocol, port):
                found.append(
                    Denial(
                        side=verdict.direction,
                        client=str(client),
                        server=str(server),
                        protocol=protocol,
                        port=port,
                        denied_by=str(verdict.subject),
                        policies=verdict.policies,
                    )
                )
        return found

    def rules_allowing(
        self, client: Peer, server: Peer, protocol: Protocol, port: int
    ) -> tuple[RuleAllowing, ...]:
        """Every rule that allows ``client`` → ``server`` on ``port``: at the client's egress and
        at the server's ingress, in the order of the policies."""
        found = []
        for verdict in self.sides(client, server):
            if verdict is None:
                continue
            peer = server if verdict.direction is Direction.EGRESS else client
            for policy in self.selecting(verdict.subject, verdict.direction):
                found += [
                    RuleAllowing(verdict.direction, str(verdict.subject), str(policy), index)
                    for index in policy.rules_allowing(
                        peer, server, verdict.direction, protocol, port
                    )
                ]
        return tuple(found)

    def allows(self, client: Peer, server: Peer, protocol: Protocol, port: int) -> bool:
        return not self.denials(client, server, protocol, port)

    def described_pods(self) -> list[Pod]:
        """One example pod for every group of pods the policies name, for comparing sets when no
        snapshot says which pods exist: each policy's subjects, and each selector peer. A peer's
        namespace is the policy's, the one a ``kubernetes.io/metadata.name`` label names, or a
        stand-in named after its namespaceSelector. Named ports resolve to nothing here."""
        found: dict[str, Pod] = {}

        def add(namespace: str, namespace_labels: Labels, selector: Selector | None) -> None:
            labels = () if selector is None else selector.example()
            if labels is None:
                return
            shown = ",".join(f"{k}={v}" for k, v in labels) or "*"
            facts = pod(
                namespace=namespace,
                labels=dict(labels),
                namespace_labels=dict(namespace_labels),
                name=f"{namespace}/pods[{shown}]",
            )
            found.setdefault(facts.name, facts)

        for policy in self.policies:
            add(policy.namespace, (), policy.pod_selector)
            for rule in (*policy.ingress, *policy.egress):
                for peer in rule.peers:
                    if peer.ip_block is not None:
                        continue
                    if peer.namespace_selector is None:
                        add(policy.namespace, (), peer.pod_selector)
                        continue
                    ns_labels = peer.namespace_selector.example()
                    if ns_labels is None:
                        continue
                    named = dict(ns_labels).get(NAMESPACE_NAME_LABEL)
                    shown = ",".join(f"{k}={v}" for k, v in ns_labels) or "*"
                    add(named or f"namespaces[{shown}]", ns_labels, peer.pod_selector)
        return [found[name] for name in sorted(found)]

    def fqdn_selectors(self) -> tuple[FqdnSelector, ...]:
        """Every distinct DNS name selector (Cilium's ``toFQDNs``) the policies name, sorted."""
        found = {
            selector
            for policy in self.policies
            for rule in policy.egress
            for peer in rule.peers
            for selector in peer.fqdns
        }
        return tuple(sorted(found))

    def ip_blocks(self) -> tuple[IpBlock, ...]:
        """Every distinct ipBlock the policies name, sorted (IPv4 first)."""
        found = {
            peer.ip_block
            for policy in self.policies
            for rule in (*policy.ingress, *policy.egress)
            for peer in rule.peers
            if peer.ip_block is not None
        }
        return tuple(sorted(found, key=lambda b: (b.network.version, b.network, b.excepted)))
