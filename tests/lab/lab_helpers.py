"""Helpers for the lab's end-to-end tests: a run's bundle and captures, the analyser's policies
judged against truth.json, and the lab namespaces this process owns."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lab import netns
from lab.checking import TruthCheck
from lab.layouts import Layout, build_layout
from lab.manifests import read_manifests
from lab.plans import read_plan

EXAMPLE = Path(__file__).parents[2] / "examples" / "microservices-demo"
LAB_SECONDS: list[float] = []


def layout_from(manifests: str, plan: str, *, now: float = 1_700_000_000.0) -> Layout:
    """The lab's layout of manifests and a plan given as YAML text."""
    return build_layout(read_manifests([("m.yaml", manifests)]), read_plan("p.yaml", plan), now=now)


def lab_run_argv(manifests: Path, plan: Path, out: Path) -> list[str]:
    """``lab run``'s arguments for one manifest file and a plan."""
    return ["lab", "run", "--manifests", str(manifests), "--traffic", str(plan), "--out", str(out)]


def own_namespaces() -> list[str]:
    prefix = f"{netns.PREFIX}{os.getpid()}-"
    return [name for name in netns.list_namespaces() if name.startswith(prefix)]


@dataclass
class LabRun:
    bundle: Path
    truth: list[dict[str, object]]
    report: dict[str, object]

    def pod_dirs(self, namespace: str, prefix: str) -> list[Path]:
        return sorted((self.bundle / "captures" / namespace).glob(f"{prefix}*"))

    def packets(self, namespace: str, prefix: str, bpf: str) -> list[str]:
        """tcpdump's one-line view of the pod's captured packets matching ``bpf``."""
        lines: list[str] = []
        for directory in self.pod_dirs(namespace, prefix):
            for capture in sorted(directory.glob("capture.pcap*")):
                done = subprocess.run(
                    ["tcpdump", "-nr", str(capture), bpf],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                lines += done.stdout.splitlines()
        return lines


LabRunner = Callable[..., LabRun]


@dataclass
class Judged:
    files: dict[str, str]  # the rendered output, by relative path
    check: TruthCheck
    cilium: dict[str, str] = field(default_factory=dict)  # the Cilium set, by file name

    def policy(self, namespace: str, workload: str) -> str:
        """The YAML text of the policy whose file name starts with ``workload``."""
        found = [
            text
            for path, text in self.files.items()
            if path.startswith(f"{namespace}.{workload}") and path.endswith(".yaml")
        ]
        assert len(found) == 1, f"no single policy for {namespace}/{workload} in {list(self.files)}"
        return found[0]


def analyse_and_judge(bundle: Path) -> Judged:
    """The analyser's pipeline on ``bundle``, both formats judged against the same truth.json:
    ``check`` holds the NetworkPolicies' verdict and the CiliumNetworkPolicies' (each line of
    theirs marked ``cilium:``); ``files`` the NetworkPolicy output as ``--format networkpolicy``
    writes it."""
    from analyser.analysing import PolicyFormat, analyse
    from analyser.bundles import open_bundle
    from analyser.graphs import ID_PREFIXES, NodeRole
    from analyser.policysets import parse_policy_texts
    from lab.checking import TruthCheck, check_truth

    analysis = analyse(open_bundle(bundle), policy_format=PolicyFormat.ALL)
    snapshot = json.loads((bundle / "snapshot.json").read_text())
    truth = json.loads((bundle / "truth.json").read_text())
    names = {
        node.id.removeprefix(ID_PREFIXES[NodeRole.EXTERNAL]): node.names
        for node in analysis.graph.with_role(NodeRole.EXTERNAL)
    }
    checks = {}
    for folder in ("networkpolicy/", "cilium/"):
        texts = {p: t for p, t in analysis.files.items() if p.startswith(folder)}
        loaded = parse_policy_texts({p: t for p, t in texts.items() if p.endswith(".yaml")})
        checks[folder] = check_truth(snapshot, truth, loaded.policies, dns_names=names)
    plain, cilium = checks["networkpolicy/"], checks["cilium/"]
    check = TruthCheck(
        plain.flows,
        (*plain.denied, *(f"cilium: {line}" for line in cilium.denied)),
        (*plain.extra, *(f"cilium: {line}" for line in cilium.extra)),
    )
    files = {
        path.removeprefix("networkpolicy/"): text
        for path, text in analysis.files.items()
        if not path.startswith("cilium/")
    }
    cilium_files = {
        path.removeprefix("cilium/"): text
        for path, text in analysis.files.items()
        if path.startswith("cilium/")
    }
    return Judged(files, check, cilium_files)
