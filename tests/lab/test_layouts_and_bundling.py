"""The lab's pure core: pod placement, DNS answers, DNAT rules, snapshot objects and truth."""

from __future__ import annotations

from typing import Any

import pytest

from kernel.errors import LabError
from kernel.names import CAPTURE_LABEL
from lab import bundling, dns, services
from lab.layouts import (
    DNS_SERVICE_V4,
    DNS_WORKLOAD,
    Layout,
    build_layout,
    dns_records,
    endpoints,
    search_path,
)
from lab.manifests import read_manifests
from lab.plans import read_plan
from tests.lab.lab_helpers import layout_from

MANIFESTS = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: web, ports: [{containerPort: 8080, name: http}]}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db, namespace: shop}
spec:
  serviceName: db
  replicas: 1
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec: {containers: [{name: db, ports: [{containerPort: 5432}]}]}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec: {clusterIP: None, selector: {app: db}, ports: [{port: 5432}]}
---
apiVersion: batch/v1
kind: Job
metadata: {name: report, namespace: ops}
spec:
  template:
    metadata: {labels: {app: report}}
    spec: {containers: [{name: r}]}
"""

PLAN = """
seed: 7
dual-stack: true
external: [{name: api.example.com, ports: [443]}]
calls:
  - {from: ops/Job/report, to: web.shop:80}
