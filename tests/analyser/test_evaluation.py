"""NetworkPolicy semantics, hand-worked case by case (the classic traps included)."""

from __future__ import annotations

import random
from ipaddress import ip_network
from typing import Any

import pytest

from analyser import evaluation
from analyser.evaluation import (
    Address,
    ContainerPort,
    Direction,
    IpBlock,
    PolicySet,
    PortRange,
    PortSet,
    compile_policy,
    pod,
)
from analyser.flows import Protocol
from kernel.errors import PolicyError
from tests.work_counting import executed_lines, growth

TCP, UDP, SCTP = Protocol.TCP, Protocol.UDP, Protocol.SCTP

WEB = pod(namespace="shop", labels={"app": "web", "tier": "front"}, name="shop/web")
API = pod(
    namespace="shop",
    labels={"app": "api", "tier": "back"},
    ports=[ContainerPort("http", TCP, 8080), ContainerPort("metrics", TCP, 9090)],
    name="shop/api",
)
DB = pod(
    namespace="shop",
    labels={"app": "db"},
    ports=[ContainerPort("pg", TCP, 5432), ContainerPort("dns", UDP, 5353)],
    name="shop/db",
)
MONITOR = pod(
    namespace="ops",
    labels={"app": "prometheus"},
    namespace_labels={"team": "ops"},
    name="ops/prometheus",
)
OTHER_TEAM = pod(
    namespace="sandbox",
    labels={"app": "api"},
    namespace_labels={"team": "dev"},
    name="sandbox/api",
)
INTERNET = Address("93.184.216.34")


def policy(
    name: str,
    spec: dict[str, Any],
    *,
    namespace: str = "shop",
) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def policies(*documents: dict[str, Any]) -> PolicySet:
    return PolicySet.from_documents(documents)


def api_ingress_from(
    *peers: dict[str, Any], ports: list[dict[str, Any]] | None = None
) -> PolicySet:
    rule: dict[str, Any] = {"from": list(peers)}
    if ports is not None:
        rule["ports"] = ports
    return policies(
        policy(
            "api",
            {
                "podSelector": {"matchLabels": {"app": "api"}},
                "policyTypes": ["Ingress"],
                "ingress": [rule],
            },
        )
    )


# ---- isolation ------------------------------------------------------------------------------


def test_no_policy_allows_everything() -> None:
    assert PolicySet().allowed_ports(WEB, API) == PortSet.everything()
    assert PolicySet().allows(WEB, INTERNET, UDP, 53)


def test_a_selecting_policy_without_rules_isolates_the_pod() -> None:
    deny = policies(policy("deny", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}))
    assert not deny.allowed_ports(WEB, API)
    assert not deny.allowed_ports(API, INTERNET)
    # A pod in another namespace is neither selected nor affected as a client... but its
    # connection still needs ingress at the isolated server.
    assert not deny.allows(MONITOR, API, TCP, 8080)
    assert deny.allows(MONITOR, OTHER_TEAM, TCP, 8080)


def test_policy_with_only_ingress_type_leaves_egress_open() -> None:
    only_ingress = policies(
        policy("deny-in", {"podSelector": {}, "policyTypes": ["Ingress"]}),
    )
    assert only_ingress.allows(WEB, INTERNET, TCP, 443)  # egress from an isolated-for-ingress pod
    assert not only_ingress.allows(WEB, API, TCP, 8080)  # denied by the server's ingress


def test_policy_types_default_ingress_always_egress_only_with_rules() -> None:
    no_types_no_egress = policies(policy("p", {"podSelector": {}, "ingress": [{}]}))
    assert no_types_no_egress.allows(WEB, INTERNET, TCP, 443)  # egress not isolated
    no_types_with_egress = policies(
        policy("p", {"podSelector": {}, "egress": [{"ports": [{"port": 53, "protocol": "UDP"}]}]})
    )
    assert not no_types_with_egress.allows(WEB, INTERNET, TCP, 443)
    assert no_types_with_egress.allows(WEB, INTERNET, UDP, 53)
    assert not no_types_with_egress.allows(INTERNET, WEB, TCP, 80)  # ingress isolated, no rules
    empty_egress_list = policies(policy("p", {"podSelector": {}, "egress": []}))
    assert empty_egress_list.allows(WEB, INTERNET, TCP, 443)  # `egress: []` does not imply Egress


