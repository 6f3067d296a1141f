"""Prove that a set of NetworkPolicies allows every flow a bundle observed, and show what else it
allows.

BUNDLE is what `analyse` reads (a bundle directory, or a folder with snapshot.json and captures);
several bundles (capture windows, as `analyse BUNDLE BUNDLE…` takes them) are checked together:
the observed flows are those of every one, each resolved with its own snapshot.
POLICIES is a folder (or file) of NetworkPolicies, CiliumNetworkPolicies (`analyse --format
cilium`) or both: the generated ones or any hand-written set (YAML with one or more documents,
Lists, JSON, `kustomize build` output), ClusterNetworkPolicies (policy.networking.k8s.io, such as
`analyse --baseline cluster` writes) included: they are evaluated in their tiers (Admin, then the
NetworkPolicies, then Baseline). Other objects are skipped with a note.

The observed flows are checked once per client → server port (client workload → server workload
or address, on the target port after Service DNAT) with networking.k8s.io/v1 semantics
(cilium.io/v2 for CiliumNetworkPolicies, `toFQDNs` matched against the names the bundle's DNS
answers gave each address): egress at the client and ingress at the server must both allow them.
Each denied one is listed with the side that denies it. A side is checked only when its own
captures vouch for the flows (they saw them, or none of them ran then): one pod's capture cannot
make another workload's policies fail; such flows are listed.

Then, for every pair that involves a captured workload (workloads, ipBlocks the policies name,
observed outside addresses, and "anywhere"), the ports allowed without any observed flow are
listed ("all ports" where a whole protocol is open), with a least-privilege score (pairs and
ports allowed beyond what was observed; lower is better) to compare policy sets.

Exit status: 0 when every observed flow is allowed, 3 when at least one is denied, 1 on unusable
input (POLICIES without any NetworkPolicy or ClusterNetworkPolicy among them too: a gate must
not pass on a mistyped folder). See docs/verify.md.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from cli.main import ExitStatus, echo
from cli.progress import reading_captures
from kernel.errors import BundleError, PolicyError

if TYPE_CHECKING:
    from analyser.verifying import Allowance, Observed

T = TypeVar("T")

SUMMARY = "prove policies allow every observed flow, show the rest"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "bundles",
        type=Path,
        nargs="+",
        metavar="BUNDLE",
        help="the bundle directory; several (as analyse takes them): the flows of all of them",
    )
    parser.add_argument(
        "policies",
        type=Path,
        metavar="POLICIES",
        help="a folder or file of NetworkPolicies (and ClusterNetworkPolicies)",
    )
    parser.add_argument("--json", action="store_true", help="print the verification as JSON")


def run(args: argparse.Namespace) -> int:
    from analyser.reading import no_cyclic_gc

    # A report on every pair keeps millions of small objects alive and makes no reference
    # cycles: the collector's passes over them were a third of the time with 20,000 addresses.
    with no_cyclic_gc():
        return _verify(args)


def _verify(args: argparse.Namespace) -> int:
    # Imported here so `verify --help` stays quick.
    from analyser.analysing import observe
    from analyser.bundles import find_snapshot, open_bundle
    from analyser.policysets import (
        RULES_LEFT_OUT_ANNOTATION,
        load_policies,
        namespace_label_keys,
        sides_left_out,
    )
    from analyser.replaying import cluster_facts, verify_graph
    from analyser.verifying import allowance_json, denial_json, score_json, unvouched_json
    from analyser.windows import observe_windows
    from kernel.times import utc_text

    named = ", ".join(map(str, args.bundles))
    last: Path = args.bundles[-1]
    if find_snapshot(args.policies) is not None and find_snapshot(last) is None:
        raise BundleError(
            f"{last} is no bundle but {args.policies} looks like one: the arguments are "
            "the other way round (netpol-sniffer verify BUNDLE POLICIES)"
        )
    loaded = load_policies(args.policies)
    cluster_policies = loaded.policies.cluster_policies
    if not loaded.documents and not cluster_policies:
        # A gate that passes on a mistyped folder would let anything through.
        raise PolicyError(
            f"{args.policies}: no NetworkPolicy found there, nothing to verify"
            + (f" ({'; '.join(loaded.notes)})" if loaded.notes else "")
        )
    bundles = [open_bundle(path) for path in args.bundles]
    with reading_captures([path for bundle in bundles for path in bundle.captures]) as bar:
        if len(bundles) == 1:
            observation = observe(bundles[0], on_progress=bar.advance, on_step=bar.step)
            cluster = cluster_facts(observation.snapshot, observation.resolver)
        else:
            windows = observe_windows(bundles, on_progress=bar.advance, on_step=bar.step)
            observation, cluster = windows.observation, windows.cluster.facts
        bar.step("checking the policies against the observed flows")
        result = verify_graph(loaded.policies, observation.graph, cluster)
    notes = [*loaded.notes, *(f"{p.path}: {p.problem}" for p in observation.problems)]
    looked_at = namespace_label_keys(loaded.documents) - {"kubernetes.io/metadata.name"}
    if looked_at and not observation.snapshot.namespaces:
        notes.append(
            f"the snapshot has no Namespaces, so their labels are unknown: namespaceSelectors on "
            f"{', '.join(sorted(looked_at))} match nothing (add `kubectl get namespaces -o json`)"
        )
    for group in observation.graph.attempts:
        retried = (
            f" ({group.attempts} attempts, first {utc_text(group.first_seen)}, "
            f"last {utc_text(group.last_seen)})"
            if group.attempts > 1
            else ""
        )
        notes.append(
            f"not checked, never established (refused or unanswered): {group.client} → "
            f"{group.server} {group.port.protocol}/{group.port.port}{retried}"
        )
    for found in observation.graph.flows_left_out:
        kind = "answered" if found.answered else "one way only (nothing answered)"
        notes.append(
            f"not checked, {kind}, past {found.kept:,} addresses: "
            f"{found.flows} flows of {found.side} {found.direction} other addresses on "
            f"{found.port.protocol}/{found.port.port}"
        )
    # analyse leaves out the rules that would make a policy too big for a cluster, and says so on
    # the policy: those denials are expected, and report.md names each.
    short = sides_left_out(loaded.documents)
    sized, names = 0, set()
    for denial in result.denials:
        saying = {policy for policy in denial.policies if denial.side in short.get(policy, ())}
        sized += bool(saying)
        names |= saying
    if sized:
        notes.append(
            f"{sized:,} of the denied client → server ports are at a side whose policy "
            f"says analyse left rules out of it for size ({RULES_LEFT_OUT_ANNOTATION} on "
            f"{', '.join(sorted(names))}): they may be those; analyse's report.md lists them under "
            '"Rules past a policy\'s size"'
        )
    left_out = observation.graph.attempts_left_out
    if left_out.attempts:
        notes.append(
            f"not checked, never established (refused or unanswered): {left_out.attempts} more "
            f"attempts of other clients, servers and ports (past the first "
            f"{len(observation.graph.attempts):,}), first {utc_text(left_out.first_seen)}, "
            f"last {utc_text(left_out.last_seen)}"
        )
    status = ExitStatus.OK if result.passed else ExitStatus.DENIED
    if args.json:
        document = {
            "bundle": named,
            "windows": [window.as_json() for window in observation.capture_windows],
            "policies": str(args.policies),
            "network_policies": [str(p) for p in loaded.policies.policies],
            "cluster_network_policies": [p.name for p in cluster_policies],
            "passed": result.passed,
            "observed": result.checked,
            "denied": [denial_json(d) for d in result.denials],
            "unvouched": [unvouched_json(o) for o in result.unvouched],
            "allowed_unobserved": [allowance_json(a) for a in result.allowances],
            "score": score_json(result.score),
            "notes": notes,
        }
        print(json.dumps(document, indent=2))
        return status
    also = (
        f", {_counted(['ClusterNetworkPolicy'] * len(cluster_policies))}"
        if cluster_policies
        else ""
    )
    echo(
        f"{args.policies} ({_counted(p.kind for p in loaded.policies.policies)}{also}) against "
        f"the flows observed in {named}: {result.checked} client → server ports"
    )
    if result.denials:
        denied = len(result.denials)
        echo(f"DENIED: the flows of {denied} client → server port(s) would be blocked:")
        _echo_listed(result.denials, str)
    else:
        echo("OK: every observed flow is allowed")
    if result.unvouched:
        echo(
            f"not checked at a side whose own capture covered the time and did not see them "
            f"({len(result.unvouched)}: only the other side's captures claim them):"
        )
        _echo_listed(result.unvouched, _unchecked_line)
    if result.allowances:
        echo(f"allowed but never observed ({len(result.allowances)} pairs):")
        _echo_listed(result.allowances, _allowance_line)
    else:
        echo("nothing is allowed beyond what was observed")
    echo(f"least-privilege score (lower is better): {result.score}")
    for note in notes:
        echo(f"note: {note}")
    return status


# Lines of each list the terminal gets; --json has every one. A capture can claim a connection
# on every port: tens of thousands of lines would bury the verdict.
MAX_LISTED_LINES = 200


def _echo_listed(items: Sequence[T], line: Callable[[T], str]) -> None:
    """The ``line`` of each of ``items``, indented, up to :data:`MAX_LISTED_LINES`; then how many
    more (not written out)."""
    for item in items[:MAX_LISTED_LINES]:
        echo(f"  {line(item)}")
    if (more := len(items) - MAX_LISTED_LINES) > 0:
        echo(f"  … and {more:,} more (--json lists every one)")


def _unchecked_line(item: Observed) -> str:
    from analyser.evaluation import Direction

    sides = " and ".join(
        f"{side} of {item.client if side == Direction.EGRESS else item.server}"
        for side in item.unchecked
    )
    return f"{item.client} → {item.server} {item.port}/{item.protocol}: not checked at {sides}"


def _allowance_line(allowance: Allowance) -> str:
    seen = f" (observed: {allowance.observed})" if allowance.observed else ""
    return f"{allowance.client} → {allowance.server}: {allowance.unobserved}{seen}"


def _counted(kinds: Iterable[str]) -> str:
    """``12 NetworkPolicies``, ``1 CiliumNetworkPolicy``, or each kind's count."""
    counts = Counter(kinds)
    return ", ".join(
        f"{count} {kind if count == 1 else kind.removesuffix('y') + 'ies'}"
        for kind, count in sorted(counts.items())
    )