"""


@pytest.fixture
def layout() -> Layout:
    return layout_from(MANIFESTS, PLAN)


def test_every_replica_gets_a_pod_and_the_cluster_dns_is_added(layout: Layout) -> None:
    refs = sorted(p.workload.ref for p in layout.pods)
    assert refs == [
        DNS_WORKLOAD,
        "ops/Job/report",
        "shop/Deployment/web",
        "shop/Deployment/web",
        "shop/StatefulSet/db",
    ]
    ips = [ip for pod in layout.pods for ip in pod.ips]
    assert len(ips) == len(set(ips)) == 10  # dual-stack: two each, all distinct
    db = layout.pods_of("shop/StatefulSet/db")[0]
    assert db.name == "db-0" and db.hostname == "db-0" and db.subdomain == "db"
    web = layout.pods_of("shop/Deployment/web")
    assert all(dict(p.labels)["pod-template-hash"] for p in web)
    assert web[0].owner is not None and web[0].owner.kind == "ReplicaSet"


def test_layout_is_deterministic() -> None:
    cluster = read_manifests([("m.yaml", MANIFESTS)])
    plan = read_plan("p.yaml", PLAN)
    first = build_layout(cluster, plan, now=1.0)
    second = build_layout(cluster, plan, now=1.0)
    assert [(p.name, p.uid, p.ips) for p in first.pods] == [
        (p.name, p.uid, p.ips) for p in second.pods
    ]


def test_named_target_ports_resolve_through_container_ports(layout: Layout) -> None:
    web = layout.service("shop", "web")
    found = endpoints(web, layout.pods)
    assert {(e.service_port, e.target_port) for e in found} == {(80, 8080)}
    assert len(found) == 2


def test_dns_answers_services_headless_pods_and_outside_names(layout: Layout) -> None:
    table = dns_records(layout)
    web = layout.service("shop", "web")
    assert table["web.shop.svc.cluster.local"]["A"] == [web.cluster_ips[0]]
    assert table["web.shop.svc.cluster.local"]["AAAA"] == [web.cluster_ips[1]]
    db_pod = layout.pods_of("shop/StatefulSet/db")[0]
    assert table["db.shop.svc.cluster.local"]["A"] == [db_pod.ips[0]]  # headless → pod IPs
    assert table["db-0.db.shop.svc.cluster.local"]["A"] == [db_pod.ips[0]]
    assert table["kube-dns.kube-system.svc.cluster.local"]["A"] == [DNS_SERVICE_V4]
    assert table["api.example.com"]["A"][0].startswith("203.0.113.")
    assert table["api.example.com"]["AAAA"][0].startswith("2001:db8:")
    reply = dns.decode_message(
        dns.answer(dns.encode_query(9, "api.example.com", dns.TYPE_A), table)
    )
    assert reply.id == 9 and reply.is_response and reply.rcode == dns.RCODE_OK
    assert [a for _, _, a in reply.answers] == table["api.example.com"]["A"]
    missing = dns.decode_message(
        dns.answer(dns.encode_query(3, "nope.svc.cluster.local", dns.TYPE_A), table)
    )
    assert missing.rcode == dns.RCODE_NXDOMAIN and not missing.answers
    assert search_path("shop")[0] == "shop.svc.cluster.local"


def test_dns_codec_follows_compression_pointers_and_rejects_garbage() -> None:
    query = dns.encode_query(1, "a.b", dns.TYPE_A)
    reply = dns.answer(query, {"a.b": {"A": ["192.0.2.1", "192.0.2.2"], "AAAA": []}})
    assert b"\xc0\x0c" in reply  # answers point back at the question's name
    assert [a for _, _, a in dns.decode_message(reply).answers] == ["192.0.2.1", "192.0.2.2"]
    chain = {
        "www.example.com": {"CNAME": ["edge.cdn.example.net"]},
        "edge.cdn.example.net": {"A": ["192.0.2.9"], "AAAA": []},
    }
    aliased = dns.decode_message(
        dns.answer(dns.encode_query(2, "www.example.com", dns.TYPE_A), chain)
    )
    assert aliased.answers == (("edge.cdn.example.net", dns.TYPE_A, "192.0.2.9"),)
    with pytest.raises(dns.DnsFormatError):
        dns.decode_message(b"\x00\x01")
    loop = b"\x00\x01\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01"
    with pytest.raises(dns.DnsFormatError):
        dns.decode_message(loop)


def test_nat_rules_dnat_cluster_ips_to_target_ports(layout: Layout) -> None:
    web = layout.service("shop", "web")
    pods = layout.pods_of("shop/Deployment/web")
    v4 = services.nat_rules(layout, ipv6=False)
    assert f"-d {web.cluster_ips[0]}/32 -p tcp -m tcp --dport 80 -j NPS-SVC-" in v4
    for pod in pods:
        assert f"--to-destination {pod.ips[0]}:8080" in v4
    assert "--probability 0.50000" in v4  # two endpoints, random choice
    v6 = services.nat_rules(layout, ipv6=True)
    assert f"--to-destination [{pods[0].ips[1]}]:8080" in v6
    assert web.cluster_ips[0] not in v6
    layout.remove_pod(pods[0])
    layout.remove_pod(pods[1])
    empty = services.nat_rules(layout, ipv6=False)
    assert f"-d {web.cluster_ips[0]}/32 -p tcp -m tcp --dport 80 -j REJECT" in empty


def test_snapshot_is_an_api_server_list(layout: Layout) -> None:
    snapshot = bundling.snapshot(layout)
    assert snapshot["kind"] == "List"
    kinds = [item["kind"] for item in snapshot["items"]]
    for kind in (
        "Namespace",
        "Node",
        "Pod",
        "Service",
        "EndpointSlice",
        "Deployment",
        "ReplicaSet",
        "StatefulSet",
        "Job",
    ):
        assert kind in kinds
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for item in snapshot["items"]:
        by_kind.setdefault(item["kind"], []).append(item)
    web_pod = next(p for p in by_kind["Pod"] if p["metadata"]["name"].startswith("web-"))
    owner = web_pod["metadata"]["ownerReferences"][0]
    replica_set = next(r for r in by_kind["ReplicaSet"] if r["metadata"]["name"] == owner["name"])
    assert replica_set["metadata"]["ownerReferences"][0]["kind"] == "Deployment"
    assert (
        replica_set["spec"]["selector"]["matchLabels"]["pod-template-hash"]
        == web_pod["metadata"]["labels"]["pod-template-hash"]
    )
    assert web_pod["status"]["podIP"] == web_pod["status"]["podIPs"][0]["ip"]
    # pods of captured namespaces are as the webhook admitted them
    assert "netpol-sniffer.io/status" in web_pod["metadata"]["annotations"]
    sidecar = web_pod["spec"]["initContainers"][0]
    assert sidecar["name"] == "netpol-sniffer-capture" and "tcpdump" in sidecar["args"]
    dns_pod = next(p for p in by_kind["Pod"] if p["metadata"]["namespace"] == "kube-system")
    assert "initContainers" not in dns_pod["spec"]
    assert len(web_pod["status"]["podIPs"]) == 2
    job_pod = next(p for p in by_kind["Pod"] if p["metadata"]["namespace"] == "ops")
    assert job_pod["metadata"]["ownerReferences"][0]["kind"] == "Job"
    job = by_kind["Job"][0]
    assert (
        job["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"]
        == (job["metadata"]["uid"])
    )
    web_service = next(s for s in by_kind["Service"] if s["metadata"]["name"] == "web")
    assert web_service["spec"]["ports"] == [
        {"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"}
    ]
    assert web_service["spec"]["ipFamilies"] == ["IPv4", "IPv6"]
    slices = [
        s
        for s in by_kind["EndpointSlice"]
        if s["metadata"]["labels"]["kubernetes.io/service-name"] == "web"
    ]
    assert sorted(s["addressType"] for s in slices) == ["IPv4", "IPv6"]
    assert slices[0]["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]
    assert len(slices[0]["endpoints"]) == 2
    namespaces = {n["metadata"]["name"]: n["metadata"]["labels"] for n in by_kind["Namespace"]}
    assert namespaces["shop"][CAPTURE_LABEL] == "enabled"
    assert CAPTURE_LABEL not in namespaces["kube-system"]
    assert namespaces["ops"]["kubernetes.io/metadata.name"] == "ops"


def test_truth_lists_real_flows_and_dns_once() -> None:
    outcomes = [
        bundling.CallOutcome(
            "a/Deployment/web",
            "TCP",
            ok=3,
            dns_answered=True,
            servers=(("a/Deployment/api", 8080, "10.244.0.5"),),
        ),
        bundling.CallOutcome(
            "a/Deployment/web",
            "TCP",
            ok=1,
            dns_answered=True,
            servers=(("ip:203.0.113.10", 443, "10.244.0.5"),),
        ),
        bundling.CallOutcome("a/Deployment/web", "TCP", ok=0, dns_answered=True, servers=()),
        bundling.CallOutcome(
            "a/Job/batch",
            "UDP",
            ok=0,
            dns_answered=False,
            servers=(("a/Deployment/api", 53, "10.244.0.6"),),
        ),
        # outside clients are what the server saw: themselves, or the node behind SNAT
        bundling.CallOutcome(
            "ip:198.51.100.20",
            "TCP",
            ok=2,
            dns_answered=False,
            servers=(
                ("a/Deployment/web", 8080, "198.51.100.20"),
                ("a/Deployment/web", 8080, "172.18.0.2"),
            ),
        ),
    ]
    assert bundling.truth_flows(outcomes) == [
        {
            "client": "a/Deployment/web",
            "server": "a/Deployment/api",
            "protocol": "TCP",
            "port": 8080,
        },
        {"client": "a/Deployment/web", "server": "ip:203.0.113.10", "protocol": "TCP", "port": 443},
        {"client": "a/Deployment/web", "server": DNS_WORKLOAD, "protocol": "UDP", "port": 53},
        {"client": "ip:172.18.0.2", "server": "a/Deployment/web", "protocol": "TCP", "port": 8080},
        {
            "client": "ip:198.51.100.20",
            "server": "a/Deployment/web",
            "protocol": "TCP",
            "port": 8080,
        },
    ]


def test_restart_with_ip_reuse_hands_the_slot_over(layout: Layout) -> None:
    web = layout.pods_of("shop/Deployment/web")[0]
    job = layout.pods_of("ops/Job/report")[0]
    layout.remove_pod(job)
    layout.remove_pod(web)
    new_job = layout.new_pod(job.workload, ordinal=0, now=2.0, reuse_index=web.index)
    assert new_job.ips == web.ips
    assert new_job.name != job.name and new_job.uid != job.uid
    event = bundling.pod_ip_event(new_job, "ADDED", 2.5)
    assert event["event"] == "ADDED" and event["ips"] == list(web.ips)
    assert event["owner"] == {"kind": "Job", "name": "report"}
    assert event["time"].endswith(".500000Z")


def test_plan_must_name_known_workloads() -> None:
    cluster = read_manifests([("m.yaml", MANIFESTS)])
    plan = read_plan("p.yaml", "calls: [{from: shop/Deployment/nope, to: web:80}]")
    with pytest.raises(LabError, match="no workload 'shop/Deployment/nope'"):
        build_layout(cluster, plan, now=0.0)
    restart = read_plan(
        "p.yaml",
        "calls: [{from: shop/Deployment/web, to: web:80}]\n"
        "events: [{restart: shop/StatefulSet/db, at: 1}]",
    )
    with pytest.raises(LabError, match="StatefulSet pods keep their names"):
        build_layout(cluster, restart, now=0.0)


def test_a_cron_job_runs_through_a_job() -> None:
    cluster = read_manifests(
        [
            (
                "c.yaml",
                """
