"""Verify and compare policy sets: observed connections against a :class:`PolicySet`, and what a
set allows beyond them.

Pure: pod facts, addresses and policy sets in, reports out. Turning a bundle into those facts is
``replaying``'s job; printing them is the CLI's.

The universe of connections a report considers (see ``docs/verify.md``):

- every ordered pair of workloads (a workload with itself included: replicas talk to each other),
- every workload with every *address block*, both directions: the ipBlocks the policies name, the
  addresses outside the cluster that were observed (as /32 or /128), and "anywhere"
  (``0.0.0.0/0`` and ``::/0``), each evaluated at its lowest matching address; blocks made only
  of node addresses are one block, "cluster nodes" (:data:`NODES`), when the nodes are known,
- every port of every protocol: allowed ports are exact :class:`PortSet` values, so a rule on a
  port no pod declares, or a range, is counted like any other.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from analyser.evaluation import (
    NO_PORTS,
    Address,
    BlockIndex,
    Denial,
    Direction,
    IpBlock,
    Peer,
    Pod,
    PolicySet,
    PortRange,
    PortSet,
)
from analyser.flows import Protocol
from analyser.fqdnselectors import FqdnSelector

ANYWHERE = (
    IpBlock(ipaddress.ip_network("0.0.0.0/0")),
    IpBlock(ipaddress.ip_network("::/0")),
)


BOTH_DIRECTIONS = frozenset(Direction)


@dataclass(frozen=True, slots=True)
class Observed:
    """A connection that was seen: client → server on the server's (target) port.

    ``vouched``: the sides it is checked at, the client's egress and the server's ingress: those
    whose own captures saw it or could not have (``analyser.vouching``). A side that a pod's
    capture ran for and did not see is not held to it: one pod's capture (forged, perhaps) must
    not make the other side's policies look wrong."""

    client: Peer
    server: Peer
    protocol: Protocol
    port: int
    flows: int = 1
    vouched: frozenset[Direction] = BOTH_DIRECTIONS

    @property
    def unchecked(self) -> tuple[Direction, ...]:
        """The sides it is not checked at, egress first."""
        return tuple(d for d in (Direction.EGRESS, Direction.INGRESS) if d not in self.vouched)


# The universe's name for the cluster's nodes, when node blocks are folded into one.
NODES = "cluster nodes"
# Where a DNS name selector's block is evaluated: an address outside the cluster that no peer
# has (the network address of TEST-NET-1), carrying a name the selector matches. A rule by
# address allows it only when it allows anywhere (or that documentation network).
FQDN_ADDRESS = "192.0.2.0"


@dataclass(frozen=True, slots=True)
class Block:
    """An address block of the universe, evaluated at ``address``; or, with ``members``, the
    cluster's nodes (the addresses it stands for)."""

    block: IpBlock
    address: Address
    members: frozenset[str] = frozenset()
    fqdn: str = ""  # a DNS name selector it stands for (FQDN_ADDRESS, named so)
    # What reports call it (asked for every pair it is in: written once).
    name: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        name = f"fqdn:{self.fqdn}" if self.fqdn else NODES if self.members else f"ip:{self.block}"
        object.__setattr__(self, "name", name)

    def matches(self, ip: str) -> bool:
        return ip in self.members if self.members else self.block.matches(ip)


def _only_nodes(block: IpBlock, nodes: Mapping[str, str]) -> bool:
    """Whether every address of ``block`` is a node's (a /32, or nodes exactly adjacent)."""
    network = block.network
    return (
        not block.excepted
        and network.num_addresses <= len(nodes)
        and all(str(address) in nodes for address in network)
    )


