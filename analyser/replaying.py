"""Replaying what a bundle observed against a policy set: the workload graph and the snapshot
turned into the plain facts :mod:`analyser.evaluation` works on, and the safety check the analyse
pipeline runs on its own output before writing it.

Pure: takes the graph, the snapshot and the resolver the pipeline already built; no I/O.

Choices (documented in ``docs/verify.md``):

- A workload is evaluated with its pods' non-volatile labels (``Workload.pod_labels``), its
  namespace's labels, and the containerPorts of all its pods (for named ports).
- An observed connection is checked at the sides its flows were vouched for at (the client's
  egress, the server's ingress: ``analyser.vouching``), as the policies are written: a side
  whose own capture ran and did not see it is not held to it.
- Addresses outside the cluster, unresolved addresses and nodes are :class:`Address` peers. A
  connection between a node and a workload that has a pod on that node is allowed whatever the
  policies say (NetworkPolicy never blocks a pod's own node: kubelet probes). hostNetwork
  workloads are their node's address: policies do not select them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from analyser.evaluation import (
    Address,
    ContainerPort,
    Denial,
    Direction,
    Peer,
    Pod,
    PolicySet,
    pod,
)
from analyser.flows import Protocol
from analyser.graphs import ID_PREFIXES, NodeRole, Sides, WorkloadGraph
from analyser.identities import Resolver
from analyser.peers import PortSpec
from analyser.services import apiserver_addresses
from analyser.snapshot import Snapshot
from analyser.verifying import Observed, Universe, Verification, block_for, check_observed, verify
from analyser.workloads import Workload, WorkloadRef
from kernel.errors import SnapshotError, UnsafePolicies

# How many denied flows the UnsafePolicies message lists before summarising the rest.
MAX_LISTED_DENIALS = 20


@dataclass(frozen=True, slots=True)
class ClusterFacts:
    """What policies can see of the cluster's workloads and nodes."""

    workloads: Mapping[str, Pod]  # "NS/Kind/name" → facts (no node); hostNetwork ones excluded
    nodes_of: Mapping[str, frozenset[str]]  # workload → the nodes its pods ran on
    host_network: Mapping[str, tuple[str, ...]]  # hostNetwork workload → its nodes' addresses
    node_of_address: Mapping[str, str]  # a node's address → the node's name
    namespace_labels: Mapping[str, Mapping[str, str]]
    apiservers: frozenset[str] = frozenset()  # the API server's addresses (kube-apiserver)

    def facts_for(self, workload: Workload) -> Pod:
        """The facts of a workload, also one the snapshot does not list (known from captures)."""
        name = str(workload.ref)
        if name in self.workloads:
            return self.workloads[name]
        return pod(
            namespace=workload.ref.namespace,
            labels=dict(workload.pod_labels),
            namespace_labels=self.namespace_labels.get(workload.ref.namespace, {}),
            name=name,
        )

    def address(self, ip: str, name: str, dns_names: Iterable[str] = ()) -> Address:
        """An address peer, marked with its node when it is one's, with the DNS names the
        bundle's answers gave it, and whether it serves the cluster's API."""
        return Address(
            ip,
            node=self.node_of_address.get(ip),
            name=name,
            dns_names=frozenset(dns_names),
            apiserver=ip in self.apiservers,
        )


