"""collect and uninstall-sidecars against an in-memory cluster, and the kubernetes client's real
code paths (REST errors, the exec websocket) against a local API server (fakeapiserver)."""

from __future__ import annotations

import base64
import datetime
import io
import json
import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s_client

from analyser.bundles import open_bundle
from analyser.snapshot import load_pod_ip_history, load_snapshot
from cli.main import ExitStatus, main
from collector.collecting import PARTIALS, CollectOptions, capture_mode, collect, pull_target
from collector.history import PodIPHistory
from collector.kinds import (
    DEPLOYMENTS,
    HTTP_ROUTES,
    INGRESSES,
    NAMESPACES,
    PODS,
    REFERENCE_GRANTS,
    ROLLABLE_KINDS,
    SNAPSHOT_KINDS,
)
from collector.kube import KubernetesCluster, load_configuration
from collector.memory import MemoryCluster
from collector.pulling import PodPuller, PullTarget, drain, fetch_command
from collector.uninstalling import apply_uninstall, plan_uninstall
from kernel.bundles import SkippedCapture
from kernel.capture import CaptureMode
from kernel.errors import AccessDenied, BundleError, CollectError, NotFound
from kernel.names import CAPTURE_LABEL
from tests.collector.fakeapiserver import FakeAPIServer, cut_connection_after, status_body
from tests.collector.localexec import FRAME_BYTES, LocalExec, flip_first_byte
from webhook.capture import CaptureOptions, tcpdump_argv

EXEC_DATA = Path(__file__).parent.parent / "data" / "exec"
SIDECAR = "netpol-sniffer-capture"


# --- an in-memory cluster ---------------------------------------------------------------------


def namespace(name: str, *, labelled: bool = True) -> dict[str, Any]:
    labels = {"kubernetes.io/metadata.name": name}
    if labelled:
        labels[CAPTURE_LABEL] = "enabled"
    return {"metadata": {"name": name, "labels": labels, "managedFields": [{"manager": "x"}]}}


def pod(
    ns: str,
    name: str,
    *,
    ips: Sequence[str] = (),
    captures: Path | None = None,
    sidecar_state: str = "running",
    owner: tuple[str, str] | None = None,
    phase: str = "Running",
) -> dict[str, Any]:
    containers: list[dict[str, Any]] = [{"name": "app", "image": "app"}]
    statuses: list[dict[str, Any]] = [{"name": "app", "state": {"running": {}}}]
    if captures is not None:
        containers.append(
            {
                "name": SIDECAR,
                "image": "capture",
                "command": tcpdump_argv(CaptureOptions(mode=CaptureMode.HANDSHAKE)),
                "volumeMounts": [{"name": "netpol-sniffer-captures", "mountPath": str(captures)}],
            }
        )
        state = (
            {"running": {}}
            if sidecar_state == "running"
            else {"waiting": {"reason": sidecar_state}}
        )
        statuses.append({"name": SIDECAR, "state": state})
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": ns,
        "uid": f"uid-{ns}-{name}",
        "labels": {"app": name},
    }
    if owner is not None:
        metadata["ownerReferences"] = [{"kind": owner[0], "name": owner[1], "controller": True}]
    status: dict[str, Any] = {
        "phase": phase,
        "containerStatuses": statuses,
        "startTime": "2026-01-01T00:00:00Z",
    }
    if ips:
        status["podIP"] = ips[0]
        status["podIPs"] = [{"ip": ip} for ip in ips]
    return {"metadata": metadata, "spec": {"containers": containers}, "status": status}


def local_exec(cluster: MemoryCluster) -> LocalExec:
    """The local exec a test cluster runs its pods' commands with."""
    assert isinstance(cluster.exec_handler, LocalExec)
    return cluster.exec_handler


META = b'{"pod": "web-1", "namespace": "shop", "start_time": "2026-01-01T08:00:00Z"}'