def test_egress_only_policy_leaves_ingress_open() -> None:
    egress_only = policies(policy("p", {"podSelector": {}, "policyTypes": ["Egress"]}))
    assert egress_only.allows(INTERNET, WEB, TCP, 80)
    assert not egress_only.allows(WEB, INTERNET, TCP, 443)


def test_policies_are_a_union() -> None:
    two = policies(
        policy(
            "a",
            {
                "podSelector": {"matchLabels": {"app": "api"}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}]}],
            },
        ),
        policy(
            "b",
            {
                "podSelector": {"matchLabels": {"tier": "back"}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "db"}}}]}],
            },
        ),
    )
    assert two.allows(WEB, API, TCP, 8080)
    assert two.allows(DB, API, TCP, 8080)
    assert not two.allows(MONITOR, API, TCP, 8080)


def test_policies_only_select_pods_in_their_own_namespace() -> None:
    deny_in_shop = policies(policy("deny", {"podSelector": {}, "policyTypes": ["Ingress"]}))
    assert deny_in_shop.allows(WEB, OTHER_TEAM, TCP, 8080)  # same labels, other namespace


def test_connection_needs_egress_at_client_and_ingress_at_server() -> None:
    web_egress_to_api = policy(
        "web",
        {
            "podSelector": {"matchLabels": {"app": "web"}},
            "policyTypes": ["Egress"],
            "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "api"}}}]}],
        },
    )
    api_ingress_from_db = policy(
        "api",
        {
            "podSelector": {"matchLabels": {"app": "api"}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "db"}}}]}],
        },
    )
    both = policies(web_egress_to_api, api_ingress_from_db)
    denials = both.denials(WEB, API, TCP, 8080)
    assert [(d.side, d.denied_by, d.policies) for d in denials] == [
        (Direction.INGRESS, "shop/api", ("shop/api",))
    ]
    assert "denied by ingress at shop/api" in str(denials[0])
    assert not both.allows(WEB, DB, TCP, 5432)  # egress at web denies; db is not isolated
    [egress_denial] = both.denials(WEB, DB, TCP, 5432)
    assert egress_denial.side is Direction.EGRESS
    assert egress_denial.denied_by == "shop/web"
    assert both.allows(DB, API, TCP, 8080)


# ---- peers and selectors ---------------------------------------------------------------------


def test_empty_pod_selector_in_from_means_all_pods_of_the_policy_namespace() -> None:
    same_namespace = api_ingress_from({"podSelector": {}})
    assert same_namespace.allows(WEB, API, TCP, 8080)
    assert same_namespace.allows(DB, API, TCP, 8080)
    assert not same_namespace.allows(MONITOR, API, TCP, 8080)  # not every pod in the cluster
    assert not same_namespace.allows(INTERNET, API, TCP, 8080)


def test_empty_namespace_selector_means_every_namespace() -> None:
    everywhere = api_ingress_from({"namespaceSelector": {}})
    assert everywhere.allows(MONITOR, API, TCP, 8080)
    assert everywhere.allows(OTHER_TEAM, API, TCP, 8080)
    assert not everywhere.allows(INTERNET, API, TCP, 8080)  # pods only, not addresses


def test_namespace_and_pod_selector_in_one_peer_is_and() -> None:
    one_peer = api_ingress_from(
        {
            "namespaceSelector": {"matchLabels": {"team": "ops"}},
            "podSelector": {"matchLabels": {"app": "prometheus"}},
        }
    )
    assert one_peer.allows(MONITOR, API, TCP, 8080)
    ops_other = pod(namespace="ops", labels={"app": "grafana"}, namespace_labels={"team": "ops"})
    assert not one_peer.allows(ops_other, API, TCP, 8080)
    shop_prometheus = pod(namespace="shop", labels={"app": "prometheus"})
    assert not one_peer.allows(shop_prometheus, API, TCP, 8080)


