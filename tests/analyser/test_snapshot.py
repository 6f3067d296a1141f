"""Loading snapshots, pod IP history and meta.json: shapes accepted, indices, clear errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from analyser.identities import Resolver, WorkloadRef
from analyser.snapshot import (
    Snapshot,
    load_capture_meta,
    load_pod_ip_history,
    load_snapshot,
    parse_snapshot_documents,
)
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
    assert {p["metadata"]["name"] for p in cluster.pods} >= {"db-0", "cache", "debug"}
    # Unknown kinds (the ConfigMap) are ignored; existing NetworkPolicies are kept.
    assert cluster.of_kind("ConfigMap") == []
    assert [n["metadata"]["name"] for n in cluster.network_policies] == ["existing-allow-web"]
    assert cluster.get("StatefulSet", "shop", "db") is not None
    assert cluster.by_uid(cluster.pods[0]["metadata"]["uid"]) is cluster.pods[0]


def test_dual_stack_cluster_ips_both_name_the_service(cluster: Snapshot) -> None:
    v4 = cluster.services_by_cluster_ip["10.96.20.1"]
    v6 = cluster.services_by_cluster_ip["fd00:10:96::20"]
    assert v4 is v6
    assert v4["metadata"]["name"] == "web"


def test_headless_services_have_no_cluster_ip(cluster: Snapshot) -> None:
    names = {s["metadata"]["name"] for s in cluster.services_by_cluster_ip.values()}
    assert "db" not in names
    assert "None" not in cluster.services_by_cluster_ip


def test_nodes_by_address_and_host_network_pods_are_not_pod_ips(cluster: Snapshot) -> None:
    assert cluster.node_by_address == {"192.168.49.2": "node-a", "192.168.49.3": "node-b"}
    assert "192.168.49.2" not in cluster.pods_by_ip  # node-exporter is hostNetwork
    # Two pods held 10.244.0.30 at different times (a finished Job pod, then a bare pod).
    assert sorted(p["metadata"]["name"] for p in cluster.pods_by_ip["10.244.0.30"]) == [
        "cache",
        "report-29400000-z9x8c",
    ]
    assert cluster.pod_cidrs == ("10.244.0.0/24", "10.244.1.0/24")


def test_endpoint_slices_are_found_by_service_name(cluster: Snapshot) -> None:
    slices = cluster.slices_for("bookinfo", "reviews")
    assert [s["metadata"]["name"] for s in slices] == ["reviews-m2x8c"]
    assert cluster.endpoints_for("default", "kubernetes") is not None


def test_typed_api_lists_single_objects_and_lists_of_lists() -> None:
    pod_list = {
        "kind": "PodList",
        "apiVersion": "v1",
        "items": [{k: v for k, v in _pod("a", "10.0.0.1").items() if k != "kind"}],
    }
    nested = {"kind": "List", "items": [pod_list, _pod("b", "10.0.0.2")]}
    objects = parse_snapshot_documents([nested, _pod("c", "10.0.0.3")], source="t.json")
    assert [(o["kind"], o["metadata"]["name"]) for o in objects] == [
        ("Pod", "a"),
        ("Pod", "b"),
        ("Pod", "c"),
    ]


def test_a_missing_namespace_means_default() -> None:
    pod = _pod("a", "10.0.0.1")
    del pod["metadata"]["namespace"]  # type: ignore[attr-defined]
    [obj] = parse_snapshot_documents([pod], source="t.json")
    assert obj["metadata"]["namespace"] == "default"


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
    assert sorted(p["metadata"]["name"] for p in snapshot.pods) == ["a", "b"]
    assert "10.96.0.5" in snapshot.services_by_cluster_ip
    created = snapshot.get("Pod", "shop", "b")
    assert created is not None
    assert parse_timestamp(created["metadata"]["creationTimestamp"]) == parse_timestamp(
        "2026-11-26T09:00:00+00:00"
    )


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


def test_public_surface_without_networkx() -> None:
    import subprocess
    import sys

    import analyser

    assert {"load_snapshot", "Snapshot", "Resolver", "WorkloadRef", "synthesize"} <= set(
        analyser.__all__
    )
    assert all(hasattr(analyser, name) for name in analyser.__all__)
    # The graph library loads only where graphs are built (not for --help or verify's loading).
    check = "import sys, analyser; sys.exit('networkx' in sys.modules)"
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
    assert "endpoints" not in loaded and "ports" not in loaded
    assert [p["metadata"]["name"] for p in snapshot.of_kind("Pod")] == ["a"]


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
        assert [p["metadata"]["name"] for p in snapshot.pods] == ["a"], name
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
    assert labelled["metadata"]["labels"] == labels
    assert custom_owner["metadata"]["ownerReferences"][0]["kind"] == "MyCustom-App2"


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
