"""Run the pipeline's input side on a simulated cluster made of network namespaces.

  lab run --manifests FILE... --traffic PLAN --out BUNDLE [--capture-mode MODE] [--duration S]
          [--vantage pod|node]
      Reads ordinary Kubernetes manifests (Deployments, StatefulSets, DaemonSets, Jobs,
      CronJobs, Pods, Services), gives every pod replica its own network namespace and IP
      behind a routing "node" namespace, Services ClusterIPs with kube-proxy-like DNAT, a
      cluster DNS, a kubelet probing the pods and an outside world, then plays the traffic
      plan with real servers and clients while the webhook's own tcpdump command records
      each pod (or, with --vantage node, the node-capture DaemonSet's records the node). The
      result is a bundle for
      `netpol-sniffer analyse`, plus truth.json: the flows that really happened.
  lab clean
      Removes the namespaces a killed run left behind (a new run does this too).

Needs root. Nothing leaves the lab's namespaces; everything is removed on exit, on Ctrl-C and
on failure. The traffic plan format is in docs/lab.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cli.arguments import add_capture_mode, positive_seconds
from cli.main import PROG, ExitStatus, echo, say

SUMMARY = "run the pipeline on a simulated cluster of network namespaces"
RUN_DESCRIPTION = """\
Build a simulated cluster from ordinary Kubernetes manifests, play a traffic plan on it with real
servers and clients, capture every pod with the sidecar's own tcpdump command (or, with --vantage
node, the node with the node-capture DaemonSet's), and write a bundle (plus truth.json, the flows
that really happened). Needs root; nothing outside the lab's network
namespaces is touched, and everything is removed on exit, Ctrl-C and failure.

example:
  sudo netpol-sniffer lab run --manifests examples/microservices-demo/kubernetes-manifests.yaml \\
      --traffic examples/microservices-demo/traffic.yaml --out bundle/
  netpol-sniffer analyse bundle/ --out policies/

The traffic plan's format: docs/lab.md."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    run_parser = actions.add_parser(
        "run",
        help="play a traffic plan and write a bundle",
        description=RUN_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run_parser.add_argument(
        "--manifests",
        type=Path,
        nargs="+",
        required=True,
        metavar="FILE",
        help="Kubernetes manifests (YAML, several documents per file allowed)",
    )
    run_parser.add_argument(
        "--traffic", type=Path, required=True, metavar="PLAN", help="the traffic plan (YAML)"
    )
    run_parser.add_argument(
        "--out",
        "-o",
        type=Path,
        required=True,
        metavar="BUNDLE",
        help="the bundle directory to write (must not exist or be empty)",
    )
    add_capture_mode(run_parser, help_prefix="the sidecar's capture mode")
    run_parser.add_argument(
        "--vantage",
        choices=("pod", "node"),
        default="pod",
        help="where to capture: 'pod', the webhook's sidecar in every pod (default); 'node', "
        "the node-capture DaemonSet's tcpdump on the node's interfaces, no pod changed",
    )
    run_parser.add_argument(
        "--duration",
        type=positive_seconds,
        metavar="S",
        help="capture window in seconds (default: the plan's 'duration')",
    )
    actions.add_parser(
        "clean",
        help="remove what a killed run left behind",
        description="Remove the network namespaces, processes and files of lab runs whose process "
        "is gone (a new run does this too). Needs root.",
    )


def _say(message: str) -> None:
    say("lab", message)


def run(args: argparse.Namespace) -> int:
    from kernel.capture import CaptureMode
    from lab import netns
    from lab.capturing import Vantage
    from lab.running import LabOptions, run_lab

    if args.action == "clean":
        netns.require_root()
        removed = netns.remove_leftovers()
        echo(f"removed {len(removed)} namespaces" + (f": {', '.join(removed)}" if removed else ""))
        return ExitStatus.OK
    result = run_lab(
        LabOptions(
            manifests=tuple(args.manifests),
            plan=args.traffic,
            out=args.out,
            capture_mode=CaptureMode(args.capture_mode),
            duration=args.duration,
            vantage=Vantage(args.vantage),
        ),
        log=_say,
    )
    calls = result.report["calls"]
    echo(
        f"bundle written to {result.out}/ ({len(result.truth)} flows in truth.json, "
        f"{sum(c['ok'] for c in calls)} successful calls of {sum(c['attempts'] for c in calls)}) "
        f"in {result.seconds:.1f}s; analyse it: {PROG} analyse {result.out} --out POLICIES"
    )
    return ExitStatus.OK
