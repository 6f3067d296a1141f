"""Synthetic bundles for the benchmarks: a cluster laid out by the lab's pure core (``lab.layouts``
places the pods and gives Services their ClusterIPs, ``lab.bundling`` writes ``snapshot.json``,
``pod-ips.jsonl`` and ``bundle.json`` as ``collect`` would) and capture files written fast, one
record at a time, in Linux cooked v2 (what the sidecar's ``tcpdump -i any`` writes).

Shared by ``analyse_throughput.py`` and ``analyse_scale.py``; imports only the product, never the
tests.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from lab.bundling import pod_ip_event, write_bundle
from lab.layouts import LabPod, Layout, build_layout
from lab.manifests import read_manifests
from lab.plans import TrafficPlan

LINKTYPE_LINUX_SLL2 = 276
SNAPLEN = 262144
T0 = 1_767_261_600.0  # 2026-01-01T10:00:00Z
SYN, ACK, PSH, FIN = 0x02, 0x10, 0x08, 0x01

_RECORD = struct.Struct("<IIII")
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6 = struct.Struct("!IHBB16s16s")
_TCP = struct.Struct("!HHIIBBHHH")
_UDP = struct.Struct("!HHHH")


def _sll2(ethertype: int) -> bytes:
    return struct.pack("!HHIHBB8s", ethertype, 0, 2, 1, 0, 6, b"\x02\x42\xac\x11\x00\x02\x00\x00")


_SLL2_IPV4 = _sll2(0x0800)
_SLL2_IPV6 = _sll2(0x86DD)


def _packed(address: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6 if ":" in address else socket.AF_INET, address)


def _ip(src: bytes, dst: bytes, protocol: int, segment: bytes, length: int) -> bytes:
    """A cooked v2 frame with an IPv4 or IPv6 packet (by the address length) around ``segment``;
    ``length``: the transport bytes sent (more than captured when the payload is left out)."""
    if len(src) == 4:
        header = _IPV4.pack(0x45, 0, 20 + length, 1, 0x4000, 64, protocol, 0, src, dst)
        return _SLL2_IPV4 + header + segment
    return _SLL2_IPV6 + _IPV6.pack(6 << 28, length, protocol, 64, src, dst) + segment


def tcp_frame(
    src: bytes, sport: int, dst: bytes, dport: int, flags: int, payload: int = 0
) -> bytes:
    """A TCP segment with ``payload`` bytes sent (headers captured only: the snap length of a
    capture that keeps headers)."""
    header = _TCP.pack(sport, dport, 1, 1, 5 << 4, flags, 65535, 0, 0)
    return _ip(src, dst, 6, header, 20 + payload)


def udp_frame(src: bytes, sport: int, dst: bytes, dport: int, payload: bytes) -> bytes:
    return _ip(
        src, dst, 17, _UDP.pack(sport, dport, 8 + len(payload), 0) + payload, 8 + len(payload)
    )


def dns_message(ident: int, name: str, address: str | None) -> bytes:
    """A DNS query for ``name`` (A), or with ``address`` its response with one A record."""
    question = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0"
    question += struct.pack("!HH", 1, 1)
    if address is None:
        return struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + question
    answer = struct.pack("!HHHIH", 0xC00C, 1, 1, 30, 4) + _packed(address)
    return struct.pack("!HHHHHH", ident, 0x8180, 1, 1, 0, 0) + question + answer


def tcp_connection(
    client: str, client_port: int, server: str, server_port: int, *, full: bool = True
) -> list[tuple[bool, bytes]]:
    """A short TCP connection's packets, each with whether the client sent it: the handshake, a
    request and its answer, both FINs (9 packets); ``full=False`` keeps what a handshake-mode
    capture keeps (SYN, SYN+ACK, the FINs: 4)."""
    c, s = _packed(client), _packed(server)
    out: list[tuple[bool, bytes]] = [
        (True, tcp_frame(c, client_port, s, server_port, SYN)),
        (False, tcp_frame(s, server_port, c, client_port, SYN | ACK)),
    ]
    if full:
        out += [
            (True, tcp_frame(c, client_port, s, server_port, ACK)),
            (True, tcp_frame(c, client_port, s, server_port, PSH | ACK, 300)),
            (False, tcp_frame(s, server_port, c, client_port, ACK)),
            (False, tcp_frame(s, server_port, c, client_port, PSH | ACK, 1200)),
        ]
    out += [
        (True, tcp_frame(c, client_port, s, server_port, FIN | ACK)),
        (False, tcp_frame(s, server_port, c, client_port, FIN | ACK)),
    ]
    if full:
        out.append((True, tcp_frame(c, client_port, s, server_port, ACK)))
    return out


def dns_lookup(client: str, client_port: int, server: str, name: str, answer: str) -> list[bytes]:
    """A DNS query over UDP and its answer."""
    c, s = _packed(client), _packed(server)
    ident = client_port & 0xFFFF
    return [
        udp_frame(c, client_port, s, 53, dns_message(ident, name, None)),
        udp_frame(s, 53, c, client_port, dns_message(ident, name, answer)),
    ]


class PcapWriter:
    """A pcap file (microsecond times, Linux cooked v2) written through a buffer of about
    ``buffer`` bytes (small when many files are open at once)."""

    def __init__(self, path: Path, *, buffer: int = 1 << 22) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._stream = path.open("wb")
        self._stream.write(
            struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, SNAPLEN, LINKTYPE_LINUX_SLL2)
        )
        self._buffer = bytearray()
        self._limit = buffer
        self.packets = 0

    def write(self, at: float, frame: bytes) -> None:
        micros = round(at * 1_000_000)
        self._buffer += _RECORD.pack(
            micros // 1_000_000, micros % 1_000_000, len(frame), len(frame)
        )
        self._buffer += frame
        self.packets += 1
        if len(self._buffer) > self._limit:
            self._flush()

    def _flush(self) -> None:
        self._stream.write(self._buffer)
        self._buffer.clear()

    def close(self) -> None:
        self._flush()
        self._stream.close()

    def __enter__(self) -> PcapWriter:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()


@dataclass(frozen=True, slots=True)
class Workload:
    """A Deployment (``replicas`` pods labelled ``app: NAME``) listening on ``port``, with a
    ClusterIP Service of its name on port 80 when ``service``."""

    namespace: str
    name: str
    replicas: int
    port: int = 8080
    service: bool = True

    @property
    def ref(self) -> str:
        return f"{self.namespace}/Deployment/{self.name}"


def manifests(workloads: Iterable[Workload]) -> str:
    """The workloads as manifests (YAML documents)."""
    documents = []
    for w in workloads:
        documents.append(
            f"""apiVersion: apps/v1
