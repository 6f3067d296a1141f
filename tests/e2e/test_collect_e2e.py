"""collect, its RBAC and uninstall-sidecars against a real kube-apiserver and controller manager.

There is no kubelet: pods are stored (a Deployment's by the controller manager) but never run, so
a test plays the kubelet's part in the status it writes (IPs, phase). The pull path needs a
running sidecar and is tested in tests/analyser/ through the real client and a local exec server.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from controlplane import ControlPlane

from analyser.bundles import parse_manifest
from analyser.cli.main import main
from analyser.collecting import (
    CollectOptions,
    KubernetesCluster,
    collect,
    connect,
)
from analyser.snapshot import load_pod_ip_history, load_snapshot

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
OPT_IN = {"netpol-sniffer.io/capture": "enabled"}
SIDECAR = "netpol-sniffer-capture"
COLLECTOR = "system:serviceaccount:netpol-sniffer:netpol-sniffer-collector"
WAIT_S = 60.0

Json = dict[str, Any]
NamespaceFactory = Callable[..., str]


def wait_for(what: str, check: Callable[[], bool], timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def apply(plane: ControlPlane, document: Json, namespace: str | None = None) -> None:
    args = ["apply", "-f", "-"] + (["-n", namespace] if namespace else [])
    plane.kubectl(*args, stdin=json.dumps(document))


def pod_manifest(name: str, *, sidecar: bool = False, labels: Json | None = None) -> Json:
    containers: list[Json] = [{"name": "app", "image": "app:1"}]
    if sidecar:
        containers.append({"name": SIDECAR, "image": "capture:1"})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {"app": name}},
        "spec": {"containers": containers},
    }


def deployment_manifest(name: str, *, sidecar: bool = False) -> Json:
    template = pod_manifest(name, sidecar=sidecar, labels={"app": name})
    del template["apiVersion"], template["kind"], template["metadata"]["name"]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}}, "template": template},
    }


def set_pod_ips(plane: ControlPlane, namespace: str, pod: str, ips: list[str]) -> None:
    """What the kubelet would write once the sandbox has its addresses."""
    status = {
        "status": {
            "phase": "Running",
            "podIP": ips[0],
            "podIPs": [{"ip": ip} for ip in ips],
            "startTime": "2026-01-01T00:00:00Z",
        }
    }
    plane.kubectl(
        "patch",
        "pod",
        pod,
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(status),
    )


class WatchStarted:
    """A cluster that tells when collect has started watching (so changes land in the watch)."""

    def __init__(self, cluster: KubernetesCluster) -> None:
        self.cluster = cluster
        self.started = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.cluster, name)

    def watch(self, *args: Any, **kwargs: Any) -> Iterator[Json]:
        self.started.set()
        return self.cluster.watch(*args, **kwargs)


def read_lines(path: Path) -> list[Json]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_snapshot_and_ip_history_from_a_real_api_server(
    control_plane: ControlPlane, namespace_factory: NamespaceFactory, tmp_path: Path
) -> None:
    shop = namespace_factory("shop", labels=OPT_IN)
    apply(control_plane, deployment_manifest("web"), shop)
    apply(control_plane, pod_manifest("first", sidecar=True), shop)
    apply(
        control_plane,
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
        },
        shop,
    )
    wait_for(
        "the Deployment's pod",
        lambda: bool(
            control_plane.kubectl_json("get", "pods", "-n", shop, "-l", "app=web")["items"]
        ),
    )
    set_pod_ips(control_plane, shop, "first", ["10.244.1.7", "fd00:10:244::7"])

    cluster = WatchStarted(connect(str(control_plane.kubeconfig)))
    out = tmp_path / "bundle"
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(
                collect(cluster, CollectOptions(out=out, namespaces=(shop,), duration=8))
            )
        except BaseException as error:  # reported by the test below
            outcome.append(error)

    collector = threading.Thread(target=run)
    collector.start()
    try:
        assert cluster.started.wait(30), "collect never started watching"
        # during the window: "first" goes away and "second" reuses its IPv4 address
        control_plane.kubectl("delete", "pod", "first", "-n", shop, "--wait=false")
        apply(control_plane, pod_manifest("second", sidecar=True), shop)
        set_pod_ips(control_plane, shop, "second", ["10.244.1.7"])
    finally:
        collector.join(60)
    assert outcome and not isinstance(outcome[0], BaseException), outcome

    lines = [line for line in read_lines(out / "pod-ips.jsonl") if line["namespace"] == shop]
    events = [(line["event"], line["pod"], line["ips"]) for line in lines]
    assert events == [
        ("ADDED", "first", ["10.244.1.7", "fd00:10:244::7"]),
        ("DELETED", "first", ["10.244.1.7", "fd00:10:244::7"]),
        ("ADDED", "second", ["10.244.1.7"]),
    ]
    assert lines[0]["time"] == "2026-01-01T00:00:00Z"  # first seen in the list: its startTime
    assert lines[0]["time"] < lines[1]["time"] <= lines[2]["time"]
    assert lines[0]["uid"] and lines[2]["uid"] != lines[0]["uid"]
    history = load_pod_ip_history(out / "pod-ips.jsonl")
    assert [e.pod for e in history if e.namespace == shop][-1] == "second"

    snapshot_path = out / "snapshot.json"
    snapshot = load_snapshot(snapshot_path)
    document = json.loads(snapshot_path.read_text())
    kinds = {item["kind"] for item in document["items"]}
    assert {"Namespace", "Pod", "Service", "EndpointSlice", "Deployment", "ReplicaSet"} <= kinds
    assert {ns["metadata"]["name"] for ns in snapshot.namespaces} >= {shop, "kube-system"}
    web = [p for p in snapshot.pods if p["metadata"]["labels"].get("app") == "web"]
    assert web and web[0]["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"
    # items are what `kubectl get -o json` prints
    ours = next(
        item
        for item in document["items"]
        if item["kind"] == "Service" and item["metadata"]["namespace"] == shop
    )
    assert ours == control_plane.kubectl_json("get", "service", "web", "-n", shop)

    manifest = parse_manifest((out / "bundle.json").read_text(), source="bundle.json")
    assert manifest.producer == "collect" and manifest.captures == ()
    reasons = {
        s["pod"]: s["reason"] for s in json.loads((out / "bundle.json").read_text())["skipped"]
    }
    assert reasons["second"] == "sidecar not running yet (pod phase Running)"
    assert any(
        "no netpol-sniffer-capture sidecar" in r for p, r in reasons.items() if p != "second"
    )


@pytest.fixture
def collector_identity(control_plane: ControlPlane, tmp_path: Path) -> Iterator[Path]:
    """A kubeconfig for the collector's ServiceAccount (its RBAC not applied yet)."""
    if control_plane.kubectl("get", "namespace", "netpol-sniffer", check=False).returncode:
        control_plane.kubectl("create", "namespace", "netpol-sniffer")
    control_plane.kubectl("apply", "-f", str(REPO / "manifests/collector-rbac/serviceaccount.yaml"))
    token = control_plane.kubectl(
        "create", "token", "netpol-sniffer-collector", "-n", "netpol-sniffer"
    ).stdout.strip()
    admin = yaml.safe_load(control_plane.kubeconfig.read_text())
    admin["users"] = [{"name": "collector", "user": {"token": token}}]
    admin["contexts"][0]["context"]["user"] = "collector"
    path = tmp_path / "collector.kubeconfig"
    path.write_text(json.dumps(admin))
    try:
        yield path
    finally:
        control_plane.kubectl(
            "delete",
            "-k",
            str(REPO / "manifests/collector-rbac"),
            "--ignore-not-found",
            check=False,
        )