@dataclass(frozen=True, slots=True)
class Universe:
    """The workloads and address blocks a report pairs up.

    With ``focus`` (workload names), only pairs with at least one focused end are considered:
    verify focuses on the captured workloads, where the absence of a flow means something.
    """

    pods: tuple[Pod, ...]
    blocks: tuple[Block, ...]
    focus: frozenset[str] | None = None
    # The blocks by prefix, and the node block's members: which blocks hold an address.
    _index: BlockIndex[Block] = field(init=False, compare=False, repr=False)
    _nodes: Mapping[str, Block] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        # Frozen: the indexes are derived once, here.
        object.__setattr__(
            self, "_index", BlockIndex((b.block, b) for b in self.blocks if not b.members)
        )
        object.__setattr__(
            self, "_nodes", {ip: b for b in self.blocks if b.members for ip in b.members}
        )

    def holding(self, ip: str) -> list[Block]:
        """The blocks that hold the address ``ip`` (:meth:`Block.matches`), found by index."""
        found = list(self._index.matching(ip))
        node = self._nodes.get(ip)
        return [*found, node] if node is not None else found

    @classmethod
    def of(
        cls,
        pods: Iterable[Pod],
        blocks: Iterable[IpBlock],
        *,
        focus: Iterable[str] | None = None,
        nodes: Mapping[str, str] | None = None,
        dns_names: Mapping[str, frozenset[str]] | None = None,
        apiservers: Collection[str] = (),
        fqdns: Iterable[FqdnSelector] = (),
    ) -> Universe:
        """Pods sorted by name; blocks deduplicated, "anywhere" added, empty blocks dropped.

        With ``nodes`` (node address → node name), blocks made only of node addresses (the
        generated policies name every node, one block each) are folded into one block named
        :data:`NODES`, evaluated at the lowest of their addresses: one pair per workload rather
        than one per node.

        ``dns_names`` (address → the names the bundle's DNS answers gave it) and ``apiservers``
        (the API server's addresses) describe the address each block is evaluated at: what a
        CiliumNetworkPolicy's ``toFQDNs`` and ``kube-apiserver`` entity match. ``fqdns`` (the
        DNS name selectors the policies name, for ``diff``, which has no DNS answers) add a
        block each, evaluated at :data:`FQDN_ADDRESS` with a name the selector matches."""
        unique: dict[IpBlock, None] = dict.fromkeys((*blocks, *ANYWHERE))
        node_blocks = [b for b in unique if nodes and _only_nodes(b, nodes)]
        chosen = []
        for block in sorted(unique, key=lambda b: (b.network.version, b.network, b.excepted)):
            address = block.representative()
            if address is not None and block not in node_blocks:
                facts = Address(
                    address,
                    name=f"ip:{block}",
                    dns_names=(dns_names or {}).get(address, frozenset()),
                    apiserver=address in apiservers,
                )
                chosen.append(Block(block, facts))
        for selector in fqdns:
            names = frozenset({selector.example()})
            facts = Address(FQDN_ADDRESS, name=f"fqdn:{selector.text}", dns_names=names)
            chosen.append(Block(block_for(FQDN_ADDRESS), facts, fqdn=selector.text))
        if nodes and node_blocks:
            lowest = min(node_blocks, key=lambda b: (b.network.version, b.network))
            at = str(lowest.network.network_address)
            members = frozenset(str(a) for b in node_blocks for a in b.network)
            chosen.append(Block(lowest, Address(at, node=nodes[at], name=NODES), members))
        return cls(
            tuple(sorted(pods, key=str)),
            tuple(chosen),
            None if focus is None else frozenset(focus),
        )

    def _focused(self, *peers: Peer) -> bool:
        return self.focus is None or any(str(p) in self.focus for p in peers)

    def pairs(self) -> list[tuple[str, Peer, str, Peer]]:
        """(client name, client, server name, server) for every pair the report considers."""
        result: list[tuple[str, Peer, str, Peer]] = [
            (str(a), a, str(b), b) for a in self.pods for b in self.pods if self._focused(a, b)
        ]
        for pod in self.pods:
            if not self._focused(pod):
                continue
            for block in self.blocks:
                result.append((str(pod), pod, block.name, block.address))
                result.append((block.name, block.address, str(pod), pod))
        return sorted(result, key=lambda item: (item[0], item[2]))


def block_for(address: str) -> IpBlock:
    """The /32 or /128 block of one address."""
    return IpBlock(ipaddress.ip_network(address))


# --------------------------------------------------------------------------------------------
# Observed connections against a policy set


def check_observed(policies: PolicySet, observed: Iterable[Observed]) -> list[Denial]:
    """Every denial of an observed connection (both sides, when both deny) at a side it is
    checked at (``Observed.vouched``), in a stable order."""
    denials = {
        denial
        for item in observed
        for denial in policies.denials(item.client, item.server, item.protocol, item.port)
        if denial.side in item.vouched
    }
    return sorted(denials, key=lambda d: (d.client, d.server, d.protocol, d.port, d.side))


@dataclass(frozen=True, slots=True)
class Allowance:
    """What the policies allow from ``client`` to ``server`` that was never observed."""

    client: str
    server: str
    unobserved: PortSet
    observed: PortSet

    @property
    def all_ports(self) -> tuple[Protocol, ...]:
        """The protocols on which every port is allowed."""
        return tuple(
            p for p in sorted(Protocol) if self.unobserved.union(self.observed).covers_all_of(p)
        )


@dataclass(frozen=True, slots=True)
class Score:
    """Least privilege, lower is better: pairs with unobserved allowances and their ports."""

    pairs: int
    ports: int
    all_ports_pairs: int  # pairs on which a whole protocol is open

    def __str__(self) -> str:
        return (
            f"{self.pairs} pairs allowed beyond what was observed, {self.ports} ports in all; "
            f"{self.all_ports_pairs} of the pairs have every port of a protocol open"
        )


