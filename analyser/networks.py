"""The cluster's addresses that are no pod's own: nodes' addresses, the addresses nodes have on the
pod network (where kubelet probes come from), and the ranges inside the cluster (where an address
nobody is known to hold is unresolved, not outside).

A special address (a metadata endpoint, link-local, ...: ``peers.special_address``) is never taken
for a node's, whatever the snapshot says: every policy naming the nodes would allow it.
Pure: no I/O.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections import defaultdict
from collections.abc import Iterable, Mapping

from analyser.addresses import address_key, address_value, parse_address
from analyser.peers import special_address
from analyser.snapshot import Snapshot

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# The smallest prefix accepted for a network inferred to cover the pods' or Services' addresses;
# anything wider would swallow the internet, so each address then gets a /16 (/64) of its own.
_MIN_INFERRED_PREFIX = {4: 8, 6: 32}
_FALLBACK_PREFIX = {4: 16, 6: 64}


def _ordinary(node_of_address: Mapping[str, str]) -> dict[str, str]:
    """Address → node, without the special addresses."""
    return {ip: node for ip, node in node_of_address.items() if special_address(ip) is None}


def _pod_network_gateways(snapshot: Snapshot) -> dict[str, str]:
    """Address → node, for the addresses a node has on the pod network: the first address of its
    podCIDRs (the bridge or gateway of flannel, k3s, the bridge plugin) and the addresses its
    annotations name (``objects.GATEWAY_ANNOTATIONS``). Kubelet probes and other host traffic to
    pods come from them. Consulted after pods: a pod that holds such an address is that pod."""
    gateways: dict[str, str] = {}
    for node in snapshot.nodes:
        for cidr in node.pod_cidrs:
            with contextlib.suppress(ValueError):
                network = ipaddress.ip_network(cidr, strict=False)
                if network.num_addresses > 2:
                    gateways.setdefault(str(network.network_address + 1), node.name)
        for address in node.gateway_addresses:
            gateways.setdefault(address, node.name)
    return gateways


class NodeAddresses:
    """The nodes' addresses (the snapshot's Nodes, and the pods' hostIPs), and their addresses on
    the pod network."""

    def __init__(self, snapshot: Snapshot) -> None:
        self._node_of_address = _ordinary(snapshot.node_by_address)
        self._addresses_of_node: dict[str, list[str]] = defaultdict(list)
        for ip, node in sorted(self._node_of_address.items(), key=lambda a: address_key(a[0])):
            self._addresses_of_node[node].append(ip)
        self._gateways = _ordinary(_pod_network_gateways(snapshot))

    def __contains__(self, ip: object) -> bool:
        return ip in self._node_of_address

    def node_at(self, ip: str) -> str | None:
        """The node whose address ``ip`` (normalized) is."""
        return self._node_of_address.get(ip)

    def gateway(self, ip: str) -> str | None:
        """The node whose address on the pod network ``ip`` (normalized) is."""
        return self._gateways.get(ip)

    def addresses_of(self, node: str) -> list[str]:
        """The node's addresses, IPv4 first, then in order."""
        return self._addresses_of_node.get(node, [])

    def address_of(self, node: str, version: int | None) -> str:
        """An address of ``node``, of IP ``version`` when it has one ("" for an unknown node)."""
        addresses = self.addresses_of(node)
        same = [ip for ip in addresses if parse_address(ip).version == version]
        return (same or addresses or [""])[0]


def _covering_networks(ips: Iterable[str]) -> set[IPNetwork]:
    """The smallest network holding all of ``ips``, per address family (or, when that would be
    implausibly wide, a /16 or /64 per address)."""
    by_family: dict[int, list[int]] = defaultdict(list)
    for text in ips:
        address = ipaddress.ip_address(text)
        by_family[address.version].append(int(address))
    networks: set[IPNetwork] = set()
    for version, values in by_family.items():
        bits = 32 if version == 4 else 128
        spread = max(v ^ values[0] for v in values).bit_length()
        prefix = bits - spread
        if prefix >= _MIN_INFERRED_PREFIX[version]:
            networks.add(ipaddress.ip_network((values[0] >> spread << spread, prefix)))
        else:
            prefix = _FALLBACK_PREFIX[version]
            networks |= {ipaddress.ip_network((v, prefix), strict=False) for v in values}
    return networks


class _Networks:
    """A set of networks that answers "is this address in one of them?" with one set lookup per
    prefix length in use (a thousand nodes' podCIDRs have one or two), not one test per network,
    on the address's value: a capture may name millions of distinct addresses."""

    def __init__(self, networks: Iterable[IPNetwork]) -> None:
        self.networks = frozenset(networks)
        # Per IP version: per host bits, the networks' values shifted right by as many.
        by_host_bits: dict[tuple[int, int], set[int]] = defaultdict(set)
        for network in self.networks:
            host_bits = network.max_prefixlen - network.prefixlen
            by_host_bits[(network.version, host_bits)].add(
                int(network.network_address) >> host_bits
            )
        self._prefixes: dict[int, list[tuple[int, frozenset[int]]]] = defaultdict(list)
        for (version, host_bits), prefixes in sorted(by_host_bits.items()):
            self._prefixes[version].append((host_bits, frozenset(prefixes)))

    def __contains__(self, ip: str) -> bool:
        version, value = address_value(ip)
        return any(value >> bits in prefixes for bits, prefixes in self._prefixes.get(version, ()))


class ClusterRanges:
    """The networks treated as inside the cluster: the nodes' podCIDRs (else networks inferred
    from the pods' addresses, and for the pod addresses outside every podCIDR) and the Services'
    addresses. An unknown address in them is unresolved, not outside."""

    def __init__(self, snapshot: Snapshot, pod_addresses: Iterable[str]) -> None:
        """``pod_addresses``: every address a pod held (``Claims.claimed``)."""
        ranges: set[IPNetwork] = set()
        for cidr in snapshot.pod_cidrs:
            with contextlib.suppress(ValueError):
                ranges.add(ipaddress.ip_network(cidr, strict=False))
        node_ranges = _Networks(ranges)
        ranges |= _covering_networks(ip for ip in pod_addresses if ip not in node_ranges)
        ranges |= _covering_networks(snapshot.services_by_cluster_ip)
        self.networks = tuple(sorted(ranges, key=lambda n: (n.version, str(n))))
        self._lookup = _Networks(self.networks)

    def __contains__(self, ip: str) -> bool:
        return ip in self._lookup
