"""ClusterNetworkPolicy semantics and the tiers: Admin, then NetworkPolicy, then Baseline."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from analyser.clusterpolicies import TieredPolicySet, compile_cluster_policy
from analyser.evaluation import EVERY_PORT, Address, PortSet, compile_policy, pod
from analyser.flows import Protocol
from analyser.policysets import parse_policy_texts
from kernel.errors import PolicyError

TCP, UDP = Protocol.TCP, Protocol.UDP
WEB = pod(namespace="shop", labels={"app": "web"}, name="shop/web")
DB = pod(namespace="shop", labels={"app": "db"}, name="shop/db")
DNS = pod(namespace="kube-system", labels={"k8s-app": "kube-dns"}, name="kube-system/coredns")
LATER = pod(namespace="added-later", labels={"app": "new"}, name="added-later/new")
EXEMPT = pod(
    namespace="sandbox",
    labels={"app": "x"},
    namespace_labels={"netpol-sniffer.io/baseline": "exempt"},
    name="sandbox/x",
)
OUTSIDE = Address("203.0.113.7")
NODE = Address("192.168.49.2", node="node-a")


def cluster_policy(
    name: str,
    *,
    tier: str = "Baseline",
    priority: int = 1000,
    subject: dict[str, Any] | None = None,
    ingress: list[dict[str, Any]] | None = None,
    egress: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "tier": tier,
        "priority": priority,
        "subject": subject or {"namespaces": {}},
    }
    if ingress is not None:
        spec["ingress"] = ingress
    if egress is not None:
        spec["egress"] = egress
    return {
        "apiVersion": "policy.networking.k8s.io/v1beta1",
        "kind": "ClusterNetworkPolicy",
        "metadata": {"name": name},
        "spec": spec,
    }


def rule(action: str, peers: list[dict[str, Any]], *ports: tuple[str, int]) -> dict[str, Any]:
    document: dict[str, Any] = {"action": action, "to": peers}
    if ports:
        document["protocols"] = [
            {protocol: {"destinationPort": {"number": number}}} for protocol, number in ports
        ]
    return document


def ingress_rule(action: str, peers: list[dict[str, Any]]) -> dict[str, Any]:
    return {"action": action, "from": peers}


# What `analyse --baseline cluster` writes, in small: kube-system existed and was not captured.
BASELINE = cluster_policy(
    "netpol-sniffer-baseline",
    subject={
        "namespaces": {
            "matchExpressions": [
                {
                    "key": "kubernetes.io/metadata.name",
                    "operator": "NotIn",
                    "values": ["kube-system"],
                },
                {"key": "netpol-sniffer.io/baseline", "operator": "NotIn", "values": ["exempt"]},
            ]
        }
    },
    ingress=[ingress_rule("Deny", [{"namespaces": {}}])],
    egress=[
        rule(
            "Accept",
            [
                {
                    "pods": {
                        "namespaceSelector": {
                            "matchLabels": {"kubernetes.io/metadata.name": "kube-system"}
                        },
                        "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                    }
                }
            ],
            ("udp", 53),
            ("tcp", 53),
        ),
        rule("Accept", [{"networks": ["192.168.49.2/32"]}]),
        rule("Deny", [{"namespaces": {}}, {"networks": ["0.0.0.0/0", "::/0"]}]),
    ],
)

# shop/web's own NetworkPolicy: egress to db on 5432 and DNS; nothing in.
WEB_POLICY = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": {"name": "web", "namespace": "shop"},
    "spec": {
        "podSelector": {"matchLabels": {"app": "web"}},
        "policyTypes": ["Ingress", "Egress"],
        "egress": [
            {"to": [{"podSelector": {"matchLabels": {"app": "db"}}}], "ports": [{"port": 5432}]}
        ],
    },
}


def tiered(*documents: dict[str, Any]) -> TieredPolicySet:
    return TieredPolicySet(
        policies=tuple(compile_policy(d) for d in documents if d["kind"] == "NetworkPolicy"),
        cluster_policies=tuple(
            compile_cluster_policy(d) for d in documents if d["kind"] == "ClusterNetworkPolicy"
        ),
    )


def test_the_baseline_denies_what_no_network_policy_decides() -> None:
    policies = tiered(BASELINE)
    assert not policies.allows(DB, WEB, TCP, 8080)  # ingress from a pod, egress to a pod
    assert not policies.allows(DB, OUTSIDE, TCP, 443)
    assert policies.allowed_ports(DB, DNS) == PortSet.of(
        [*PortSet.single(TCP, 53), *PortSet.single(UDP, 53)]
    )
    denial = policies.denials(DB, OUTSIDE, TCP, 443)[0]
    assert denial.policies == ("ClusterNetworkPolicy netpol-sniffer-baseline (Baseline)",)


def test_the_baseline_accepts_egress_to_the_nodes_and_cannot_deny_ingress_from_addresses() -> None:
    policies = tiered(BASELINE)
    other_node = Address("192.168.49.2", node="node-b")
    assert policies.allowed_ports(DB, other_node) == EVERY_PORT
    # The standard channel names no address as an ingress peer: the baseline has no say.
    assert policies.allowed_ports(OUTSIDE, DB) == EVERY_PORT


def test_a_network_policy_decides_everything_for_the_pods_it_selects() -> None:
    policies = tiered(BASELINE, WEB_POLICY)
    # web's own policy allows web → db at web's egress; db (no policy) is denied by the baseline
    # at its ingress.
    verdict_egress, verdict_ingress = policies.sides(WEB, DB)
    assert verdict_egress is not None and verdict_egress.ports.contains(TCP, 5432)
    assert verdict_egress.policies == ("shop/web",)
    assert verdict_ingress is not None and not verdict_ingress.ports
    # DNS is not in web's policy: the baseline's DNS rule does not apply to a selected pod.
    assert not policies.allows(WEB, DNS, UDP, 53)


def test_a_namespace_created_later_is_covered_and_exempt_ones_are_not() -> None:
    policies = tiered(BASELINE)
    assert not policies.allows(LATER, OUTSIDE, TCP, 443)
    assert policies.allowed_ports(EXEMPT, OUTSIDE) == EVERY_PORT
    assert policies.allowed_ports(DNS, OUTSIDE) == EVERY_PORT  # kube-system is listed


def test_pod_and_its_own_node_always_talk() -> None:
    on_node = pod(namespace="shop", labels={"app": "db"}, name="shop/db", node="node-a")
    deny_nodes = cluster_policy(
        "deny", egress=[rule("Deny", [{"networks": ["0.0.0.0/0"]}])], ingress=None
    )
    assert tiered(deny_nodes).allowed_ports(on_node, NODE) == EVERY_PORT


def test_admin_deny_beats_a_network_policy_and_pass_hands_it_over() -> None:
    deny_db = cluster_policy(
        "no-db",
        tier="Admin",
        priority=10,
        egress=[
            rule("Deny", [{"pods": {"podSelector": {"matchLabels": {"app": "db"}}}}], ("tcp", 5432))
        ],
    )
    egress, _ = tiered(deny_db, WEB_POLICY).sides(WEB, DB)
    assert egress is not None and not egress.ports.contains(TCP, 5432)
    assert egress.policies == ("ClusterNetworkPolicy no-db (Admin)", "shop/web")
    passing = cluster_policy(
        "pass-db",
        tier="Admin",
        priority=5,
        egress=[rule("Pass", [{"namespaces": {}}], ("tcp", 5432))],
    )
    egress, _ = tiered(passing, deny_db, WEB_POLICY).sides(WEB, DB)
    assert egress is not None and egress.ports.contains(TCP, 5432)  # web's policy decides


def test_admin_accept_beats_a_network_policy_and_baseline_pass_allows() -> None:
    accept = cluster_policy(
        "monitoring",
        tier="Admin",
        priority=1,
        egress=[rule("Accept", [{"networks": ["203.0.113.0/24"]}], ("tcp", 443))],
    )
    assert tiered(accept, WEB_POLICY).allows(WEB, OUTSIDE, TCP, 443)
    assert not tiered(accept, WEB_POLICY).allows(WEB, OUTSIDE, TCP, 80)
    baseline_pass = cluster_policy(
        "pass", priority=1, egress=[rule("Pass", [{"networks": ["203.0.113.0/24"]}])]
    )
    assert tiered(baseline_pass, BASELINE).allows(DB, OUTSIDE, TCP, 443)


def test_lower_priority_first_and_rules_in_order() -> None:
    deny = cluster_policy("a-deny", priority=20, egress=[rule("Deny", [{"namespaces": {}}])])
    accept = cluster_policy(
        "b-accept", priority=10, egress=[rule("Accept", [{"namespaces": {}}], ("tcp", 80))]
    )
    policies = tiered(deny, accept)
    assert policies.allowed_ports(WEB, DB) == PortSet.single(TCP, 80)


def test_networks_match_addresses_not_pods() -> None:
    deny = cluster_policy("d", egress=[rule("Deny", [{"networks": ["0.0.0.0/0"]}])])
    assert tiered(deny).allowed_ports(WEB, DB) == EVERY_PORT
    assert not tiered(deny).allows(WEB, OUTSIDE, TCP, 443)


def test_ip_blocks_include_the_networks() -> None:
    blocks = [str(b) for b in tiered(BASELINE, WEB_POLICY).ip_blocks()]
    assert blocks == ["0.0.0.0/0", "192.168.49.2/32", "::/0"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"tier": "Middle"}, "spec.tier: 'Middle' is not Admin or Baseline"),
        ({"priority": 1001}, "spec.priority must be a number from 0 to 1000"),
        ({"subject": {"namespaces": {}, "pods": {"podSelector": {}}}}, "exactly one of"),
        ({"subject": {"pods": {}}}, "podSelector is required"),
        ({"ingress": [ingress_rule("Deny", [{"networks": ["0.0.0.0/0"]}])]}, "unknown 'networks'"),
        ({"egress": [rule("Allow", [{"namespaces": {}}])]}, "'Allow' is not Accept, Deny or Pass"),
        ({"egress": [rule("Deny", [])]}, "at least one peer is required"),
        ({"egress": [rule("Deny", [{"networks": ["10.0.0.1/8"]}])]}, "has host bits set"),
        ({"egress": [rule("Deny", [{"networks": ["10.0.0.1"]}])]}, "is not a CIDR"),
        (
            {
                "egress": [
                    {
                        "action": "Deny",
                        "to": [{"namespaces": {}}],
                        "protocols": [
                            {"tcp": {"destinationPort": {"range": {"start": 90, "end": 80}}}}
                        ],
                    }
                ]
            },
            "start 90 must be less than end 80",
        ),
    ],
)
def test_malformed_cluster_policies_are_errors_naming_the_field(
    change: dict[str, Any], message: str
) -> None:
    document = cluster_policy("broken")
    document["spec"].update(change)
    with pytest.raises(PolicyError, match="ClusterNetworkPolicy broken") as error:
        compile_cluster_policy(document, source="p.yaml")
    assert message in str(error.value)
    assert "p.yaml" in str(error.value)


def test_both_served_versions_are_read_and_others_refused() -> None:
    for version in ("v1beta1", "v1alpha2"):
        document = dict(cluster_policy("b"), apiVersion=f"policy.networking.k8s.io/{version}")
        assert compile_cluster_policy(document).name == "b"
    with pytest.raises(PolicyError, match="apiVersion"):
        compile_cluster_policy(dict(cluster_policy("b"), apiVersion="policy.networking.k8s.io/v1"))


def test_policy_files_hold_cluster_policies_and_refuse_one_defined_twice() -> None:
    text = yaml.safe_dump(BASELINE)
    loaded = parse_policy_texts({"a.yaml": text, "web.yaml": yaml.safe_dump(WEB_POLICY)})
    assert [p.name for p in loaded.policies.cluster_policies] == ["netpol-sniffer-baseline"]
    assert [str(p) for p in loaded.policies.policies] == ["shop/web"]
    assert not loaded.notes
    only_cluster = parse_policy_texts({"a.yaml": text})
    assert not only_cluster.notes  # a ClusterNetworkPolicy is a policy: no "nothing found"
    with pytest.raises(PolicyError, match="defined twice"):
        parse_policy_texts({"a.yaml": text, "b.yaml": text})
