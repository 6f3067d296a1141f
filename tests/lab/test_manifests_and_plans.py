"""The lab's pure input layer: manifests → workloads/Services, plan YAML → checked plan."""

from __future__ import annotations

import pytest

from kernel.errors import LabError
from lab.manifests import ContainerPort, ServicePort, read_manifests
from lab.plans import Expect, Family, read_plan
from tests.lab.lab_helpers import EXAMPLE

MANIFESTS = """
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: a}}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db, namespace: shop}
spec:
  serviceName: db
  replicas: 2
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers:
        - name: db
          ports: [{containerPort: 5432, name: pg}, {containerPort: 9999, protocol: UDP}]
          readinessProbe: {tcpSocket: {port: pg}}
          livenessProbe: {exec: {command: [true]}}
          startupProbe: {httpGet: {path: /, port: 8081}}
---
apiVersion: v1
kind: List
items:
  - apiVersion: v1
    kind: Service
    metadata: {name: db, namespace: shop}
    spec:
      clusterIP: None
      selector: {app: db}
      ports: [{port: 5432, targetPort: pg}]
  - apiVersion: v1
    kind: ConfigMap
    metadata: {name: ignored}
"""


def test_reads_workloads_services_and_namespaces() -> None:
    cluster = read_manifests([("m.yaml", MANIFESTS)])
    assert [w.ref for w in cluster.workloads] == ["shop/StatefulSet/db"]
    db = cluster.workloads[0]
    assert db.replicas == 2
    assert db.ports == (ContainerPort(5432, "TCP", "pg"), ContainerPort(9999, "UDP", None))
    assert db.named_port("pg", "TCP") == 5432
    assert db.probe_ports == (5432, 8081)  # named ports resolved, exec probes have none
    (service,) = cluster.services
    assert service.headless
    assert service.ports == (ServicePort(5432, "pg", "TCP", None),)
    assert service.selects(db)
    assert dict(cluster.namespaces)["shop"] == (("team", "a"),)


def test_objects_without_namespace_land_in_default() -> None:
    cluster = read_manifests([("demo", (EXAMPLE / "kubernetes-manifests.yaml").read_text())])
    assert len(cluster.workloads) == 12
    assert {w.namespace for w in cluster.workloads} == {"default"}
    email = next(s for s in cluster.services if s.name == "emailservice")
    assert email.ports == (ServicePort(5000, 8080, "TCP", "grpc"),)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("kind: Deployment\nmetadata: {}\n", "without metadata.name"),
        ("kind: Pod\nmetadata: {name: p}\nspec: {containers: []}\n", "no containers"),
        (
            "kind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n"
            "    - {name: c, ports: [{containerPort: 70000}]}\n",
            "not a port number",
        ),
        (
            "kind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 80, protocol: ICMP}]}\n",
            "protocol 'ICMP'",
        ),
        ("{unclosed", "not valid YAML"),
    ],
)
def test_bad_manifests_are_named(text: str, message: str) -> None:
    with pytest.raises(LabError, match=message) as info:
        read_manifests([("bad.yaml", text)])
    assert "bad.yaml" in str(info.value)


def test_a_workload_defined_twice_is_an_error() -> None:
    pod = "kind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c}]}\n"
    with pytest.raises(LabError, match="defined twice"):
        read_manifests([("a", pod), ("b", pod)])


PLAN = """
duration: 5
dual-stack: true
external:
  - {name: API.Example.com, ports: [443, 53/UDP]}
calls:
  - {from: shop/Deployment/web, to: db:5432, every: 0.5}
  - {from: shop/Deployment/web, to: api.example.com.:443, family: IPv6, long-lived: true}
  - {from: shop/Deployment/web, to: nowhere:80, expect: nxdomain}
events:
  - {restart: shop/Deployment/web, at: 2, ip-to: shop/Deployment/api}
"""


def test_plan_is_parsed() -> None:
    plan = read_plan("plan.yaml", PLAN)
    assert plan.duration == 5.0 and plan.dual_stack
    first, second, third = plan.calls
    assert (first.client, first.host, first.port, first.every) == (
        "shop/Deployment/web",
        "db",
        5432,
        0.5,
    )
    assert second.host == "api.example.com" and second.family is Family.IPV6
    assert second.long_lived
    assert third.expect is Expect.NXDOMAIN
    (external,) = plan.external
    assert external.name == "api.example.com"
    assert external.ports == ((53, "UDP"), (443, "TCP"))
    (restart,) = plan.restarts
    assert (restart.workload, restart.at, restart.ip_to) == (
        "shop/Deployment/web",
        2.0,
        "shop/Deployment/api",
    )


def test_the_example_plan_is_valid() -> None:
    plan = read_plan("traffic.yaml", (EXAMPLE / "traffic.yaml").read_text())
    assert any(c.long_lived for c in plan.calls)
    assert any(c.expect is Expect.NXDOMAIN for c in plan.calls)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("calls: []", "no calls"),
        ("calls: [{from: web, to: a:1}]", "not a workload"),
        ("calls: [{from: a/Deployment/b, to: host}]", "HOST:PORT"),
        ("calls: [{from: a/Deployment/b, to: h:1, protocol: SCTP}]", "protocol must be"),
        ("calls: [{from: a/Deployment/b, to: h:1, protocol: UDP, long-lived: true}]", "only TCP"),
        ("calls: [{from: a/Deployment/b, to: h:1, family: IPv6}]", "dual-stack"),
        ("calls: [{from: a/Deployment/b, to: h:1, every: 0}]", "positive"),
        ("calls: [{from: a/Deployment/b, to: h:1, colour: red}]", "unknown keys"),
        (
            "duration: 3\ncalls: [{from: a/Deployment/b, to: h:1}]\n"
            "events: [{restart: a/Deployment/b, at: 5}]",
            "after the end",
        ),
        (
            "external: [{name: x.cluster.local, ports: [1]}]\ncalls: [{from: a/B/c, to: h:1}]",
            "dotted outside name",
        ),
    ],
)
def test_bad_plans_are_named(text: str, message: str) -> None:
    with pytest.raises(LabError, match=message) as info:
        read_plan("p.yaml", text)
    assert "p.yaml" in str(info.value)
