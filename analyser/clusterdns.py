"""Cluster DNS: where pods send their DNS queries. By the distributions' conventions (a Service
and the label of its pods), else by the traffic (the pods behind the Service that received the
most DNS), else kube-system's ``k8s-app=kube-dns``; and the node-local DNS caches the traffic
went to. Every policy allows DNS egress to them.

Pure: no I/O.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from analyser.addresses import normalize_ip, parse_address
from analyser.claims import Claims, PodRecord
from analyser.flows import Flow, FlowTable, Protocol
from analyser.peers import DNS_PORTS, ClusterDns, IpPeer, PodPeer, PortSpec, node_local_dns_peer
from analyser.services import PodBehind, Services
from analyser.workloads import Workloads

DNS_NAMESPACE = "kube-system"
DNS_SERVICE = "kube-dns"
DNS_POD_LABEL = ("k8s-app", "kube-dns")


@dataclass(frozen=True, slots=True)
class DnsConvention:
    """Where a distribution runs its cluster DNS: a Service and, optionally, the label of its pods
    (found even when the Service or its endpoints are missing from the snapshot)."""

    namespace: str
    service: str
    pod_label: tuple[str, str] | None = None


# kubeadm, EKS, GKE, AKS and k3s: kube-system/kube-dns; RKE2 names its CoreDNS Service after the
# Helm chart; OpenShift's DNS operator runs a DaemonSet behind openshift-dns/dns-default.
DNS_CONVENTIONS = (
    DnsConvention(DNS_NAMESPACE, DNS_SERVICE, DNS_POD_LABEL),
    DnsConvention(DNS_NAMESPACE, "rke2-coredns-rke2-coredns"),
    DnsConvention(
        "openshift-dns", "dns-default", ("dns.operator.openshift.io/daemonset-dns", "default")
    ),
)


@dataclass(slots=True)
class _DnsPods:
    """The DNS pods found so far, and the target ports they receive DNS on."""

    records: list[PodRecord] = field(default_factory=list)
    ports: set[PortSpec] = field(default_factory=set)

    def add(self, more: _DnsPods) -> None:
        self.records += more.records
        self.ports |= more.ports


def _behind(service: tuple[str, str], services: Services, pod_behind: PodBehind) -> _DnsPods:
    """The pods behind ``service``'s port 53 (UDP, TCP) and their target ports."""
    found = _DnsPods()
    for protocol in (Protocol.UDP, Protocol.TCP):
        for backend in services.backends(service, 53, protocol, math.inf):
            found.ports.add(PortSpec(protocol, backend.port))
            record = pod_behind(backend, protocol, math.inf)
            if record is not None:
                found.records.append(record)
    return found


def cluster_dns(
    flows: Iterable[Flow],
    *,
    claims: Claims,
    services: Services,
    workloads: Workloads,
    pod_behind: PodBehind,
) -> ClusterDns:
    """The cluster DNS workloads and the ports they receive DNS on.

    First by the conventions in :data:`DNS_CONVENTIONS`: the pods carrying a convention's label
    in its namespace and the pods behind its Service (all conventions together: a cluster follows
    one). When none of them finds a pod, by the traffic in ``flows``: the pods behind
    :func:`busiest_dns_service`. Without either, the conventional ``k8s-app=kube-dns`` selector
    in kube-system. Plus the node-local DNS cache addresses ``flows`` went to
    (:func:`node_local_dns`)."""
    found = _DnsPods(
        [
            r
            for r in claims.records
            for convention in DNS_CONVENTIONS
            if r.namespace == convention.namespace and convention.pod_label in r.labels
        ]
    )
    for convention in DNS_CONVENTIONS:
        found.add(_behind((convention.namespace, convention.service), services, pod_behind))
    if not found.records:
        busiest = busiest_dns_service(flows, services)
        if busiest is not None:
            found.add(_behind(busiest, services, pod_behind))
    node_local = node_local_dns(flows)
    refs = sorted({workloads.of(r) for r in found.records})
    if not refs:
        return ClusterDns(node_local=node_local)
    peers = tuple(
        sorted(
            {
                PodPeer(workloads.get(ref).selector, ref.namespace, str(ref))
                for ref in refs
                if not workloads.get(ref).selector.is_empty
            }
        )
    )
    return ClusterDns(
        peers=peers or ClusterDns().peers,
        workloads=frozenset(str(ref) for ref in refs),
        ports=tuple(sorted(found.ports)) if found.ports else DNS_PORTS,
        node_local=node_local,
    )


def busiest_dns_service(flows: Iterable[Flow], services: Services) -> tuple[str, str] | None:
    """The Service (namespace, name), in any namespace, whose address received the most packets
    of 53/UDP flows, counted in both directions; ties go to the first by namespace and name. None
    when no 53/UDP flow went to a Service."""
    packets: dict[tuple[str, str], int] = defaultdict(int)
    for group in FlowTable.of(flows).groups:
        if group.protocol is not Protocol.UDP or group.server.port != 53:
            continue
        service = services.at(normalize_ip(group.server.ip))
        if service is not None:
            packets[(service.namespace, service.name)] += sum(group.packets)
    return min(packets, key=lambda s: (-packets[s], s), default=None)


def node_local_dns(flows: Iterable[Flow]) -> tuple[IpPeer, ...]:
    """The NodeLocal DNSCache addresses in ``flows``: link-local addresses (169.254.0.0/16,
    fe80::/10; the cache listens on one on every node, 169.254.20.10 by default) that received
    TCP or UDP on port 53. Sorted by family and address."""
    addresses = {
        parse_address(group.server.ip)
        for group in FlowTable.of(flows).groups
        if group.server.port == 53
        and group.protocol in (Protocol.UDP, Protocol.TCP)
        and parse_address(group.server.ip).is_link_local
    }
    return tuple(
        node_local_dns_peer(str(a)) for a in sorted(addresses, key=lambda a: (a.version, int(a)))
    )
