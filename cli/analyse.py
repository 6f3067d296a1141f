"""Turn a bundle into least-privilege NetworkPolicies, a graph and a report.

BUNDLE is a directory written by `netpol-sniffer collect` or `netpol-sniffer lab` (bundle.json,
snapshot.json, pod-ips.jsonl, captures/NAMESPACE/POD/*.pcap), or a plain folder holding a
snapshot.json (`kubectl get ... -A -o json`) and capture files. Several bundles (collect runs on
different days: a nightly CronJob, a weekly batch) give one policy set from all of them, each
bundle's flows resolved with its own snapshot; the report says which window saw which flow.

Written to DIR (apply with `kubectl apply -f DIR`, `-R -f DIR` or `-k DIR`):
  NAMESPACE.WORKLOAD.yaml   one NetworkPolicy per captured workload (ingress and egress); with
                            --format cilium a CiliumNetworkPolicy (egress by DNS name)
  NAMESPACE.default-deny-all.yaml   with --default-deny
  ClusterNetworkPolicy.netpol-sniffer-baseline.yaml   with --baseline cluster
  Kustomization             lists them all, for `kubectl apply -k DIR`
  networkpolicy/, cilium/   with --format all: each set in its own folder, with its own
                            Kustomization (apply one of them)
  graph.dot, graph.svg      who talks to whom (graph.svg when Graphviz is installed and the
                            graph is small enough to draw: at most 400 nodes, 1,000 edges)
  report.md                 flows per edge, external names, unresolved addresses, damaged files

Damaged capture files, and files past --max-capture-size, are warnings: the packets before the
damage or the cap are used. Exit status 0 on success, 1 on unusable input (no bundle, no
snapshot, no capture that could be read) or an output problem. See docs/analyse.md.

The templates are kept compiled in $XDG_CACHE_HOME/netpol-sniffer/templates (~/.cache/...),
a private folder; NETPOL_SNIFFER_TEMPLATE_CACHE=0 turns that off (docs/analyse.md). Past 512 MiB
of capture files, the conversations are merged in parts, and the flows kept, in a private
folder under $TMPDIR (/tmp): about a third of the captures' size, removed when done
(docs/analyse.md).
"""

from __future__ import annotations

import argparse
import json
import os
from contextlib import ExitStack
from itertools import groupby
from pathlib import Path
from typing import TYPE_CHECKING

from cli.arguments import SPECIAL_CLASSES, byte_size, network, positive_int
from cli.caches import template_cache
from cli.main import ExitStatus, echo, say
from cli.progress import reading_captures

SUMMARY = "turn a bundle into NetworkPolicies, a graph and a report"
# Warnings of special addresses left out, one each, at most: a capture can name any number.
MAX_SPECIAL_WARNINGS = 50
# The Dask scheduler to read captures on when --scheduler is not given (and --workers is not).
SCHEDULER_VARIABLE = "NETPOL_SNIFFER_SCHEDULER"