def cluster_facts(snapshot: Snapshot, resolver: Resolver) -> ClusterFacts:
    """Every workload with a pod in the snapshot, and the nodes' addresses."""
    namespace_labels = {ns.name: dict(ns.labels) for ns in snapshot.namespaces}
    ports: dict[WorkloadRef, set[ContainerPort]] = defaultdict(set)
    nodes: dict[WorkloadRef, set[str]] = defaultdict(set)
    host_addresses: dict[str, set[str]] = defaultdict(set)
    for pod_view in snapshot.pods:
        ref = resolver.workload_of_pod(pod_view.namespace, pod_view.name)
        if ref is None:
            continue
        if pod_view.node_name:
            nodes[ref].add(pod_view.node_name)
        ports[ref] |= {ContainerPort(p.name, p.protocol, p.port) for p in pod_view.spec.ports}
        if resolver.workload(ref).host_network:
            host_addresses[str(ref)] |= set(pod_view.host_ips)
    workloads = {
        str(ref): pod(
            namespace=ref.namespace,
            labels=dict(resolver.workload(ref).pod_labels),
            namespace_labels=namespace_labels.get(ref.namespace, {}),
            ports=ports[ref],
            name=str(ref),
        )
        for ref in sorted(ports)
        if not resolver.workload(ref).host_network
    }
    return ClusterFacts(
        workloads=workloads,
        nodes_of={str(ref): frozenset(found) for ref, found in nodes.items()},
        host_network={name: tuple(sorted(found)) for name, found in host_addresses.items()},
        node_of_address=dict(snapshot.node_by_address),
        namespace_labels=namespace_labels,
        apiservers=apiserver_addresses(snapshot),
    )


def _pod_workload(graph: WorkloadGraph, node_id: str, cluster: ClusterFacts) -> Workload | None:
    """The workload a graph node stands for, unless it is none or uses its node's network."""
    workload = graph.node(node_id).workload
    if workload is None:
        return None
    return None if workload.host_network or node_id in cluster.host_network else workload


def _addresses(graph: WorkloadGraph, node_id: str, cluster: ClusterFacts) -> tuple[str, ...]:
    """The addresses of a graph node that is not a pod workload (``graphs.GraphNode``)."""
    node = graph.node(node_id)
    if node.addresses:
        return node.addresses
    if node.role is NodeRole.WORKLOAD:
        return cluster.host_network.get(node_id, ())
    name = node_id.removeprefix(ID_PREFIXES[node.role])  # the node's name, or the address
    if node.role is NodeRole.NODE:
        return tuple(sorted(a for a, n in cluster.node_of_address.items() if n == name))
    return (name,)


def _seen(
    graph: WorkloadGraph, client: str, server: str, port: PortSpec, *, client_side: bool
) -> set[str]:
    """The addresses one end of an edge really used on ``port``, from the flows behind it."""
    seen = set()
    for attribution in graph.flows_on_edge(client, server, port):
        if client_side:
            seen.add(attribution.flow.client.ip)
        elif attribution.twin is not None:
            seen.add(attribution.twin.server.ip)
        elif attribution.service is None:
            seen.add(attribution.flow.server.ip)
    return seen


def _ends(
    graph: WorkloadGraph,
    ends: tuple[str, str],
    port: PortSpec,
    cluster: ClusterFacts,
    *,
    client_side: bool,
) -> list[Peer]:
    """The peers standing for one end of an edge: a workload's facts, or each address that end
    used (all of the node's addresses when the flows do not say)."""
    node_id = ends[0] if client_side else ends[1]
    workload = _pod_workload(graph, node_id, cluster)
    if workload is not None:
        return [cluster.facts_for(workload)]
    addresses = _addresses(graph, node_id, cluster)
    if len(addresses) > 1:
        seen = _seen(graph, *ends, port, client_side=client_side)
        addresses = tuple(a for a in addresses if a in seen) or addresses
    names = graph.node(node_id).names
    if len(addresses) == 1:
        return [cluster.address(addresses[0], node_id, names)]
    return [cluster.address(a, f"{node_id} ({a})", names) for a in addresses]


def _node_local(client: Peer, server: Peer, cluster: ClusterFacts) -> tuple[Peer, Peer]:
    """Put the node on the workload's facts when the workload has a pod on that node."""
    if (
        isinstance(client, Address)
        and isinstance(server, Pod)
        and client.node in cluster.nodes_of.get(str(server), ())
    ):
        server = replace(server, node=client.node)
    if (
        isinstance(server, Address)
        and isinstance(client, Pod)
        and server.node in cluster.nodes_of.get(str(client), ())
    ):
        client = replace(client, node=server.node)
    return client, server


