"""Identities: who an IP address was at a given time (pod → workload, Service, node, outside).

:class:`Resolver` answers it from a snapshot, the pod IP history and the captures' ``meta.json``:
a thin facade over parts that each know one thing, each importing only those below it:

    clusterdns   where cluster DNS answers, and the node-local caches
    services     a Service's backends and their target ports, listeners, exposures
    workloads    a pod's workload (its owners walked up) and the selector its policy uses
    claims       which pod held which address when
    networks     the nodes' addresses, theirs on the pod network, the cluster's ranges

The data classes here (:class:`Identity`, :class:`PodRef`, ...) are the contract the graph, the
policies and verify build on. Pure: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from analyser.addresses import is_loopback_address, normalize_ip
from analyser.claims import CLAIM_SKEW, Claims, PodRecord
from analyser.clusterdns import busiest_dns_service, cluster_dns
from analyser.flows import Endpoint, Flow, Protocol
from analyser.networks import ClusterRanges, NodeAddresses
from analyser.peers import ClusterDns, Exposure
from analyser.services import Backend, Services
from analyser.snapshot import CaptureMeta, PodIpEvent, Snapshot
from analyser.workloads import Workload, WorkloadRef, Workloads


class EndpointKind(StrEnum):
    POD = "pod"
    SERVICE = "service"  # a ClusterIP; resolved further to its backing pods
    NODE = "node"  # a node's address: kubelet probes, SNAT, hostNetwork pods
    EXTERNAL = "external"  # outside the cluster
    UNRESOLVED = "unresolved"  # inside a cluster range but matching nothing known at that time


# The kinds of the addresses nobody in the snapshot holds.
_ANY_ADDRESS = frozenset({EndpointKind.EXTERNAL, EndpointKind.UNRESOLVED})


@dataclass(frozen=True, order=True, slots=True)
class PodRef:
    namespace: str
    name: str
    uid: str
    workload: WorkloadRef

    @property
    def key(self) -> str:
        """Its pod's ``claims.PodRecord.key``."""
        return self.uid or f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class Identity:
    """What ``ip`` was at one instant."""

    kind: EndpointKind
    ip: str
    pod: PodRef | None = None
    service: tuple[str, str] | None = None  # (namespace, name) for EndpointKind.SERVICE
    node: str | None = None  # node name for EndpointKind.NODE


@dataclass(frozen=True, slots=True)
class ServiceBackend:
    """A pod (or address) behind a Service port at one instant, and the port it receives on."""

    identity: Identity
    port: int  # the target port after DNAT, named ports resolved


@dataclass(frozen=True, slots=True)
class Scope:
    """The workloads whose pods were captured (they get policies), and the captured pods that
    could not be placed in a workload."""

    workloads: frozenset[WorkloadRef]
    unknown_pods: tuple[tuple[str, str], ...] = ()  # (namespace, pod)


@dataclass(frozen=True, order=True, slots=True)
class Vantage:
    """Where a capture was taken, so what it speaks for: a pod (``namespace``, ``pod``) or a node
    (``node``). A node's capture placed by the bundle speaks for that node's pods in
    ``namespaces`` (the ones opted in); a loose file read as a node's capture (no
    ``namespaces``) for everything on that node. See :meth:`Resolver.holds`."""

    namespace: str = ""
    pod: str = ""
    node: str = ""
    namespaces: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"pod {self.namespace}/{self.pod}" if self.pod else f"node {self.node}"

    def speaks_for(self, namespace: str) -> bool:
        """Whether a node's capture speaks for that node's pods in ``namespace``."""
        return not self.namespaces or namespace in self.namespaces