def test_namespace_and_pod_selector_as_two_peers_is_or() -> None:
    two_peers = api_ingress_from(
        {"namespaceSelector": {"matchLabels": {"team": "ops"}}},
        {"podSelector": {"matchLabels": {"app": "prometheus"}}},
    )
    ops_other = pod(namespace="ops", labels={"app": "grafana"}, namespace_labels={"team": "ops"})
    assert two_peers.allows(ops_other, API, TCP, 8080)  # any pod in an ops namespace
    shop_prometheus = pod(namespace="shop", labels={"app": "prometheus"})
    assert two_peers.allows(shop_prometheus, API, TCP, 8080)  # prometheus in the policy's ns
    dev_prometheus = pod(
        namespace="sandbox", labels={"app": "prometheus"}, namespace_labels={"team": "dev"}
    )
    assert not two_peers.allows(dev_prometheus, API, TCP, 8080)


def test_namespace_name_label_is_always_present() -> None:
    by_name = api_ingress_from(
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ops"}}}
    )
    assert by_name.allows(MONITOR, API, TCP, 8080)
    assert not by_name.allows(OTHER_TEAM, API, TCP, 8080)


@pytest.mark.parametrize(
    ("expression", "allowed"),
    [
        ({"key": "tier", "operator": "In", "values": ["front", "edge"]}, {"web"}),
        ({"key": "tier", "operator": "NotIn", "values": ["front"]}, {"db", "api"}),  # db: no tier
        ({"key": "tier", "operator": "Exists"}, {"web", "api"}),
        ({"key": "tier", "operator": "DoesNotExist"}, {"db"}),
    ],
)
def test_match_expressions(expression: dict[str, Any], allowed: set[str]) -> None:
    server = pod(namespace="shop", labels={"app": "cache"})
    rules = policies(
        policy(
            "cache",
            {
                "podSelector": {"matchLabels": {"app": "cache"}},
                "ingress": [{"from": [{"podSelector": {"matchExpressions": [expression]}}]}],
            },
        )
    )
    clients = {"web": WEB, "api": API, "db": DB}
    assert {n for n, c in clients.items() if rules.allows(c, server, TCP, 6379)} == allowed


def test_match_labels_and_match_expressions_together_are_and() -> None:
    both = api_ingress_from(
        {
            "podSelector": {
                "matchLabels": {"tier": "front"},
                "matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["web"]}],
            }
        }
    )
    assert not both.allows(WEB, API, TCP, 8080)  # tier=front but app=web
    edge = pod(namespace="shop", labels={"app": "edge", "tier": "front"})
    assert both.allows(edge, API, TCP, 8080)
    assert not both.allows(DB, API, TCP, 8080)


def test_pod_selector_of_policy_with_expressions() -> None:
    rules = policies(
        policy(
            "not-db",
            {
                "podSelector": {
                    "matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["db"]}]
                },
                "policyTypes": ["Ingress"],
            },
        )
    )
    assert not rules.allows(DB, API, TCP, 8080)
    assert rules.allows(API, DB, TCP, 5432)


# ---- from/to and ingress lists -----------------------------------------------------------------


def test_absent_or_empty_from_matches_every_source() -> None:
    rules: list[dict[str, Any]] = [{}, {"from": []}, {"from": None}]
    for rule in rules:
        open_api = policies(
            policy("api", {"podSelector": {"matchLabels": {"app": "api"}}, "ingress": [rule]})
        )
        assert open_api.allows(MONITOR, API, TCP, 1)
        assert open_api.allows(INTERNET, API, UDP, 53)


def test_empty_ingress_list_allows_nothing_but_one_empty_rule_allows_everything() -> None:
    nothing = policies(policy("api", {"podSelector": {}, "ingress": []}))
    everything = policies(policy("api", {"podSelector": {}, "ingress": [{}]}))
    assert not nothing.allowed_ports(WEB, API)
    assert everything.allowed_ports(WEB, API) == PortSet.everything()


