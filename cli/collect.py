"""Pull captures, a cluster snapshot and the pod IP history into a bundle.

For the window (--duration seconds) it watches pods in all namespaces and appends every pod IP
change to BUNDLE/pod-ips.jsonl; then it lists Namespaces, Nodes, Pods, Services, EndpointSlices,
Deployments, ReplicaSets, StatefulSets, DaemonSets, Jobs, CronJobs and NetworkPolicies in all
namespaces into BUNDLE/snapshot.json; then it pulls the capture files of every pod of the chosen
namespaces through the exec API (sha256-checked, resumed when a stream breaks) into
BUNDLE/captures/NAMESPACE/POD/ and writes BUNDLE/bundle.json, which also lists the pods that
could not be pulled and why. With --node-captures it also pulls each node's capture from the
node-capture DaemonSet (manifests/node-capture) into BUNDLE/captures/_node/NODE/: the pods of
the namespaces need no sidecar then. Running it again into the same BUNDLE fetches only what is
missing.

Access: the kubeconfig (--kubeconfig, $KUBECONFIG, ~/.kube/config) and --context, or the
in-cluster service account. The permissions it needs are in manifests/collector-rbac/.
Exit status 0 when everything was pulled, 1 on an error or when some pod or file was skipped;
pods that had ended (a Job's, a CronJob's: their sidecar went with them) are noted, not failures.
See docs/collect.md.
"""

from __future__ import annotations

import argparse
from contextlib import ExitStack
from pathlib import Path

from cli.arguments import positive_int, seconds
from cli.main import ExitStatus, echo, say
from cli.progress import Progress

SUMMARY = "pull captures and a cluster snapshot into a bundle"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--namespace",
        "-n",
        nargs="+",
        metavar="NS",
        help="namespaces to pull captures from (each must be opted in)",
    )
    which.add_argument(
        "--all-labelled",
        action="store_true",
        help="every namespace labelled netpol-sniffer.io/capture=enabled",
    )
    parser.add_argument(
        "--out", "-o", type=Path, required=True, metavar="BUNDLE", help="the bundle directory"
    )
    parser.add_argument(
        "--duration",
        type=seconds,
        default=0.0,
        metavar="S",
        help="watch pod IP changes this long before the snapshot (default: 0, snapshot now)",
    )
    parser.add_argument("--kubeconfig", metavar="FILE", help="kubeconfig file to use")
    parser.add_argument("--context", metavar="NAME", help="kubeconfig context to use")
    parser.add_argument(
        "--node-captures",
        action="store_true",
        help="also pull each node's capture from the node-capture DaemonSet "
        "(manifests/node-capture): pods of the namespaces without a sidecar are covered by "
        "their node's capture",
    )
    parser.add_argument(
        "--parallel",
        type=positive_int,
        default=4,
        metavar="N",
        help="pods pulled at the same time (default: 4)",
    )


def run(args: argparse.Namespace) -> int:
    from collector.collecting import CollectOptions, collect
    from collector.kube import connect

    cluster = connect(args.kubeconfig, args.context)
    options = CollectOptions(
        out=args.out,
        namespaces=tuple(args.namespace or ()),
        all_labelled=args.all_labelled,
        duration=args.duration,
        parallel=args.parallel,
        node_captures=args.node_captures,
    )
    with ExitStack() as bars:
        # one bar at a time on stderr: the watch's events, then the pods pulled
        bar = bars.enter_context(Progress("watching pods: events"))

        def start_pulling(pods: int) -> None:
            nonlocal bar
            bars.close()
            bar = bars.enter_context(Progress("pulling pods", total=pods))

        result = collect(
            cluster,
            options,
            on_watch_event=lambda: bar.advance(),
            on_pull_start=start_pulling,
            on_pod_done=lambda outcome: bar.advance(),
        )
    nodes = f"{result.nodes_pulled} nodes' captures, " if args.node_captures else ""
    echo(
        f"{args.out}: {result.pods_pulled} pods pulled from {', '.join(result.namespaces)}, "
        f"{nodes}{result.files_fetched} files ({result.bytes_fetched} bytes) fetched, "
        f"{result.ip_changes} pod IP changes recorded"
    )
    for skipped in result.skipped:
        where = f"{skipped.namespace}/{skipped.pod}" + (f" {skipped.file}" if skipped.file else "")
        kind = "note: not pulled" if skipped.finished else "skipped"
        say("collect", f"{kind} {where}: {skipped.reason}")
    failed = [skipped for skipped in result.skipped if not skipped.finished]
    return ExitStatus.ERROR if failed else ExitStatus.OK
