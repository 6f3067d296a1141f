"""Judging policies against truth.json with the project's NetworkPolicy semantics."""

from __future__ import annotations

import yaml

from analyser.evaluation import PolicySet, PortRange, PortSet
from analyser.flows import Protocol
from lab import bundling, checking
from lab.layouts import DNS_WORKLOAD
from tests.lab.lab_helpers import layout_from

MANIFESTS = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: web, ports: [{containerPort: 8080, name: http}]}]}
---
apiVersion: batch/v1
kind: Job
metadata: {name: report, namespace: ops}
spec:
  template:
    metadata: {labels: {app: report}}
    spec: {containers: [{name: r}]}
"""

TRUTH = [
    {"client": "ops/Job/report", "server": "shop/Deployment/web", "protocol": "TCP", "port": 8080},
    {"client": "ops/Job/report", "server": "ip:203.0.113.10", "protocol": "TCP", "port": 443},
    {"client": "ops/Job/report", "server": DNS_WORKLOAD, "protocol": "UDP", "port": 53},
]

WEB = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress, Egress]
  ingress:
    - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: ops}},
              podSelector: {matchLabels: {app: report}}}]
      ports: [{port: http}]
"""

REPORT = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: report, namespace: ops}
spec:
  podSelector: {matchLabels: {app: report}}
  policyTypes: [Ingress, Egress]
  egress:
    - to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: shop}},
            podSelector: {matchLabels: {app: web}}}]
      ports: [{port: 8080}]
    - to: [{ipBlock: {cidr: 203.0.113.10/32}}]
      ports: [{port: 443}]
    - to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}},
            podSelector: {matchLabels: {k8s-app: kube-dns}}}]
      ports: [{port: 53, protocol: UDP}, {port: 53, protocol: TCP}]
"""


def _snapshot() -> dict[str, object]:
    plan = "calls: [{from: ops/Job/report, to: web.shop:8080}]"
    return bundling.snapshot(layout_from(MANIFESTS, plan))


def _policies(*texts: str) -> PolicySet:
    return PolicySet.from_documents(yaml.safe_load(text) for text in texts)


def test_workloads_are_named_like_truth() -> None:
    pods = checking.workload_pods(_snapshot())
    assert sorted(pods) == [DNS_WORKLOAD, "ops/Job/report", "shop/Deployment/web"]
    assert pods["shop/Deployment/web"].ports[0].name == "http"


def test_exact_policies_pass() -> None:
    result = checking.check_truth(_snapshot(), TRUTH, _policies(WEB, REPORT))
    assert result.flows == 3
    assert result.passed, (result.denied, result.extra)


def test_a_missing_rule_denies_a_truth_flow() -> None:
    result = checking.check_truth(_snapshot(), TRUTH, _policies(WEB, REPORT.replace("443", "444")))
    assert result.denied == ("ops/Job/report → ip:203.0.113.10 443/TCP",)
    assert any("ip:203.0.113.10" in line and "444" in line for line in result.extra)


def test_no_policy_for_a_workload_allows_too_much() -> None:
    result = checking.check_truth(_snapshot(), TRUTH, _policies(REPORT))
    assert not result.denied
    assert any(line.startswith(f"{DNS_WORKLOAD} → shop/Deployment/web") for line in result.extra)
    assert any("ip:198.51.100.254 → shop/Deployment/web" in line for line in result.extra)


PUBLIC = """
apiVersion: v1
kind: Service
metadata: {name: web-public, namespace: shop}
spec:
  type: LoadBalancer
  selector: {app: web}
  ports: [{port: 80, targetPort: http}]
"""

WEB_FROM_ANYWHERE = (
    WEB
    + """
    - from: [{ipBlock: {cidr: 0.0.0.0/0}}]
      ports: [{port: 8080}]
"""
)


def test_the_world_may_reach_what_a_load_balancer_exposes_and_nothing_more() -> None:
    plan = "calls: [{from: ops/Job/report, to: web.shop:8080}]"
    snapshot = bundling.snapshot(layout_from(MANIFESTS + "---" + PUBLIC, plan))
    assert checking.exposed_ports(snapshot) == {
        "shop/Deployment/web": PortSet.of([PortRange(Protocol.TCP, 8080, 8080)])
    }
    exposed = checking.check_truth(snapshot, TRUTH, _policies(WEB_FROM_ANYWHERE, REPORT))
    assert exposed.passed, (exposed.denied, exposed.extra)
    # The same rule without the LoadBalancer in the snapshot is too much.
    private = checking.check_truth(_snapshot(), TRUTH, _policies(WEB_FROM_ANYWHERE, REPORT))
    assert any("ip:198.51.100.254 → shop/Deployment/web: 8080/TCP" in e for e in private.extra)
