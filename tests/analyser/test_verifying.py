"""Verify and diff on plain facts: denied observed flows, unobserved allowances, the score."""

from __future__ import annotations

import ipaddress
from typing import Any

from analyser.evaluation import (
    Address,
    ContainerPort,
    Direction,
    IpBlock,
    PolicySet,
    PortRange,
    PortSet,
    pod,
)
from analyser.flows import Protocol
from analyser.verifying import (
    NODES,
    Observed,
    Universe,
    block_for,
    check_observed,
    diff,
    verify,
)

TCP, UDP = Protocol.TCP, Protocol.UDP
WEB = pod(namespace="shop", labels={"app": "web"}, name="shop/Deployment/web")
API = pod(
    namespace="shop",
    labels={"app": "api"},
    ports=[ContainerPort("http", TCP, 8080)],
    name="shop/Deployment/api",
)
EXAMPLE = Address("93.184.216.34", name="ip:93.184.216.34")


def netpol(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": spec,
    }


WEB_POLICY = netpol(
    "web",
    {
        "podSelector": {"matchLabels": {"app": "web"}},
        "policyTypes": ["Ingress", "Egress"],
        "egress": [
            {"to": [{"podSelector": {"matchLabels": {"app": "api"}}}], "ports": [{"port": 8080}]},
            {"to": [{"ipBlock": {"cidr": "93.184.216.34/32"}}], "ports": [{"port": 443}]},
        ],
    },
)
API_POLICY = netpol(
    "api",
    {
        "podSelector": {"matchLabels": {"app": "api"}},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [
            {
                "from": [{"podSelector": {"matchLabels": {"app": "web"}}}],
                "ports": [{"port": "http"}],
            }
        ],
    },
)
OBSERVED = [Observed(WEB, API, TCP, 8080, flows=3), Observed(WEB, EXAMPLE, TCP, 443)]


def universe(policies: PolicySet) -> Universe:
    return Universe.of([WEB, API], [*policies.ip_blocks(), block_for(EXAMPLE.ip)])


def test_least_privilege_policies_pass_with_nothing_extra() -> None:
    policies = PolicySet.from_documents([WEB_POLICY, API_POLICY])
    result = verify(policies, OBSERVED, universe(policies))
    assert result.passed
    assert result.checked == 2
    assert result.allowances == ()
    assert (result.score.pairs, result.score.ports) == (0, 0)


def test_removed_rule_names_the_denied_flow_and_side() -> None:
    no_api_ingress = dict(API_POLICY, spec=dict(API_POLICY["spec"], ingress=[]))
    policies = PolicySet.from_documents([WEB_POLICY, no_api_ingress])
    [denial] = check_observed(policies, OBSERVED)
    assert (denial.client, denial.server, denial.port, denial.side) == (
        "shop/Deployment/web",
        "shop/Deployment/api",
        8080,
        Direction.INGRESS,
    )
    assert denial.policies == ("shop/api",)
    assert not verify(policies, OBSERVED, universe(policies)).passed


def test_unobserved_allowances_and_score() -> None:
    wide_api = dict(API_POLICY, spec=dict(API_POLICY["spec"], ingress=[{}]))  # from anywhere
    policies = PolicySet.from_documents([WEB_POLICY, wide_api])
    result = verify(policies, OBSERVED, universe(policies))
    assert result.passed
    extra = {(a.client, a.server): a for a in result.allowances}
    # api's ingress is open to every source, but web's egress only allows the observed 8080 and
    # api may send nothing (Egress isolated, no rules): only addresses outside get more.
    assert ("shop/Deployment/web", "shop/Deployment/api") not in extra
    assert extra[("ip:0.0.0.0/0", "shop/Deployment/api")].all_ports == (
        Protocol.SCTP,
        Protocol.TCP,
        Protocol.UDP,
    )
    assert extra[("ip:93.184.216.34/32", "shop/Deployment/api")].unobserved == PortSet.everything()
    assert ("shop/Deployment/api", "shop/Deployment/api") not in extra
    assert result.score.pairs == len(extra) == 3  # the two above and ip:::/0 → api
    assert result.score.all_ports_pairs == 3
    assert result.score.ports == 3 * 3 * 65535


def test_observed_ports_are_subtracted_per_pair() -> None:
    web_any_port_to_api = dict(
        WEB_POLICY,
        spec=dict(
            WEB_POLICY["spec"],
            egress=[{"to": [{"podSelector": {"matchLabels": {"app": "api"}}}]}],
        ),
    )
    api_range = dict(
        API_POLICY,
        spec=dict(
            API_POLICY["spec"],
            ingress=[{"from": [{"podSelector": {}}], "ports": [{"port": 8080, "endPort": 8090}]}],
        ),
    )
    policies = PolicySet.from_documents([web_any_port_to_api, api_range])
    result = verify(policies, OBSERVED, universe(policies))
    [web_api] = [a for a in result.allowances if a.client == "shop/Deployment/web"]
    assert web_api.unobserved == PortSet((PortRange(TCP, 8081, 8090),))
    assert web_api.observed == PortSet.single(TCP, 8080)
    assert not web_api.all_ports
    # The ipBlock flow is now denied by web's egress: nothing allows 443 any more.
    [denial] = result.denials
    assert (denial.server, denial.side) == ("ip:93.184.216.34", Direction.EGRESS)


