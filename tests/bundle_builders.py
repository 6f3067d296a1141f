"""A small but real bundle for the pipeline and CLI tests: pcaps written with dpkt, a snapshot
built as a dict, bundle.json written by ``analyser.bundles``.

The cluster: ``web/frontend`` calls Service ``shop/cart`` (ClusterIP 10.96.0.20:80, targetPort
named ``http`` = 8080); ``shop/cart`` calls ``api.example.com`` (203.0.113.7:443) after a DNS
lookup; both look names up through ``kube-system/kube-dns`` (10.96.0.10 → pod 10.244.0.2).
The frontend's capture sees ``ClusterIP:80``, the cart's sees ``podIP:8080``. The cart pod is
dual-stack and also reaches ``api.example.com`` over IPv6 (2001:db8::443, from an AAAA answer).
The frontend also calls 10.244.9.9:9000, a pod address no pod had: unresolved.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterable
from pathlib import Path

import dpkt

from kernel.bundles import Manifest, Window, entries_for_layout, write_manifest

T0 = 1_767_261_600.0  # 2026-01-01T10:00:00Z
CREATED = "2025-12-31T00:00:00Z"
NODE_IP = "192.168.49.2"
DNS_SERVICE_IP, DNS_POD_IP = "10.96.0.10", "10.244.0.2"
FRONTEND_IP, CART_IP, CART_SERVICE_IP = "10.244.1.5", "10.244.2.7", "10.96.0.20"
CART_IP6 = "fd00:10:244::7"  # the cart pod is dual-stack
API_IP, API_IP6, API_NAME = "203.0.113.7", "2001:db8::443", "api.example.com"
GHOST_IP = "10.244.9.9"  # in the pod network, but no pod had it: unresolved
FRONTEND_POD, CART_POD = "frontend-6c4d9-aaaaa", "cart-7f9b8-bbbbb"

SYN, ACK, PSH = 0x02, 0x10, 0x08

Frame = tuple[float, bytes]


# -- the snapshot -----------------------------------------------------------------------------


def _meta(name: str, namespace: str | None = None, **extra: object) -> dict[str, object]:
    meta: dict[str, object] = {"name": name, "uid": f"uid-{name}", "creationTimestamp": CREATED}
    if namespace is not None:
        meta["namespace"] = namespace
    meta.update(extra)
    return meta


def _workload(
    namespace: str,
    name: str,
    pod: str,
    ip: str,
    labels: dict[str, str],
    ports: list[dict[str, object]],
    *,
    ip6: str | None = None,
) -> list[dict[str, object]]:
    """A Deployment, its ReplicaSet and one running pod."""
    template_hash = pod.split("-")[-2]
    rs = f"{name}-{template_hash}"
    pod_labels = {**labels, "pod-template-hash": template_hash}
    containers = [{"name": "main", "image": "example/app:1", "ports": ports}]
    owner = {"apiVersion": "apps/v1", "controller": True}
    return [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": _meta(name, namespace, labels=labels),
            "spec": {
                "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels}, "spec": {"containers": containers}},
            },
        },
        {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": _meta(
                rs,
                namespace,
                labels=pod_labels,
                ownerReferences=[
                    {**owner, "kind": "Deployment", "name": name, "uid": f"uid-{name}"}
                ],
            ),
            "spec": {
                "selector": {"matchLabels": pod_labels},
                "template": {
                    "metadata": {"labels": pod_labels},
                    "spec": {"containers": containers},
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": _meta(
                pod,
                namespace,
                labels=pod_labels,
                ownerReferences=[{**owner, "kind": "ReplicaSet", "name": rs, "uid": f"uid-{rs}"}],
            ),
            "spec": {"nodeName": "node-1", "containers": containers},
            "status": {
                "phase": "Running",
                "hostIP": NODE_IP,
                "podIP": ip,
                "podIPs": [{"ip": ip}, *([{"ip": ip6}] if ip6 else [])],
                "startTime": CREATED,
            },
        },
    ]


def _service(
    namespace: str, name: str, ip: str, selector: dict[str, str], ports: list[dict[str, object]]
) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(name, namespace),
        "spec": {
            "type": "ClusterIP",
            "clusterIP": ip,
            "clusterIPs": [ip],
            "selector": selector,
            "ports": ports,
        },
    }


def snapshot() -> dict[str, object]:
    namespaces = [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": _meta(ns, labels={"kubernetes.io/metadata.name": ns}),
        }
        for ns in ("kube-system", "shop", "web")
    ]
    node = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": _meta("node-1"),
        "spec": {"podCIDR": "10.244.0.0/16", "podCIDRs": ["10.244.0.0/16"]},
        "status": {"addresses": [{"type": "InternalIP", "address": NODE_IP}]},
    }
    dns_ports = [
        {"name": "dns", "containerPort": 53, "protocol": "UDP"},
        {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
    ]
    items = [
        *namespaces,
        node,
        *_workload(
            "kube-system",
            "coredns",
            "coredns-5d78c-ccccc",
            DNS_POD_IP,
            {"k8s-app": "kube-dns"},
            dns_ports,
        ),
        _service(
            "kube-system",
            "kube-dns",
            DNS_SERVICE_IP,
            {"k8s-app": "kube-dns"},
            [
                {"name": "dns", "port": 53, "targetPort": 53, "protocol": "UDP"},
                {"name": "dns-tcp", "port": 53, "targetPort": 53, "protocol": "TCP"},
            ],
        ),
        *_workload(
            "web",
            "frontend",
            FRONTEND_POD,
            FRONTEND_IP,
            {"app": "frontend"},
            [{"name": "http", "containerPort": 3000, "protocol": "TCP"}],
        ),
        *_workload(
            "shop",
            "cart",
            CART_POD,
            CART_IP,
            {"app": "cart"},
            [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
            ip6=CART_IP6,
        ),
        _service(
            "shop",
            "cart",
            CART_SERVICE_IP,
            {"app": "cart"},
            [{"name": "web", "port": 80, "targetPort": "http", "protocol": "TCP"}],
        ),
    ]
    return {"apiVersion": "v1", "kind": "List", "items": items}


# -- packets ----------------------------------------------------------------------------------


def _ip(src: str, dst: str, segment: dpkt.Packet, protocol: int) -> bytes:
    """An Ethernet frame with an IPv4 or IPv6 packet (by the address form)."""
    if ":" in src:
        packet = dpkt.ip6.IP6(
            src=socket.inet_pton(socket.AF_INET6, src),
            dst=socket.inet_pton(socket.AF_INET6, dst),
            nxt=protocol,
            hlim=64,
            data=segment,
            plen=len(bytes(segment)),
        )
        ethertype = 0x86DD
    else:
        packet = dpkt.ip.IP(
            src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=protocol, ttl=64, data=segment
        )
        packet.len = 20 + len(bytes(segment))
        ethertype = 0x0800
    frame = dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, type=ethertype, data=packet)
    return bytes(frame)


def tcp(src: str, sport: int, dst: str, dport: int, flags: int, data: bytes = b"") -> bytes:
    return _ip(src, dst, dpkt.tcp.TCP(sport=sport, dport=dport, flags=flags, data=data), 6)


def udp(src: str, sport: int, dst: str, dport: int, data: bytes) -> bytes:
    return _ip(src, dst, dpkt.udp.UDP(sport=sport, dport=dport, data=data, ulen=8 + len(data)), 17)


def dns_exchange(client: str, server: str, name: str, answer: str, at: float) -> list[Frame]:
    """A query and its answer: an A record, or AAAA for an IPv6 answer."""
    kind = dpkt.dns.DNS_AAAA if ":" in answer else dpkt.dns.DNS_A
    query = dpkt.dns.DNS(id=7, qd=[dpkt.dns.DNS.Q(name=name, type=kind)])
    response = dpkt.dns.DNS(
        id=7,
        qr=dpkt.dns.DNS_R,
        qd=query.qd,
        an=[
            dpkt.dns.DNS.RR(
                name=name,
                type=kind,
                cls=dpkt.dns.DNS_IN,
                ttl=30,
                **(
                    {"ip6": socket.inet_pton(socket.AF_INET6, answer)}
                    if ":" in answer
                    else {"ip": socket.inet_aton(answer)}
                ),
            )
        ],
    )
    return [
        (at, udp(client, 33333, server, 53, bytes(query))),
        (at + 0.001, udp(server, 53, client, 33333, bytes(response))),
    ]


def handshake(client: str, cport: int, server: str, sport: int, at: float) -> list[Frame]:
    return [
        (at, tcp(client, cport, server, sport, SYN)),
        (at + 0.001, tcp(server, sport, client, cport, SYN | ACK)),
        (at + 0.002, tcp(client, cport, server, sport, ACK)),
        (at + 0.003, tcp(client, cport, server, sport, PSH | ACK, b"GET / HTTP/1.1\r\n\r\n")),
        (at + 0.004, tcp(server, sport, client, cport, PSH | ACK, b"HTTP/1.1 200 OK\r\n\r\n")),
    ]


def write_pcap(path: Path, frames: Iterable[Frame]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as stream:
        writer = dpkt.pcap.Writer(stream, linktype=dpkt.pcap.DLT_EN10MB)
        for at, frame in sorted(frames):
            writer.writepkt(frame, ts=at)
    return path


# -- the bundle -------------------------------------------------------------------------------


def make_bundle(root: Path, *, damaged: bool = False, start: float = T0) -> Path:
    """The bundle described above. ``damaged`` adds a truncated second ring file to the cart;
    ``start`` moves its window (and every packet) to start then."""
    frontend_dir = root / "captures" / "web" / FRONTEND_POD
    cart_dir = root / "captures" / "shop" / CART_POD
    write_pcap(
        frontend_dir / "capture.pcap0",
        [
            *dns_exchange(
                FRONTEND_IP,
                DNS_SERVICE_IP,
                "cart.shop.svc.cluster.local",
                CART_SERVICE_IP,
                start + 1,
            ),
            *handshake(FRONTEND_IP, 40000, CART_SERVICE_IP, 80, start + 2),
            *handshake(FRONTEND_IP, 40100, GHOST_IP, 9000, start + 8),
        ],
    )
    write_pcap(
        cart_dir / "capture.pcap0",
        [
            *handshake(FRONTEND_IP, 40000, CART_IP, 8080, start + 2.0005),
            *dns_exchange(CART_IP, DNS_SERVICE_IP, API_NAME, API_IP, start + 3),
            *handshake(CART_IP, 50000, API_IP, 443, start + 4),
            *dns_exchange(CART_IP, DNS_SERVICE_IP, API_NAME, API_IP6, start + 6),
            *handshake(CART_IP6, 50200, API_IP6, 443, start + 7),
        ],
    )
    if damaged:
        ring = write_pcap(
            cart_dir / "capture.pcap1", handshake(CART_IP, 50001, API_IP, 443, start + 5)
        )
        ring.write_bytes(ring.read_bytes()[:-7])
    for directory, namespace, pod, ip in (
        (frontend_dir, "web", FRONTEND_POD, FRONTEND_IP),
        (cart_dir, "shop", CART_POD, CART_IP),
    ):
        (directory / "meta.json").write_text(
            json.dumps(
                {
                    "pod": pod,
                    "namespace": namespace,
                    "uid": f"uid-{pod}",
                    "ips": [ip],
                    "node": "node-1",
                }
            )
        )
    (root / "snapshot.json").write_text(json.dumps(snapshot(), indent=1))
    write_manifest(
        root,
        Manifest(
            producer="lab",
            capture_mode="sidecar",
            window=Window(start, start + 60),
            captures=tuple(entries_for_layout(root)),
        ),
    )
    return root
