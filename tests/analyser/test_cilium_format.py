"""analyse --format cilium and all: CiliumNetworkPolicies valid against Cilium's own CRD schemas
(v1.20 and v1.15), egress by the name the application asked for, a DNS rule limited to the
names looked up, entities for nodes, the API server and exposed ports, and the semantics verify
and diff give them (analyser.ciliumsemantics)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from analyser.analysing import Analysis, PolicyFormat
from analyser.ciliumsemantics import compile_cilium_policy
from analyser.evaluation import Address, Direction, PolicySet, pod
from analyser.flows import Protocol
from analyser.policysets import parse_policy_texts
from kernel.errors import PolicyError
from tests.bundle_builders import Frame, handshake
from tests.cilium_helpers import lookup, named_egress, schema_errors
from tests.hostile.hostile_helpers import (
    add_capture,
    copy_example,
    pod_ip,
    run,
    snapshot,
    window_start,
    write_snapshot,
)


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return copy_example(tmp_path / "bundle")


def _objects(analysis: Analysis, folder: str = "") -> dict[str, Any]:
    return {
        path: yaml.safe_load(text)
        for path, text in analysis.files.items()
        if path.startswith(folder) and path.endswith(".yaml") and "/" not in path[len(folder) :]
    }


def _egress(analysis: Analysis, name: str = "default.frontend.yaml") -> list[dict[str, Any]]:
    return list(yaml.safe_load(analysis.files[name])["spec"]["egress"])


def test_every_object_of_the_demo_is_valid_against_ciliums_crds(bundle: Path) -> None:
    add_capture(bundle, "frontend", named_egress(pod_ip(bundle, "frontend"), window_start(bundle)))
    analysis = run(bundle, policy_format=PolicyFormat.ALL, default_deny=True)
    cilium = _objects(analysis, "cilium/")
    assert len(cilium) == 13  # 12 workloads and the namespace's default-deny
    for path, obj in cilium.items():
        assert obj["kind"] == "CiliumNetworkPolicy"
        assert schema_errors(obj) == [], path
    # The NetworkPolicies beside them are the --format networkpolicy ones.
    plain = run(bundle, default_deny=True)
    assert {
        f"networkpolicy/{path}": text
        for path, text in plain.files.items()
        if path.endswith(".yaml")
    } == {
        p: t
        for p, t in analysis.files.items()
        if p.startswith("networkpolicy/") and p.endswith(".yaml")
    }
    assert analysis.files["networkpolicy/Kustomization"] == plain.files["Kustomization"]


def test_the_schema_check_catches_what_cilium_would_refuse() -> None:
    broken = {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "x", "namespace": "default"},
        "spec": {
            "endpointSelector": {},
            "egress": [
                {"toFQDNs": [{"matchName": "bad name"}], "toPorts": [{"ports": [{"port": 443}]}]}
            ],
        },
    }
    errors = schema_errors(broken)
    assert any("matchName" in e for e in errors) and any("port" in e for e in errors)


def test_egress_outside_is_by_the_name_asked_for_and_unnamed_addresses_stay_cidrs(
    bundle: Path,
) -> None:
    frontend = pod_ip(bundle, "frontend")
    add_capture(bundle, "frontend", named_egress(frontend, window_start(bundle)))
    analysis = run(bundle, policy_format=PolicyFormat.CILIUM)
    egress = _egress(analysis)
    https = {"ports": [{"port": "443", "protocol": "TCP"}]}
    # The name the application asked for, not where its CNAME chain ended.
    assert {"toFQDNs": [{"matchName": "api.shop.example"}], "toPorts": [https]} in egress
    assert {"toCIDRSet": [{"cidr": "198.51.100.7/32"}], "toPorts": [https]} in egress
    assert not any("203.0.113.10" in json.dumps(rule) for rule in egress)
    (dns,) = [rule for rule in egress if "rules" in rule["toPorts"][0]]
    names = [item["matchName"] for item in dns["toPorts"][0]["rules"]["dns"]]
    assert "api.shop.example" in names and "edge.cdn.example" not in names
    assert dns["toEndpoints"] == [
        {"matchLabels": {"k8s-app": "kube-dns", "k8s:io.kubernetes.pod.namespace": "kube-system"}}
    ]
    # The safety check passed on these files; verify reads them the same way.
    loaded = parse_policy_texts({p: t for p, t in analysis.files.items() if p.endswith(".yaml")})
    assert {p.kind for p in loaded.policies.policies} == {"CiliumNetworkPolicy"}


def test_many_names_under_one_suffix_become_one_commented_pattern(bundle: Path) -> None:
    frontend = pod_ip(bundle, "frontend")
    start = window_start(bundle)
    frames = []
    for shard in range(4):
        name, address = f"s{shard}.cdn.example", f"203.0.113.{20 + shard}"
        frames += lookup(frontend, name, [(name, "A", address)], start + shard, port=41000 + shard)
        frames += handshake(frontend, 42000 + shard, address, 443, start + shard + 0.5)
    add_capture(bundle, "frontend", frames)
    folded = run(bundle, policy_format=PolicyFormat.CILIUM, max_names_per_suffix=3)
    text = folded.files["default.frontend.yaml"]
    assert "# 4 names seen one label under cdn.example: one pattern\n" in text
    assert {
        "toFQDNs": [{"matchPattern": "*.cdn.example"}],
        "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}]}],
    } in _egress(folded)
    names = run(bundle, policy_format=PolicyFormat.CILIUM)  # the default threshold: 10
    assert "matchPattern" not in names.files["default.frontend.yaml"]


def test_nodes_the_api_server_and_exposed_ports_are_entities(bundle: Path) -> None:
    document = snapshot(bundle)
    items = document["items"]
    assert isinstance(items, list)
    items.append(
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "kubernetes",
                "namespace": "default",
                "labels": {"kubernetes.io/service-name": "kubernetes"},
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["203.0.113.50"]}],
            "ports": [{"name": "https", "port": 443, "protocol": "TCP"}],
        }
    )
    write_snapshot(bundle, document)
    frontend = pod_ip(bundle, "frontend")
    add_capture(
        bundle, "frontend", handshake(frontend, 40100, "203.0.113.50", 443, window_start(bundle))
    )
    analysis = run(bundle, policy_format=PolicyFormat.CILIUM)
    policy = yaml.safe_load(analysis.files["default.frontend.yaml"])["spec"]
    assert {
        "toEntities": ["kube-apiserver"],
        "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}]}],
    } in policy["egress"]
    entities = [rule["fromEntities"] for rule in policy["ingress"] if "fromEntities" in rule]
    assert ["host", "remote-node"] in entities  # the kubelet's probes
    assert ["world"] in entities  # frontend-external is a LoadBalancer
    assert not any("CIDR" in key for rule in policy["ingress"] for key in rule)


# -- the semantics verify and diff give CiliumNetworkPolicies -------------------------------------

WEB = pod(namespace="shop", labels={"app": "web"}, name="shop/web")
API = pod(namespace="shop", labels={"app": "api"}, name="shop/api")
OTHER = pod(namespace="other", labels={"app": "api"}, name="other/api")


def _cnp(spec: dict[str, Any], name: str = "web") -> dict[str, Any]:
    return {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"endpointSelector": {"matchLabels": {"app": "web"}}, **spec},
    }


def _ports(port: str, protocol: str = "TCP") -> list[dict[str, Any]]:
    return [{"ports": [{"port": port, "protocol": protocol}]}]


def test_cilium_semantics_for_what_the_generator_writes() -> None:
    policies = PolicySet.of(
        [
            compile_cilium_policy(
                _cnp(
                    {
                        "ingress": [{}],
                        "egress": [
                            {
                                "toEndpoints": [
                                    {
                                        "matchLabels": {
                                            "app": "api",
                                            "k8s:io.kubernetes.pod.namespace": "shop",
                                        }
                                    }
                                ],
                                "toPorts": _ports("8080"),
                            },
                            {
                                "toFQDNs": [{"matchName": "api.shop.example"}],
                                "toPorts": _ports("443"),
                            },
                            {
                                "toCIDRSet": [{"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}],
                                "toPorts": _ports("25"),
                            },
                            {"toEntities": ["host", "remote-node"], "toPorts": _ports("10250")},
                        ],
                    }
                )
            )
        ]
    )
    named = Address("203.0.113.10", dns_names=frozenset({"api.shop.example", "edge.cdn.example"}))
    unnamed = Address("203.0.113.11")
    node = Address("10.0.0.5", node="node-1")
    tcp = Protocol.TCP
    assert policies.allows(WEB, API, tcp, 8080)
    assert not policies.allows(WEB, OTHER, tcp, 8080)  # the namespace label
    assert policies.allows(WEB, named, tcp, 443) and not policies.allows(WEB, unnamed, tcp, 443)
    assert policies.allows(WEB, unnamed, tcp, 25)
    assert not policies.allows(WEB, Address("10.1.2.3"), tcp, 25)  # except
    assert policies.allows(WEB, node, tcp, 10250)
    assert not policies.side(WEB, unnamed, Direction.INGRESS).ports  # ingress: [{}] denies


def test_a_cilium_cidr_rule_does_not_match_a_node() -> None:
    policy = compile_cilium_policy(
        _cnp({"egress": [{"toCIDR": ["192.0.2.0/24"], "toPorts": _ports("22")}]})
    )
    policies = PolicySet.of([policy])
    assert policies.allows(WEB, Address("192.0.2.9"), Protocol.TCP, 22)
    assert not policies.allows(WEB, Address("192.0.2.9", node="node-1"), Protocol.TCP, 22)


@pytest.mark.parametrize(
    "spec",
    [
        {"egressDeny": [{"toEntities": ["world"]}]},
        {"egress": [{"toServices": [{"k8sService": {"serviceName": "x"}}]}]},
        {"egress": [{"toEntities": ["health"]}]},
        {"egress": [{"toFQDNs": [{"matchName": "bad name"}]}]},
        {"egress": [{"toEntities": ["world"], "toPorts": [{"ports": [{"port": "²"}]}]}]},
    ],
)
def test_what_the_evaluation_does_not_know_is_refused_by_name(spec: dict[str, Any]) -> None:
    with pytest.raises(PolicyError, match="CiliumNetworkPolicy shop/web"):
        compile_cilium_policy(_cnp(spec))


def _rotating(client: str, at: float, *, unnamed: int = 0) -> list[Frame]:
    """One lookup of storage.example.com answered with 40 addresses, a connection to each on
    443; and ``unnamed`` more connections to addresses no answer named."""
    addresses = [f"203.0.113.{100 + n}" for n in range(40)]
    records = [("storage.example.com", "A", address) for address in addresses]
    frames = lookup(client, "storage.example.com", records, at, port=44000)
    addresses += [f"198.51.100.{100 + n}" for n in range(unnamed)]
    for index, address in enumerate(addresses):
        frames += handshake(client, 45000 + index, address, 443, at + 1 + index / 100)
    return frames


def test_a_rule_to_anywhere_is_by_name_when_every_address_had_one(bundle: Path) -> None:
    frontend = pod_ip(bundle, "frontend")
    add_capture(bundle, "frontend", _rotating(frontend, window_start(bundle)))
    analysis = run(bundle, policy_format=PolicyFormat.ALL)
    https = {"ports": [{"port": "443", "protocol": "TCP"}]}
    plain = yaml.safe_load(analysis.files["networkpolicy/default.frontend.yaml"])["spec"]
    assert any(
        peer.get("ipBlock", {}).get("cidr") == "0.0.0.0/0"
        for rule in plain["egress"]
        for peer in rule["to"]
    )
    egress = _egress(analysis, "cilium/default.frontend.yaml")
    assert {"toFQDNs": [{"matchName": "storage.example.com"}], "toPorts": [https]} in egress
    assert "0.0.0.0/0" not in json.dumps(egress)


def test_a_rule_to_anywhere_stays_when_an_address_had_no_name(bundle: Path) -> None:
    frontend = pod_ip(bundle, "frontend")
    add_capture(bundle, "frontend", _rotating(frontend, window_start(bundle), unnamed=1))
    egress = _egress(run(bundle, policy_format=PolicyFormat.CILIUM))
    assert "0.0.0.0/0" in json.dumps(egress)
    assert "storage.example.com" not in json.dumps([r for r in egress if "toFQDNs" in r])
