"""Loading snapshots, pod IP history and meta.json: shapes accepted, indices, clear errors."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from analyser.flows import Protocol
from analyser.identities import Resolver
from analyser.objects import (
    Controller,
    Endpoints,
    EndpointSlice,
    Node,
    OwnerReference,
    Pod,
    PodPort,
    PublishedPort,
    Service,
    controller_of,
    owner_references,
    pod_ips,
)
from analyser.selectors import LabelRequirement, LabelSelector
from analyser.snapshot import (
    Snapshot,
    load_capture_meta,
    load_pod_ip_history,
    load_snapshot,
    parse_snapshot_documents,
)
from analyser.workloads import WorkloadRef
from kernel.errors import SnapshotError
from kernel.times import parse_timestamp

DATA = Path(__file__).parent.parent / "data" / "snapshots"
CLUSTER = DATA / "cluster.json"


@pytest.fixture(scope="module")
def cluster() -> Snapshot:
    return load_snapshot(CLUSTER)


def _pod(name: str, ip: str, **labels: str) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "uid": f"uid-{name}", "labels": labels},
        "spec": {"containers": [{"name": "main"}]},
        "status": {"podIP": ip, "podIPs": [{"ip": ip}]},
    }


def test_a_kubectl_list_is_indexed(cluster: Snapshot) -> None:
    assert len(cluster.pods) == 18
    assert {p.name for p in cluster.pods} >= {"db-0", "cache", "debug"}
    # Unknown kinds (the ConfigMap) are ignored; existing NetworkPolicies are kept.
    assert cluster.of_kind("ConfigMap") == []
    assert [n.name for n in cluster.network_policies] == ["existing-allow-web"]
    assert cluster.get("StatefulSet", "shop", "db") is not None
    assert cluster.by_uid(cluster.pods[0].uid) is cluster.pods[0]


def test_dual_stack_cluster_ips_both_name_the_service(cluster: Snapshot) -> None:
    v4 = cluster.services_by_cluster_ip["10.96.20.1"]
    v6 = cluster.services_by_cluster_ip["fd00:10:96::20"]
    assert v4 is v6
    assert v4.name == "web"


def test_headless_services_have_no_cluster_ip(cluster: Snapshot) -> None:
    names = {s.name for s in cluster.services_by_cluster_ip.values()}
    assert "db" not in names
    assert "None" not in cluster.services_by_cluster_ip


def test_nodes_by_address_and_host_network_pods_are_not_pod_ips(cluster: Snapshot) -> None:
    assert cluster.node_by_address == {"192.168.49.2": "node-a", "192.168.49.3": "node-b"}
    assert "192.168.49.2" not in cluster.pods_by_ip  # node-exporter is hostNetwork
    # Two pods held 10.244.0.30 at different times (a finished Job pod, then a bare pod).
    assert sorted(p.name for p in cluster.pods_by_ip["10.244.0.30"]) == [
        "cache",
        "report-29400000-z9x8c",
    ]
    assert cluster.pod_cidrs == ("10.244.0.0/24", "10.244.1.0/24")


def test_endpoint_slices_are_found_by_service_name(cluster: Snapshot) -> None:
    slices = cluster.slices_for("bookinfo", "reviews")
    assert [s.name for s in slices] == ["reviews-m2x8c"]
    assert cluster.endpoints_for("default", "kubernetes") is not None


def test_typed_api_lists_single_objects_and_lists_of_lists() -> None:
    pod_list = {
        "kind": "PodList",
        "apiVersion": "v1",
        "items": [{k: v for k, v in _pod("a", "10.0.0.1").items() if k != "kind"}],
    }
    nested = {"kind": "List", "items": [pod_list, _pod("b", "10.0.0.2")]}
    objects = parse_snapshot_documents([nested, _pod("c", "10.0.0.3")], source="t.json")
    assert [(o.kind, o.name) for o in objects] == [
        ("Pod", "a"),
        ("Pod", "b"),
        ("Pod", "c"),
    ]


def test_a_missing_namespace_means_default() -> None:
    pod = _pod("a", "10.0.0.1")
    del pod["metadata"]["namespace"]  # type: ignore[attr-defined]
    [obj] = parse_snapshot_documents([pod], source="t.json")
    assert obj.namespace == "default"
    assert obj.raw["metadata"]["namespace"] == "default"


def test_a_folder_of_json_and_yaml_files(tmp_path: Path) -> None:
    (tmp_path / "pods.json").write_text(
        json.dumps({"kind": "List", "items": [_pod("a", "10.0.0.1")]})
    )
    # kubectl quotes timestamps, hand-written YAML may not: both must load.
    (tmp_path / "more.yaml").write_text(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: b\n  namespace: shop\n"
        "  creationTimestamp: 2026-11-26T09:00:00Z\nstatus:\n  podIP: 10.0.0.2\n"
        "---\n"
        "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: shop}\n"
        "spec: {clusterIP: 10.96.0.5, ports: [{port: 80}]}\n"
    )
    (tmp_path / "notes.txt").write_text("ignored")
    snapshot = load_snapshot(tmp_path)
    assert sorted(p.name for p in snapshot.pods) == ["a", "b"]
    assert "10.96.0.5" in snapshot.services_by_cluster_ip
    created = snapshot.get("Pod", "shop", "b")
    assert created is not None
    assert created.meta.created == parse_timestamp("2026-11-26T09:00:00+00:00")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"kind": "List", "items": [', "not valid JSON: line 1"),
        ('{"kind": "List", "items": ' + "[" * 100_000, "nested more than 100 lists and objects"),
        ("", "empty file"),
        ('{"kind": "List", "items": {}}', "items must be a list"),
        (
            '{"kind": "List", "items": [{"kind": "Pod", "metadata": {}}]}',
            "Pod without metadata.name",
        ),
        ('{"kind": "List", "items": [42]}', "items[0]: expected an object"),
        (
            json.dumps(
                {"kind": "List", "items": [{**_pod("a", "10.0.0.1"), "status": {"podIP": "x"}}]}
            ),
            "items[0] (Pod shop/a): status.podIP must be an IP address",
        ),
        (
            json.dumps(
                {
                    "kind": "List",
                    "items": [
                        {
                            **_pod("a", "10.0.0.1"),
                            "spec": {"containers": [{"ports": [{"containerPort": "80"}]}]},
                        }
                    ],
                }
            ),
            "spec.containers[0].ports[0].containerPort must be a port number",
        ),
        (
            json.dumps(
                {
                    "kind": "List",
                    "items": [{"kind": "Service", "metadata": {"name": "s", "labels": {"a": 1}}}],
                }
            ),
            "metadata.labels['a'] must be a label value",
        ),
    ],
)
def test_unusable_snapshots_name_the_file_and_the_problem(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "snapshot.json"
    path.write_text(content)
    with pytest.raises(SnapshotError, match=r"snapshot\.json") as caught:
        load_snapshot(path)
    assert message in str(caught.value)


def test_a_yaml_snapshot_with_aliases_is_refused_naming_file_and_line(tmp_path: Path) -> None:
    # Nested aliases: 10**8 pods' worth of labels in a few hundred bytes, were they expanded.
    bomb = ["l0: &l0 {app: web}"] + [
        f"l{n}: &l{n} [{', '.join([f'*l{n - 1}'] * 10)}]" for n in range(1, 9)
    ]
    path = tmp_path / "snapshot.yaml"
    path.write_text("kind: List\nitems: []\nbomb:\n" + "".join(f"  {line}\n" for line in bomb))
    with pytest.raises(SnapshotError) as caught:
        load_snapshot(path)
    assert str(caught.value).startswith(f"{path}: line 5: a YAML alias (*l0): aliases are not")


def test_missing_snapshot_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(SnapshotError, match="no such file"):
        load_snapshot(tmp_path / "nope.json")
    with pytest.raises(SnapshotError, match=r"no \.json or \.yaml files"):
        load_snapshot(tmp_path)


def test_pod_ip_history_is_sorted_and_typed() -> None:
    events = load_pod_ip_history(DATA / "pod-ips.jsonl")
    assert [(e.pod, e.deleted) for e in events] == [
        ("ratings-v1-b6994bb9-old42", False),
        ("ratings-v1-b6994bb9-old42", True),
        ("details-v1-79f774bdb9-d8f5g", False),
    ]
    assert events[0].ips == ("10.244.1.20",)
    assert events[0].owner is not None and events[0].owner.kind == "ReplicaSet"
    assert events[2].owner is not None and events[2].owner.name == "details-v1-79f774bdb9"
    assert dict(events[0].labels)["app"] == "ratings"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"time": 1, "namespace": "a", "pod": "p", "labels": ' + "[" * 5000, "nested more than"),
        ('{"time": "yesterday", "namespace": "a", "pod": "p"}', "'time' is not a timestamp"),
        ('{"time": 1, "pod": "p"}', "'namespace' must be a non-empty string"),
        (
            '{"time": 1, "namespace": "a", "pod": "p", "ips": ["10.0.0.999"]}',
            "ips must be a list of IP",
        ),
        ('{"time": 1, "namespace": "a", "pod": "p", "owner": 7}', "owner must be"),
    ],
)
def test_bad_history_lines_name_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "pod-ips.jsonl"
    good = '{"time": 1, "namespace": "a", "pod": "p", "ips": ["10.0.0.1"]}'
    path.write_text(f"{good}\n\n{line}\n")
    with pytest.raises(SnapshotError, match=r"pod-ips.jsonl:3: ") as caught:
        load_pod_ip_history(path)
    assert message in str(caught.value)


def test_capture_meta(tmp_path: Path) -> None:
    path = tmp_path / "meta.json"
    path.write_text(
        json.dumps(
            {
                "pod": "web-1",
                "namespace": "shop",
                "uid": "u1",
                "ips": ["10.0.0.7", "fd00::7"],
                "labels": {"app": "web"},
                "node": "node-a",
                "start_time": "2026-11-26T09:00:00.250Z",
            }
        )
    )
    meta = load_capture_meta(path)
    assert (meta.namespace, meta.pod, meta.node) == ("shop", "web-1", "node-a")
    assert meta.ips == ("10.0.0.7", "fd00::7")
    assert meta.start_time == parse_timestamp("2026-11-26T09:00:00Z") + 0.25
    path.write_text(json.dumps({"pod": "web-1"}))
    with pytest.raises(SnapshotError, match=r"meta.json: 'namespace' must be"):
        load_capture_meta(path)
    path.write_text('{"pod": "web-1", "labels": ' + '{"a": ' * 100_000)
    with pytest.raises(SnapshotError, match=r"meta.json: nested more than 100 lists"):
        load_capture_meta(path)


def test_public_surface_without_the_graph() -> None:
    import subprocess
    import sys

    import analyser

    assert {"load_snapshot", "Snapshot", "Resolver", "WorkloadRef", "synthesize"} <= set(
        analyser.__all__
    )
    assert all(hasattr(analyser, name) for name in analyser.__all__)
    # The graph loads only where graphs are built (not for --help or verify's loading).
    check = "import sys, analyser; sys.exit('analyser.graphs' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", check], check=False).returncode == 0


def test_null_fields_as_the_api_server_writes_them_mean_absent() -> None:
    # A Service without ready pods: the real API server prints "endpoints": null, "ports": null.
    empty_slice = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "web-abcde",
            "namespace": "shop",
            "labels": {"kubernetes.io/service-name": "web"},
            "annotations": None,
        },
        "addressType": "IPv4",
        "endpoints": None,
        "ports": None,
    }
    pod = _pod("a", "10.0.0.1")
    pod["spec"] = {"containers": [{"name": "main", "ports": None}], "volumes": None}
    snapshot = Snapshot(parse_snapshot_documents([empty_slice, pod], source="null.json"))
    (loaded,) = snapshot.slices_for("shop", "web")
    assert "endpoints" not in loaded.raw and "ports" not in loaded.raw
    assert [p.name for p in snapshot.of_kind("Pod")] == ["a"]


def test_gaps_name_what_kubectl_get_all_and_get_pods_leave_out(cluster: Snapshot) -> None:
    assert cluster.gaps() == ()
    # `kubectl get all -A -o json`: no Nodes, no EndpointSlices (a Service without selector)
    everything = json.loads(CLUSTER.read_text())["items"]
    get_all = [o for o in everything if o["kind"] not in ("Node", "EndpointSlice", "Endpoints")]
    selectorless = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "legacy-db", "namespace": "shop"},
        "spec": {"clusterIP": "10.96.99.1", "ports": [{"port": 5432}]},
    }
    gaps = Snapshot(parse_snapshot_documents([*get_all, selectorless], source="all.json")).gaps()
    assert [gap.split(":")[0] for gap in gaps] == [
        "no Nodes",
        "no EndpointSlices, and 2 Services have no selector (default/kubernetes, shop/legacy-db)",
    ]
    # `kubectl get pods -o yaml`: no Services either
    pods_only = Snapshot(parse_snapshot_documents([_pod("a", "10.0.0.1")], source="pods.yaml"))
    assert [gap.split(":")[0] for gap in pods_only.gaps()] == ["no Services", "no Nodes"]
    assert Snapshot([]).gaps()[0].startswith("no Pods")


def test_snapshot_files_as_shells_write_them(tmp_path: Path) -> None:
    pods = {"apiVersion": "v1", "kind": "List", "items": [_pod("a", "10.0.0.1")]}
    services = {
        "apiVersion": "v1",
        "kind": "List",
        "items": [{"kind": "Service", "metadata": {"name": "s", "namespace": "shop"}}],
    }
    text = json.dumps(pods, indent=2)
    variants = {
        # `kubectl get pods -o json > f; kubectl get svc -o json >> f`
        "appended.json": (text + "\n" + json.dumps(services, indent=2) + "\n").encode(),
        "bom.json": b"\xef\xbb\xbf" + text.encode(),
        "powershell.json": text.encode("utf-16"),  # PowerShell's `>`: UTF-16 with a BOM
        "yaml-named.json": yaml.safe_dump(pods).encode(),  # `kubectl get -o yaml > x.json`
    }
    for name, data in variants.items():
        (tmp_path / name).write_bytes(data)
        snapshot = load_snapshot(tmp_path / name)
        assert [p.name for p in snapshot.pods] == ["a"], name
    assert len(load_snapshot(tmp_path / "appended.json").services) == 1


def test_history_and_meta_written_with_a_byte_order_mark_are_read(tmp_path: Path) -> None:
    history = tmp_path / "pod-ips.jsonl"
    history.write_bytes(b"\xef\xbb\xbf" + (DATA / "pod-ips.jsonl").read_bytes())
    assert len(load_pod_ip_history(history)) == 3
    meta = tmp_path / "meta.json"
    meta.write_bytes(b"\xef\xbb\xbf" + json.dumps({"pod": "a", "namespace": "shop"}).encode())
    assert load_capture_meta(meta).pod == "a"


# -- names, labels and kinds an API server would never have stored: a tampered snapshot ---------


def _tampered(path: str, value: object) -> dict[str, object]:
    """A ReplicaSet (it has a selector, a template and an owner) with ``value`` at ``path``."""
    replica_set: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": "web-7d9f",
            "namespace": "shop",
            "labels": {"app": "web"},
            "ownerReferences": [{"kind": "Deployment", "name": "web", "uid": "u1"}],
        },
        "spec": {
            "selector": {
                "matchLabels": {"app": "web"},
                "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a"]}],
            },
            "template": {"metadata": {"labels": {"app": "web"}}},
        },
    }
    *parents, last = path.split(".")
    target: Any = replica_set
    for part in parents:
        target = target[int(part)] if part.isdigit() else target[part]
    if isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value
    return replica_set


HOSTILE_NAME = "web\u2028metadata: {name: other}"


@pytest.mark.parametrize(
    ("path", "value", "field", "rule"),
    [
        ("metadata.name", HOSTILE_NAME, "metadata.name", "an object name"),
        ("metadata.name", "Web", "metadata.name", "an object name"),
        ("metadata.namespace", "shop.a", "metadata.namespace", "a namespace name"),
        ("metadata.namespace", "\x1b[31mshop", "metadata.namespace", "a namespace name"),
        ("metadata.labels", {"app": "web\x85- {}"}, "metadata.labels['app']", "a label value"),
        ("metadata.labels", {"app\u2029": "web"}, "metadata.labels['app\\u2029']", "a label key"),
        (
            "spec.selector.matchLabels",
            {"app": "<script>"},
            "spec.selector.matchLabels['app']",
            "a label value",
        ),
        (
            "spec.selector.matchExpressions.0",
            {"key": "tier\n", "operator": "In"},
            "spec.selector.matchExpressions[0].key",
            "a label key",
        ),
        (
            "spec.selector.matchExpressions.0",
            {"key": "tier", "operator": "Matches"},
            "spec.selector.matchExpressions[0].operator",
            "In, NotIn, Exists or DoesNotExist",
        ),
        (
            "spec.selector.matchExpressions.0",
            {"key": "tier", "operator": "In", "values": ["a\u200b"]},
            "spec.selector.matchExpressions[0].values[0]",
            "a label value",
        ),
        (
            "spec.template.metadata.labels",
            {"app": "x" * 64},
            "spec.template.metadata.labels['app']",
            "a label value",
        ),
    ],
)
def test_a_name_label_or_kind_no_api_server_stores_is_refused(
    tmp_path: Path, path: str, value: object, field: str, rule: str
) -> None:
    snapshot = tmp_path / "snapshot.json"
    snapshot.write_text(json.dumps({"kind": "List", "items": [_tampered(path, value)]}))
    with pytest.raises(SnapshotError) as caught:
        load_snapshot(snapshot)
    message = str(caught.value)
    # the file, the object, the field and the rule; the bad text only escaped
    assert message.startswith(f"{snapshot}: items[0] (ReplicaSet ")
    assert f"{field} must be {rule}" in message
    assert message.isprintable()


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("metadata.ownerReferences.0.kind", "Deployment\u2028spec: {}"),
        ("metadata.ownerReferences.0.name", "web\u202e"),
    ],
)
def test_an_owner_reference_naming_no_object_is_ignored_and_said(path: str, value: str) -> None:
    """The API server stores any text as an ownerReference's kind and name, so whoever can create
    a pod can write one: it must not make the whole snapshot unusable, nor reach an output."""
    replica_set = _tampered(path, value)
    pod = {
        "kind": "Pod",
        "metadata": {
            "name": "web-7d9f-a",
            "namespace": "shop",
            "labels": {"app": "web"},
            "ownerReferences": [{"kind": "ReplicaSet", "name": "web-7d9f", "controller": True}],
        },
        "status": {"podIP": "10.1.0.5"},
    }
    snapshot = Snapshot(parse_snapshot_documents([replica_set, pod], source="s"))
    (problem,) = snapshot.owner_problems()
    assert problem.startswith("ReplicaSet shop/web-7d9f: ownerReference ")
    assert problem.endswith("names no object (not a kind and an object name): ignored")
    assert problem.isprintable() and ("\\u2028" in problem or "\\u202e" in problem)
    # The owner walk stops at the ReplicaSet: no workload is named after the bad text.
    ref = Resolver(snapshot).workload_of_pod("shop", "web-7d9f-a")
    assert ref == WorkloadRef("shop", "ReplicaSet", "web-7d9f")


def test_names_labels_and_kinds_as_real_clusters_have_them_load() -> None:
    labels = {
        "app.kubernetes.io/name": "web",
        "pod-template-hash": "7d9f5b",
        "example.com/Flag_1.x": "",
        "tier": "A-b_c.d",
    }
    labelled, custom_owner = parse_snapshot_documents(
        [
            _tampered("metadata.labels", labels),
            _tampered("metadata.ownerReferences.0.kind", "MyCustom-App2"),
        ],
        source="s",
    )
    assert labelled.labels == labels
    assert custom_owner.meta.owner_references[0].kind == "MyCustom-App2"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("namespace", "Shop", "'namespace' must be a namespace name"),
        ("pod", "web\u2028x", "'pod' must be an object name"),
        ("labels", {"app": "\x1b[2J"}, "labels['app'] must be a label value"),
        ("labels", {"a b": "x"}, "labels['a b'] must be a label key"),
        ("owner", {"kind": "Deploy\u202ement", "name": "web"}, "owner kind must be a kind"),
        ("owner", "Deployment/web\u2029", "owner name must be an object name"),
        ("node", "node\x85a", "'node' must be an object name"),
    ],
)
def test_history_and_meta_with_names_no_api_server_stores_are_refused(
    tmp_path: Path, field: str, value: object, message: str
) -> None:
    record = {"pod": "web-1", "namespace": "shop", "ips": ["10.0.0.7"], field: value}
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps(record))
    with pytest.raises(SnapshotError, match=r"meta\.json: ") as caught:
        load_capture_meta(meta)
    assert message in str(caught.value) and str(caught.value).isprintable()
    if field == "node":
        return  # meta.json only
    history = tmp_path / "pod-ips.jsonl"
    history.write_text(json.dumps({"time": 1, **record}) + "\n")
    with pytest.raises(SnapshotError, match=r"pod-ips\.jsonl:1: ") as caught:
        load_pod_ip_history(history)
    assert message in str(caught.value) and str(caught.value).isprintable()


# -- the typed views: one schema that both types and checks --------------------------------------


def _object(kind: str, **fields: object) -> dict[str, Any]:
    """An object of ``kind`` named ``x`` in namespace ``shop`` (a Namespace or Node: none)."""
    namespace = {} if kind in ("Namespace", "Node") else {"namespace": "shop"}
    return {"kind": kind, "metadata": {"name": "x", **namespace}, **fields}


def _at(path: str, value: object) -> dict[str, Any]:
    """The nested fields ``path`` (``spec.ports.0.port``: a list at each number) ending in
    ``value``."""
    first, _, rest = path.partition(".")
    inner = _at(rest, value) if rest else value
    if first.isdigit():
        return [inner] * (int(first) + 1)  # type: ignore[return-value]
    return {first: inner}


@pytest.mark.parametrize(
    ("kind", "path", "value", "rule"),
    [
        ("Pod", "spec.hostNetwork", "true", "a boolean"),
        ("Pod", "spec.nodeName", 5, "an object name"),
        ("Pod", "spec.containers.0.ports.0.protocol", 6, "a string"),
        ("Pod", "spec.initContainers.0.ports.0.hostPort", -1, "a port number"),
        ("Pod", "status.podIPs.0.ip", "10.0.0.300", "an IP address"),
        ("Pod", "status.hostIPs", {"ip": "10.0.0.1"}, "a list"),
        ("Pod", "status.startTime", "yesterday", "a timestamp"),
        ("Pod", "status.containerStatuses.0.state.terminated.finishedAt", [], "a timestamp"),
        ("Service", "spec.ports.0.targetPort", True, "an integer or a string"),
        ("Service", "spec.ports.0.port", 70000, "a port number"),
        ("Service", "spec.ports.0.name", "HTTP", "a port name"),
        ("Service", "spec.ports.0.nodePort", "30080", "a port number"),
        ("Service", "spec.clusterIPs.0", 10, "a string"),
        ("Service", "spec.externalIPs.0", "example.com", "an IP address"),
        ("Service", "status.loadBalancer.ingress.0.ip", "lb", "an IP address"),
        ("Service", "spec.type", ["NodePort"], "a string"),
        ("EndpointSlice", "addressType", 4, "a string"),
        ("EndpointSlice", "endpoints.0.addresses.0", 10, "a string"),
        ("EndpointSlice", "endpoints.0.targetRef.kind", "1Pod", "a kind"),
        ("EndpointSlice", "ports.0.port", "80", "a port number"),
        ("Endpoints", "subsets.0.addresses.0.ip", "x", "an IP address"),
        ("Endpoints", "subsets.0.notReadyAddresses.0.targetRef.name", "Web", "an object name"),
        ("Endpoints", "subsets.0.ports", "80", "a list"),
        ("Node", "spec.podCIDRs", "10.244.0.0/24", "a list"),
        ("Node", "status.addresses.0.address", 5, "a string"),
        ("Deployment", "spec.template.spec.hostNetwork", "false", "a boolean"),
        ("Deployment", "spec.template", "web", "an object"),
        ("StatefulSet", "spec.selector.matchLabels", "app=web", "a map of label keys"),
        ("DaemonSet", "spec.template.spec.hostNetwork", 1, "a boolean"),
        ("Job", "spec.selector.matchExpressions.0.values", "a", "a list"),
        ("CronJob", "spec.jobTemplate.spec.template.spec.hostNetwork", "no", "a boolean"),
        ("CronJob", "spec.jobTemplate.spec", [], "an object"),
        ("NetworkPolicy", "metadata.ownerReferences.0.controller", "yes", "a boolean"),
        ("ReplicaSet", "metadata.creationTimestamp", "today", "a timestamp"),
        ("Ingress", "spec.defaultBackend.service.port.number", "80", "a port number"),
        ("Ingress", "spec.rules.0.http.paths.0.backend.service.name", "Web", "an object name"),
        ("Ingress", "spec.rules.0.http.paths.0.backend.service.port.name", 8, "a port name"),
        ("Ingress", "spec.rules.0.http", [], "an object"),
        ("HTTPRoute", "spec.rules.0.backendRefs.0.port", "80", "a port number"),
        ("HTTPRoute", "spec.rules.0.backendRefs.0.namespace", "Shop", "a namespace name"),
        ("HTTPRoute", "spec.rules.0.backendRefs.0.kind", 5, "a kind"),
        ("HTTPRoute", "spec.rules.0.backendRefs", {"name": "web"}, "a list"),
        ("ReferenceGrant", "spec.from.0.namespace", "App", "a namespace name"),
        ("ReferenceGrant", "spec.to.0.name", 7, "an object name"),
        ("Namespace", "metadata.uid", 7, "a string"),
    ],
)
def test_a_field_of_the_wrong_type_is_named_with_its_object(
    tmp_path: Path, kind: str, path: str, value: object, rule: str
) -> None:
    obj = _object(kind)
    first, _, rest = path.partition(".")
    if first == "metadata":
        obj["metadata"].update(_at(rest, value))
    else:
        obj.update(_at(path, value))
    snapshot = tmp_path / "snapshot.json"
    snapshot.write_text(json.dumps({"kind": "List", "items": [obj]}))
    with pytest.raises(SnapshotError) as caught:
        load_snapshot(snapshot)
    name = "x" if kind in ("Namespace", "Node") else "shop/x"
    field = re.sub(r"\.(\d+)", r"[\1]", path)
    assert str(caught.value).startswith(
        f"{snapshot}: items[0] ({kind} {name}): {field} must be {rule}"
    )
    assert str(caught.value).endswith(f", got {value!r}")


def test_a_namespace_is_named_as_namespaces_are() -> None:
    with pytest.raises(SnapshotError, match=r"metadata\.name must be a namespace name"):
        parse_snapshot_documents([_object("Namespace") | {"metadata": {"name": "a.b"}}], source="s")


def test_a_template_host_network_as_text_is_an_error_not_true() -> None:
    """``bool("false")`` is True: read unchecked, the Deployment counted as host-network and its
    workload silently got no policy."""
    deployment = _object(
        "Deployment",
        spec={
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"hostNetwork": "false"}},
        },
    )
    with pytest.raises(SnapshotError) as caught:
        parse_snapshot_documents([deployment], source="snapshot.json")
    assert str(caught.value) == (
        "snapshot.json: document (Deployment shop/x): spec.template.spec.hostNetwork must be a "
        "boolean, got 'false'"
    )
    deployment["spec"]["template"]["spec"]["hostNetwork"] = False
    (view,) = parse_snapshot_documents([deployment], source="snapshot.json")
    assert isinstance(view, Controller) and view.host_network is False


def test_each_view_keeps_its_object_as_it_came() -> None:
    """``raw`` is the JSON (nulls dropped, the default namespace filled in), fields the analyser
    does not read included."""
    pod = _pod("a", "10.0.0.1")
    pod["metadata"]["annotations"] = {"note": "kept", "gone": None}  # type: ignore[index]
    pod["spec"]["priority"] = 7  # type: ignore[index]
    del pod["metadata"]["namespace"]  # type: ignore[attr-defined]
    (view,) = parse_snapshot_documents([pod], source="s")
    assert isinstance(view, Pod)
    assert view.raw["metadata"]["annotations"] == {"note": "kept"}
    assert view.raw["spec"]["priority"] == 7
    assert view.raw["metadata"]["namespace"] == view.namespace == "default"
    assert view.raw["status"] == pod["status"]


def test_pods_are_read_into_their_addresses_ports_and_times() -> None:
    pod = _object(
        "Pod",
        metadata={
            "name": "web-1",
            "namespace": "shop",
            "uid": "u1",
            "creationTimestamp": "2026-11-26T09:00:00Z",
            "ownerReferences": [
                {"kind": "Other", "name": "o"},
                {"kind": "ReplicaSet", "name": "web-7d9f", "uid": "u2", "controller": True},
            ],
        },
        spec={
            "nodeName": "node-a",
            "containers": [
                {"ports": [{"name": "http", "containerPort": 8080, "hostPort": 80}]},
                {"ports": [{"containerPort": 53, "protocol": "udp"}, {"containerPort": 1}]},
            ],
            "initContainers": [{"ports": [{"containerPort": 9, "protocol": "ICMP"}]}],
        },
        status={
            "phase": "Succeeded",
            "podIP": "10.0.0.7",
            "podIPs": [{"ip": "10.0.0.7"}, {"ip": "fd00:0::7"}],
            "hostIP": "192.168.0.2",
            "containerStatuses": [{"state": {"terminated": {"finishedAt": 1.8e9}}}, {}],
        },
    )
    (view,) = parse_snapshot_documents([pod], source="s")
    assert isinstance(view, Pod)
    assert view.ips == ("10.0.0.7", "fd00::7")
    assert view.host_ips == ("192.168.0.2",)
    assert (view.node_name, view.host_network, view.phase) == ("node-a", False, "Succeeded")
    assert view.spec.ports == (
        PodPort("", 1, Protocol.TCP),
        PodPort("", 53, Protocol.UDP),
        PodPort("http", 8080, Protocol.TCP),
    )  # ICMP: no port NetworkPolicy knows
    assert view.spec.published == (PublishedPort(8080, Protocol.TCP, 80),)
    assert view.meta.created == parse_timestamp("2026-11-26T09:00:00Z")
    assert view.finished == (1.8e9,)
    assert view.owner == OwnerReference("ReplicaSet", "web-7d9f", "u2", controller=True)


def test_service_ports_are_read_with_their_target_port_a_number_a_name_or_none() -> None:
    service = _object(
        "Service",
        spec={
            "type": "LoadBalancer",
            "clusterIP": "10.96.0.9",
            "clusterIPs": ["10.96.0.9", "fd00:96:0::9", "None"],
            "externalIPs": ["203.0.113.9"],
            "selector": {"app": "web"},
            "ports": [
                {"name": "http", "port": 80, "targetPort": "http"},
                {"name": "metrics", "port": 9090, "targetPort": "9091", "nodePort": 30090},
                {"name": "grpc", "port": 81, "targetPort": 8081, "protocol": "sctp"},
                {"name": "plain", "port": 82},
                {"name": "none"},
            ],
        },
        status={"loadBalancer": {"ingress": [{"ip": "198.51.100.9"}, {"hostname": "lb"}]}},
    )
    (view,) = parse_snapshot_documents([service], source="s")
    assert isinstance(view, Service)
    assert view.cluster_ips == ("10.96.0.9", "fd00:96::9")
    assert view.addresses == ("10.96.0.9", "fd00:96::9", "203.0.113.9", "198.51.100.9")
    assert view.selector == {"app": "web"}
    assert [(p.name, p.port, p.protocol, p.target, p.node_port) for p in view.ports] == [
        ("http", 80, Protocol.TCP, "http", None),
        ("metrics", 9090, Protocol.TCP, 9091, 30090),
        ("grpc", 81, Protocol.SCTP, 8081, None),
        ("plain", 82, Protocol.TCP, 82, None),
        ("none", None, Protocol.TCP, None, None),
    ]
    assert view.port(81, Protocol.SCTP) is view.ports[2]
    assert view.port(81, Protocol.TCP) is None


def test_endpoints_nodes_and_controllers_are_read() -> None:
    endpoint_slice = _object(
        "EndpointSlice",
        metadata={
            "name": "web-a",
            "namespace": "shop",
            "labels": {"kubernetes.io/service-name": "web"},
        },
        addressType="IPv4",
        endpoints=[
            {"addresses": ["10.0.0.7"], "targetRef": {"kind": "Pod", "name": "p", "uid": "u"}},
            {"addresses": ["10.0.0.8"], "targetRef": {"name": "q", "namespace": "shop"}},
            {"addresses": ["10.0.0.9"], "targetRef": {"kind": "Node", "name": "n"}},
            {"addresses": ["10.0.0.10"]},
        ],
        ports=[{"name": "http", "port": 8080}],
    )
    endpoints = _object(
        "Endpoints",
        subsets=[{"addresses": [{"ip": "10.0.0.7"}], "notReadyAddresses": [{"ip": "10.0.0.8"}]}],
    )
    node = _object(
        "Node",
        metadata={
            "name": "node-a",
            "annotations": {
                "network.cilium.io/ipv4-cilium-host": "10.244.0.1",
                "projectcalico.org/IPv4IPIPTunnelAddr": "not an address",
            },
        },
        spec={"podCIDR": "10.244.0.0/24"},
        status={
            "addresses": [
                {"type": "InternalIP", "address": "192.168.0.2"},
                {"type": "Hostname", "address": "node-a"},
            ]
        },
    )
    cron_job = _object(
        "CronJob",
        spec={
            "jobTemplate": {
                "spec": {
                    "selector": {
                        "matchLabels": {"app": "report", "controller-uid": "u"},
                        "matchExpressions": [
                            {"key": "tier", "operator": "In", "values": ["b", "a", "b"]}
                        ],
                    },
                    "template": {
                        "metadata": {"labels": {"app": "report"}},
                        "spec": {"hostNetwork": True},
                    },
                }
            }
        },
    )
    views = parse_snapshot_documents([endpoint_slice, endpoints, node, cron_job], source="s")
    read_slice, read_endpoints, read_node, read_cron_job = views
    assert isinstance(read_slice, EndpointSlice)
    assert (read_slice.service_name, read_slice.address_type) == ("web", "IPv4")
    assert [e.target.pod_key if e.target else "" for e in read_slice.endpoints.endpoints] == [
        "u",
        "shop/q",
        "",
        "",
    ]
    assert read_slice.endpoints.port_for("http", Protocol.TCP) == 8080
    assert read_slice.endpoints.port_for("http", Protocol.UDP) is None
    assert isinstance(read_endpoints, Endpoints)
    (subset,) = read_endpoints.subsets
    assert [e.addresses for e in subset.endpoints] == [("10.0.0.7",), ("10.0.0.8",)]
    assert isinstance(read_node, Node)
    assert read_node.pod_cidrs == ("10.244.0.0/24",)
    assert read_node.ip_addresses == ("192.168.0.2",)
    assert read_node.gateway_addresses == ("10.244.0.1",)
    assert isinstance(read_cron_job, Controller)
    assert read_cron_job.selector == LabelSelector(
        (("app", "report"), ("controller-uid", "u")),
        (LabelRequirement("tier", "In", ("a", "b")),),
    )
    assert read_cron_job.selector.without_volatile() == LabelSelector(
        (("app", "report"),), (LabelRequirement("tier", "In", ("a", "b")),)
    )
    assert read_cron_job.template_labels == {"app": "report"}
    assert read_cron_job.host_network is True


def test_json_no_view_read_gives_its_owner_and_addresses_without_checks() -> None:
    """The collector reads the API server's JSON and the lab's judge its own snapshot with the
    same owner rule as the views, without their checks."""
    pod = {
        "metadata": {
            "ownerReferences": [
                {"kind": "Other", "name": "o"},
                {"kind": 7, "name": "bad", "controller": True},
                {"kind": "ReplicaSet", "name": "web-7d9f", "controller": True},
            ]
        },
        "status": {"podIP": "10.0.0.7", "podIPs": [{"ip": "10.0.0.7"}, {"ip": "fd00:0::7"}]},
    }
    references = owner_references(pod)
    assert [r.name for r in references] == ["o", "web-7d9f"]
    assert controller_of(references) == OwnerReference("ReplicaSet", "web-7d9f", controller=True)
    assert controller_of(references[:1]) is None  # no controller: none, as the API server says
    assert pod_ips(pod) == ("10.0.0.7", "fd00::7")
    assert pod_ips({"status": {"podIP": "10.0.0.8"}}) == ("10.0.0.8",)
    assert pod_ips({"status": "Running"}) == ()
    assert owner_references({"metadata": None}) == ()