kind: Deployment
metadata: {{name: {w.name}, namespace: {w.namespace}}}
spec:
  replicas: {w.replicas}
  selector: {{matchLabels: {{app: {w.name}}}}}
  template:
    metadata: {{labels: {{app: {w.name}}}}}
    spec:
      containers:
        - name: main
          image: example/app:1
          ports: [{{name: http, containerPort: {w.port}, protocol: TCP}}]
"""
        )
        if w.service:
            documents.append(
                f"""apiVersion: v1
kind: Service
metadata: {{name: {w.name}, namespace: {w.namespace}}}
spec:
  selector: {{app: {w.name}}}
  ports: [{{name: http, port: 80, targetPort: http, protocol: TCP}}]
"""
            )
    return "---\n".join(documents)


def layout(workloads: Sequence[Workload], *, now: float = T0) -> Layout:
    """The cluster: the workloads' pods placed, their Services given ClusterIPs, and the lab's
    cluster DNS (kube-system/coredns behind 10.96.0.10)."""
    cluster = read_manifests([("synthetic", manifests(workloads))])
    return build_layout(cluster, TrafficPlan(calls=()), now=now)


def write_synthetic_bundle(
    root: Path,
    cluster: Layout,
    *,
    window: tuple[float, float],
    capture_mode: str,
    started: Sequence[LabPod] = (),
    events: Sequence[dict[str, object]] = (),
) -> None:
    """Everything but the captures (already under ``root/captures/NS/POD/``): the snapshot of the
    pods in ``cluster`` now, ``pod-ips.jsonl`` (``ADDED`` for every pod in ``started`` at its
    creation, then ``events``) and ``bundle.json``."""
    added = [pod_ip_event(pod, "ADDED", pod.created) for pod in started]
    write_bundle(
        root,
        layout=cluster,
        window=window,
        capture_mode=capture_mode,
        pod_events=[*added, *events],
        truth=[],
        report={},
    )


def capture_path(root: Path, pod: LabPod, ring: int = 0) -> Path:
    """Where the bundle keeps a pod's capture (ring file ``ring``)."""
    return root / "captures" / pod.namespace / pod.name / f"capture.pcap{ring}"
