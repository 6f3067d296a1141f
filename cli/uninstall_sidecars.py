"""Unlabel namespaces and roll their workloads so the capture sidecars go away.

For each namespace: remove the opt-in label netpol-sniffer.io/capture (so new pods are no longer
injected), then restart every Deployment, StatefulSet and DaemonSet that has a pod with the
sidecar, the way `kubectl rollout restart` does (the kubectl.kubernetes.io/restartedAt template
annotation). Bare pods and Job pods cannot be rolled: they are listed for you to handle.
With --dry-run nothing changes; the plan is printed. See docs/collect.md for the kubectl steps.
"""

from __future__ import annotations

import argparse

from cli.main import ExitStatus, echo

SUMMARY = "unlabel namespaces and roll their workloads so the sidecars go away"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--namespace", "-n", nargs="+", required=True, metavar="NS", help="namespaces to clean up"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    parser.add_argument("--kubeconfig", metavar="FILE", help="kubeconfig file to use")
    parser.add_argument("--context", metavar="NAME", help="kubeconfig context to use")


def run(args: argparse.Namespace) -> int:
    from collector.kube import connect
    from collector.uninstalling import apply_uninstall, plan_uninstall
    from kernel.names import CAPTURE_LABEL

    cluster = connect(args.kubeconfig, args.context)
    plans = [plan_uninstall(cluster, namespace) for namespace in dict.fromkeys(args.namespace)]
    prefix = "would " if args.dry_run else ""
    for plan in plans:
        if not args.dry_run:
            apply_uninstall(cluster, plan)
        if plan.unlabel:
            echo(f"namespace {plan.namespace}: {prefix}remove label {CAPTURE_LABEL}")
        for kind, name in plan.restarts:
            echo(f"namespace {plan.namespace}: {prefix}restart {kind.lower()}/{name}")
        for pod, action in plan.manual:
            echo(f"namespace {plan.namespace}: pod {pod} keeps its sidecar: {action}")
    return ExitStatus.OK
