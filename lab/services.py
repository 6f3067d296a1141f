"""kube-proxy in miniature: ClusterIP:port → podIP:targetPort DNAT in the node namespace.

``nat_rules`` renders the whole ``nat`` and ``filter`` tables for ``iptables-restore`` (pure, one
family at a time); ``apply`` loads them atomically into the node namespace, replacing the
previous set, which is how endpoint changes (a restarted pod) take effect. Like kube-proxy:
random load balancing across endpoints, masquerade for a pod reaching itself through its Service
(hairpin) and for outside traffic to a LoadBalancer with ``externalTrafficPolicy: Cluster`` (the pod
sees the node), and REJECT for a Service port without endpoints (the client sees "connection
refused").
"""

from __future__ import annotations

from lab import netns
from lab.layouts import Layout, endpoints

CHAIN_PREFIX = "NPS-"
MASQUERADE_MARK = "0x4000"  # as kube-proxy's KUBE-MARK-MASQ


def _is_v6(address: str) -> bool:
    return ":" in address


def nat_rules(layout: Layout, *, ipv6: bool) -> str:
    """iptables-restore input for one address family."""
    chains: list[str] = []
    nat: list[str] = []
    reject: list[str] = []
    hairpins: set[str] = set()
    services = f"{CHAIN_PREFIX}SERVICES"
    for service in layout.services:
        addresses = [
            (ip, ip in service.load_balancer_ips)
            for ip in (*service.cluster_ips, *service.load_balancer_ips)
            if _is_v6(ip) == ipv6
        ]
        backends = endpoints(service, layout.pods)
        for port in service.spec.ports:
            if port.protocol == "SCTP" or not addresses:
                continue
            proto = port.protocol.lower()
            targets = [
                (ip, e.target_port)
                for e in backends
                if e.service_port == port.port and e.protocol == port.protocol
                for ip in e.pod.ips
                if _is_v6(ip) == ipv6
            ]
            chain = f"{CHAIN_PREFIX}SVC-{len(chains) + 1}"
            for address, balancer in addresses:
                match = f"-d {netns.host_prefix(address)} -p {proto} -m {proto} --dport {port.port}"
                if not targets:
                    kind = "icmp6-port-unreachable" if ipv6 else "icmp-port-unreachable"
                    reject.append(
                        f"-A {CHAIN_PREFIX}NO-ENDPOINTS {match} -j REJECT --reject-with {kind}"
                    )
                    continue
                if balancer and service.external_policy != "Local":
                    # Cluster policy: traffic from outside reaches the pod from the node
                    nat.append(
                        f"-A {services} -i {netns.OUTSIDE_VETH} {match} -j MARK "
                        f"--set-xmark {MASQUERADE_MARK}/{MASQUERADE_MARK}"
                    )
                nat.append(f"-A {services} {match} -j {chain}")
            if not targets:
                continue
            chains.append(chain)
            for position, (ip, target_port) in enumerate(targets):
                destination = f"[{ip}]:{target_port}" if ipv6 else f"{ip}:{target_port}"
                remaining = len(targets) - position
                pick = (
                    f"-m statistic --mode random --probability {1 / remaining:.5f} "
                    if remaining > 1
                    else ""
                )
                nat.append(f"-A {chain} -p {proto} {pick}-j DNAT --to-destination {destination}")
                hairpins.add(ip)
    lines = [
        "*nat",
        ":PREROUTING ACCEPT [0:0]",
        ":INPUT ACCEPT [0:0]",
        ":OUTPUT ACCEPT [0:0]",
        ":POSTROUTING ACCEPT [0:0]",
        f":{services} - [0:0]",
    ]
    lines += [f":{chain} - [0:0]" for chain in chains]
    lines += [f"-A PREROUTING -j {services}", f"-A OUTPUT -j {services}"]
    lines += nat
    lines += [
        f"-A POSTROUTING -s {netns.host_prefix(ip)} -d {netns.host_prefix(ip)} -j MASQUERADE"
        for ip in sorted(hairpins)
    ]
    lines.append(f"-A POSTROUTING -m mark --mark {MASQUERADE_MARK}/{MASQUERADE_MARK} -j MASQUERADE")
    lines += [
        "COMMIT",
        "*filter",
        ":INPUT ACCEPT [0:0]",
        ":FORWARD ACCEPT [0:0]",
        ":OUTPUT ACCEPT [0:0]",
        f":{CHAIN_PREFIX}NO-ENDPOINTS - [0:0]",
        f"-A FORWARD -j {CHAIN_PREFIX}NO-ENDPOINTS",
        f"-A INPUT -j {CHAIN_PREFIX}NO-ENDPOINTS",
    ]
    lines += reject
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def apply(network: netns.Network, layout: Layout) -> None:
    """Load the rules for the current pods into the node namespace (both families if dual-stack)."""
    netns.run(
        netns.in_namespace(network.node, ["iptables-restore"]),
        input_text=nat_rules(layout, ipv6=False),
    )
    if layout.dual_stack:
        netns.run(
            netns.in_namespace(network.node, ["ip6tables-restore"]),
            input_text=nat_rules(layout, ipv6=True),
        )
