"""The lab and the analyser on microservices-demo (Online Boutique), with a summary.

Runs the lab on examples/microservices-demo (its manifest and traffic plan) for a short window,
analyses the bundle, prints who talks to whom and where the policies, the graph and the report
are, and checks the policies against the lab's truth (every flow that happened is allowed,
nothing else is, cluster DNS and what the snapshot exposes to the world aside).

Written to DIR (default demo-output):
  DIR/bundle/     the lab's bundle (captures, snapshot.json, truth.json, ...)
  DIR/policies/   NetworkPolicies (NAMESPACE.NAME.yaml), Kustomization, graph.dot/svg, report.md

Without root (the lab needs network namespaces) it analyses the bundle recorded in
examples/microservices-demo/bundle/ instead (an installed package ships it), and says so.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from analyser.texts import inert
from cli.arguments import add_capture_mode, positive_seconds
from cli.main import ExitStatus, echo, say
from kernel.bundles import MANIFEST
from kernel.errors import LabError

if TYPE_CHECKING:
    from analyser.graphs import WorkloadGraph

SUMMARY = "lab + analyse on microservices-demo, with a summary"
# microservices-demo's manifests, traffic plan and recorded bundle, shipped in the lab package
# (lab/example, a link to examples/microservices-demo in a checkout; a copy in a wheel).
EXAMPLE = Path(str(resources.files("lab") / "example"))
DEFAULT_OUT = Path("demo-output")
DEFAULT_DURATION = 8.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        "-o",
        type=Path,
        default=DEFAULT_OUT,
        metavar="DIR",
        help=f"where to write bundle/ and policies/ (default: {DEFAULT_OUT})",
    )
    parser.add_argument(
        "--duration",
        type=positive_seconds,
        default=DEFAULT_DURATION,
        metavar="S",
        help=f"the lab's capture window in seconds (default: {DEFAULT_DURATION:g})",
    )
    add_capture_mode(parser, help_prefix="the sidecar's capture mode in the lab")
    parser.add_argument(
        "--recorded",
        action="store_true",
        help="analyse the recorded bundle shipped with netpol-sniffer even when the lab could run",
    )


def _say(message: str) -> None:
    say("demo", message)


def _replace_bundle(path: Path) -> None:
    """A bundle an earlier demo wrote is replaced; anything else is left alone."""
    if not path.exists():
        return
    if not (path / MANIFEST).is_file():
        raise LabError(f"{path} exists and is not a bundle: choose another --out")
    shutil.rmtree(path)


def _record(bundle: Path, args: argparse.Namespace) -> Path:
    """Run the lab into ``bundle``; without root, fall back to the recorded bundle."""
    from kernel.capture import CaptureMode
    from lab.running import LabOptions, run_lab

    recorded = EXAMPLE / "bundle"
    if args.recorded or os.geteuid() != 0:
        reason = "as asked" if args.recorded else "not root, so the lab cannot run"
        _say(f"{reason}: analysing the recorded bundle {recorded}")
        if not (recorded / MANIFEST).is_file():
            raise LabError(f"no recorded bundle in {recorded}: the installation is incomplete")
        return recorded
    _replace_bundle(bundle)
    _say(f"running the lab on microservices-demo for {args.duration:g}s")
    result = run_lab(
        LabOptions(
            manifests=(EXAMPLE / "kubernetes-manifests.yaml",),
            plan=EXAMPLE / "traffic.yaml",
            out=bundle,
            capture_mode=CaptureMode(args.capture_mode),
            duration=args.duration,
        ),
        log=_say,
    )
    _say(f"lab done in {result.seconds:.1f}s: bundle in {bundle}")
    return bundle


def _edge_rows(graph: WorkloadGraph) -> list[tuple[str, str, str, str, str]]:
    return sorted(
        (
            row.client_label,
            row.server_label,
            f"{row.port.port}/{row.port.protocol}",
            str(row.stats.flows),
            ",".join(sorted(str(e) for e in row.stats.evidence)),
        )
        for row in graph.edge_rows()
    )


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    """The lines of a table, columns aligned; cells are made inert first, so they align as shown."""
    cells = [header, *(tuple(inert(cell) for cell in row) for row in rows)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in cells
    ]
    return [lines[0], "  ".join("-" * w for w in widths), *lines[1:]]


def run(args: argparse.Namespace) -> int:
    from analyser.analysing import (
        GRAPH_DOT,
        GRAPH_SVG,
        REPORT,
        REPORT_HTML,
        analyse,
        write_output,
    )
    from analyser.bundles import open_bundle
    from analyser.policysets import parse_policy_texts
    from lab.bundling import TRUTH
    from lab.checking import check_truth

    out: Path = args.out
    bundle_path = _record(out / "bundle", args)
    bundle = open_bundle(bundle_path)
    analysis = analyse(bundle)
    policies_dir = out / "policies"
    write_output(analysis.files, policies_dir)
    for problem in analysis.problems:
        _say(f"warning: {problem.path}: {problem.problem}")
    for line in _table(
        ("CLIENT", "SERVER", "PORT", "FLOWS", "DIRECTION FROM"), _edge_rows(analysis.graph)
    ):
        echo(line)
    print()
    echo(
        f"{len(analysis.policy_files)} NetworkPolicies from {len(analysis.flows)} flows "
        f"({analysis.traffic.packets} packets in {len(bundle.captures)} capture files)"
    )
    passed = True
    truth_path = bundle_path / TRUTH
    if truth_path.is_file():
        snapshot = json.loads(bundle.snapshot.read_text(encoding="utf-8"))
        truth = json.loads(truth_path.read_text(encoding="utf-8"))
        loaded = parse_policy_texts({p: analysis.files[p] for p in analysis.policy_files})
        verdict = check_truth(snapshot, truth, loaded.policies)
        echo(
            f"against the lab's truth: {verdict.flows - len(verdict.denied)}/{verdict.flows} "
            f"flows that happened are allowed; "
            f"{len(verdict.extra) or 'nothing'} allowed beyond them "
            "(cluster DNS and exposed ports aside)"
        )
        for line in [*verdict.denied, *verdict.extra]:
            echo(f"  {line}")
        passed = verdict.passed
    graph = policies_dir / (GRAPH_SVG if GRAPH_SVG in analysis.files else GRAPH_DOT)
    echo(f"policies: {policies_dir}/ (kubectl apply -f {policies_dir})")
    echo(f"graph:    {graph}")
    echo(f"report:   {policies_dir / REPORT}")
    echo(f"review:   {policies_dir / REPORT_HTML} (open it in a browser: it needs no network)")
    echo(f"bundle:   {bundle_path}")
    if not passed:
        _say("the policies do not match what happened in the lab (see above)")
        return ExitStatus.ERROR
    return ExitStatus.OK