def sidecar_dir(root: Path, name: str, files: Mapping[str, bytes]) -> Path:
    directory = root / "pods" / name
    directory.mkdir(parents=True)
    for file_name, data in files.items():
        (directory / file_name).write_bytes(data)
    return directory


@pytest.fixture
def shop(tmp_path: Path) -> MemoryCluster:
    web = sidecar_dir(tmp_path, "web", {"capture.pcap0": bytes(range(256)) * 40, "meta.json": META})
    db = sidecar_dir(tmp_path, "db", {"capture.pcap0": b"\x00\xff" * 999})
    return MemoryCluster(
        {
            "Namespace": [
                namespace("shop"),
                namespace("kube-system", labelled=False),
                namespace("other", labelled=False),
            ],
            "Node": [{"metadata": {"name": "node-1"}}],
            "Pod": [
                pod(
                    "shop", "web-1", ips=["10.0.0.5"], captures=web, owner=("ReplicaSet", "web-1a")
                ),
                pod(
                    "shop",
                    "db-0",
                    ips=["10.0.0.6", "fd00::6"],
                    captures=db,
                    owner=("StatefulSet", "db"),
                ),
                pod("shop", "old", ips=["10.0.0.7"]),
                pod("shop", "new", captures=tmp_path / "none", sidecar_state="ContainerCreating"),
                pod("kube-system", "coredns-1", ips=["10.0.0.2"]),
            ],
            "Service": [{"metadata": {"name": "web", "namespace": "shop"}}],
            "ReplicaSet": [
                {
                    "metadata": {
                        "name": "web-1a",
                        "namespace": "shop",
                        "ownerReferences": [
                            {"kind": "Deployment", "name": "web", "controller": True}
                        ],
                    }
                }
            ],
            "NetworkPolicy": [{"metadata": {"name": "deny", "namespace": "other"}}],
            "Ingress": [{"metadata": {"name": "web", "namespace": "shop"}}],
            "HTTPRoute": [{"metadata": {"name": "web", "namespace": "shop"}}],
            "ReferenceGrant": [{"metadata": {"name": "web", "namespace": "shop"}}],
        },
        exec_handler=LocalExec(),
    )


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- collect ----------------------------------------------------------------------------------


