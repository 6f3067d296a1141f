"""Who a policy rule names and on what: target ports, pod and address peers, the special
addresses no rule allows by accident, and the cluster's facts that name peers and ports (where
cluster DNS answers, what the snapshot exposes outside the cluster).

Data only: standard library, no I/O. The resolver finds these facts (``analyser.identities``),
the policies are written with them (``analyser.policies``).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from enum import StrEnum

from analyser.flows import Protocol
from analyser.selectors import LabelSelector


@dataclass(frozen=True, order=True, slots=True)
class PortSpec:
    """A target port (never a Service port) and its protocol."""

    protocol: Protocol
    port: int


@dataclass(frozen=True, order=True, slots=True)
class PodPeer:
    """Pods selected by ``pod_selector`` in ``namespace`` (None: the policy's own namespace)."""

    pod_selector: LabelSelector
    namespace: str | None = None
    description: str = ""  # the workload it stands for, e.g. "shop/Deployment/cart"


@dataclass(frozen=True, order=True, slots=True)
class IpPeer:
    """An address block: an address outside the cluster (a /32 or /128 ``ipBlock``), the
    cluster's nodes (``description`` says so), or anywhere (``0.0.0.0/0`` but ``excluded``)."""

    cidr: str
    names: tuple[str, ...] = ()  # DNS names seen resolving to it, for the annotation
    description: str = ""  # what the block stands for ("cluster nodes"), for the comment
    excluded: tuple[str, ...] = ()  # the ipBlock's ``except`` networks, inside ``cidr``


Peer = PodPeer | IpPeer


class SpecialAddress(StrEnum):
    """Addresses no policy allows by accident: observed traffic with them is left out of the
    policies (:class:`LeftOut`) unless their class is allowed on purpose."""

    METADATA = "metadata"
    LINK_LOCAL = "link-local"
    UNSPECIFIED = "unspecified"
    BROADCAST = "broadcast"
    MULTICAST = "multicast"
    LOOPBACK = "loopback"  # never allowed: it never leaves the host


# The networks of each class, looked up in this order (an address is of the first that holds it).
SPECIAL_NETWORKS: dict[SpecialAddress, tuple[str, ...]] = {
    SpecialAddress.METADATA: (
        "169.254.169.254/32",  # AWS, GCP (metadata.google.internal), Azure, Oracle, OpenStack...
        "169.254.170.23/32",  # EKS Pod Identity Agent
        "169.254.0.23/32",  # Tencent Cloud
        "169.254.42.42/32",  # Scaleway
        "100.100.100.200/32",  # Alibaba Cloud
        "168.63.129.16/32",  # Azure WireServer
        "192.0.0.192/32",  # Oracle Cloud (classic)
        "fd00:ec2::254/128",  # AWS, over IPv6
        "fd00:ec2::23/128",  # EKS Pod Identity Agent, over IPv6
    ),
    SpecialAddress.LOOPBACK: ("127.0.0.0/8", "::1/128"),
    SpecialAddress.UNSPECIFIED: ("0.0.0.0/32", "::/128"),
    SpecialAddress.BROADCAST: ("255.255.255.255/32",),
    SpecialAddress.MULTICAST: ("224.0.0.0/4", "ff00::/8"),
    SpecialAddress.LINK_LOCAL: ("169.254.0.0/16", "fe80::/10"),
}
SPECIAL_REASONS: dict[SpecialAddress, str] = {
    SpecialAddress.METADATA: "a cloud metadata endpoint (it hands out the cloud credentials of "
    "the node or the pod)",
    SpecialAddress.LINK_LOCAL: "a link-local address (the node's own services and agents, not a "
    "peer on the network)",
    SpecialAddress.UNSPECIFIED: "the unspecified address (never a real peer)",
    SpecialAddress.BROADCAST: "the broadcast address (every host on the network)",
    SpecialAddress.MULTICAST: "a multicast group (every host that joins it)",
    SpecialAddress.LOOPBACK: "a loopback address (it never leaves the host, and no NetworkPolicy "
    "applies to it)",
}
# The classes ``analyse --allow-special`` can keep.
ALLOWABLE_SPECIAL = tuple(kind for kind in SpecialAddress if kind is not SpecialAddress.LOOPBACK)

_SPECIAL_NETWORKS = {
    kind: tuple(ipaddress.ip_network(text) for text in texts)
    for kind, texts in SPECIAL_NETWORKS.items()
}
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


@functools.lru_cache(maxsize=4096)
def special_address(address: str) -> SpecialAddress | None:
    """The class of special address ``address`` belongs to, None for an ordinary one. An IPv4
    address inside an IPv6 one (``::ffff:169.254.169.254``, NAT64's ``64:ff9b::/96``) is of the
    class of that IPv4 address: traffic to it reaches that address."""
    parsed: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(address)
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            parsed = parsed.ipv4_mapped
        elif parsed in _NAT64:
            parsed = ipaddress.IPv4Address(int(parsed) & 0xFFFFFFFF)
    return next(
        (
            kind
            for kind, networks in _SPECIAL_NETWORKS.items()
            if any(parsed in network for network in networks)
        ),
        None,
    )


def special_networks_left_out(
    allowed: Collection[SpecialAddress], internal: Iterable[str] = ()
) -> dict[int, tuple[str, ...]]:
    """Per IP version, what a rule from or to anywhere excepts, collapsed: the networks of the
    special classes not ``allowed`` (loopback aside: it never reaches a NetworkPolicy) and the
    cluster's ``internal`` networks (its pods' and Services' ranges)."""
    networks = [
        network
        for kind, found in _SPECIAL_NETWORKS.items()
        if kind not in allowed and kind is not SpecialAddress.LOOPBACK
        for network in found
    ] + [ipaddress.ip_network(cidr, strict=False) for cidr in internal]
    return {
        version: tuple(
            str(n)
            for n in ipaddress.collapse_addresses(  # type: ignore[type-var]
                n for n in networks if n.version == version
            )
        )
        for version in (4, 6)
    }


def single_address(address: str) -> str:
    """An address as the ipBlock holding it alone: ``10.0.0.1/32``, ``fd00::1/128``."""
    parsed = ipaddress.ip_address(address)
    return f"{parsed.compressed}/{parsed.max_prefixlen}"


# The ports cluster DNS answers on when the snapshot does not say otherwise.
DNS_PORTS: tuple[PortSpec, ...] = (PortSpec(Protocol.TCP, 53), PortSpec(Protocol.UDP, 53))
DEFAULT_DNS_PEER = PodPeer(
    pod_selector=LabelSelector(match_labels=(("k8s-app", "kube-dns"),)),
    namespace="kube-system",
    description="cluster DNS (k8s-app=kube-dns)",
)


NODE_LOCAL_DNS_DESCRIPTION = "node-local DNS cache"


def node_local_dns_peer(address: str) -> IpPeer:
    """The ipBlock of a NodeLocal DNSCache address (a link-local address on every node)."""
    return IpPeer(single_address(address), description=NODE_LOCAL_DNS_DESCRIPTION)


@dataclass(frozen=True, slots=True)
class ClusterDns:
    """Where pods send DNS queries: the peers every policy's DNS egress allows, the graph node
    ids of the DNS workloads (their DNS flows are not repeated as ordinary egress), the target
    ports they answer on, and the node-local DNS cache addresses seen (``node_local_dns_peer``;
    allowed on 53/UDP and 53/TCP, also not repeated as ordinary egress)."""

    peers: tuple[PodPeer, ...] = (DEFAULT_DNS_PEER,)
    workloads: frozenset[str] = frozenset()
    ports: tuple[PortSpec, ...] = DNS_PORTS
    node_local: tuple[IpPeer, ...] = ()


@dataclass(frozen=True, order=True, slots=True)
class Exposure:
    """A target port that the snapshot shows reachable from outside the cluster, and what makes
    it so (``by``): a LoadBalancer or NodePort Service, a Service with externalIPs, an Ingress or
    an HTTPRoute sending to a Service, or a containerPort published on its node with
    ``hostPort``. Its clients are whoever reaches the load balancer, proxy or node, not only the
    addresses a capture happened to see."""

    port: PortSpec
    by: str  # "Service default/web (LoadBalancer)", "Ingress shop/web", "hostPort 8443"
    families: tuple[int, ...] = (4,)  # the IP versions it is reached over
