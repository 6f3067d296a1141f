"""collect, its RBAC and uninstall-sidecars against a real kube-apiserver and controller manager.

There is no real kubelet: pods are stored (a Deployment's by the controller manager) but never
run, so a test plays the kubelet's part in the status it writes (IPs, phase, running containers).
For exec, a Node points the API server at a local kubelet (tests/collector/fakeapiserver.py over
HTTPS) that runs the sidecar's commands on this machine: pulls go through the API server's own
authorization and exec proxy (v4.channel.k8s.io; v5 the API server would translate to SPDY).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from analyser.bundles import open_bundle, parse_manifest
from analyser.objects import ServiceRef
from analyser.snapshot import load_pod_ip_history, load_snapshot
from certs.make_certs import LOOPBACK_NAMES, make_certs
from cli.main import main
from collector.collecting import CollectOptions, collect
from collector.kube import KubernetesCluster, load_configuration
from kernel.errors import AccessDenied
from kernel.names import NODE_CAPTURE_NAMESPACE
from tests.collector.fakeapiserver import FakeAPIServer
from tests.e2e.controlplane import ControlPlane

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
    ingress = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": "site"},
        "spec": {"defaultBackend": {"service": {"name": "web", "port": {"number": 80}}}},
    }
    apply(control_plane, ingress, shop)
    wait_for(
        "the Deployment's pod",
        lambda: bool(
            control_plane.kubectl_json("get", "pods", "-n", shop, "-l", "app=web")["items"]
        ),
    )
    set_pod_ips(control_plane, shop, "first", ["10.244.1.7", "fd00:10:244::7"])

    # pages of 2 objects: every list of the snapshot goes through continue tokens
    paged = KubernetesCluster(load_configuration(str(control_plane.kubeconfig)), list_page_size=2)
    cluster = WatchStarted(paged)
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

    manifest = parse_manifest((out / "bundle.json").read_text(), source="bundle.json")
    assert manifest.producer == "collect" and manifest.captures == ()
    reasons = {
        s["pod"]: s["reason"] for s in json.loads((out / "bundle.json").read_text())["skipped"]
    }
    assert reasons["second"] == "sidecar not running yet (pod phase Running)"
    assert any(
        "no netpol-sniffer-capture sidecar" in r for p, r in reasons.items() if p != "second"
    )

    snapshot_path = out / "snapshot.json"
    document = json.loads(snapshot_path.read_text())
    kinds = {item["kind"] for item in document["items"]}
    assert {"Namespace", "Pod", "Service", "EndpointSlice", "Deployment", "ReplicaSet"} <= kinds
    # every page of every list is there
    for kind, resource in (("Namespace", "namespaces"), ("Service", "services")):
        ours = sorted(
            (i["metadata"].get("namespace", ""), i["metadata"]["name"])
            for i in document["items"]
            if i["kind"] == kind
        )
        theirs = control_plane.kubectl_json("get", resource, "-A")["items"]
        assert ours == sorted(
            (i["metadata"].get("namespace", ""), i["metadata"]["name"])
            for i in theirs  # type: ignore[attr-defined]
        )
    # items are what `kubectl get -o json` prints
    service = next(
        item
        for item in document["items"]
        if item["kind"] == "Service" and item["metadata"]["namespace"] == shop
    )
    assert service == control_plane.kubectl_json("get", "service", "web", "-n", shop)
    site = next(item for item in document["items"] if item["kind"] == "Ingress")
    assert site == control_plane.kubectl_json("get", "ingress", "site", "-n", shop)
    # this API server serves no Gateway API: HTTPRoutes answer 404 and are left out, quietly
    assert not {"HTTPRoute", "ReferenceGrant"} & kinds

    # and the analyser loads it
    snapshot = load_snapshot(snapshot_path)
    assert {ns.name for ns in snapshot.namespaces} >= {shop, "kube-system"}
    web = [p for p in snapshot.pods if p.labels.get("app") == "web"]
    assert web and web[0].meta.owner_references[0].kind == "ReplicaSet"
    assert [(r.kind, r.backends) for r in snapshot.routes] == [
        ("Ingress", (ServiceRef(shop, "web", 80),))
    ]


@pytest.fixture
def collector_identity(control_plane: ControlPlane, tmp_path: Path) -> Iterator[Path]:
    """A kubeconfig for the collector's ServiceAccount (its RBAC not applied yet)."""
    made_namespace = bool(
        control_plane.kubectl("get", "namespace", "netpol-sniffer", check=False).returncode
    )
    if made_namespace:
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
        if made_namespace:
            control_plane.kubectl("delete", "namespace", "netpol-sniffer", "--timeout=60s")


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