def test_egress_to_absent_matches_every_destination_on_its_ports() -> None:
    dns_anywhere = policies(
        policy(
            "web",
            {
                "podSelector": {"matchLabels": {"app": "web"}},
                "policyTypes": ["Egress"],
                "egress": [{"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53}]}],
            },
        )
    )
    assert dns_anywhere.allowed_ports(WEB, INTERNET) == PortSet.of(
        [PortRange(TCP, 53, 53), PortRange(UDP, 53, 53)]
    )
    assert dns_anywhere.allows(WEB, DB, UDP, 53)


# ---- ipBlock ---------------------------------------------------------------------------------


def test_ip_block_with_except_ipv4() -> None:
    outside = policies(
        policy(
            "web",
            {
                "podSelector": {"matchLabels": {"app": "web"}},
                "policyTypes": ["Egress"],
                "egress": [
                    {"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}]}
                ],
            },
        )
    )
    assert outside.allows(WEB, Address("10.2.3.4"), TCP, 443)
    assert not outside.allows(WEB, Address("10.1.3.4"), TCP, 443)
    assert not outside.allows(WEB, Address("11.0.0.1"), TCP, 443)
    assert not outside.allows(WEB, Address("::ffff:10.2.3.4"), TCP, 443)  # v6, not v4


def test_ip_block_ipv6() -> None:
    outside = api_ingress_from(
        {"ipBlock": {"cidr": "2001:db8::/32", "except": ["2001:db8:1::/48"]}}
    )
    assert outside.allows(Address("2001:db8:2::7"), API, TCP, 8080)
    assert not outside.allows(Address("2001:db8:1::7"), API, TCP, 8080)
    assert not outside.allows(Address("203.0.113.9"), API, TCP, 8080)


def test_ip_block_does_not_match_pods() -> None:
    # Whether ipBlock matches pod IPs is up to the network plugin; the evaluator never counts on it.
    all_ips = api_ingress_from({"ipBlock": {"cidr": "0.0.0.0/0"}})
    assert not all_ips.allows(WEB, API, TCP, 8080)
    assert all_ips.allows(INTERNET, API, TCP, 8080)


def test_addresses_are_matched_through_the_blocks_prefixes_as_one_by_one() -> None:
    # Overlapping blocks of every prefix length, holes, both families, rules without peers, a
    # rule with several blocks: the index answers as matching each ipBlock in turn would.
    rng = random.Random(18)
    blocks: list[dict[str, Any]] = [
        {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16", "10.2.3.0/24"]},
        {"cidr": "10.1.2.0/24"},
        {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]},
        {"cidr": "2001:db8::/32", "except": ["2001:db8:1::/48"]},
        {"cidr": "2001:db8:1:2::/64"},
        *({"cidr": f"10.{rng.randrange(4)}.{rng.randrange(4)}.{n}/32"} for n in range(20)),
    ]
    rules = [
        {"from": [{"ipBlock": block}], "ports": [{"port": 1000 + index}]}
        for index, block in enumerate(blocks)
    ]
    rules.append({"from": [{"ipBlock": blocks[1]}, {"ipBlock": blocks[4]}], "ports": [{"port": 1}]})
    rules.append({"ports": [{"port": 2}]})
    set_ = policies(
        policy("api", {"podSelector": {"matchLabels": {"app": "api"}}, "ingress": rules})
    )
    addresses = [
        f"10.{rng.randrange(4)}.{rng.randrange(4)}.{rng.randrange(24)}" for _ in range(300)
    ]
    addresses += ["11.0.0.1", "::ffff:10.1.2.3", "2001:db8:1:2::9", "2001:db8:1:3::9", "::1"]
    for address in addresses:
        peer = Address(address)
        expected = {2} | {
            1000 + index
            for index, block in enumerate(blocks)
            if IpBlock(
                ip_network(block["cidr"]), tuple(map(ip_network, block.get("except", ())))
            ).matches(address)
        }
        if {1001, 1004} & expected:
            expected.add(1)
        allowed = set_.allowed_ports(peer, API)
        assert {port for port in range(1, 1100) if allowed.contains(TCP, port)} == expected


def test_asking_about_an_address_costs_the_same_whatever_the_number_of_blocks() -> None:
    # Every ipBlock rule used to be tested for every address asked about: 20,000 outside
    # addresses in one policy made the safety check quadratic.
    def work(count: int) -> int:
        rules = [
            {"to": [{"ipBlock": {"cidr": f"198.18.{n // 250}.{n % 250}/32"}}]} for n in range(count)
        ]
        set_ = policies(policy("web", {"podSelector": {}, "egress": rules}))
        asked = [Address(f"198.18.{n // 250}.{n % 250}") for n in range(count)]
        return executed_lines(
            lambda: [set_.allows(WEB, address, TCP, 443) for address in asked],
            modules=(evaluation,),
        )

    assert growth(work, 100) < 1.5


def test_finding_the_rules_that_allow_an_address_costs_the_same_whatever_the_number_of_blocks() -> (
    None
):
    # report.html's review names the rules that allow each connection: every rule was tested
    # for every address, and 20,000 outside addresses made analyse take most of an hour
    def egress(count: int) -> list[dict[str, object]]:
        return [
            {
                "to": [{"ipBlock": {"cidr": f"198.18.{n // 250}.{n % 250}/32"}}],
                "ports": [{"port": 443}],
            }
            for n in range(count)
        ] + [{"ports": [{"port": 53, "protocol": "UDP"}]}]

    def work(count: int) -> int:
        set_ = policies(policy("web", {"podSelector": {}, "egress": egress(count)}))
        asked = [Address(f"198.18.{n // 250}.{n % 250}") for n in range(count)]
        return executed_lines(
            lambda: [set_.rules_allowing(WEB, address, TCP, 443) for address in asked],
            modules=(evaluation,),
        )

    assert growth(work, 100) < 1.5
    set_ = policies(policy("web", {"podSelector": {}, "egress": egress(300)}))
    for n in (0, 7, 299):
        (found,) = set_.rules_allowing(WEB, Address(f"198.18.{n // 250}.{n % 250}"), TCP, 443)
        assert (found.direction, found.index) == (Direction.EGRESS, n)
    dns = set_.rules_allowing(WEB, Address("198.18.0.7"), UDP, 53)
    assert [(found.direction, found.index) for found in dns] == [(Direction.EGRESS, 300)]
    assert set_.rules_allowing(WEB, Address("203.0.113.1"), TCP, 443) == ()


def test_node_traffic_to_its_own_pods_is_always_allowed() -> None:
    on_node = pod(namespace="shop", labels={"app": "api"}, node="node-a")
    deny = policies(policy("deny", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}))
    assert deny.allows(Address("172.18.0.2", node="node-a"), on_node, TCP, 8080)
    assert not deny.allows(Address("172.18.0.3", node="node-b"), on_node, TCP, 8080)
    assert deny.allows(on_node, Address("172.18.0.2", node="node-a"), TCP, 10250)


# ---- ports -----------------------------------------------------------------------------------


def test_port_protocol_defaults_to_tcp() -> None:
    rules = api_ingress_from({"podSelector": {}}, ports=[{"port": 8080}])
    assert rules.allows(WEB, API, TCP, 8080)
    assert not rules.allows(WEB, API, UDP, 8080)
    assert not rules.allows(WEB, API, TCP, 8081)


def test_port_without_number_is_every_port_of_its_protocol() -> None:
    rules = api_ingress_from({"podSelector": {}}, ports=[{"protocol": "SCTP"}])
    assert rules.allowed_ports(WEB, API) == PortSet((PortRange(SCTP, 1, 65535),))
    assert str(rules.allowed_ports(WEB, API)) == "all SCTP ports"


def test_end_port_range() -> None:
    rules = api_ingress_from({"podSelector": {}}, ports=[{"port": 32000, "endPort": 32768}])
    assert rules.allows(WEB, API, TCP, 32000)
    assert rules.allows(WEB, API, TCP, 32768)
    assert not rules.allows(WEB, API, TCP, 32769)
    assert not rules.allows(WEB, API, TCP, 31999)
    assert rules.allowed_ports(WEB, API).count == 769


def test_named_port_on_ingress_resolves_against_the_server() -> None:
    rules = api_ingress_from({"podSelector": {}}, ports=[{"port": "http"}])
    assert rules.allowed_ports(WEB, API) == PortSet.single(TCP, 8080)
    other_http = pod(
        namespace="shop", labels={"app": "api"}, ports=[ContainerPort("http", TCP, 9000)]
    )
    assert rules.allowed_ports(WEB, other_http) == PortSet.single(TCP, 9000)


def test_named_port_on_egress_resolves_against_the_destination_pod() -> None:
    rules = policies(
        policy(
            "web",
            {
                "podSelector": {"matchLabels": {"app": "web"}},
                "policyTypes": ["Egress"],
                "egress": [{"ports": [{"port": "pg"}, {"port": "dns", "protocol": "UDP"}]}],
            },
        )
    )
    # The client (web) declares no such port; the name is the server's.
    assert rules.allowed_ports(WEB, DB) == PortSet.of(
        [PortRange(TCP, 5432, 5432), PortRange(UDP, 5353, 5353)]
    )
    assert rules.allowed_ports(WEB, API) == PortSet()  # api has no port called pg or dns
    assert rules.allowed_ports(WEB, INTERNET) == PortSet()  # an address has no named ports


def test_named_port_protocol_must_match() -> None:
    rules = api_ingress_from({"podSelector": {}}, ports=[{"port": "http", "protocol": "UDP"}])
    assert not rules.allowed_ports(WEB, API)


def test_no_ports_means_all_ports() -> None:
    rules = api_ingress_from({"podSelector": {"matchLabels": {"app": "web"}}})
    assert rules.allowed_ports(WEB, API) == PortSet.everything()
    assert str(rules.allowed_ports(WEB, API)) == "all ports"


def test_ports_of_rules_are_per_peer() -> None:
    rules = policies(
        policy(
            "api",
            {
                "podSelector": {"matchLabels": {"app": "api"}},
                "ingress": [
                    {
                        "from": [{"podSelector": {"matchLabels": {"app": "web"}}}],
                        "ports": [{"port": 8080}],
                    },
                    {
                        "from": [{"podSelector": {"matchLabels": {"app": "db"}}}],
                        "ports": [{"port": 9090}],
                    },
                ],
            },
        )
    )
    assert rules.allowed_ports(WEB, API) == PortSet.single(TCP, 8080)
    assert rules.allowed_ports(DB, API) == PortSet.single(TCP, 9090)


# ---- port sets -------------------------------------------------------------------------------


def test_port_set_algebra() -> None:
    a = PortSet.of([PortRange(TCP, 1, 100), PortRange(TCP, 50, 200), PortRange(UDP, 53, 53)])
    assert a.ranges == (PortRange(TCP, 1, 200), PortRange(UDP, 53, 53))
    b = PortSet.of([PortRange(TCP, 80, 80), PortRange(TCP, 443, 443)])
    assert a.intersection(b) == PortSet.single(TCP, 80)
    assert a.difference(b) == PortSet.of(
        [PortRange(TCP, 1, 79), PortRange(TCP, 81, 200), PortRange(UDP, 53, 53)]
    )
    assert PortSet.of([PortRange(TCP, 1, 5), PortRange(TCP, 6, 9)]).ranges == (
        PortRange(TCP, 1, 9),
    )
    assert PortSet.everything().count == 3 * 65535
    assert PortSet.everything().covers_all_of(UDP)
    assert str(b) == "80/TCP, 443/TCP"


# ---- malformed policies ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"ingress": [{"from": [{}]}]}, "needs podSelector, namespaceSelector or ipBlock"),
        (
            {"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}]},
            "ipBlock cannot be combined",
        ),
        ({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]}, "not a CIDR"),
        (
            {
                "ingress": [
                    {"from": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["11.0.0.0/24"]}}]}
                ]
            },
            "is not inside",
        ),
        ({"ingress": [{"ports": [{"port": 80, "protocol": "ICMP"}]}]}, "unknown protocol"),
        ({"ingress": [{"ports": [{"port": 80, "endPort": 79}]}]}, "endPort 79"),
        ({"ingress": [{"ports": [{"port": "http", "endPort": 90}]}]}, "endPort needs a numeric"),
        ({"ingress": [{"ports": [{"port": "80"}]}]}, "is a string"),
        ({"ingress": [{"ports": [{"port": 70000}]}]}, "outside 1-65535"),
        ({"policyTypes": ["Inbound"]}, "unknown"),
        (
            {"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}},
            "needs at least one value",
        ),
        (
            {
                "podSelector": {
                    "matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]
                }
            },
            "takes no values",
        ),
        (
            {"podSelector": {"matchExpressions": [{"key": "a", "operator": "Gt"}]}},
            "unknown operator",
        ),
        ({"podSelector": {"matchLabels": {"a": 1}}}, "must map a string"),
        ({"ingress": {"from": []}}, "must be a list"),
    ],
)
def test_malformed_policies_are_rejected_with_the_reason(
    spec: dict[str, Any], message: str
) -> None:
    with pytest.raises(PolicyError, match=message) as raised:
        compile_policy(policy("broken", {"podSelector": {}, **spec}), source="p.yaml")
    assert "shop/broken in p.yaml" in str(raised.value)