apiVersion: batch/v1
kind: CronJob
metadata: {name: nightly, namespace: ops}
spec:
  schedule: "0 3 * * *"
  jobTemplate:
    spec:
      template:
        metadata: {labels: {app: nightly}}
        spec: {restartPolicy: OnFailure, containers: [{name: n}]}
""",
            )
        ]
    )
    layout = build_layout(
        cluster,
        read_plan("p.yaml", PLAN.replace("ops/Job/report", "ops/CronJob/nightly")),
        now=1_700_000_000.0,
    )
    (pod,) = layout.pods_of("ops/CronJob/nightly")
    assert pod.owner is not None and pod.owner.kind == "Job"
    assert pod.name.startswith(f"{pod.owner.name}-")
    items = bundling.snapshot(layout)["items"]
    job = next(o for o in items if o["kind"] == "Job")
    cron = next(o for o in items if o["kind"] == "CronJob")
    assert job["metadata"]["name"] == pod.owner.name
    assert job["metadata"]["ownerReferences"][0]["uid"] == cron["metadata"]["uid"]
    assert cron["status"]["active"][0]["uid"] == job["metadata"]["uid"]
    pod_item = next(o for o in items if o["kind"] == "Pod" and o["metadata"]["namespace"] == "ops")
    assert pod_item["metadata"]["labels"]["job-name"] == job["metadata"]["name"]