# ---------------------------------------------------------------------------------------------
# Exec through the real API server, with a kubelet that runs the pod's commands on this machine


@pytest.fixture
def local_kubelet(
    control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A Node whose kubelet is ``FakeAPIServer`` over HTTPS on 127.0.0.1: the API server proxies
    exec to it (v4 websocket) and it runs the commands here. Yields the node's name."""
    certificates = tmp_path_factory.mktemp("kubelet-certs")
    make_certs(certificates, names=list(LOOPBACK_NAMES))
    node = "local-kubelet"
    with FakeAPIServer(tls=(certificates / "tls.crt", certificates / "tls.key")) as kubelet:
        apply(control_plane, {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}})
        status = {
            "status": {
                "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet.port}},
            }
        }
        control_plane.kubectl(
            "patch",
            "node",
            node,
            "--subresource=status",
            "--type=merge",
            "-p",
            json.dumps(status),
        )
        try:
            yield node
        finally:
            control_plane.kubectl("delete", "node", node, "--ignore-not-found", check=False)


def running_sidecar_pod(
    plane: ControlPlane, namespace: str, name: str, *, node: str, captures: Path
) -> None:
    """A pod on ``node`` whose sidecar runs and keeps its captures in ``captures``."""
    manifest = pod_manifest(name, sidecar=True)
    manifest["spec"]["nodeName"] = node
    manifest["spec"]["containers"][1]["volumeMounts"] = [
        {"name": "netpol-sniffer-captures", "mountPath": str(captures)}
    ]
    manifest["spec"]["volumes"] = [{"name": "netpol-sniffer-captures", "emptyDir": {}}]
    apply(plane, manifest, namespace)
    started = "2026-01-01T00:00:00Z"
    statuses = [
        {
            "name": container,
            "ready": True,
            "started": True,
            "restartCount": 0,
            "image": image,
            "imageID": f"docker.io/library/{image}@sha256:{'0' * 64}",
            "containerID": f"containerd://{container}",
            "state": {"running": {"startedAt": started}},
        }
        for container, image in (("app", "app:1"), (SIDECAR, "capture:1"))
    ]
    status = {
        "status": {
            "phase": "Running",
            "podIP": "10.244.2.9",
            "podIPs": [{"ip": "10.244.2.9"}],
            "startTime": started,
            "containerStatuses": statuses,
        }
    }
    plane.kubectl(
        "patch",
        "pod",
        name,
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(status),
    )


def v4_cluster(kubeconfig: Path) -> KubernetesCluster:
    """The API server proxies v4 exec to the kubelet as it is; v5 it would translate to SPDY,
    which the local kubelet does not speak."""
    return KubernetesCluster(
        load_configuration(str(kubeconfig)), exec_protocols=("v4.channel.k8s.io",)
    )


def test_collect_pulls_through_a_real_api_servers_exec(
    control_plane: ControlPlane,
    namespace_factory: NamespaceFactory,
    local_kubelet: str,
    tmp_path: Path,
) -> None:
    shop = namespace_factory("shop", labels=OPT_IN)
    captures = tmp_path / "pod-captures"
    captures.mkdir()
    sample = (REPO / "tests/data/exec/sample.pcap").read_bytes()
    (captures / "capture.pcap0").write_bytes(sample)
    (captures / "capture.pcap1").write_bytes(sample[:24] + bytes(range(256)) * 200)
    (captures / "meta.json").write_text(json.dumps({"pod": "web-1", "namespace": shop}))
    running_sidecar_pod(control_plane, shop, "web-1", node=local_kubelet, captures=captures)

    out = tmp_path / "bundle"
    result = collect(
        v4_cluster(control_plane.kubeconfig), CollectOptions(out=out, namespaces=(shop,))
    )
    assert result.pods_pulled == 1 and result.skipped == ()
    for name in ("capture.pcap0", "capture.pcap1", "meta.json"):
        assert (out / "captures" / shop / "web-1" / name).read_bytes() == (
            captures / name
        ).read_bytes()
    bundle = open_bundle(out)
    assert bundle.problems == ()
    assert [path.name for path in bundle.captures] == ["capture.pcap0", "capture.pcap1"]
    assert sorted(p.name for p in captures.iterdir()) == [  # nothing written in the pod
        "capture.pcap0",
        "capture.pcap1",
        "meta.json",
    ]

    # a second run fetches only what tcpdump wrote since
    with (captures / "capture.pcap1").open("ab") as current:
        current.write(b"\x01" * 1000)
    again = collect(
        v4_cluster(control_plane.kubeconfig), CollectOptions(out=out, namespaces=(shop,))
    )
    assert (again.files_fetched, again.bytes_fetched) == (1, 1000)


