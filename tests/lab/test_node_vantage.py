"""The lab captured as the node-capture DaemonSet captures a node (``lab run --vantage node``):
one tcpdump on every interface of the node namespace, with the DaemonSet's own command line,
instead of a sidecar in every pod; the same traffic gives the same truth and policies that match
it. Needs root."""

from __future__ import annotations

import json

import pytest

from analyser.analysing import analyse
from analyser.bundles import open_bundle
from kernel.bundles import node_capture_folder
from kernel.names import CONTAINER_NAME
from lab.layouts import NODE_NAME
from tests.lab.lab_helpers import EXAMPLE, LabRunner, analyse_and_judge

pytestmark = pytest.mark.lab


def test_microservices_demo_on_the_nodes_capture(run_lab: LabRunner) -> None:
    lab = run_lab(
        (EXAMPLE / "kubernetes-manifests.yaml").read_text(),
        (EXAMPLE / "traffic.yaml").read_text(),
        duration=4,
        vantage="node",
    )
    folder = lab.bundle / node_capture_folder(NODE_NAME)
    assert sorted(path.name for path in (lab.bundle / "captures").iterdir()) == ["_node"]
    assert (folder / "capture.pcap0").is_file()
    meta = json.loads((folder / "meta.json").read_text())
    assert (meta["node"], meta["pod_networks"]) == (NODE_NAME, ["10.244.0.0/16"])
    # no pod was changed: none carries the sidecar
    snapshot = json.loads((lab.bundle / "snapshot.json").read_text())
    pods = [item for item in snapshot["items"] if item["kind"] == "Pod"]
    assert pods and not any(
        container["name"] == CONTAINER_NAME
        for pod in pods
        for container in pod["spec"]["containers"] + pod["spec"].get("initContainers", [])
    )
    judged = analyse_and_judge(lab.bundle)
    assert judged.check.denied == (), "flows that happened are denied"
    assert judged.check.extra == (), "allowed beyond what happened"
    analysis = analyse(open_bundle(lab.bundle), workers=1)
    assert {item.vantages for item in analysis.coverage} == {(f"node {NODE_NAME}",)}
    assert len(analysis.coverage) == len(pods) - 1  # every pod but the cluster DNS's
    assert not [problem for problem in analysis.problems if "foreign" in problem.problem]
