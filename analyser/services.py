"""Services: the pods behind a Service port at a time and the port each receives on after DNAT
(the target-port rule: :func:`target_port`), whether an address listens on a port, and what the
snapshot exposes outside the cluster.

NetworkPolicy matches a pod and its target port, never a Service port: a client's capture shows
``ClusterIP:port``, the rule must say the pod's port. Pure: no I/O.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from analyser.addresses import is_ip, normalize_ip, parse_address
from analyser.claims import Claims, PodRecord
from analyser.flows import Endpoint, Protocol
from analyser.networks import NodeAddresses
from analyser.objects import GrantFrom, GrantTo, Route, Service, ServicePort, ServiceRef
from analyser.peers import Exposure, PortSpec
from analyser.snapshot import Snapshot
from analyser.workloads import Workloads

# Port on which every kubelet listens on its node's addresses (probes and logs go the other way,
# but an API server → kubelet flow must not make the node look like the internet).
KUBELET_PORT = 10250
# Service types whose backends are reached from outside the cluster.
_EXPOSING_TYPES = ("LoadBalancer", "NodePort")
GATEWAY_API_GROUP = "gateway.networking.k8s.io"


def target_port(service_port: ServicePort, record: PodRecord, protocol: Protocol) -> int | None:
    """The pod's port for a Service port: a number, a name looked up in the pod's containerPorts
    (None when the pod has no such port: kube-proxy sends it nothing), or the Service port (a
    Service port without ``targetPort``: ``ServicePort.target`` is its port already)."""
    target = service_port.target
    if isinstance(target, str):
        return record.port_named(target, protocol)
    return target


def _selects(selector: Mapping[str, str] | None, record: PodRecord) -> bool:
    """A Service's ``spec.selector`` (equality only) against the pod's labels; none selects
    nothing."""
    if not selector:
        return False
    labels = dict(record.labels)
    return all(labels.get(k) == v for k, v in selector.items())


@dataclass(frozen=True, slots=True)
class Reached:
    """A workload reached through a Service port from outside the cluster: the target port it
    receives on, over one IP version."""

    workload: str  # its graph node id
    port: PortSpec
    family: int


@dataclass(frozen=True, order=True, slots=True)
class Backend:
    """An address behind a Service port at one instant, the port it receives on, and the pod the
    endpoints name there (its ``PodRecord.key``; "" when they name none)."""

    ip: str
    port: int  # the target port after DNAT, named ports resolved
    pod_key: str


# The pod a backend's address was at that time, as the resolver tells who an address was
# (``identities.Resolver``): None for a node, an outside address, an unknown one.
PodBehind = Callable[[Backend, Protocol, float], PodRecord | None]


class Services:
    """The snapshot's Services, with what the claims and the nodes know of their pods."""

    def __init__(self, snapshot: Snapshot, claims: Claims, nodes: NodeAddresses) -> None:
        self._snapshot = snapshot
        self._claims = claims
        self._nodes = nodes
        self._node_ports = {
            (port.node_port, port.protocol)
            for service in snapshot.services
            for port in service.ports
            if port.node_port is not None and port.protocol is not None
        }
        # Caches: what Services send each pod, and the pods each Service selects.
        self._target_ports: dict[str, frozenset[tuple[int, Protocol]]] = {}
        self._selected: dict[tuple[str, str], list[PodRecord]] = {}
        self._by_label: dict[tuple[str, str, str], list[PodRecord]] = defaultdict(list)

    def at(self, ip: str) -> Service | None:
        """The Service whose address ``ip`` (normalized) is: a ClusterIP, an external or a
        load-balancer IP."""
        return self._snapshot.services_by_address.get(ip)

    # -- backends -----------------------------------------------------------------------------

    def backends(
        self,
        service: tuple[str, str],
        port: int,
        protocol: Protocol,
        at: float,
        *,
        family: int | None = None,
    ) -> tuple[Backend, ...]:
        """The addresses behind ``service`` (namespace, name) on its port ``port`` at ``at``,
        each with its target port: from EndpointSlices when the snapshot has them, else legacy
        Endpoints, else the Service's selector over the pods known at that time. ``family`` (4
        or 6, the ClusterIP's) picks which address of a dual-stack pod to report. Sorted."""
        found = self._snapshot.service(*service)
        service_port = found.port(port, protocol) if found is not None else None
        if found is None or service_port is None:
            return ()
        backends: set[Backend] = set()
        slices = self._snapshot.slices_for(*service)
        endpoints = self._snapshot.endpoints_for(*service)
        if slices:
            # Dual-stack Services have one set of slices per family.
            same_family = [s for s in slices if s.address_type == f"IPv{family}"]
            sets = [s.endpoints for s in same_family or slices if s.address_type != "FQDN"]
        elif endpoints is not None:
            sets = list(endpoints.subsets)
        else:
            sets = []
        for endpoint_set in sets:
            target = endpoint_set.port_for(service_port.name, protocol)
            if target is None:
                continue
            for endpoint in endpoint_set.endpoints:
                key = endpoint.target.pod_key if endpoint.target is not None else ""
                backends |= {Backend(ip, target, key) for ip in endpoint.addresses}
        if not slices and endpoints is None:
            for record in self._selected_pods(found, at):
                target = target_port(service_port, record, protocol)
                if target is None:
                    continue
                if record.host_network:  # it receives on its node's address
                    ip = self._nodes.address_of(record.node, family)
                else:
                    ip = self._claims.address_of(record, at, family)
                backends.add(Backend(ip, target, record.key))
        return tuple(backend for backend in sorted(backends) if is_ip(backend.ip))

    def steady(self, service: tuple[str, str], at: float) -> bool:
        """Whether :meth:`backends` of ``service`` are the same at any time from ``at`` on: its
        EndpointSlices or Endpoints are in the snapshot, or the pods its selector picks are each
        alive from then on or gone by then, at one address of each IP family."""
        found = self._snapshot.service(*service)
        if found is None or self._snapshot.slices_for(*service):
            return True
        if self._snapshot.endpoints_for(*service) is not None:
            return True
        for record in self._matching(found):
            lifetime = self._claims.lifetime(record)
            if lifetime is not None and not (
                lifetime.end <= at or (lifetime.start <= at and lifetime.end == math.inf)
            ):
                return False
            addresses = set(self._claims.addresses_of(record))
            versions = {parse_address(address).version for address in addresses}
            if not record.host_network and len(versions) < len(addresses):
                return False  # a new address of the same family: which one depends on the time
        return True

    def _selected_pods(self, service: Service, at: float) -> list[PodRecord]:
        matching = self._matching(service)
        alive = []
        for record in matching:
            lifetime = self._claims.lifetime(record)
            if lifetime is None or lifetime.covers(at):
                alive.append(record)
        return alive or matching

    def _matching(self, service: Service) -> list[PodRecord]:
        """Every pod the Service's selector picks, whenever it lived."""
        selector = service.selector
        if not selector:
            return []
        namespace = service.namespace
        key = (namespace, service.name)
        if key not in self._selected:
            if not self._by_label:
                for record in sorted(self._claims.records, key=lambda r: r.key):
                    for label in record.labels:
                        self._by_label[(record.namespace, *label)].append(record)
            # The pods carrying the selector's rarest label, checked for the others.
            fewest = min(
                (self._by_label.get((namespace, k, v), []) for k, v in selector.items()), key=len
            )
            self._selected[key] = [r for r in fewest if _selects(selector, r)]
        return self._selected[key]

    # -- listeners ----------------------------------------------------------------------------

    def _is_target_port(self, record: PodRecord, port: int, protocol: Protocol) -> bool:
        """Whether a Service selecting the pod sends it traffic on ``port``."""
        if record.key not in self._target_ports:
            self._target_ports[record.key] = frozenset(
                (target, proto)
                for service in self._snapshot.services
                if service.namespace == record.namespace and _selects(service.selector, record)
                for service_port in service.ports
                if (proto := service_port.protocol) is not None
                and (target := target_port(service_port, record, proto)) is not None
            )
        return (port, protocol) in self._target_ports[record.key]

    def known_listener(self, endpoint: Endpoint, protocol: Protocol, at: float) -> bool:
        """Whether the snapshot says ``endpoint`` listens on ``protocol`` at ``at``: a Service's
        port, a pod's containerPort or a target port a Service sends it, or on a node the
        kubelet, a NodePort or a hostNetwork pod's port (a
        :data:`~analyser.flows.ListenerOracle`)."""
        ip = normalize_ip(endpoint.ip)
        service = self.at(ip)
        if service is not None:
            return service.port(endpoint.port, protocol) is not None
        record = self._claims.holder(ip, at)
        if record is not None:
            return record.listens(endpoint.port, protocol) or self._is_target_port(
                record, endpoint.port, protocol
            )
        node = self._nodes.node_at(ip)
        if node is None:
            return False
        if protocol is Protocol.TCP and endpoint.port == KUBELET_PORT:
            return True
        return (endpoint.port, protocol) in self._node_ports or (
            self._claims.host_listener(node, endpoint.port, protocol) is not None
        )

    # -- exposure -------------------------------------------------------------------------------

    def _reached(
        self,
        service: Service,
        service_ports: Iterable[ServicePort],
        workloads: Workloads,
        pod_behind: PodBehind,
    ) -> Iterator[Reached]:
        """The workloads behind ``service_ports`` of ``service`` and the target port each
        receives them on, per IP version of the Service's ClusterIPs."""
        versions: set[int] = {parse_address(ip).version for ip in service.cluster_ips} or {4}
        for service_port in service_ports:
            protocol = service_port.protocol
            if protocol is None or service_port.port is None:
                continue
            for version in sorted(versions):
                for backend in self.backends(
                    (service.namespace, service.name),
                    service_port.port,
                    protocol,
                    math.inf,
                    family=version,
                ):
                    record = pod_behind(backend, protocol, math.inf)
                    if record is not None:
                        port = PortSpec(protocol, backend.port)
                        yield Reached(str(workloads.of(record)), port, version)

    @staticmethod
    def _routed_ports(service: Service, ref: ServiceRef) -> tuple[ServicePort, ...]:
        """The Service port an Ingress or HTTPRoute backend names (by number or by name): HTTP
        rides on TCP."""
        return tuple(
            port
            for port in service.ports
            if port.protocol is Protocol.TCP
            and (port.port == ref.port if isinstance(ref.port, int) else port.name == ref.port)
        )

    def _permitted(self, route: Route, ref: ServiceRef) -> bool:
        """Whether ``route`` may send to the Service ``ref`` names: one of its own namespace, or
        one whose namespace has a ReferenceGrant letting the route's kind in the route's
        namespace refer to it (the Gateway API's rule: without one the gateway refuses it)."""
        if ref.namespace == route.namespace:
            return True
        source = GrantFrom(GATEWAY_API_GROUP, route.kind, route.namespace)
        target = GrantTo("", "Service", ref.name)
        return any(
            grant.namespace == ref.namespace and grant.grants(source, target)
            for grant in self._snapshot.reference_grants
        )

    def exposures(
        self, workloads: Workloads, pod_behind: PodBehind
    ) -> dict[str, tuple[Exposure, ...]]:
        """Graph node id (``NS/Kind/name``) of each workload the snapshot shows reachable from
        outside the cluster → its exposed target ports and what exposes them: the backends of
        LoadBalancer and NodePort Services and of Services with ``externalIPs`` (each on its
        target port, per IP version of the Service's ClusterIPs), the backends of the Service
        ports an Ingress or an HTTPRoute sends to (a cloud load balancer or a gateway's proxies
        may reach the pods directly, from addresses nobody lists, whatever the Service's type;
        another namespace's only as a ReferenceGrant there permits),
        and containerPorts published with ``hostPort``. Sorted."""
        found: dict[tuple[str, PortSpec, str], set[int]] = defaultdict(set)
        for service in self._snapshot.services:
            kind = service.type
            how = kind if kind in _EXPOSING_TYPES else "externalIPs"
            if kind not in _EXPOSING_TYPES and not service.external_ips:
                continue
            by = f"Service {service.namespace}/{service.name} ({how})"
            for reached in self._reached(service, service.ports, workloads, pod_behind):
                found[(reached.workload, reached.port, by)].add(reached.family)
        for route in self._snapshot.routes:
            by = f"{route.kind} {route.namespace}/{route.name}"
            for ref in route.backends:
                target = self._snapshot.service(ref.namespace, ref.name)
                if target is None or not self._permitted(route, ref):
                    continue
                ports = self._routed_ports(target, ref)
                for reached in self._reached(target, ports, workloads, pod_behind):
                    found[(reached.workload, reached.port, by)].add(reached.family)
        for record in self._claims.records:
            if not record.published or record.host_network:
                continue  # a hostNetwork pod gets no policy: NetworkPolicy does not apply to it
            versions: set[int] = {
                parse_address(ip).version for ip in self._claims.addresses_of(record)
            }
            for published in record.published:
                key = (
                    str(workloads.of(record)),
                    PortSpec(published.protocol, published.container_port),
                    f"hostPort {published.host_port}",
                )
                found[key] |= versions or {4}
        exposures: dict[str, list[Exposure]] = defaultdict(list)
        for (workload, port, by), versions in sorted(found.items()):
            exposures[workload].append(Exposure(port, by, tuple(sorted(versions))))
        return {workload: tuple(items) for workload, items in sorted(exposures.items())}


def apiserver_addresses(snapshot: Snapshot) -> frozenset[str]:
    """The addresses serving the cluster's API: the endpoints of the ``default/kubernetes``
    Service (the API server writes them itself), from its EndpointSlices or its Endpoints; empty
    when the snapshot holds neither. What Cilium calls the ``kube-apiserver`` entity."""
    sets = [found.endpoints for found in snapshot.slices_for("default", "kubernetes")]
    endpoints = snapshot.endpoints_for("default", "kubernetes")
    if endpoints is not None:
        sets += endpoints.subsets
    return frozenset(
        address
        for found in sets
        for endpoint in found.endpoints
        for address in endpoint.addresses
        if is_ip(address)
    )