def can_i(plane: ControlPlane, *args: str) -> bool:
    result = plane.kubectl("auth", "can-i", *args, f"--as={COLLECTOR}", check=False)
    return result.stdout.strip() == "yes"


def test_collector_rbac_is_enough_and_its_absence_is_named(
    control_plane: ControlPlane,
    namespace_factory: NamespaceFactory,
    collector_identity: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    shop = namespace_factory("shop", labels=OPT_IN)
    other = namespace_factory("other", labels=OPT_IN)
    args = [
        "collect",
        "-n",
        shop,
        "-o",
        str(tmp_path / "b"),
        "--kubeconfig",
        str(collector_identity),
    ]

    assert main(args) == 1
    err = capsys.readouterr().err
    assert f"cannot get namespaces {shop} cluster-wide: needs 'get' on 'namespaces'" in err
    assert COLLECTOR in err  # the API server's own words name who was refused

    control_plane.kubectl("apply", "-k", str(REPO / "manifests/collector-rbac"))
    control_plane.kubectl(
        "apply", "-n", shop, "-k", str(REPO / "manifests/collector-rbac/namespace")
    )
    wait_for("the reader role", lambda: can_i(control_plane, "watch", "pods", "--all-namespaces"))
    assert main(args) == 0, capsys.readouterr().err
    items = json.loads((tmp_path / "b" / "snapshot.json").read_text())["items"]
    assert shop in {item["metadata"]["name"] for item in items if item["kind"] == "Namespace"}

    # least privilege: exec only where the namespace role was applied, nothing that writes
    assert can_i(control_plane, "create", "pods", "--subresource=exec", "-n", shop)
    assert not can_i(control_plane, "create", "pods", "--subresource=exec", "-n", other)
    assert not can_i(control_plane, "delete", "pods", "-n", shop)
    assert not can_i(control_plane, "get", "secrets", "-n", shop)
    assert not can_i(control_plane, "patch", "namespaces")


def test_uninstall_sidecars_unlabels_and_rolls(
    control_plane: ControlPlane,
    namespace_factory: NamespaceFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    shop = namespace_factory("shop", labels=OPT_IN)
    apply(control_plane, deployment_manifest("web", sidecar=True), shop)
    apply(control_plane, deployment_manifest("plain"), shop)
    apply(control_plane, pod_manifest("loner", sidecar=True), shop)
    wait_for(
        "the Deployment's pod",
        lambda: bool(
            control_plane.kubectl_json("get", "pods", "-n", shop, "-l", "app=web")["items"]
        ),
    )
    base = ["uninstall-sidecars", "-n", shop, "--kubeconfig", str(control_plane.kubeconfig)]

    assert main([*base, "--dry-run"]) == 0
    plan = capsys.readouterr().out
    assert f"namespace {shop}: would remove label netpol-sniffer.io/capture" in plan
    assert f"namespace {shop}: would restart deployment/web" in plan
    assert "plain" not in plan  # no sidecar, no restart
    assert "pod loner keeps its sidecar: a bare pod" in plan
    labels = control_plane.kubectl_json("get", "namespace", shop)["metadata"]["labels"]  # type: ignore[index]
    assert labels["netpol-sniffer.io/capture"] == "enabled"

    assert main(base) == 0
    labels = control_plane.kubectl_json("get", "namespace", shop)["metadata"]["labels"]  # type: ignore[index]
    assert "netpol-sniffer.io/capture" not in labels
    web = control_plane.kubectl_json("get", "deployment", "web", "-n", shop)
    annotations = web["spec"]["template"]["metadata"]["annotations"]  # type: ignore[index]
    assert "kubectl.kubernetes.io/restartedAt" in annotations
    plain = control_plane.kubectl_json("get", "deployment", "plain", "-n", shop)
    assert "annotations" not in plain["spec"]["template"]["metadata"]  # type: ignore[index]