def _checked_at(vouched: Sides) -> frozenset[Direction]:
    """The sides an observed connection is checked at: the client's egress and the server's
    ingress, each when its side was vouched for (``analyser.vouching``)."""
    return frozenset(
        side
        for side, vouches in (
            (Direction.EGRESS, vouched.client),
            (Direction.INGRESS, vouched.server),
        )
        if vouches
    )


def observed_on_edge(
    graph: WorkloadGraph, client: str, server: str, port: PortSpec, cluster: ClusterFacts
) -> list[Observed]:
    """The observed connections of the graph edge ``client`` → ``server`` on ``port``: one, or
    one per address for ends that are addresses; checked at the sides its flows were vouched
    for at."""
    ends = (client, server)
    stats = graph.edge(client, server).ports[port]
    vouched = _checked_at(stats.vouched)
    observed = []
    for client_peer in _ends(graph, ends, port, cluster, client_side=True):
        for server_peer in _ends(graph, ends, port, cluster, client_side=False):
            local_client, local_server = _node_local(client_peer, server_peer, cluster)
            observed.append(
                Observed(local_client, local_server, port.protocol, port.port, stats.flows, vouched)
            )
    return observed


def observed_from_graph(graph: WorkloadGraph, cluster: ClusterFacts) -> list[Observed]:
    """One observed connection per graph edge and target port (see ``analyser.graphs``), per
    address for ends that are addresses (:func:`observed_on_edge`)."""
    return [
        observed
        for edge in graph.edges
        for port in sorted(edge.ports)
        for observed in observed_on_edge(graph, edge.client, edge.server, port, cluster)
    ]


def _still_checked(
    observed: Observed,
    left_out: Collection[tuple[str, PortSpec]],
    rules_left_out: Collection[tuple[str, str, str, PortSpec]],
) -> Observed | None:
    """``observed`` at the sides not left out on purpose (see :func:`check_policies_allow`);
    None when no side is left to check."""
    port = PortSpec(observed.protocol, observed.port)
    client, server = observed.client, observed.server
    if any(isinstance(end, Address) and (end.ip, port) in left_out for end in (client, server)):
        return None
    sides = (
        (Direction.EGRESS, client, server),  # the client's egress rule to the server
        (Direction.INGRESS, server, client),  # the server's ingress rule from the client
    )
    dropped = {
        direction
        for direction, workload, peer in sides
        if isinstance(workload, Pod)
        and (workload.name, str(direction), _peer_name(peer), port) in rules_left_out
    }
    if not dropped:
        return observed
    vouched = observed.vouched - dropped
    return replace(observed, vouched=vouched) if vouched else None


def _peer_name(peer: Peer) -> str:
    """How ``policies.RuleLeftOut`` names a peer: its address, or its workload."""
    return peer.ip if isinstance(peer, Address) else peer.name


def check_policies_allow(
    policies: PolicySet,
    graph: WorkloadGraph,
    cluster: ClusterFacts,
    *,
    left_out: Collection[tuple[str, PortSpec]] = (),
    rules_left_out: Collection[tuple[str, str, str, PortSpec]] = (),
) -> list[Denial]:
    """Every observed connection of ``graph`` that ``policies`` deny (empty: all allowed) at a
    side it was vouched for at, but what the policies leave out on purpose: connections with an
    (address, target port) of ``left_out`` (``policies.Policy.left_out``), and a workload's side
    of those with a peer on a target port of ``rules_left_out`` (workload node id, direction,
    peer's address or workload, port: ``policies.Policy.rules_left_out``)."""
    observed = [
        checked
        for o in observed_from_graph(graph, cluster)
        if (checked := _still_checked(o, left_out, rules_left_out)) is not None
    ]
    return check_observed(policies, observed)


