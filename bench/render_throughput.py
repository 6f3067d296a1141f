"""How fast policies are rendered (templates + parse-back), and what libyaml's loader saves.

Builds N hand-made policies (10 pod peers in other namespaces and 5 addresses with DNS names per
policy, ingress and egress) and prints, in the same run, policies per second of
``render_policy_files`` with the C safe loader (what ``rendering`` uses when PyYAML has libyaml)
and with PyYAML's pure-Python safe loader (the baseline). Prints figures, asserts nothing.

    python bench/render_throughput.py [--policies 1000]
"""

from __future__ import annotations

import argparse
import time

import yaml

from analyser import documents, rendering
from analyser.flows import Protocol
from analyser.peers import IpPeer, PodPeer, PortSpec
from analyser.policies import Policy, Rule
from analyser.selectors import LabelSelector


def policies(count: int) -> list[Policy]:
    made = []
    for index in range(count):
        pods = tuple(
            Rule(
                PodPeer(LabelSelector((("app", f"peer{j}"),)), f"ns{j % 5}"),
                (PortSpec(Protocol.TCP, 8000 + j),),
            )
            for j in range(10)
        )
        addresses = tuple(
            Rule(
                IpPeer(f"203.0.{j}.{index % 250}/32", (f"h{j}.example.com",)),
                (PortSpec(Protocol.TCP, 443),),
            )
            for j in range(5)
        )
        made.append(
            Policy(
                f"ns{index % 20}",
                f"w{index}",
                f"ns{index % 20}/Deployment/w{index}",
                LabelSelector((("app", f"w{index}"),)),
                ingress=pods,
                egress=pods + addresses,
            )
        )
    return made


def timed(items: list[Policy]) -> tuple[float, int]:
    start = time.perf_counter()
    files = rendering.render_policy_files(items, provenance=rendering.Provenance("a", "b"))
    return time.perf_counter() - start, sum(len(text) for text in files.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policies", type=int, default=1000)
    args = parser.parse_args()
    items = policies(args.policies)
    used = documents.RENDERED_TEXT_LOADER
    seconds, size = timed(items)
    print(f"{len(items)} policies, {size / 1e6:.1f} MB of YAML")
    print(f"  {used.__name__:<14} {seconds:7.2f}s  {len(items) / seconds:8.0f} policies/s")
    documents.RENDERED_TEXT_LOADER = yaml.SafeLoader
    baseline, _ = timed(items)
    print(f"  {'SafeLoader':<14} {baseline:7.2f}s  {len(items) / baseline:8.0f} policies/s")
    print(f"  speed-up: {baseline / seconds:.1f}x")


if __name__ == "__main__":
    main()