def test_collect_writes_a_complete_bundle(shop: MemoryCluster, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    result = collect(shop, CollectOptions(out=out, namespaces=("shop",)))
    assert result.pods_pulled == 2

    snapshot = json.loads((out / "snapshot.json").read_text())
    assert snapshot["kind"] == "List" and snapshot["apiVersion"] == "v1"
    kinds = [item["kind"] for item in snapshot["items"]]
    assert kinds == sorted(kinds, key=[k.kind for k in SNAPSHOT_KINDS].index)
    assert {"Namespace", "Node", "Pod", "Service", "ReplicaSet", "NetworkPolicy"} <= set(kinds)
    assert {"Ingress", "HTTPRoute", "ReferenceGrant"} <= set(kinds)
    coredns = [i for i in snapshot["items"] if i["metadata"]["name"] == "coredns-1"]
    assert coredns and coredns[0]["apiVersion"] == "v1"  # peers in other namespaces are there
    assert all("managedFields" not in item["metadata"] for item in snapshot["items"])
    policy = next(i for i in snapshot["items"] if i["kind"] == "NetworkPolicy")
    assert policy["apiVersion"] == "networking.k8s.io/v1"

    bundle = json.loads((out / "bundle.json").read_text())
    assert bundle["producer"] == "collect" and bundle["format_version"] == 1
    assert bundle["capture_mode"] == "handshake"
    # the captures go back to when the sidecar started, as its meta.json says
    assert bundle["window"]["start"] == "2026-01-01T08:00:00.000000Z"
    assert bundle["window"]["start"] < bundle["window"]["end"]
    assert [(e["path"], e["size"]) for e in bundle["captures"]] == [
        ("captures/shop/db-0/capture.pcap0", 1998),
        ("captures/shop/web-1/capture.pcap0", 10240),
    ]
    assert (out / "captures/shop/web-1/capture.pcap0").read_bytes() == bytes(range(256)) * 40
    assert (out / "captures/shop/web-1/meta.json").exists()
    reasons = {entry["pod"]: entry["reason"] for entry in bundle["skipped"]}
    assert set(reasons) == {"old", "new"}
    assert "no netpol-sniffer-capture sidecar" in reasons["old"]
    assert reasons["new"] == "sidecar not running: waiting (ContainerCreating)"

    lines = read_lines(out / "pod-ips.jsonl")
    db = [line for line in lines if line["pod"] == "db-0"]
    assert db == [
        {
            "time": "2026-01-01T00:00:00Z",
            "event": "ADDED",
            "namespace": "shop",
            "pod": "db-0",
            "uid": "uid-shop-db-0",
            "ips": ["10.0.0.6", "fd00::6"],
            "labels": {"app": "db-0"},
            "owner": {"kind": "StatefulSet", "name": "db"},
        }
    ]
    assert "new" not in {line["pod"] for line in lines}  # no IP, nothing to record


def test_the_bundle_opens_with_the_analysers_loaders(shop: MemoryCluster, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    collect(shop, CollectOptions(out=out, namespaces=("shop",)))
    bundle = open_bundle(out)
    assert bundle.problems == ()
    assert bundle.manifest is not None and bundle.manifest.producer == "collect"
    assert [path.name for path in bundle.captures] == ["capture.pcap0", "capture.pcap0"]
    assert not (out / PARTIALS).exists()
    snapshot = load_snapshot(bundle.snapshot)
    assert {pod.name for pod in snapshot.pods} >= {"web-1", "db-0", "coredns-1"}
    assert bundle.pod_ips is not None
    history = load_pod_ip_history(bundle.pod_ips)
    assert {(event.pod, event.ips) for event in history} >= {("db-0", ("10.0.0.6", "fd00::6"))}


def test_second_collect_fetches_nothing_new_and_keeps_the_window_start(
    shop: MemoryCluster, tmp_path: Path
) -> None:
    out = tmp_path / "bundle"
    collect(shop, CollectOptions(out=out, namespaces=("shop",)))
    first = json.loads((out / "bundle.json").read_text())
    local_exec(shop).commands.clear()
    result = collect(shop, CollectOptions(out=out, namespaces=("shop",)))
    assert result.files_fetched == 0 and result.bytes_fetched == 0
    assert local_exec(shop).fetches() == []
    second = json.loads((out / "bundle.json").read_text())
    assert second["window"]["start"] == first["window"]["start"]
    assert second["captures"] == first["captures"]


def test_ip_changes_during_the_window_and_an_expired_watch(
    shop: MemoryCluster, tmp_path: Path
) -> None:
    moved = pod(
        "shop",
        "web-1",
        ips=["10.0.0.9"],
        captures=tmp_path / "pods" / "web",
        owner=("ReplicaSet", "web-1a"),
    )
    reuser = pod("shop", "web-2", ips=["10.0.0.5"], owner=("ReplicaSet", "web-1a"))
    shop.watch_scripts = [
        [
            {"type": "MODIFIED", "object": moved},
            {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "120"}}},
            {"type": "ERROR", "object": {"kind": "Status", "code": 410}},
        ],
        [{"type": "ADDED", "object": reuser}],
    ]

    def db_goes_away() -> None:  # while the watch is expired: only the relist can notice
        shop.objects["Pod"] = [p for p in shop.objects["Pod"] if p["metadata"]["name"] != "db-0"]

    shop.on_expiry = db_goes_away
    collect(shop, CollectOptions(out=tmp_path / "b", namespaces=("shop",), duration=1.5))
    lines = read_lines(tmp_path / "b" / "pod-ips.jsonl")
    events = [(line["event"], line["pod"], line["ips"]) for line in lines]
    assert ("MODIFIED", "web-1", ["10.0.0.9"]) in events
    assert ("ADDED", "web-2", ["10.0.0.5"]) in events  # the reused IP, with its new owner
    assert ("DELETED", "db-0", ["10.0.0.6", "fd00::6"]) in events
    assert events.index(("MODIFIED", "web-1", ["10.0.0.9"])) < events.index(
        ("ADDED", "web-2", ["10.0.0.5"])
    )