def ensure_policies_allow(
    policies: PolicySet,
    graph: WorkloadGraph,
    cluster: ClusterFacts,
    *,
    left_out: Collection[tuple[str, PortSpec]] = (),
    rules_left_out: Collection[tuple[str, str, str, PortSpec]] = (),
) -> None:
    """Raise :class:`UnsafePolicies` listing the denied flows, if ``policies`` deny any (but
    those left out on purpose, see :func:`check_policies_allow`)."""
    denials = check_policies_allow(
        policies, graph, cluster, left_out=left_out, rules_left_out=rules_left_out
    )
    if denials:
        # One line: the terminal shows an error's line breaks as escapes (cli.main.say).
        listed = "; ".join(str(denial) for denial in denials[:MAX_LISTED_DENIALS])
        more = len(denials) - MAX_LISTED_DENIALS
        tail = f"; ... and {more} more" if more > 0 else ""
        raise UnsafePolicies(
            f"the generated policies would deny {len(denials)} observed flow(s); "
            f"nothing was written: {listed}{tail}"
        )


def _workload_peers(graph: WorkloadGraph, cluster: ClusterFacts) -> dict[str, Pod]:
    """Facts of every workload: the snapshot's and those only the captures know."""
    pods = dict(cluster.workloads)
    for node in graph.nodes:
        workload = _pod_workload(graph, node.id, cluster)
        if workload is not None:
            pods.setdefault(node.id, cluster.facts_for(workload))
    return pods


def verification_inputs(
    policies: PolicySet, graph: WorkloadGraph, cluster: ClusterFacts
) -> tuple[list[Observed], Universe]:
    """The observed connections of ``graph``, and the universe verify reports on: every
    workload, focused on the captured ones (``in_scope``), with the ipBlocks ``policies`` name
    and the observed addresses outside the cluster as address blocks (those made only of node
    addresses folded into one, "cluster nodes")."""
    observed = observed_from_graph(graph, cluster)
    focus = [node.id for node in graph.with_role(NodeRole.WORKLOAD) if node.in_scope]
    external = [
        block_for(node.id.removeprefix(ID_PREFIXES[NodeRole.EXTERNAL]))
        for node in graph.with_role(NodeRole.EXTERNAL)
    ]
    universe = Universe.of(
        _workload_peers(graph, cluster).values(),
        [*policies.ip_blocks(), *external],
        focus=focus,
        nodes=cluster.node_of_address,
        dns_names={
            node.id.removeprefix(ID_PREFIXES[NodeRole.EXTERNAL]): frozenset(node.names)
            for node in graph.with_role(NodeRole.EXTERNAL)
        },
        apiservers=cluster.apiservers,
    )
    return observed, universe


def verify_graph(policies: PolicySet, graph: WorkloadGraph, cluster: ClusterFacts) -> Verification:
    """``verify`` on an analysed bundle: denied observed flows, unobserved allowances, score."""
    observed, universe = verification_inputs(policies, graph, cluster)
    return verify(policies, observed, universe)


def observed_from_records(
    records: Iterable[Mapping[str, Any]], cluster: ClusterFacts
) -> list[Observed]:
    """Connections named the way graph nodes are (``NS/Kind/name`` or ``ip:ADDRESS``), e.g. the
    lab's ``truth.json``: ``{"client", "server", "protocol", "port"}`` each."""

    def peer(name: str) -> Peer:
        if name.startswith("ip:"):
            # A node's address is marked with its node, so a pod on that node gets the
            # exemption ``_node_local`` gives (kubelet probes), as the graph's flows do.
            return cluster.address(name.removeprefix("ip:"), name)
        if cluster.host_network.get(name):
            return cluster.address(cluster.host_network[name][0], name)
        if name not in cluster.workloads:
            raise SnapshotError(f"{name}: no such workload in the snapshot")
        return cluster.workloads[name]

    observed = []
    for record in records:
        client, server = _node_local(
            peer(str(record["client"])), peer(str(record["server"])), cluster
        )
        observed.append(
            Observed(client, server, Protocol(str(record["protocol"])), int(record["port"]))
        )
    return observed
