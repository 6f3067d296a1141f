"""How fast verify/diff evaluate their universe of pairs (prints figures, asserts nothing).

A synthetic cluster: N workloads in 5 namespaces, one policy each (ingress from one neighbour on a
port, egress to another by named port, one ipBlock). The universe is every ordered pair of
workloads plus every workload with every address block, both ways. Baseline, in the same run:
the per-port check a naive evaluator would make (``allows`` for every port of every protocol), on
a sample of pairs, extrapolated.

    .venv/bin/python bench/verify_universe.py
"""

from __future__ import annotations

import time
from typing import Any

from analyser.evaluation import ContainerPort, Pod, PolicySet, pod
from analyser.flows import Protocol
from analyser.verifying import Universe, unobserved_allowances

SAMPLE_PAIRS = 1


def cluster(size: int) -> tuple[list[Pod], PolicySet]:
    pods = [
        pod(
            namespace=f"ns{i % 5}",
            labels={"app": f"a{i}"},
            ports=[ContainerPort("http", Protocol.TCP, 8080)],
            name=f"ns{i % 5}/Deployment/a{i}",
        )
        for i in range(size)
    ]
    documents: list[dict[str, Any]] = [
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": f"a{i}", "namespace": f"ns{i % 5}"},
            "spec": {
                "podSelector": {"matchLabels": {"app": f"a{i}"}},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [
                    {
                        "from": [
                            {
                                "podSelector": {"matchLabels": {"app": f"a{(i + 1) % size}"}},
                                "namespaceSelector": {},
                            }
                        ],
                        "ports": [{"port": 8080}],
                    }
                ],
                "egress": [
                    {
                        "to": [
                            {
                                "podSelector": {"matchLabels": {"app": f"a{(i - 1) % size}"}},
                                "namespaceSelector": {},
                            }
                        ],
                        "ports": [{"port": "http"}],
                    },
                    {"to": [{"ipBlock": {"cidr": f"198.51.100.{i % 250}/32"}}]},
                ],
            },
        }
        for i in range(size)
    ]
    return pods, PolicySet.from_documents(documents)


def main() -> None:
    print(f"{'workloads':>9} {'pairs':>7} {'seconds':>8} {'pairs/s':>9} {'vs per-port':>12}")
    for size in (50, 100, 200):
        pods, policies = cluster(size)
        universe = Universe.of(pods, policies.ip_blocks())
        pairs = universe.pairs()
        start = time.perf_counter()
        unobserved_allowances(policies, [], universe)
        elapsed = time.perf_counter() - start
        start = time.perf_counter()
        for _, client, _, server in pairs[:SAMPLE_PAIRS]:
            for protocol in Protocol:
                for port in range(1, 65536):
                    policies.allows(client, server, protocol, port)
        per_pair_naive = (time.perf_counter() - start) / SAMPLE_PAIRS
        ratio = per_pair_naive / (elapsed / len(pairs))
        rate = len(pairs) / elapsed
        print(f"{size:>9} {len(pairs):>7} {elapsed:>8.2f} {rate:>9.0f} {ratio:>11.0f}x")


if __name__ == "__main__":
    main()