def test_pod_ip_history_resync_reports_pods_gone_meanwhile() -> None:
    sink = io.StringIO()
    moment = datetime.datetime(2026, 1, 1, 12, tzinfo=datetime.UTC)
    history = PodIPHistory(sink, clock=lambda: moment)
    history.resync([pod("a", "p", ips=["10.1.1.1"]), pod("a", "q", ips=["10.1.1.2"])])
    history.resync([pod("a", "p", ips=["10.1.1.1"])])
    last = json.loads(sink.getvalue().splitlines()[-1])
    assert (last["event"], last["pod"], last["ips"]) == ("DELETED", "q", ["10.1.1.2"])
    assert last["time"] == "2026-01-01T12:00:00.000000Z"
    assert history.lines == 3


def test_a_namespace_that_is_not_opted_in_is_an_error(shop: MemoryCluster, tmp_path: Path) -> None:
    with pytest.raises(CollectError, match=r"namespace other is not opted in.*capture=enabled"):
        collect(shop, CollectOptions(out=tmp_path / "b", namespaces=("shop", "other")))


def test_all_labelled_finds_the_opted_in_namespaces(shop: MemoryCluster, tmp_path: Path) -> None:
    result = collect(shop, CollectOptions(out=tmp_path / "b", all_labelled=True))
    assert result.namespaces == ("shop",)


def test_missing_exec_permission_stops_collect_naming_it(
    shop: MemoryCluster, tmp_path: Path
) -> None:
    shop.denied.add(("create", "pods/exec"))
    with pytest.raises(AccessDenied, match=r"needs 'create' on 'pods/exec' in namespace shop"):
        collect(shop, CollectOptions(out=tmp_path / "b", namespaces=("shop",)))


def test_a_gateway_api_the_cluster_does_not_serve_is_left_out(
    shop: MemoryCluster, tmp_path: Path
) -> None:
    shop.unserved |= {HTTP_ROUTES.resource, REFERENCE_GRANTS.resource}
    collect(shop, CollectOptions(out=tmp_path / "b", namespaces=("shop",)))
    kinds = {
        item["kind"] for item in json.loads((tmp_path / "b/snapshot.json").read_text())["items"]
    }
    assert "Ingress" in kinds and not {"HTTPRoute", "ReferenceGrant"} & kinds


def test_a_kind_every_cluster_serves_answering_404_stops_collect(
    shop: MemoryCluster, tmp_path: Path
) -> None:
    shop.unserved.add(INGRESSES.resource)
    with pytest.raises(NotFound, match=r"cannot list ingresses.networking.k8s.io cluster-wide"):
        collect(shop, CollectOptions(out=tmp_path / "b", namespaces=("shop",)))


def test_a_lab_bundle_is_not_collected_into(shop: MemoryCluster, tmp_path: Path) -> None:
    out = tmp_path / "b"
    out.mkdir()
    (out / "bundle.json").write_text('{"producer": "lab"}')
    with pytest.raises(BundleError, match="made by 'lab'"):
        collect(shop, CollectOptions(out=out, namespaces=("shop",)))


# --- uninstall-sidecars -----------------------------------------------------------------------