class Resolver:
    """Answers "who was this address at that time?" from a snapshot, the pod IP history
    (``pod-ips.jsonl``) and the captures' ``meta.json``.

    An address is a Service's first, then the pod's that held it then (``claims``), then a
    node's (or, with the listening port, the hostNetwork pod's that declares it), then a node's
    on the pod network; else unresolved inside the cluster's ranges, outside beyond them.
    """

    def __init__(
        self,
        snapshot: Snapshot,
        *,
        ip_history: Sequence[PodIpEvent] = (),
        captures: Sequence[CaptureMeta] = (),
    ) -> None:
        self._nodes = NodeAddresses(snapshot)
        self._claims = Claims(
            snapshot, ip_history=ip_history, captures=captures, node_addresses=self._nodes
        )
        self._ranges = ClusterRanges(snapshot, self._claims.claimed)
        self._workloads = Workloads(snapshot, self._claims)
        self._services = Services(snapshot, self._claims, self._nodes)
        self._timeless: dict[tuple[str, int | None, Protocol | None], Identity] = {}
        # steady_backends' answers, each with the earliest time it was asked for.
        self._steady_backends: dict[
            tuple[tuple[str, str], int, Protocol, int | None],
            tuple[float, tuple[ServiceBackend, ...]],
        ] = {}

    # -- pods and workloads -----------------------------------------------------------------

    def _pod_ref(self, record: PodRecord) -> PodRef:
        return PodRef(record.namespace, record.name, record.uid, self._workloads.of(record))

    def workload(self, ref: WorkloadRef) -> Workload:
        """The workload ``ref`` names (KeyError when no known pod belongs to it)."""
        return self._workloads.get(ref)

    def workload_of_pod(self, namespace: str, pod: str) -> WorkloadRef | None:
        return self._workloads.of_pod(namespace, pod)

    def node_of(self, identity: Identity) -> str | None:
        """The node an identity is on: a node address's node, a pod's ``spec.nodeName`` (or
        meta.json's ``node``); None when unknown or outside the cluster."""
        if identity.node:
            return identity.node
        if identity.pod is None:
            return None
        record = self._claims.record(identity.pod.key)
        return record.node if record is not None and record.node else None

    def pods_on(self, node: str, namespaces: Collection[str]) -> tuple[tuple[str, str], ...]:
        """(namespace, pod) of every pod the inputs place on ``node`` (the snapshot's
        ``spec.nodeName``, a history line's or meta.json's ``node``) in ``namespaces``, sorted;
        hostNetwork pods are left out: their traffic is the node's own."""
        return tuple(
            sorted(
                {
                    (record.namespace, record.name)
                    for record in self._claims.records
                    if record.node == node
                    and record.namespace in namespaces
                    and not record.host_network
                }
            )
        )

    def scope_of(self, pods: Iterable[tuple[str, str]]) -> Scope:
        """The workloads of the captured pods (``(namespace, pod)``, from capture paths or
        meta.json)."""
        workloads: set[WorkloadRef] = set()
        unknown: set[tuple[str, str]] = set()
        for namespace, pod in pods:
            ref = self.workload_of_pod(namespace, pod)
            if ref is None:
                unknown.add((namespace, pod))
            else:
                workloads.add(ref)
        return Scope(frozenset(workloads), tuple(sorted(unknown)))

    # -- addresses --------------------------------------------------------------------------

    def holds(self, vantage: Vantage, ip: str, at: float) -> bool:
        """Whether ``ip`` was ``vantage``'s own address at ``at``, as :meth:`resolve` tells who it
        was (with its tolerance for clock skew): a pod's own address (a hostNetwork pod's: an
        address of its node); for a node, one of its pods' in the vantage's namespaces (or, a
        loose file's, a node's address or any of its pods'). Loopback addresses are everyone's
        own."""
        if is_loopback_address(ip):
            return True
        ip = normalize_ip(ip)
        if not (ip in self._claims.claimed or ip in self._nodes or self._nodes.gateway(ip)):
            return False  # nobody's own, whatever it resolves to: a scan's millions are asked
        identity = self.resolve(ip, at)
        if not vantage.pod and vantage.namespaces:
            # A node's capture placed by the bundle: its pods of the opted-in namespaces only.
            return (
                identity.pod is not None
                and vantage.speaks_for(identity.pod.namespace)
                and self.node_of(identity) == vantage.node
            )
        if not vantage.pod:
            return self.node_of(identity) == vantage.node
        if identity.pod is not None:
            return (identity.pod.namespace, identity.pod.name) == (vantage.namespace, vantage.pod)
        return identity.kind is EndpointKind.NODE and any(
            record.host_network and record.node == identity.node
            for record in self._claims.named(vantage.namespace, vantage.pod)
        )

    def knows_addresses(self, vantage: Vantage) -> bool:
        """Whether any address of ``vantage`` is known at all (a pod's from a claim, a hostNetwork
        pod's or a node's from its node): without one, :meth:`holds` is never true."""
        if not vantage.pod:
            return bool(self._nodes.addresses_of(vantage.node))
        return any(
            self._claims.addresses_of(record)
            or (record.host_network and self._nodes.addresses_of(record.node))
            for record in self._claims.named(vantage.namespace, vantage.pod)
        )

    def existed(self, pod: PodRef, at: float) -> bool:
        """Whether ``pod`` had an address by ``at`` (with :meth:`resolve`'s tolerance for clock
        skew). A packet older than every pod the inputs know still resolves to the earliest
        claim on its address, as the best guess; this tells such a guess from a pod that was
        there. True when nothing says when the pod started (a hostNetwork pod)."""
        return at >= self.existed_since(pod)

    def existed_since(self, pod: PodRef) -> float:
        """From when on :meth:`existed` says ``pod`` existed (``-inf``: always)."""
        record = self._claims.record(pod.key)
        lifetime = self._claims.lifetime(record) if record is not None else None
        return -math.inf if lifetime is None else lifetime.start - CLAIM_SKEW

    @property
    def cluster_networks(self) -> tuple[str, ...]:
        """The networks inside the cluster (node podCIDRs, else inferred from pod addresses;
        the Services' addresses), as CIDR text: an address in them is never the outside."""
        return tuple(str(network) for network in self._ranges.networks)

    def timeless(self, ip: str, at: float) -> bool:
        """Whether :meth:`resolve` tells the same of ``ip`` at any time from ``at`` on: at most
        one pod ever claims it (a reused address is someone else after a handover)."""
        return self._claims.timeless(normalize_ip(ip), at)

    def resolve(
        self, ip: str, at: float, *, port: int | None = None, protocol: Protocol | None = None
    ) -> Identity:
        """What ``ip`` was at ``at``. With ``port``/``protocol`` (the side that listens), a node
        address resolves to the hostNetwork pod that declares that port, if any."""
        ip = normalize_ip(ip)
        key = (ip, port, protocol)
        # With at most one pod ever at this address, the answer does not depend on the time
        # (from shortly before that pod's claim on it on).
        timeless = self._claims.timeless(ip, at)
        if timeless:
            known = self._timeless.get(key)
            if known is not None:
                return known
        identity = self._resolve(ip, at, port, protocol)
        # Kept for the addresses the snapshot knows. Any other is resolved again, cheaply: a
        # capture may name millions (a scan), and one kept each would grow without bound.
        if timeless and identity.kind not in _ANY_ADDRESS:
            self._timeless[key] = identity
        return identity

    def _resolve(self, ip: str, at: float, port: int | None, protocol: Protocol | None) -> Identity:
        service = self._services.at(ip)
        if service is not None:
            return Identity(EndpointKind.SERVICE, ip, service=(service.namespace, service.name))
        record = self._claims.holder(ip, at)
        if record is not None:
            return Identity(EndpointKind.POD, ip, pod=self._pod_ref(record))
        node = self._nodes.node_at(ip)
        if node is not None:
            if port is not None:
                listener = self._claims.host_listener(node, port, protocol or Protocol.TCP)
                if listener is not None:
                    return Identity(EndpointKind.POD, ip, pod=self._pod_ref(listener), node=node)
            return Identity(EndpointKind.NODE, ip, node=node)
        gateway = self._nodes.gateway(ip)
        if gateway is not None:
            return Identity(EndpointKind.NODE, ip, node=gateway)
        if ip in self._ranges:
            return Identity(EndpointKind.UNRESOLVED, ip)
        return Identity(EndpointKind.EXTERNAL, ip)

    def known_listener(self, endpoint: Endpoint, protocol: Protocol, at: float) -> bool:
        """Whether the snapshot says ``endpoint`` listens on ``protocol`` at ``at``
        (a :data:`~analyser.flows.ListenerOracle`; ``Services.known_listener``)."""
        return self._services.known_listener(endpoint, protocol, at)

    # -- Services ---------------------------------------------------------------------------

    def service_backends(
        self,
        service: tuple[str, str],
        port: int,
        protocol: Protocol,
        at: float,
        *,
        family: int | None = None,
    ) -> tuple[ServiceBackend, ...]:
        """The pods (or addresses) behind ``service`` (namespace, name) on its port ``port`` at
        ``at``, each with its target port (``Services.backends``)."""
        return tuple(
            ServiceBackend(self._backend_identity(backend, protocol, at), backend.port)
            for backend in self._services.backends(service, port, protocol, at, family=family)
        )

    def steady_backends(
        self,
        service: tuple[str, str],
        port: int,
        protocol: Protocol,
        at: float,
        *,
        family: int | None = None,
    ) -> tuple[ServiceBackend, ...] | None:
        """:meth:`service_backends` at ``at`` when they are the same at any time from ``at`` on
        (``Services.steady``: the same pods behind it, each named by its pod or at an address
        nobody else claims from then on); None when they may change."""
        key = (service, port, protocol, family)
        known = self._steady_backends.get(key)
        if known is not None and at >= known[0]:
            return known[1]
        if not self._services.steady(service, at):
            return None
        backends = self._services.backends(service, port, protocol, at, family=family)
        for backend in backends:
            record = self._claims.record(backend.pod_key) if backend.pod_key else None
            if (record is None or record.host_network) and not self.timeless(backend.ip, at):
                return None
        steady = tuple(
            ServiceBackend(self._backend_identity(backend, protocol, at), backend.port)
            for backend in backends
        )
        self._steady_backends[key] = (at, steady)  # the same from ``at`` on
        return steady

    def _backend_identity(self, backend: Backend, protocol: Protocol, at: float) -> Identity:
        """The pod the endpoints name (unless it uses its node's network), else who the address
        was."""
        record = self._claims.record(backend.pod_key) if backend.pod_key else None
        if record is not None and not record.host_network:
            return Identity(EndpointKind.POD, normalize_ip(backend.ip), pod=self._pod_ref(record))
        return self.resolve(backend.ip, at, port=backend.port, protocol=protocol)

    def _pod_behind(self, backend: Backend, protocol: Protocol, at: float) -> PodRecord | None:
        """The pod a backend's address was at ``at`` (a ``services.PodBehind``)."""
        pod = self._backend_identity(backend, protocol, at).pod
        return None if pod is None else self._claims.record(pod.key)

    def exposures(self) -> dict[str, tuple[Exposure, ...]]:
        """Graph node id (``NS/Kind/name``) of each workload the snapshot shows reachable from
        outside the cluster → its exposed target ports and what exposes them
        (``Services.exposures``)."""
        return self._services.exposures(self._workloads, self._pod_behind)

    # -- cluster DNS ------------------------------------------------------------------------

    def cluster_dns(self, flows: Iterable[Flow] = ()) -> ClusterDns:
        """The cluster DNS workloads and the ports they receive DNS on
        (``clusterdns.cluster_dns``)."""
        return cluster_dns(
            flows,
            claims=self._claims,
            services=self._services,
            workloads=self._workloads,
            pod_behind=self._pod_behind,
        )

    def busiest_dns_service(self, flows: Iterable[Flow]) -> tuple[str, str] | None:
        """The Service that received the most DNS (``clusterdns.busiest_dns_service``)."""
        return busiest_dns_service(flows, self._services)