if TYPE_CHECKING:
    from analyser.adopting import Adoption


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "bundles",
        type=Path,
        nargs="+",
        metavar="BUNDLE",
        help="the bundle directory; several (collect runs on different days) make one policy "
        "set from all of them",
    )
    parser.add_argument(
        "--out", "-o", type=Path, required=True, metavar="DIR", help="where to write the output"
    )
    parser.add_argument(
        "--default-deny",
        action="store_true",
        help="also write a default-deny policy for every namespace that gets policies",
    )
    parser.add_argument(
        "--baseline",
        choices=["cluster"],
        metavar="cluster",
        help="cluster: also write one Baseline-tier ClusterNetworkPolicy "
        "(policy.networking.k8s.io/v1beta1) denying everything but DNS and node traffic in the "
        "captured namespaces and every namespace created later; the workloads' NetworkPolicies "
        "open what was observed (needs the network-policy-api CRDs and an implementation)",
    )
    parser.add_argument(
        "--node-cidr",
        type=network,
        action="append",
        default=[],
        metavar="CIDR",
        help="allow traffic with nodes as this network instead of one ipBlock per node address "
        "(repeatable; for clusters whose nodes share a subnet)",
    )
    parser.add_argument(
        "--max-outside-addresses",
        type=positive_int,
        metavar="N",
        help="more addresses outside the cluster than N on one port of a policy's ingress or "
        "egress (a public ingress's clients, a cloud API's rotating addresses) become one rule "
        "from or to anywhere on that port (default: 32)",
    )
    parser.add_argument(
        "--observed-clients-only",
        action="store_true",
        help="workloads the snapshot shows exposed outside the cluster (behind a LoadBalancer or "
        "NodePort Service, externalIPs, an Ingress or HTTPRoute, or a hostPort) get ingress on "
        "the exposed ports only from the outside addresses seen, not from anywhere (the "
        "default: their users are not only those a capture saw)",
    )
    parser.add_argument(
        "--allow-special",
        choices=SPECIAL_CLASSES,
        action="append",
        default=[],
        metavar="CLASS",
        help="write rules for observed traffic with this class of special addresses, which is "
        f"otherwise left out and reported: {', '.join(SPECIAL_CLASSES)} (repeatable)",
    )
    parser.add_argument(
        "--format",
        choices=("networkpolicy", "cilium", "all"),
        default="networkpolicy",
        help="networkpolicy: networking.k8s.io/v1 NetworkPolicies (the default, for every CNI "
        "that enforces them); cilium: cilium.io/v2 CiliumNetworkPolicies, egress outside the "
        "cluster by DNS name (toFQDNs) where the captures show the name; all: both, in "
        "networkpolicy/ and cilium/",
    )
    parser.add_argument(
        "--fqdn-pattern-threshold",
        type=positive_int,
        metavar="N",
        help="with --format cilium: more than N names one label under one suffix "
        "(a1.cdn.example ... a40.cdn.example) become one matchPattern *.cdn.example, commented "
        "(default: 10)",
    )
    parser.add_argument(
        "--max-capture-size",
        type=byte_size,
        metavar="SIZE",
        help="read at most SIZE bytes of each capture file, once decompressed (512M, 1G, 2G: "
        "K, M, G, T are powers of 1,024; default: 1G); a file with more is a warning, and the "
        "packets before the cap are used",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--workers",
        type=positive_int,
        metavar="N",
        help="processes reading capture files (default: one per core)",
    )
    where.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="read the capture files on the Dask cluster whose scheduler is at ADDRESS "
        f"(tcp://HOST:8786; default: ${SCHEDULER_VARIABLE}, unless --workers is given), whose "
        "workers see the bundle at the same path as this machine; needs "
        "pip install 'netpol-sniffer[dask]' (see docs/analyse.md)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print a machine-readable summary on stdout"
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="write into DIR even if it holds files an earlier analyse did not write (left "
        "alone) or files it wrote that were edited since (overwritten); and write policies "
        "whose namespace/name a NetworkPolicy in the snapshot that netpol-sniffer did not "
        "write already has (applying them replaces it)",
    )