def _observed_ports(
    universe: Universe, observed: Iterable[Observed]
) -> dict[tuple[str, str], PortSet]:
    """Observed ports per pair of universe names; an address counts for every block holding it."""

    def names(peer: Peer) -> list[str]:
        if isinstance(peer, Pod):
            return [str(peer)]
        return [b.name for b in universe.holding(peer.ip)]

    ranges: dict[tuple[str, str], list[PortRange]] = defaultdict(list)
    for item in observed:
        if item.unchecked:
            continue  # one side's word: no evidence that the pair needs the port
        for client in names(item.client):
            for server in names(item.server):
                ranges[(client, server)].append(PortRange(item.protocol, item.port, item.port))
    return {pair: PortSet.of(found) for pair, found in ranges.items()}


def unobserved_allowances(
    policies: PolicySet, observed: Iterable[Observed], universe: Universe
) -> list[Allowance]:
    """Per pair of the universe, the ports allowed without evidence (pairs without any omitted)."""
    seen = _observed_ports(universe, observed)
    found = []
    for client_name, client, server_name, server in universe.pairs():
        evidence = seen.get((client_name, server_name), NO_PORTS)
        extra = policies.allowed_ports(client, server).difference(evidence)
        if extra:
            found.append(Allowance(client_name, server_name, extra, evidence))
    return found


def score(allowances: Sequence[Allowance]) -> Score:
    return Score(
        pairs=len(allowances),
        ports=sum(a.unobserved.count for a in allowances),
        all_ports_pairs=sum(1 for a in allowances if a.all_ports),
    )


@dataclass(frozen=True, slots=True)
class Verification:
    """The outcome of ``verify``: denied observed connections and unobserved allowances."""

    checked: int  # observed connections replayed
    denials: tuple[Denial, ...]
    allowances: tuple[Allowance, ...]
    score: Score
    # Observed connections not checked at a side whose own captures did not vouch for them.
    unvouched: tuple[Observed, ...] = ()

    @property
    def passed(self) -> bool:
        return not self.denials


def verify(policies: PolicySet, observed: Sequence[Observed], universe: Universe) -> Verification:
    allowances = unobserved_allowances(policies, observed, universe)
    return Verification(
        checked=len(observed),
        denials=tuple(check_observed(policies, observed)),
        allowances=tuple(allowances),
        score=score(allowances),
        unvouched=tuple(item for item in observed if item.unchecked),
    )


# --------------------------------------------------------------------------------------------
# Two policy sets against one universe


@dataclass(frozen=True, slots=True)
class Change:
    """How what ``client`` may open to ``server`` changes from the old set to the new one."""

    client: str
    server: str
    newly_allowed: PortSet
    newly_denied: PortSet
    old: PortSet
    new: PortSet


def diff(old: PolicySet, new: PolicySet, universe: Universe) -> list[Change]:
    """Every pair of the universe whose allowed ports differ between ``old`` and ``new``."""
    changes = []
    for client_name, client, server_name, server in universe.pairs():
        before = old.allowed_ports(client, server)
        after = new.allowed_ports(client, server)
        if before != after:
            changes.append(
                Change(
                    client_name,
                    server_name,
                    newly_allowed=after.difference(before),
                    newly_denied=before.difference(after),
                    old=before,
                    new=after,
                )
            )
    return changes


# --------------------------------------------------------------------------------------------
# JSON shapes (for ``--json``): plain types, stable order


def ports_json(ports: PortSet) -> list[dict[str, object]]:
    """``[{"protocol": "TCP", "first": 8080, "last": 8090}, ...]``."""
    return [{"protocol": str(r.protocol), "first": r.first, "last": r.last} for r in ports]


def denial_json(denial: Denial) -> dict[str, object]:
    return {
        "client": denial.client,
        "server": denial.server,
        "protocol": str(denial.protocol),
        "port": denial.port,
        "side": str(denial.side),
        "denied_by": denial.denied_by,
        "policies": list(denial.policies),
    }


def unvouched_json(observed: Observed) -> dict[str, object]:
    return {
        "client": str(observed.client),
        "server": str(observed.server),
        "protocol": str(observed.protocol),
        "port": observed.port,
        "unchecked": [str(side) for side in observed.unchecked],
    }


def allowance_json(allowance: Allowance) -> dict[str, object]:
    return {
        "client": allowance.client,
        "server": allowance.server,
        "unobserved": ports_json(allowance.unobserved),
        "observed": ports_json(allowance.observed),
        "all_ports": [str(p) for p in allowance.all_ports],
    }


def score_json(result: Score) -> dict[str, int]:
    return {
        "pairs": result.pairs,
        "ports": result.ports,
        "all_ports_pairs": result.all_ports_pairs,
    }


def change_json(change: Change) -> dict[str, object]:
    return {
        "client": change.client,
        "server": change.server,
        "newly_allowed": ports_json(change.newly_allowed),
        "newly_denied": ports_json(change.newly_denied),
        "old": ports_json(change.old),
        "new": ports_json(change.new),
    }
