"""How fast flows become a workload graph and policies, and whether that scales linearly.

Uses the test cluster snapshot (``tests/data/snapshots/cluster.json`` with its pod IP history)
and generates N flows between its pods, Services (half without a server-side capture, half
joined to one), nodes and outside addresses. Prints flows per second for ``build_graph`` and
the time of ``synthesize``, for 1× and 4× N in the same run (the ratio shows linearity).

Then a wide graph: its pods each calling many of ``--addresses`` outside addresses, a node, an
edge and a rule each, and that rule's comment (``explain``): what the graph's own structure costs,
which the few edges above do not show, for 1× and 4× in the same run.

Then a synthetic large cluster (``--pods`` pods on a node per 20 pods, a Service per 10 pods):
the time to check and index its snapshot and build a ``Resolver``, and lookups per second.
Prints figures, asserts nothing.

    python bench/graph_throughput.py [--flows 50000] [--addresses 20000] [--pods 20000]
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import replace
from pathlib import Path

from analyser.explaining import explain
from analyser.flows import Endpoint, Evidence, Flow, Protocol
from analyser.graphs import build_graph
from analyser.identities import Resolver
from analyser.policies import synthesize
from analyser.reading import no_cyclic_gc
from analyser.snapshot import Snapshot, load_pod_ip_history, load_snapshot, parse_snapshot_documents
from kernel.times import parse_timestamp

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "snapshots"
START = parse_timestamp("2026-11-26T09:00:00Z")
PODS = [
    "10.244.0.10",
    "10.244.0.11",
    "10.244.1.11",
    "10.244.1.12",
    "10.244.0.40",
    "10.244.1.40",
    "10.244.0.60",
    "10.244.1.60",
    "10.244.1.50",
]
# (Service address:port, a backend address:target port the server side may show)
SERVICES = [
    ("10.96.20.1", 80, "10.244.1.40", 8080),
    ("10.96.20.2", 80, "10.244.1.60", 9090),
    ("10.96.10.2", 9080, "10.244.1.11", 9080),
    ("10.96.0.10", 53, "10.244.0.2", 53),
]
DIRECT = [
    ("10.244.1.50", 5432),
    ("93.184.216.34", 443),
    ("192.168.49.2", 9100),
    ("10.244.0.10", 9080),
]


def make_flows(count: int, seed: int = 1) -> list[Flow]:
    rng = random.Random(seed)
    flows: list[Flow] = []

    def add(client: Endpoint, server: Endpoint, protocol: Protocol, at: float) -> None:
        flows.append(
            Flow(
                protocol,
                client,
                server,
                at,
                at + 1.0,
                6,
                600,
                frozenset({"captures/x/y/capture.pcap"}),
                Evidence.HANDSHAKE,
            )
        )

    while len(flows) < count:
        at = START + len(flows) * 3600.0 / count
        client = Endpoint(rng.choice(PODS), 10000 + len(flows) % 50000)
        if rng.random() < 0.5:
            address, port, backend, target = rng.choice(SERVICES)
            protocol = Protocol.UDP if port == 53 else Protocol.TCP
            add(client, Endpoint(address, port), protocol, at)
            if rng.random() < 0.5:  # the server side was captured too
                add(client, Endpoint(backend, target), protocol, at + 0.001)
        else:
            address, port = rng.choice(DIRECT)
            add(client, Endpoint(address, port), Protocol.TCP, at)
    return flows[:count]


def run(count: int) -> float:
    snapshot = load_snapshot(DATA / "cluster.json")
    resolver = Resolver(snapshot, ip_history=load_pod_ip_history(DATA / "pod-ips.jsonl"))
    flows = make_flows(count)
    scope = resolver.scope_of(
        [("shop", "web-7c5d8f9b4-aaaaa"), ("bookinfo", "productpage-v1-6b746f74dc-x7vq2")]
    )
    began = time.perf_counter()
    graph = build_graph(flows, resolver, scope=scope)
    built = time.perf_counter()
    plan = synthesize(graph, cluster_dns=resolver.cluster_dns(), default_deny=True)
    done = time.perf_counter()
    rate = count / (built - began)
    print(
        f"{count:>9} flows: build_graph {built - began:6.2f}s = {rate:9.0f} flows/s; "
        f"synthesize {done - built:.3f}s ({len(plan.policies) + len(plan.default_denies)} "
        f"objects, {len(graph.edges)} edges)"
    )
    return rate


def make_wide_flows(addresses: int) -> list[Flow]:
    """A flow from one of the pods to each of ``addresses`` outside addresses, on one of seven
    ports, and a call through a Service for every fourth."""
    flows = []
    for n in range(addresses):
        at = START + n * 3600.0 / addresses
        pod = PODS[n % len(PODS)]
        outside = Endpoint(f"198.{18 + n // 65536}.{n // 256 % 256}.{n % 256}", 443 + n % 7)
        flows.append(
            Flow(
                Protocol.TCP,
                Endpoint(pod, 10000 + n % 50000),
                outside,
                at,
                at + 1.0,
                6,
                600,
                frozenset({"captures/x/y/capture.pcap"}),
                Evidence.HANDSHAKE,
            )
        )
        if n % 4 == 0:
            address, port, _, _ = SERVICES[n % len(SERVICES)]
            flows.append(replace(flows[-1], server=Endpoint(address, port)))
    return flows


def run_wide(addresses: int) -> float:
    """Seconds per outside address for ``build_graph``, ``synthesize`` and ``explain`` on a wide
    graph."""
    snapshot = load_snapshot(DATA / "cluster.json")
    resolver = Resolver(snapshot, ip_history=load_pod_ip_history(DATA / "pod-ips.jsonl"))
    flows = make_wide_flows(addresses)
    scope = resolver.scope_of([("shop", "web-7c5d8f9b4-aaaaa")])
    # As analyse runs (analysing.analyse): else the collector's full passes over the graph's
    # live objects, whenever they happen to come, are most of what is measured.
    with no_cyclic_gc():
        began = time.perf_counter()
        graph = build_graph(flows, resolver, scope=scope)
        built = time.perf_counter()
        # Every address its own rule: no widening to anywhere, so every edge becomes a rule.
        dns = resolver.cluster_dns()
        plan = synthesize(graph, cluster_dns=dns, max_outside_addresses=addresses)
        synthesized = time.perf_counter()
        # The rule comments: each policy's edges matched to its many rules.
        explain(plan, graph, cluster_dns=dns)
        done = time.perf_counter()
    print(
        f"{addresses:>9} outside addresses: build_graph {built - began:6.2f}s, synthesize "
        f"{synthesized - built:6.2f}s, explain {done - synthesized:6.2f}s "
        f"({len(graph.nodes)} nodes, {len(graph.edges)} edges)"
    )
    return (done - began) / addresses


def large_cluster(pods: int) -> dict[str, object]:
    nodes, services = max(1, pods // 20), max(1, pods // 10)
    items: list[dict[str, object]] = []
    for n in range(nodes):
        items.append(
            {
                "kind": "Node",
                "metadata": {"name": f"node-{n}"},
                "spec": {"podCIDR": f"10.{64 + n // 256}.{n % 256}.0/24"},
                "status": {
                    "addresses": [{"type": "InternalIP", "address": f"172.16.{n // 256}.{n % 256}"}]
                },
            }
        )
    for p in range(pods):
        n, app = p % nodes, f"app-{p % services}"
        items.append(
            {
                "kind": "Pod",
                "metadata": {
                    "name": f"{app}-5d9c7-{p}",
                    "namespace": f"ns-{p % 20}",
                    "uid": f"uid-{p}",
                    "labels": {"app": app, "pod-template-hash": "5d9c7"},
                    "ownerReferences": [
                        {"kind": "ReplicaSet", "name": f"{app}-5d9c7", "controller": True}
                    ],
                },
                "spec": {
                    "nodeName": f"node-{n}",
                    "containers": [
                        {"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}
                    ],
                },
                "status": {"podIP": f"10.{64 + n // 256}.{n % 256}.{p // nodes + 2}"},
            }
        )
    for v in range(services):
        items.append(
            {
                "kind": "Service",
                "metadata": {"name": f"app-{v}", "namespace": f"ns-{v % 20}"},
                "spec": {
                    "clusterIP": f"10.96.{v // 256}.{v % 256}",
                    "selector": {"app": f"app-{v}"},
                    "ports": [{"port": 80, "targetPort": "http"}],
                },
            }
        )
    return {"kind": "List", "items": items}


def run_cluster(pods: int) -> None:
    document = large_cluster(pods)
    began = time.perf_counter()
    snapshot = Snapshot(parse_snapshot_documents([document], source="bench"))
    loaded = time.perf_counter()
    resolver = Resolver(snapshot)
    ready = time.perf_counter()
    addresses = [p.ips[0] for p in snapshot.pods]
    for address in addresses:
        resolver.resolve(address, START)
    resolved = time.perf_counter()
    services = [(s.namespace, s.name) for s in snapshot.services]
    for service in services:
        resolver.service_backends(service, 80, Protocol.TCP, START)
    backed = time.perf_counter()
    print(
        f"{pods} pods, {len(snapshot.nodes)} nodes, {len(services)} Services: check+index "
        f"{loaded - began:.2f}s, Resolver {ready - loaded:.2f}s, "
        f"resolve {len(addresses) / (resolved - ready):.0f}/s, "
        f"service_backends (first, uncached) {len(services) / (backed - resolved):.0f}/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", type=int, default=50_000)
    parser.add_argument("--addresses", type=int, default=20_000)
    parser.add_argument("--pods", type=int, default=20_000)
    args = parser.parse_args()
    one = run(args.flows)
    four = run(4 * args.flows)
    print(f"flows/s at 4× the flows relative to 1×: {four / one:.2f} (1.00 = linear)")
    wide, wider = run_wide(args.addresses), run_wide(4 * args.addresses)
    print(
        f"time per address at 4× the addresses relative to 1×: {wider / wide:.2f} (1.00 = linear)"
    )
    run_cluster(args.pods)


if __name__ == "__main__":
    main()