def test_uninstall_unlabels_and_rolls_only_workloads_with_sidecars(
    shop: MemoryCluster, tmp_path: Path
) -> None:
    shop.objects["Pod"].append(pod("shop", "backup-x", captures=tmp_path, owner=("Job", "backup")))
    plan = plan_uninstall(shop, "shop")
    assert plan.unlabel
    assert plan.restarts == (("Deployment", "web"), ("StatefulSet", "db"))
    assert [name for name, _ in plan.manual] == ["backup-x", "new"]
    assert "bare pod" in dict(plan.manual)["new"]
    apply_uninstall(shop, plan, now=datetime.datetime(2026, 2, 3, 4, 5, 6, tzinfo=datetime.UTC))
    assert shop.patches[0] == (
        "Namespace",
        "shop",
        None,
        {"metadata": {"labels": {CAPTURE_LABEL: None}}},
    )
    restarted = {(kind, name): patch for kind, name, _, patch in shop.patches[1:]}
    assert set(restarted) == {("Deployment", "web"), ("StatefulSet", "db")}
    annotations = restarted[("Deployment", "web")]["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {"kubectl.kubernetes.io/restartedAt": "2026-02-03T04:05:06Z"}


# --- the kubernetes client against a local API server -----------------------------------------


def real_cluster(api: FakeAPIServer) -> KubernetesCluster:
    configuration = k8s_client.Configuration()
    configuration.host = api.host
    return KubernetesCluster(configuration, idle_timeout=5)


def recorded_frames(name: str) -> list[tuple[int, bytes]]:
    recorded = json.loads((EXEC_DATA / name).read_text())
    assert recorded["protocol"] == "v4.channel.k8s.io"
    return [(f["channel"], base64.b64decode(f["data"])) for f in recorded["frames"]]


def test_recorded_frames_replayed_through_the_kubernetes_client() -> None:
    replay = recorded_frames("fetch-success.json")
    with FakeAPIServer(faults=[("dd", lambda frames: iter(replay))]) as api:
        cluster = real_cluster(api)
        sink = io.BytesIO()
        with cluster.exec(
            namespace="shop", pod="web-1", container=SIDECAR, command=["sh", "-c", "exec dd"]
        ) as frames:
            drain(frames, sink, what="fetch")
    assert sink.getvalue() == (EXEC_DATA / "sample.pcap").read_bytes()


def test_pull_through_the_websocket_survives_a_dropped_connection(tmp_path: Path) -> None:
    pod_dir = sidecar_dir(
        tmp_path,
        "web",
        {
            "capture.pcap0": (EXEC_DATA / "sample.pcap").read_bytes(),
            "capture.pcap1": bytes(range(256)) * 300,
        },
    )
    target = PullTarget(namespace="shop", pod="web-1", container=SIDECAR, directory=str(pod_dir))
    with FakeAPIServer(
        faults=[("capture.pcap0", cut_connection_after(7_000))], protocol="v5.channel.k8s.io"
    ) as api:
        report = PodPuller(
            real_cluster(api).exec, target, tmp_path / "out", partial_directory=tmp_path / "p"
        ).pull()
        fetch_offsets = [
            int(command[5])
            for command in api.exec_commands
            if "exec dd" in command[2] and command[6] == "capture.pcap0"
        ]
    assert report.failures == ()
    assert fetch_offsets == [0, 7_000]
    for name in ("capture.pcap0", "capture.pcap1"):
        assert (tmp_path / "out" / name).read_bytes() == (pod_dir / name).read_bytes()


@pytest.mark.parametrize("protocol", ["v5.channel.k8s.io", "v4.channel.k8s.io"])
def test_the_negotiated_exec_protocol_is_logged_for_debug(
    protocol: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``--debug`` says which of the offered protocols the API server chose."""
    (tmp_path / "f").write_bytes(b"x")
    target = PullTarget(namespace="shop", pod="web-1", container=SIDECAR, directory=str(tmp_path))
    with FakeAPIServer(protocol=protocol) as api, caplog.at_level(logging.DEBUG, "collector"):
        command = fetch_command(target, "f", offset=0, count=1)
        with real_cluster(api).exec(
            namespace="shop", pod="web-1", container=SIDECAR, command=command
        ) as frames:
            list(frames)
    assert f"exec shop/web-1: protocol {protocol}" in caplog.messages


def test_exec_frames_are_handed_on_one_by_one(tmp_path: Path) -> None:
    """Streaming: nothing accumulates between the socket and the file (a client that gathers
    every frame already available would hand over one big chunk)."""
    (tmp_path / "big").write_bytes(bytes(range(256)) * 8192)  # 2 MiB
    target = PullTarget(namespace="shop", pod="web-1", container=SIDECAR, directory=str(tmp_path))
    with FakeAPIServer() as api:
        cluster = real_cluster(api)
        command = fetch_command(target, "big", offset=0, count=2 << 20)
        with cluster.exec(
            namespace="shop", pod="web-1", container=SIDECAR, command=command
        ) as frames:
            sizes = [len(data) for channel, data in frames if channel == 1]
    assert sum(sizes) == 2 << 20
    assert max(sizes) <= FRAME_BYTES


def test_corruption_on_the_wire_is_caught_by_the_pods_checksum(tmp_path: Path) -> None:
    pod_dir = sidecar_dir(tmp_path, "web", {"capture.pcap0": bytes(range(256)) * 64})
    target = PullTarget(namespace="shop", pod="web-1", container=SIDECAR, directory=str(pod_dir))
    with FakeAPIServer(faults=[("exec dd", flip_first_byte)]) as api:
        report = PodPuller(
            real_cluster(api).exec, target, tmp_path / "out", partial_directory=tmp_path / "p"
        ).pull()
        fetches = [c for c in api.exec_commands if "exec dd" in c[2]]
    assert report.failures == () and len(fetches) == 2
    assert (tmp_path / "out" / "capture.pcap0").read_bytes() == bytes(range(256)) * 64


def test_exec_refused_by_rbac_names_the_permission(tmp_path: Path) -> None:
    refusal = (
        403,
        status_body(
            403,
            'pods "web-1" is forbidden: User "bob" cannot create '
            'resource "pods/exec" in API group "" in the namespace "shop"',
        ),
    )
    with FakeAPIServer(exec_refusal=refusal) as api, pytest.raises(AccessDenied) as caught:
        target = PullTarget(namespace="shop", pod="web-1", container=SIDECAR, directory="/c")
        PodPuller(real_cluster(api).exec, target, tmp_path, partial_directory=tmp_path).pull()
    message = str(caught.value)
    assert "cannot create pods/exec web-1 in namespace shop" in message
    assert "needs 'create' on 'pods/exec' in namespace shop" in message
    assert 'User "bob" cannot create' in message


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (
            403,
            r"cannot list pods cluster-wide: needs 'list' on 'pods' cluster-wide "
            r"\(API server: nope\); see manifests/collector-rbac/",
        ),
        (401, r"rejected the credentials; check --kubeconfig/--context"),
        (404, r"cannot list pods cluster-wide: not found \(API server: nope\)"),
        (500, r"cannot list pods cluster-wide: HTTP 500 \(API server: nope\)"),
    ],
)
def test_rest_errors_are_translated(status: int, expected: str) -> None:
    routes = {("GET", "/api/v1/pods"): (status, status_body(status, "nope"))}
    with FakeAPIServer(routes=routes) as api, pytest.raises(CollectError, match=expected) as caught:
        real_cluster(api).list(PODS)
    assert isinstance(caught.value, AccessDenied) == (status == 403)
    assert isinstance(caught.value, NotFound) == (status == 404)


def test_group_resources_are_named_as_rbac_names_them() -> None:
    routes = {("GET", "/apis/apps/v1/namespaces/shop/deployments"): (403, status_body(403, "x"))}
    with (
        FakeAPIServer(routes=routes) as api,
        pytest.raises(AccessDenied, match=r"needs 'list' on 'deployments.apps' in namespace shop"),
    ):
        real_cluster(api).list(DEPLOYMENTS, namespace="shop")


def test_unreachable_api_server() -> None:
    configuration = k8s_client.Configuration()
    configuration.host = "http://127.0.0.1:9"  # discard port: nothing listens
    configuration.retries = 0
    with pytest.raises(CollectError, match=r"cannot reach the API server at http://127.0.0.1:9"):
        KubernetesCluster(configuration).get(NAMESPACES, "shop")


def write_kubeconfig(path: Path, server: str) -> Path:
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "local",
                "clusters": [{"name": "local", "cluster": {"server": server}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "local", "context": {"cluster": "local", "user": "u"}}],
            }
        )
    )
    return path


def test_cli_says_once_that_the_api_server_is_unreachable(tmp_path: Path) -> None:
    """One error line naming the server, not the HTTP library's warning for every retry (run as a
    process: its logging is set up as a user's is, not as pytest's)."""
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", f"https://127.0.0.1:{port}")
    argv = ["collect", "-n", "shop", "-o", str(tmp_path / "b"), "--kubeconfig", str(kubeconfig)]
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", *argv], capture_output=True, text=True, check=False
    )
    assert result.returncode == ExitStatus.ERROR
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("netpol-sniffer collect: error: ")
    assert f"https://127.0.0.1:{port}" in lines[0]


def test_cli_reports_a_missing_permission(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    routes = {("GET", "/api/v1/namespaces/shop"): (403, status_body(403, "forbidden"))}
    with FakeAPIServer(routes=routes) as api:
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", api.host)
        status = main(
            [
                "collect",
                "--namespace",
                "shop",
                "--out",
                str(tmp_path / "b"),
                "--kubeconfig",
                str(kubeconfig),
            ]
        )
        assert ("GET", "/api/v1/namespaces/shop") in api.requests
    assert status == 1
    assert "needs 'get' on 'namespaces' cluster-wide" in capsys.readouterr().err


def test_the_kubeconfigs_token_reaches_rest_and_exec(tmp_path: Path) -> None:
    routes = {("GET", "/api/v1/namespaces/shop"): (200, namespace("shop"))}
    with FakeAPIServer(routes=routes) as api:
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", api.host)
        cluster = KubernetesCluster(load_configuration(str(kubeconfig), "local"))
        cluster.get(NAMESPACES, "shop")
        with cluster.exec(namespace="shop", pod="p", container="c", command=["true"]) as frames:
            drain(frames, io.BytesIO(), what="true")
    assert api.authorizations == ["Bearer t", "Bearer t"]


def test_no_kubeconfig_and_not_in_a_pod_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setattr(
        "kubernetes.config.KUBE_CONFIG_DEFAULT_LOCATION", str(tmp_path / ".kube" / "config")
    )
    with pytest.raises(CollectError) as caught:
        load_configuration()
    message = str(caught.value)
    assert "no kubeconfig ($KUBECONFIG is not set and" in message
    assert "not in a pod (no service account)" in message
    assert "context current" not in message  # no kubeconfig: no context to speak of


def test_cli_names_an_unusable_kubeconfig(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(
        [
            "collect",
            "-n",
            "shop",
            "-o",
            str(tmp_path / "b"),
            "--kubeconfig",
            str(tmp_path / "absent"),
            "--context",
            "prod",
        ]
    )
    assert status == 1
    err = capsys.readouterr().err
    assert "no usable cluster access" in err and "context prod" in err


def test_fetch_command_runs_in_a_debian_shell(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"0123456789")
    target = PullTarget(namespace="n", pod="p", container="c", directory=str(tmp_path))
    sink = io.BytesIO()
    with LocalExec()(
        namespace="n", pod="p", container="c", command=fetch_command(target, "f", offset=3, count=4)
    ) as frames:
        drain(frames, sink, what="fetch")
    assert sink.getvalue() == b"3456"


# --- the RBAC manifests match what the code asks for ------------------------------------------

RBAC = Path(__file__).resolve().parents[2] / "manifests" / "collector-rbac"


def granted(path: Path) -> set[tuple[str, str]]:
    """(verb, resource as RBAC names it) pairs a Role/ClusterRole file grants."""
    role = yaml.safe_load(path.read_text())
    return {
        (verb, f"{resource}.{group}" if group else resource)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_reader_role_grants_list_and_watch_of_every_snapshot_kind() -> None:
    rules = granted(RBAC / "clusterrole-reader.yaml")
    for kind in SNAPSHOT_KINDS:
        assert ("list", kind.resource) in rules, kind
    assert ("watch", "pods") in rules and ("get", "namespaces") in rules
    assert not {verb for verb, _ in rules} - {"get", "list", "watch"}  # read-only


def test_exec_role_is_namespaced_and_only_exec() -> None:
    role = yaml.safe_load((RBAC / "namespace" / "role.yaml").read_text())
    assert role["kind"] == "Role" and "namespace" not in role["metadata"]
    assert granted(RBAC / "namespace" / "role.yaml") == {
        ("get", "pods/exec"),
        ("create", "pods/exec"),
    }


def test_uninstaller_role_covers_what_uninstall_sidecars_patches() -> None:
    rules = granted(RBAC / "clusterrole-uninstaller.yaml")
    assert ("patch", "namespaces") in rules and ("list", "pods") in rules
    for kind in ROLLABLE_KINDS.values():
        assert ("patch", kind.resource) in rules, kind


# --- which pods can be pulled -----------------------------------------------------------------


def test_a_native_sidecar_is_found_among_init_containers(tmp_path: Path) -> None:
    native = pod("shop", "job-x", captures=tmp_path, owner=("Job", "backup"))
    sidecar = native["spec"]["containers"].pop()
    native["spec"]["initContainers"] = [{**sidecar, "restartPolicy": "Always"}]
    native["status"]["initContainerStatuses"] = [native["status"]["containerStatuses"].pop()]
    target = pull_target(native)
    assert isinstance(target, PullTarget) and target.directory == str(tmp_path)
    assert capture_mode(native) == "handshake"


@pytest.mark.parametrize(
    ("phase", "state", "reason"),
    [
        ("Succeeded", "Completed", "pod has ended (phase Succeeded); its sidecar no longer runs"),
        ("Running", "CrashLoopBackOff", "sidecar not running: waiting (CrashLoopBackOff)"),
    ],
)
def test_pods_that_cannot_be_pulled_say_why(
    tmp_path: Path, phase: str, state: str, reason: str
) -> None:
    skipped = pull_target(pod("a", "p", captures=tmp_path, sidecar_state=state, phase=phase))
    assert isinstance(skipped, SkippedCapture)
    assert skipped.reason == reason
    # A Job's pod that ended took its captures with it: expected, not a failure of collect.
    assert skipped.finished is (phase == "Succeeded")


def test_pulls_run_in_parallel_but_bounded(tmp_path: Path) -> None:
    pods = []
    for number in range(6):
        directory = sidecar_dir(tmp_path, f"p{number}", {"capture.pcap0": b"x" * 100})
        pods.append(pod("shop", f"p{number}", ips=[f"10.0.1.{number}"], captures=directory))
    cluster = MemoryCluster(
        {"Namespace": [namespace("shop")], "Pod": pods}, exec_handler=LocalExec()
    )
    running, peak, lock = [0], [0], threading.Lock()
    run_locally = local_exec(cluster)

    @contextmanager
    def slow_exec(**kwargs: Any) -> Iterator[Iterable[tuple[int, bytes]]]:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05)
        try:
            with run_locally(**kwargs) as frames:
                yield frames
        finally:
            with lock:
                running[0] -= 1

    cluster.exec = slow_exec  # type: ignore[method-assign]
    done: list[object] = []
    result = collect(
        cluster,
        CollectOptions(out=tmp_path / "b", namespaces=("shop",), parallel=2),
        on_pod_done=done.append,
    )
    assert result.pods_pulled == 6 and len(done) == 6
    assert peak[0] == 2
