"""What changes between two policy folders, per workload pair and port: the review before
`kubectl apply`.

OLD and NEW are folders (or files) of NetworkPolicies, CiliumNetworkPolicies or both: YAML with
one or more documents, Lists, JSON, `kustomize build` output; ClusterNetworkPolicies are evaluated
in their tiers. Other objects are skipped with a note. Comparing the two formats `analyse --format
all` writes, give --snapshot: without it node addresses are plain addresses, which the Cilium set
allows as entities (host, remote-node).

Every pair of workloads is compared (a workload with itself too), and every workload with the
ipBlocks either set names, the DNS names either set allows by name (`fqdn:NAME`, Cilium's
toFQDNs: allowed by a rule by address only when it allows anywhere) and with "anywhere"
(0.0.0.0/0, ::/0), in both directions, on every port of every protocol. Lines read:

  + CLIENT → SERVER: PORTS     newly allowed by NEW
  - CLIENT → SERVER: PORTS     allowed by OLD, denied by NEW

The workloads come from --snapshot (a bundle, or `kubectl get ... -A -o json` output; repeated,
the workloads of every one, the last given winning for a workload in several): their labels,
their namespaces' labels and their containerPorts (named ports). Without it, one example
pod stands for every group of pods the policies name (named ports then match nothing).
Exit status 0 (whether or not something changed), 1 on unusable input. See docs/verify.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cli.main import ExitStatus, echo

SUMMARY = "what changes between two policy folders, per workload pair"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("old", type=Path, metavar="OLD", help="the policies in place now")
    parser.add_argument("new", type=Path, metavar="NEW", help="the policies you mean to apply")
    parser.add_argument(
        "--snapshot",
        type=Path,
        action="append",
        default=[],
        metavar="SNAPSHOT_OR_BUNDLE",
        help="a bundle directory, or a snapshot file/folder (kubectl get ... -A -o json); "
        "repeatable (the bundles analyse took together): the workloads of all of them",
    )
    parser.add_argument("--json", action="store_true", help="print the changes as JSON")


def run(args: argparse.Namespace) -> int:
    from analyser.reading import no_cyclic_gc

    # A report on every pair keeps millions of small objects alive and makes no reference
    # cycles: the collector's passes over them were a third of the time with 20,000 addresses.
    with no_cyclic_gc():
        return _diff(args)


def _diff(args: argparse.Namespace) -> int:
    from analyser.bundles import find_snapshot
    from analyser.evaluation import Pod
    from analyser.identities import Resolver
    from analyser.policysets import load_policies
    from analyser.replaying import cluster_facts
    from analyser.snapshot import load_snapshot
    from analyser.verifying import Universe, change_json, diff

    old = load_policies(args.old)
    new = load_policies(args.new)
    blocks = [*old.policies.ip_blocks(), *new.policies.ip_blocks()]
    notes = [*old.notes, *new.notes]
    sources: list[Path] = [
        (find_snapshot(given) or given) if given.is_dir() else given for given in args.snapshot
    ]
    if sources:
        workloads: dict[str, Pod] = {}
        for source in sources:
            snapshot = load_snapshot(source)
            workloads.update(cluster_facts(snapshot, Resolver(snapshot)).workloads)
        pods = list(workloads.values())
    else:
        described = {p.name: p for p in old.policies.described_pods()}
        described.update({p.name: p for p in new.policies.described_pods()})
        pods = list(described.values())
        notes.append(
            "no --snapshot: example pods stand for the groups the policies select; "
            "named ports match nothing"
        )
    fqdns = sorted({*old.policies.fqdn_selectors(), *new.policies.fqdn_selectors()})
    universe = Universe.of(pods, blocks, fqdns=fqdns)
    changes = diff(old.policies, new.policies, universe)
    if args.json:
        document = {
            "old": str(args.old),
            "new": str(args.new),
            "snapshot": ", ".join(map(str, sources)) if sources else None,
            "workloads": [str(p) for p in universe.pods],
            "address_blocks": [b.name for b in universe.blocks],
            "changes": [change_json(c) for c in changes],
            "notes": notes,
        }
        print(json.dumps(document, indent=2))
        return ExitStatus.OK
    echo(
        f"{args.old} → {args.new}: {len(universe.pods)} workloads and "
        f"{len(universe.blocks)} address blocks compared on every port"
    )
    for change in changes:
        pair = f"{change.client} → {change.server}"
        if change.newly_allowed:
            echo(f"+ {pair}: {change.newly_allowed}")
        if change.newly_denied:
            echo(f"- {pair}: {change.newly_denied}")
    gained = sum(1 for c in changes if c.newly_allowed)
    lost = sum(1 for c in changes if c.newly_denied)
    echo(
        f"pairs gaining ports: {gained}, pairs losing ports: {lost}"
        if changes
        else "no change: both sets allow exactly the same connections"
    )
    for note in notes:
        echo(f"note: {note}")
    return ExitStatus.OK