def run(args: argparse.Namespace) -> int:
    # Imported here so `analyse --help` stays quick.
    from analyser.analysing import PolicyFormat, PolicyOptions, write_output
    from analyser.bundles import open_bundle
    from analyser.fqdnselectors import MAX_NAMES_PER_SUFFIX
    from analyser.peers import SPECIAL_REASONS, SpecialAddress
    from analyser.policies import INGRESS, MAX_OUTSIDE_ADDRESSES, MAX_RULE_BYTES
    from analyser.rendering import use_bytecode_cache
    from analyser.sources import DEFAULT_MAX_BYTES
    from analyser.windows import analyse_windows

    use_bytecode_cache(template_cache())  # compiled templates kept between runs, if it can
    bundles = [open_bundle(path) for path in args.bundles]
    captures = [path for bundle in bundles for path in bundle.captures]
    with ExitStack() as cluster:
        address = _scheduler(args)
        capture_map = None
        if address is not None:
            from analyser.distributing import dask_capture_map

            capture_map = cluster.enter_context(dask_capture_map(address))
            say(
                "analyse",
                f"reading {len(captures)} capture files on the Dask cluster at {address} "
                f"({_workers_text(capture_map.workers())} now)",
            )
        with reading_captures(captures) as bar:
            analysis = analyse_windows(
                bundles,
                PolicyOptions(
                    default_deny=args.default_deny,
                    baseline=args.baseline == "cluster",
                    node_cidrs=args.node_cidr,
                    max_outside_addresses=args.max_outside_addresses or MAX_OUTSIDE_ADDRESSES,
                    expose_anywhere=not args.observed_clients_only,
                    allowed_special=frozenset(SpecialAddress(c) for c in args.allow_special),
                    policy_format=PolicyFormat(args.format),
                    max_names_per_suffix=args.fqdn_pattern_threshold or MAX_NAMES_PER_SUFFIX,
                ),
                workers=args.workers,
                on_progress=bar.advance,
                max_capture_size=args.max_capture_size or DEFAULT_MAX_BYTES,
                capture_map=capture_map,
                on_step=bar.step,
            )
    for problem in analysis.problems:
        say("analyse", f"warning: {problem.path}: {problem.problem}")
    for workload, reason in analysis.unselectable_reasons.items():
        say("analyse", f"warning: {workload}: {reason}: no policy written")
    for item in analysis.selector_warnings:
        say("analyse", f"warning: {item.workload}: {item.warning}")
    special = groupby(analysis.left_out, key=lambda i: (i.workload, i.direction, i.address, i.kind))
    for number, ((workload, direction, address, kind), items) in enumerate(special):
        if number == MAX_SPECIAL_WARNINGS:
            more = sum(1 for _ in special) + 1
            say("analyse", f"warning: {more:,} more special addresses left out: see the report")
            break
        ports = ", ".join(f"{i.port.protocol}/{i.port.port}" for i in items)
        way = "from" if direction == INGRESS else "to"
        say(
            "analyse",
            f"warning: {workload}: {direction} {way} {address} ({ports}) left out of its policy: "
            f"{SPECIAL_REASONS[kind]}; --allow-special {kind} writes it",
        )
    for side in analysis.rules_left_out:
        way = "from" if side.direction == INGRESS else "to"
        say(
            "analyse",
            f"warning: {side.workload}: {side.direction} {way} {len(side.peers):,} peers "
            f"on {len(side.ports):,} ports ({side.flows:,} flows) left out of its policy: "
            f"their rules would take more than {MAX_RULE_BYTES // 1024} KiB of it, which a "
            f"cluster refuses; see the report",
        )
    for pair in analysis.unvouched:
        say(
            "analyse",
            f"warning: {pair.client} → {pair.server} ({pair.ports_text}): {pair.why}",
        )
    for cronjob in analysis.uncovered_cronjobs:
        say("analyse", f"warning: {cronjob.text}")
    for note in (*analysis.notes, *analysis.adoption.notes):
        say("analyse", f"note: {note}")
    out: Path = args.out
    _check_current_policies(analysis.adoption, out, force=args.force)
    write_output(analysis.files, out, force=args.force)
    if args.json:
        # JSON escapes every control and non-ASCII character: inert as it is
        print(json.dumps({**analysis.summary(), "output": str(out)}, indent=2))
    else:
        policies = len(analysis.policy_files)
        windows = f" of {len(bundles)} capture windows" if len(bundles) > 1 else ""
        echo(
            f"{policies} policies from {len(analysis.flows)} flows in {len(captures)} "
            f"capture files{windows} written to {out}/ (apply: {_apply_hint(out, args.format)}); "
            f"report: {out / 'report.md'}"
            + (f"; warnings: {len(analysis.problems)}" if analysis.problems else "")
        )
    return ExitStatus.OK


def _apply_hint(out: Path, policy_format: str) -> str:
    if policy_format == "all":
        return f"kubectl apply -k {out / 'networkpolicy'} or -k {out / 'cilium'}"
    return f"kubectl apply -f {out}"


def _scheduler(args: argparse.Namespace) -> str | None:
    """The Dask scheduler's address: --scheduler, else the environment's unless --workers asks
    for local processes (the command line wins over the environment)."""
    if args.scheduler:
        return str(args.scheduler)
    if args.workers is not None:
        return None
    return os.environ.get(SCHEDULER_VARIABLE) or None


def _workers_text(count: int) -> str:
    return f"{count} worker" if count == 1 else f"{count} workers"


def _check_current_policies(adoption: Adoption, out: Path, *, force: bool) -> None:
    """Say which of the cluster's current policies the new ones replace or combine with; refuse
    to replace one netpol-sniffer did not write, unless ``force`` (see docs/analyse.md)."""
    from kernel.errors import OutputError

    overwritten = adoption.overwritten
    for item in overwritten:
        say(
            "analyse",
            f"warning: NetworkPolicy {item.policy} is in the cluster and was not written by "
            f"netpol-sniffer: the policy for {item.workload} has its name, and applying it "
            "replaces it",
        )
    for workload, names in adoption.combined.items():
        say(
            "analyse",
            f"warning: {workload}: its policy combines with {', '.join(names)} in the cluster: "
            "it will be allowed what any of them allows",
        )
    if overwritten and not force:
        listed = ", ".join(item.policy for item in overwritten)
        raise OutputError(
            f"{out}: not written: applying would replace NetworkPolicies netpol-sniffer did not "
            f"write ({listed}); merge what they allow into the new policies or delete them, and "
            "pass --force to write"
        )
