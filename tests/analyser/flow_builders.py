"""Hand-made flows on the test cluster (``tests/data/snapshots/cluster.json``): the addresses
its pods, Services and nodes have, and a flow factory, for graph and policy tests."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from functools import cache
from pathlib import Path

from analyser.flows import Endpoint, Evidence, Flow, Protocol
from analyser.identities import Resolver
from analyser.snapshot import Snapshot, load_pod_ip_history, load_snapshot
from kernel.times import parse_timestamp

DATA = Path(__file__).parent.parent / "data" / "snapshots"

# Pods (see tests/data/snapshots/cluster.json)
PRODUCTPAGE, REVIEWS_V1, REVIEWS_V3, RATINGS = (
    "10.244.0.10",
    "10.244.0.11",
    "10.244.1.11",
    "10.244.1.12",
)
WEB_A, WEB_B, WEB_A6 = "10.244.0.40", "10.244.1.40", "fd00:10:244::40"
API_BLUE, API_GREEN, DB, COREDNS_A, DEBUG = (
    "10.244.0.60",
    "10.244.1.60",
    "10.244.1.50",
    "10.244.0.2",
    "10.244.0.99",
)
REUSED = "10.244.1.20"  # ratings' old pod until 09:20, details from 09:30 (pod-ips.jsonl)
# Services
PRODUCTPAGE_SVC, REVIEWS_SVC, RATINGS_SVC = "10.96.10.1", "10.96.10.2", "10.96.10.3"
WEB_SVC, WEB_SVC6, API_SVC, KUBE_DNS = "10.96.20.1", "fd00:10:96::20", "10.96.20.2", "10.96.0.10"
# Nodes
NODE_A, NODE_B = "192.168.49.2", "192.168.49.3"


def at(clock: str) -> float:
    return parse_timestamp(f"2026-11-26T{clock}Z")


def _endpoint(text: str) -> Endpoint:
    address, _, port = text.rpartition(":")
    return Endpoint(address.strip("[]"), int(port))


def flow(
    client: str,
    server: str,
    *,
    protocol: Protocol = Protocol.TCP,
    clock: str = "09:40:00",
    packets: int = 10,
    size: int = 1000,
    capture: str = "captures/x/pod/capture.pcap",
    evidence: Evidence = Evidence.HANDSHAKE,
) -> Flow:
    """A flow ``"IP:port" → "IP:port"`` (IPv6 as ``"[IP]:port"``) first seen at ``clock``."""
    start = at(clock)
    return Flow(
        protocol=protocol,
        client=_endpoint(client),
        server=_endpoint(server),
        first_seen=start,
        last_seen=start + 2.0,
        packets=packets,
        bytes=size,
        captures=frozenset({capture}),
        evidence=evidence,
    )


@cache
def cluster() -> Snapshot:
    return load_snapshot(DATA / "cluster.json")


def resolver() -> Resolver:
    return Resolver(cluster(), ip_history=load_pod_ip_history(DATA / "pod-ips.jsonl"))


class FakeDns:
    """DNS names: server address → names (all of them asked for), whatever the time, client or
    capture; with ``lookups``, client address → the names it looked up."""

    def __init__(
        self,
        names: Mapping[str, Iterable[str]],
        lookups: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        self._names = {ip: tuple(sorted(n)) for ip, n in names.items()}
        self._lookups = {ip: tuple(sorted(n)) for ip, n in (lookups or {}).items()}

    def names_for_flow(
        self, flow: Flow, *, asked_by: Callable[[str], bool] | None = None, asked: bool = False
    ) -> tuple[str, ...]:
        return self._names.get(flow.server.ip, ())

    def lookups_for_flow(
        self, flow: Flow, *, asked_by: Callable[[str], bool] | None = None
    ) -> tuple[str, ...]:
        return self._lookups.get(flow.client.ip, ())