def test_not_a_network_policy_is_rejected() -> None:
    with pytest.raises(PolicyError, match="not NetworkPolicy"):
        compile_policy({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}})


def test_missing_namespace_means_default() -> None:
    document = policy("p", {"podSelector": {}})
    del document["metadata"]["namespace"]
    assert compile_policy(document).namespace == "default"


def test_described_pods_stand_for_every_group_the_policies_name() -> None:
    rules = policies(
        policy(
            "api",
            {
                "podSelector": {
                    "matchLabels": {"app": "api"},
                    "matchExpressions": [{"key": "tier", "operator": "In", "values": ["b", "a"]}],
                },
                "ingress": [
                    {
                        "from": [
                            {"podSelector": {"matchLabels": {"app": "web"}}},
                            {
                                "namespaceSelector": {
                                    "matchLabels": {"kubernetes.io/metadata.name": "ops"}
                                },
                                "podSelector": {"matchLabels": {"app": "prometheus"}},
                            },
                            {"namespaceSelector": {"matchLabels": {"team": "dev"}}},
                            {"ipBlock": {"cidr": "10.0.0.0/8"}},
                        ]
                    }
                ],
            },
        )
    )
    described = {p.name: p for p in rules.described_pods()}
    assert sorted(described) == [
        "namespaces[team=dev]/pods[*]",
        "ops/pods[app=prometheus]",
        "shop/pods[app=api,tier=a]",
        "shop/pods[app=web]",
    ]
    for name in described:
        if name != "shop/pods[app=api,tier=a]":
            assert rules.allows(described[name], described["shop/pods[app=api,tier=a]"], TCP, 1)
    assert not rules.allows(DB, described["shop/pods[app=api,tier=a]"], TCP, 1)


def test_port_set_algebra_agrees_with_plain_sets() -> None:

    generator = random.Random(5)

    def random_set() -> tuple[PortSet, set[tuple[Protocol, int]]]:
        ranges = []
        for _ in range(generator.randint(0, 4)):
            first = generator.randint(1, 40)
            ranges.append(
                PortRange(generator.choice([TCP, UDP]), first, first + generator.randint(0, 9))
            )
        plain = {(r.protocol, port) for r in ranges for port in range(r.first, r.last + 1)}
        return PortSet.of(ranges), plain

    for _ in range(300):
        (a, plain_a), (b, plain_b) = random_set(), random_set()
        for result, expected in (
            (a.union(b), plain_a | plain_b),
            (a.intersection(b), plain_a & plain_b),
            (a.difference(b), plain_a - plain_b),
        ):
            assert {(r.protocol, p) for r in result for p in range(r.first, r.last + 1)} == expected
            assert result.count == len(expected)
            assert all(
                x.last + 1 < y.first
                for x, y in zip(result.ranges[:-1], result.ranges[1:], strict=True)
                if x.protocol == y.protocol
            )