def test_exec_without_the_namespace_role_is_named(
    control_plane: ControlPlane,
    namespace_factory: NamespaceFactory,
    local_kubelet: str,
    collector_identity: Path,
    tmp_path: Path,
) -> None:
    shop = namespace_factory("shop", labels=OPT_IN)
    captures = tmp_path / "pod-captures"
    captures.mkdir()
    (captures / "capture.pcap0").write_bytes(b"\xd4\xc3\xb2\xa1" + bytes(20))
    running_sidecar_pod(control_plane, shop, "web-1", node=local_kubelet, captures=captures)
    control_plane.kubectl("apply", "-k", str(REPO / "manifests/collector-rbac"))
    wait_for("the reader role", lambda: can_i(control_plane, "watch", "pods", "--all-namespaces"))

    with pytest.raises(AccessDenied) as denied:
        collect(
            v4_cluster(collector_identity), CollectOptions(out=tmp_path / "b", namespaces=(shop,))
        )
    message = str(denied.value)
    assert f"needs 'create' on 'pods/exec' in namespace {shop}" in message
    assert COLLECTOR in message

    control_plane.kubectl(
        "apply", "-n", shop, "-k", str(REPO / "manifests/collector-rbac/namespace")
    )
    wait_for(
        "the exec role",
        lambda: can_i(control_plane, "create", "pods", "--subresource=exec", "-n", shop),
    )
    result = collect(
        v4_cluster(collector_identity), CollectOptions(out=tmp_path / "b", namespaces=(shop,))
    )
    assert result.pods_pulled == 1 and result.skipped == ()


def test_node_capture_rbac_is_exec_in_its_own_namespace_only(
    control_plane: ControlPlane,
    namespace_factory: NamespaceFactory,
    collector_identity: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """manifests/node-capture applies (its namespace at Pod Security privileged); the collector's
    namespace role applied there grants exec into the node capture's pods and nowhere else; with
    no node to run on, collect --node-captures says the capture is not running."""
    bank = namespace_factory("bank", labels=OPT_IN)
    # The pod networks a user sets in an overlay: here in a copy of the kustomization.
    overlay = tmp_path / "node-capture"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(REPO / "manifests/node-capture", overlay)],
                "configMapGenerator": [
                    {
                        "name": "netpol-sniffer-node-capture",
                        "namespace": NODE_CAPTURE_NAMESPACE,
                        "behavior": "merge",
                        "literals": ["NETPOL_SNIFFER_POD_NETWORKS=10.244.0.0/16"],
                    }
                ],
            }
        )
    )
    control_plane.kubectl("apply", "-k", str(overlay))
    try:
        labels = json.loads(
            control_plane.kubectl("get", "namespace", NODE_CAPTURE_NAMESPACE, "-o", "json").stdout
        )["metadata"]["labels"]
        assert labels["pod-security.kubernetes.io/enforce"] == "privileged"
        control_plane.kubectl("apply", "-k", str(REPO / "manifests/collector-rbac"))
        control_plane.kubectl(
            "apply",
            "-n",
            NODE_CAPTURE_NAMESPACE,
            "-k",
            str(REPO / "manifests/collector-rbac/namespace"),
        )
        exec_there = ("create", "pods", "--subresource=exec", "-n", NODE_CAPTURE_NAMESPACE)
        wait_for("the exec role", lambda: can_i(control_plane, *exec_there))
        assert not can_i(control_plane, "create", "pods", "--subresource=exec", "-n", bank)
        assert not can_i(control_plane, "get", "secrets", "-n", NODE_CAPTURE_NAMESPACE)
        assert not can_i(control_plane, "delete", "pods", "-n", NODE_CAPTURE_NAMESPACE)
        args = ["collect", "-n", bank, "-o", str(tmp_path / "b"), "--node-captures"]
        assert main([*args, "--kubeconfig", str(collector_identity)]) == 1
        assert "no node capture runs" in capsys.readouterr().err
    finally:
        control_plane.kubectl(
            "delete", "-k", str(overlay), "--wait=false", "--ignore-not-found", check=False
        )