def test_universe_blocks_are_evaluated_at_a_matching_address() -> None:
    block = IpBlock(ipaddress.ip_network("10.0.0.0/8"), (ipaddress.ip_network("10.0.0.0/16"),))
    u = Universe.of([WEB], [block])
    assert [b.name for b in u.blocks] == [
        "ip:0.0.0.0/0",
        "ip:10.0.0.0/8 except 10.0.0.0/16",
        "ip:::/0",
    ]
    assert [b.address.ip for b in u.blocks] == ["0.0.0.0", "10.1.0.0", "::"]


def test_blocks_of_node_addresses_are_one_cluster_nodes_block() -> None:
    # api admits every node on 8080 (node-2's SNAT'd traffic was seen) and 10.0.0.4/31 on 9090:
    # 10.0.0.4 is node-3's, 10.0.0.5 no node's, so that block stays a block of its own.
    nodes = {"10.0.0.1": "node-1", "10.0.0.2": "node-2", "10.0.0.3": "node-3", "10.0.0.4": "node-3"}
    node_blocks = [{"ipBlock": {"cidr": cidr}} for cidr in ("10.0.0.1/32", "10.0.0.2/31")]
    api_from_nodes = dict(
        API_POLICY,
        spec=dict(
            API_POLICY["spec"],
            ingress=[
                *API_POLICY["spec"]["ingress"],
                {"from": node_blocks, "ports": [{"port": 8080}]},
                {"from": [{"ipBlock": {"cidr": "10.0.0.4/31"}}], "ports": [{"port": 9090}]},
            ],
        ),
    )
    policies = PolicySet.from_documents([WEB_POLICY, api_from_nodes])
    node_2 = Address("10.0.0.2", node="node-2", name="node:node-2")
    observed = [*OBSERVED, Observed(node_2, API, TCP, 8080)]
    blocks = [*policies.ip_blocks(), block_for(EXAMPLE.ip)]
    folded = Universe.of([WEB, API], blocks, nodes=nodes)
    assert [b.name for b in folded.blocks] == [
        "ip:0.0.0.0/0",
        "ip:10.0.0.4/31",
        "ip:93.184.216.34/32",
        "ip:::/0",
        NODES,
    ]
    assert verify(policies, observed, folded).passed
    extra = {(a.client, a.server) for a in verify(policies, observed, folded).allowances}
    # node-2 was seen on 8080, which stands for every node: nothing unobserved from the nodes
    assert (NODES, str(API)) not in extra
    assert ("ip:10.0.0.4/31", str(API)) in extra
    # without the nodes, one pair per block, each unobserved but the one holding node-2
    unfolded = verify(policies, observed, Universe.of([WEB, API], blocks))
    pairs = {(a.client, a.server) for a in unfolded.allowances}
    assert ("ip:10.0.0.1/32", str(API)) in pairs
    assert ("ip:10.0.0.2/31", str(API)) not in pairs


def test_diff_reports_newly_allowed_and_denied_ports() -> None:
    old = PolicySet.from_documents([WEB_POLICY, API_POLICY])
    api_also_metrics = dict(
        API_POLICY,
        spec=dict(
            API_POLICY["spec"],
            ingress=[{"from": [{"podSelector": {}}], "ports": [{"port": 9090}]}],
        ),
    )
    web_egress_any = dict(
        WEB_POLICY, spec=dict(WEB_POLICY["spec"], egress=[{"to": [{"podSelector": {}}]}])
    )
    new = PolicySet.from_documents([web_egress_any, api_also_metrics])
    blocks = [*old.ip_blocks(), *new.ip_blocks()]
    changes = {(c.client, c.server): c for c in diff(old, new, Universe.of([WEB, API], blocks))}
    web_api = changes[("shop/Deployment/web", "shop/Deployment/api")]
    assert web_api.newly_allowed == PortSet.single(TCP, 9090)
    assert web_api.newly_denied == PortSet.single(TCP, 8080)
    assert web_api.new == PortSet.single(TCP, 9090)
    # The ipBlock rule is gone from the new set: web loses 443 to that address.
    web_out = changes[("shop/Deployment/web", "ip:93.184.216.34/32")]
    assert (web_out.newly_allowed, web_out.newly_denied) == (PortSet(), PortSet.single(TCP, 443))
    # Both pods isolate ingress and api isolates egress with no rules, in both sets: no change.
    assert set(changes) == {
        ("shop/Deployment/web", "shop/Deployment/api"),
        ("shop/Deployment/web", "ip:93.184.216.34/32"),
    }


def test_diff_of_identical_sets_is_empty() -> None:
    policies = PolicySet.from_documents([WEB_POLICY, API_POLICY])
    assert diff(policies, policies, universe(policies)) == []


def test_focus_keeps_only_pairs_with_a_captured_end() -> None:
    db = pod(namespace="shop", labels={"app": "db"}, name="shop/Deployment/db")
    focused = Universe.of([WEB, API, db], [], focus=["shop/Deployment/web"])
    pairs = {(c, s) for c, _, s, _ in focused.pairs()}
    assert ("shop/Deployment/api", "shop/Deployment/db") not in pairs
    assert ("ip:0.0.0.0/0", "shop/Deployment/api") not in pairs
    assert ("shop/Deployment/db", "shop/Deployment/web") in pairs
    assert ("shop/Deployment/web", "ip:::/0") in pairs
    # 3 pairs from web, 2 more to web, 2 blocks × 2 directions for web alone
    assert len(pairs) == 3 + 2 + 4
