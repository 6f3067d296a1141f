"""Policy synthesis from the workload graph: selectors, peers, target ports, DNS, names, and
the generated set allowing every observed flow (checked with the evaluator)."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from analyser.dns import DnsNames, DnsTable
from analyser.evaluation import PolicySet
from analyser.flows import Evidence, Protocol
from analyser.graphs import NodeRole, WorkloadGraph, build_graph
from analyser.identities import Resolver
from analyser.packets import DnsResponse
from analyser.peers import (
    DNS_PORTS,
    ClusterDns,
    Exposure,
    IpPeer,
    Peer,
    PodPeer,
    PortSpec,
    SpecialAddress,
    special_address,
)
from analyser.policies import (
    LeftOut,
    Policy,
    PolicyPlan,
    Rule,
    RuleLeftOut,
    SelectorWarning,
    SideLeftOut,
    node_blocks,
    peer_bytes,
    policy_names,
    port_bytes,
    selector_warnings,
    sides_left_out,
    synthesize,
    unselectable_reasons,
    unselectable_workloads,
)
from analyser.policysets import parse_policy_texts
from analyser.rendering import Provenance, policy_object, render_policy_files
from analyser.replaying import ClusterFacts, cluster_facts, ensure_policies_allow
from analyser.selectors import LabelRequirement, LabelSelector
from analyser.snapshot import Snapshot, parse_snapshot_documents
from analyser.workloads import Workload, WorkloadRef
from kernel.errors import UnsafePolicies
from tests.analyser.flow_builders import (
    API_BLUE,
    API_SVC,
    COREDNS_A,
    DB,
    DEBUG,
    KUBE_DNS,
    NODE_A,
    NODE_B,
    PRODUCTPAGE,
    RATINGS,
    RATINGS_SVC,
    REVIEWS_SVC,
    REVIEWS_V1,
    REVIEWS_V3,
    WEB_A,
    WEB_A6,
    WEB_B,
    WEB_SVC,
    FakeDns,
    at,
    cluster,
    flow,
    resolver,
)

TCP, UDP = Protocol.TCP, Protocol.UDP
WEB = WorkloadRef("shop", "Deployment", "web")
API_BLUE_W = WorkloadRef("shop", "Deployment", "api-blue")
DB_W = WorkloadRef("shop", "StatefulSet", "db")
PAGE = WorkloadRef("bookinfo", "Deployment", "productpage-v1")
V1 = WorkloadRef("bookinfo", "Deployment", "reviews-v1")
V3 = WorkloadRef("bookinfo", "Deployment", "reviews-v3")
RATINGS_W = WorkloadRef("bookinfo", "Deployment", "ratings-v1")
COREDNS = WorkloadRef("kube-system", "Deployment", "coredns")
EXAMPLE = "93.184.216.34"


def by_workload(result: PolicyPlan) -> dict[str, Policy]:
    return {p.workload: p for p in result.policies}


def rules_to(rules: tuple[Rule, ...]) -> dict[str, tuple[tuple[str, int], ...]]:
    """description or CIDR → ports, for readable assertions."""
    out = {}
    for rule in rules:
        key = rule.peer.description if isinstance(rule.peer, PodPeer) else rule.peer.cidr
        out[key] = tuple((str(p.protocol), p.port) for p in rule.ports)
    return out


def synthesized(
    flows: list[Any], scope: set[WorkloadRef], *, dns: FakeDns | None = None, **kw: Any
) -> tuple[WorkloadGraph, Resolver, PolicyPlan]:
    names = resolver()
    graph = build_graph(flows, names, dns, scope=scope)
    kw.setdefault("node_addresses", cluster().node_by_address)  # as analyse gives them
    return graph, names, synthesize(graph, cluster_dns=names.cluster_dns(), **kw)


def bookinfo_flows() -> list[Any]:
    return [
        # productpage → reviews (Service), the server side shows reviews-v1 and then v3
        flow(f"{PRODUCTPAGE}:50000", f"{REVIEWS_SVC}:9080"),
        flow(f"{PRODUCTPAGE}:50000", f"{REVIEWS_V1}:9080"),
        flow(f"{PRODUCTPAGE}:50001", f"{REVIEWS_SVC}:9080", clock="09:41:00"),
        flow(f"{PRODUCTPAGE}:50001", f"{REVIEWS_V3}:9080", clock="09:41:00"),
        # only reviews-v3 calls ratings
        flow(f"{REVIEWS_V3}:51000", f"{RATINGS_SVC}:9080", clock="09:41:01"),
        flow(f"{REVIEWS_V3}:51000", f"{RATINGS}:9080", clock="09:41:01"),
    ]


def test_two_deployments_behind_one_service_keep_separate_policies() -> None:
    _, _, result = synthesized(bookinfo_flows(), {PAGE, V1, V3, RATINGS_W})
    policies = by_workload(result)
    v1, v3 = policies[str(V1)], policies[str(V3)]
    assert v1.pod_selector == LabelSelector((("app", "reviews"), ("version", "v1")))
    assert v3.pod_selector == LabelSelector((("app", "reviews"), ("version", "v3")))
    assert str(RATINGS_W) in rules_to(v3.egress)
    assert str(RATINGS_W) not in rules_to(v1.egress)
    assert rules_to(v1.ingress) == rules_to(v3.ingress) == {str(PAGE): (("TCP", 9080),)}
    assert rules_to(policies[str(RATINGS_W)].ingress) == {str(V3): (("TCP", 9080),)}
    page_egress = rules_to(policies[str(PAGE)].egress)
    assert page_egress[str(V1)] == page_egress[str(V3)] == (("TCP", 9080),)


def test_service_port_is_never_used_only_the_target_port() -> None:
    for flows in (
        [flow(f"{API_BLUE}:41000", f"{WEB_SVC}:80"), flow(f"{API_BLUE}:41000", f"{WEB_B}:8080")],
        [flow(f"{API_BLUE}:41000", f"{WEB_SVC}:80")],  # only the client side was captured
    ):
        _, _, result = synthesized(flows, {WEB, API_BLUE_W})
        policies = by_workload(result)
        assert rules_to(policies[str(API_BLUE_W)].egress)[str(WEB)] == (("TCP", 8080),)
        assert rules_to(policies[str(WEB)].ingress) == {str(API_BLUE_W): (("TCP", 8080),)}


def test_named_target_ports_per_backend() -> None:
    _, _, result = synthesized([flow(f"{WEB_A}:41000", f"{API_SVC}:80")], {WEB})
    egress = rules_to(by_workload(result)[str(WEB)].egress)
    assert egress["shop/Deployment/api-blue"] == (("TCP", 8080),)
    assert egress["shop/Deployment/api-green"] == (("TCP", 9090),)


def test_cross_namespace_peers_name_their_namespace() -> None:
    flows = [flow(f"{WEB_A}:41000", f"{PRODUCTPAGE}:9080")]
    _, _, result = synthesized(flows, {WEB, PAGE})
    policies = by_workload(result)
    [to_page] = policies[str(WEB)].egress[:1]
    assert isinstance(to_page.peer, PodPeer)
    assert to_page.peer.namespace == "bookinfo"
    assert to_page.peer.pod_selector == LabelSelector((("app", "productpage"), ("version", "v1")))
    [from_web] = policies[str(PAGE)].ingress
    assert isinstance(from_web.peer, PodPeer) and from_web.peer.namespace == "shop"


def test_same_namespace_peers_have_no_namespace_and_self_loops_allow_both_ways() -> None:
    _, _, result = synthesized([flow(f"{WEB_A}:41000", f"{WEB_B}:8080")], {WEB})
    web = by_workload(result)[str(WEB)]
    [self_in] = web.ingress
    assert self_in == Rule(
        PodPeer(LabelSelector((("app", "web"), ("tier", "frontend"))), None, str(WEB)),
        (PortSpec(TCP, 8080),),
    )
    assert self_in in web.egress


def test_external_addresses_become_single_address_blocks_with_their_names() -> None:
    flows = [
        flow(f"{WEB_A}:41000", f"{EXAMPLE}:443"),
        flow(f"{WEB_A}:41001", f"{EXAMPLE}:80"),
        flow("[fd00:10:244::40]:41002", "[2606:4700::6810:84e5]:443"),
    ]
    dns = FakeDns({EXAMPLE: ["example.com"]})
    _, _, result = synthesized(flows, {WEB}, dns=dns)
    web = by_workload(result)[str(WEB)]
    ip_rules = [r for r in web.egress if isinstance(r.peer, IpPeer)]
    assert ip_rules == [
        Rule(IpPeer(f"{EXAMPLE}/32", ("example.com",)), (PortSpec(TCP, 80), PortSpec(TCP, 443))),
        Rule(IpPeer("2606:4700::6810:84e5/128"), (PortSpec(TCP, 443),)),
    ]


def test_each_policy_takes_an_outside_address_s_names_from_its_own_captures_only() -> None:
    """web's capture holds an answer (forged or not) naming the address api-blue also calls:
    the name annotates web's rule, never api-blue's. web's answer went to its IPv4 address and
    it called over IPv6: the same pod asked."""
    web_capture, api_capture = "captures/shop/web-a/capture.pcap0", "captures/shop/api-1/c.pcap0"
    web_answers, api_answers = DnsTable(), DnsTable()
    early = at("09:39:00")
    web_answers.add(
        DnsResponse("evil.example", (("evil.example", EXAMPLE),), ()), early, client=WEB_A
    )
    api_answers.add(
        DnsResponse("api.example", (("api.example", EXAMPLE),), ()), early, client=API_BLUE
    )
    dns = DnsNames()
    dns.add(web_capture, "pod shop/web-a", web_answers)
    dns.add(api_capture, "pod shop/api-1", api_answers)
    flows = [
        flow(f"[{WEB_A6}]:41000", f"{EXAMPLE}:443", capture=web_capture),
        flow(f"{API_BLUE}:41000", f"{EXAMPLE}:443", capture=api_capture),
        flow(f"{EXAMPLE}:41000", f"{API_BLUE}:8080", capture=api_capture),
    ]
    names = resolver()
    graph = build_graph(flows, names, dns, scope={WEB, API_BLUE_W})
    assert graph.node(f"ip:{EXAMPLE}").names == ("api.example", "evil.example")
    policies = by_workload(synthesize(graph, cluster_dns=names.cluster_dns()))
    [web_rule] = [r for r in policies[str(WEB)].egress if isinstance(r.peer, IpPeer)]
    assert web_rule.peer == IpPeer(f"{EXAMPLE}/32", ("evil.example",))
    [api_rule] = [r for r in policies[str(API_BLUE_W)].egress if isinstance(r.peer, IpPeer)]
    assert api_rule.peer == IpPeer(f"{EXAMPLE}/32", ("api.example",))
    # The address as a client: a name is what a client asked for about its server.
    [api_in] = [r for r in policies[str(API_BLUE_W)].ingress if isinstance(r.peer, IpPeer)]
    assert api_in.peer == IpPeer(f"{EXAMPLE}/32")


def test_node_addresses_and_host_network_listeners() -> None:
    flows = [
        flow(f"{NODE_B}:52000", f"{WEB_A}:8080", evidence=Evidence.KNOWN_LISTENER),
        flow(f"{WEB_A}:41000", f"{NODE_A}:9100"),
    ]
    _, _, result = synthesized(flows, {WEB})
    web = by_workload(result)[str(WEB)]
    # node-b's traffic is allowed from both nodes: 192.168.49.2 and .3, exactly adjacent
    assert rules_to(web.ingress) == {"192.168.49.2/31": (("TCP", 8080),)}
    assert web.ingress[0].peer == IpPeer("192.168.49.2/31", description="cluster nodes")
    # a hostNetwork listener (node-exporter on node-a) is on every node: a DaemonSet runs on all
    # of them, another workload can move; only on its port
    blocks = {k: v for k, v in rules_to(web.egress).items() if k[0].isdigit()}
    assert blocks == {"192.168.49.2/31": (("TCP", 9100),)}
    assert IpPeer("192.168.49.2/31", description="cluster nodes") in [r.peer for r in web.egress]


def test_a_host_network_peers_address_missing_from_the_nodes_is_still_allowed() -> None:
    """The node list given (or --node-cidr) may miss the address a hostNetwork pod used."""
    flows = [flow(f"{WEB_A}:41000", f"{NODE_A}:9100")]
    _, _, result = synthesized(flows, {WEB}, node_cidrs=["10.0.0.0/24"])
    web = by_workload(result)[str(WEB)]
    blocks = {k: v for k, v in rules_to(web.egress).items() if k[0].isdigit()}
    assert blocks == {"10.0.0.0/24": (("TCP", 9100),), f"{NODE_A}/32": (("TCP", 9100),)}


def test_traffic_with_one_node_is_allowed_with_every_node_on_its_ports() -> None:
    flows = [
        flow(f"{NODE_B}:52000", f"{WEB_A}:8080", evidence=Evidence.KNOWN_LISTENER),
        flow(f"{NODE_A}:52001", f"{WEB_A}:8081", evidence=Evidence.KNOWN_LISTENER),
        flow(f"{WEB_A}:41000", f"{NODE_B}:10250"),  # web calls a kubelet
    ]
    nodes = ["192.168.49.9", "fd00::3", NODE_A, "fd00::2", "192.168.49.7"]  # node-b missing
    _, _, result = synthesized(flows, {WEB}, node_addresses=nodes)
    web = by_workload(result)[str(WEB)]
    both = (("TCP", 8080), ("TCP", 8081))
    # sorted by family and address; .2 and .3 (seen, not in the list) and fd00::2, ::3 collapse
    expected = ["192.168.49.2/31", "192.168.49.7/32", "192.168.49.9/32", "fd00::2/127"]
    assert rules_to(web.ingress) == dict.fromkeys(expected, both)
    assert [r.peer.cidr for r in web.ingress if isinstance(r.peer, IpPeer)] == expected
    assert {k: v for k, v in rules_to(web.egress).items() if k in expected} == dict.fromkeys(
        expected, (("TCP", 10250),)
    )
    # --node-cidr: the given networks instead; seen addresses outside them are kept
    _, _, result = synthesized(flows, {WEB}, node_cidrs=("192.168.49.0/31",))
    web = by_workload(result)[str(WEB)]
    assert rules_to(web.ingress) == dict.fromkeys(("192.168.49.0/30",), both)


def test_a_workload_that_never_talked_to_a_node_gets_no_node_block() -> None:
    _, _, result = synthesized([flow(f"{WEB_A}:41000", f"{DB}:5432")], {WEB})
    web = by_workload(result)[str(WEB)]
    assert not [r for r in (*web.ingress, *web.egress) if isinstance(r.peer, IpPeer)]


def test_dns_goes_to_the_dns_pods_only_and_is_not_repeated() -> None:
    flows = [
        flow(f"{WEB_A}:33333", f"{KUBE_DNS}:53", protocol=UDP, evidence=Evidence.KNOWN_LISTENER),
        flow(f"{WEB_A}:33333", f"{COREDNS_A}:53", protocol=UDP, evidence=Evidence.KNOWN_LISTENER),
        flow(f"{WEB_A}:41000", f"{COREDNS_A}:9153"),  # metrics: ordinary traffic
    ]
    _, _, result = synthesized(flows, {WEB, DB_W, COREDNS})
    policies = by_workload(result)
    dns_rule = Rule(
        PodPeer(LabelSelector((("k8s-app", "kube-dns"),)), "kube-system", str(COREDNS)),
        (PortSpec(TCP, 53), PortSpec(TCP, 9153), PortSpec(UDP, 53)),
    )
    assert dns_rule in policies[str(WEB)].egress
    assert len(policies[str(WEB)].egress) == 1  # 53/UDP is not repeated, nothing to "any"
    # db made no flow at all: it still may resolve names.
    assert [r.ports for r in policies[str(DB_W)].egress] == [DNS_PORTS]
    # The DNS workload is in scope: its policy admits the clients that were seen.
    coredns = policies[str(COREDNS)]
    assert rules_to(coredns.ingress) == {str(WEB): (("TCP", 9153), ("UDP", 53))}
    [own_dns] = coredns.egress
    assert isinstance(own_dns.peer, PodPeer) and own_dns.peer.namespace is None


def test_default_dns_peer_without_dns_in_the_snapshot() -> None:
    graph = build_graph([], resolver(), scope={DB_W})
    plan = synthesize(graph, cluster_dns=ClusterDns())
    [policy] = plan.policies
    assert plan.default_denies == ()
    [rule] = policy.egress
    assert isinstance(rule.peer, PodPeer)
    assert (rule.peer.namespace, rule.ports) == ("kube-system", DNS_PORTS)


def test_volatile_labels_are_not_in_selectors() -> None:
    _, _, result = synthesized([flow(f"{WEB_A}:41000", f"{DB}:5432")], {WEB, DB_W})
    policies = by_workload(result)
    assert policies[str(DB_W)].pod_selector == LabelSelector((("app", "db"),))
    assert rules_to(policies[str(WEB)].egress)[str(DB_W)] == (("TCP", 5432),)
    for policy in policies.values():
        for label, _ in policy.pod_selector.match_labels:
            assert label not in ("pod-template-hash", "controller-revision-hash")


def test_a_workload_without_stable_labels_gets_no_policy() -> None:
    debug = WorkloadRef("shop", "Pod", "debug")
    graph, _, result = synthesized([flow(f"{DEBUG}:41000", f"{WEB_A}:8080")], {WEB, debug})
    assert unselectable_workloads(graph) == (str(debug),)
    assert set(by_workload(result)) == {str(WEB)}


def test_host_network_workloads_get_no_policy_but_are_reached_by_address() -> None:
    exporter = WorkloadRef("kube-system", "DaemonSet", "node-exporter")
    graph, _, result = synthesized([flow(f"{WEB_A}:41000", f"{NODE_A}:9100")], {WEB, exporter})
    assert unselectable_workloads(graph) == (str(exporter),)
    assert set(by_workload(result)) == {str(WEB)}


def test_default_deny_per_namespace_in_scope_and_order() -> None:
    _, _, result = synthesized([], {WEB, DB_W, PAGE}, default_deny=True)
    assert [(p.namespace, p.name) for p in result.default_denies] == [
        ("bookinfo", "default-deny-all"),
        ("shop", "default-deny-all"),
    ]
    assert [(p.namespace, p.name) for p in result.policies] == [
        ("bookinfo", "productpage-v1"),
        ("shop", "db"),
        ("shop", "web"),
    ]


def test_policy_names_avoid_clashes_between_kinds() -> None:
    workloads = [
        Workload(WorkloadRef("shop", "Deployment", "web"), LabelSelector()),
        Workload(WorkloadRef("shop", "StatefulSet", "web"), LabelSelector()),
        Workload(WorkloadRef("shop", "Deployment", "web-statefulset"), LabelSelector()),
        Workload(WorkloadRef("other", "Deployment", "web"), LabelSelector()),
        Workload(WorkloadRef("shop", "Pod", "default-deny-all"), LabelSelector()),
    ]
    assert policy_names(workloads, reserved={"default-deny-all"}) == {
        "other/Deployment/web": "web",
        "shop/Deployment/web": "web-deployment",
        "shop/Deployment/web-statefulset": "web-statefulset",
        "shop/StatefulSet/web": "web-statefulset-2",
        "shop/Pod/default-deny-all": "default-deny-all-pod",
    }


def everything() -> list[Any]:
    return [
        *bookinfo_flows(),
        flow(f"{API_BLUE}:41000", f"{WEB_SVC}:80"),
        flow(f"{WEB_A}:41000", f"{API_SVC}:80", clock="09:42:00"),
        flow(f"{WEB_A}:41001", f"{EXAMPLE}:443", clock="09:42:00"),
        flow(f"{WEB_A}:41002", f"{PRODUCTPAGE}:9080", clock="09:42:00"),
        flow(f"{WEB_A}:41003", f"{DB}:5432", clock="09:42:00"),
        flow(f"{NODE_B}:52000", f"{WEB_A}:8080", clock="09:42:00"),
        flow(f"{WEB_A}:33333", f"{KUBE_DNS}:53", protocol=UDP, clock="09:42:00"),
        flow(f"{WEB_A}:33333", f"{COREDNS_A}:53", protocol=UDP, clock="09:42:00"),
        flow(f"{WEB_A}:41004", "10.244.1.200:8080", clock="09:42:00"),  # unresolved
    ]


SCOPE_ALL = {WEB, API_BLUE_W, DB_W, PAGE, V1, V3, RATINGS_W, COREDNS}


def test_synthesis_is_deterministic() -> None:
    first = synthesized(everything(), SCOPE_ALL, default_deny=True)[2]
    second = synthesized(list(reversed(everything())), SCOPE_ALL, default_deny=True)[2]
    assert first == second
    # api-green was not captured, but web was seen calling it and shop gets a default-deny.
    api_green = "shop/Deployment/api-green"
    assert set(by_workload(first)) == {str(ref) for ref in SCOPE_ALL} | {api_green}
    assert rules_to(by_workload(first)[api_green].ingress) == {str(WEB): (("TCP", 9090),)}
    without = synthesized(everything(), SCOPE_ALL)[2]
    assert set(by_workload(without)) == {str(ref) for ref in SCOPE_ALL}


@pytest.mark.parametrize(
    ("default_deny", "node_cidrs"),
    [(False, ()), (True, ()), (False, ("192.168.49.0/24",))],
)
def test_rendered_policies_allow_every_observed_flow(
    default_deny: bool, node_cidrs: tuple[str, ...]
) -> None:
    graph, names, result = synthesized(
        everything(),
        SCOPE_ALL,
        dns=FakeDns({EXAMPLE: ["example.com"]}),
        default_deny=default_deny,
        node_cidrs=node_cidrs,
    )
    policies, denies = result.policies, result.default_denies
    assert [d.namespace for d in denies] == (
        ["bookinfo", "kube-system", "shop"] if default_deny else []
    )
    files = render_policy_files(policies, default_denies=denies, provenance=Provenance())
    loaded = parse_policy_texts(files)
    ensure_policies_allow(loaded.policies, graph, cluster_facts(cluster(), names))


def test_dns_flows_are_not_repeated_when_the_dns_peer_is_written_differently() -> None:
    flows = [
        flow(f"{WEB_A}:33333", f"{COREDNS_A}:53", protocol=UDP, evidence=Evidence.KNOWN_LISTENER),
        flow(f"{WEB_A}:41000", f"{COREDNS_A}:9153"),
    ]
    graph = build_graph(flows, resolver(), scope={WEB})
    dns = ClusterDns(workloads=frozenset({str(COREDNS)}))  # the conventional selector
    [web] = synthesize(graph, cluster_dns=dns).policies
    assert rules_to(web.egress) == {
        str(COREDNS): (("TCP", 9153),),
        "cluster DNS (k8s-app=kube-dns)": (("TCP", 53), ("UDP", 53)),
    }


def test_no_default_deny_where_a_seen_workload_cannot_be_selected() -> None:
    # debug (a bare pod without labels, not captured) calls web: a default-deny in shop would
    # cut debug off, and no policy can name it; bookinfo still gets its default-deny.
    flows = [flow(f"{DEBUG}:41000", f"{WEB_A}:8080")]
    graph, _, result = synthesized(flows, {WEB, PAGE}, default_deny=True)
    assert [p.namespace for p in result.default_denies] == ["bookinfo"]
    assert [p.namespace for p in result.policies] == ["bookinfo", "shop"]
    assert unselectable_workloads(graph) == ()
    assert unselectable_workloads(graph, default_deny=True) == ("shop/Pod/debug",)


def test_dns_to_a_node_local_cache_is_one_rule_for_its_address_on_both_protocols() -> None:
    flows = [
        flow(f"{WEB_A}:33333", "169.254.20.10:53", protocol=UDP, evidence=Evidence.HEURISTIC),
        flow(f"{WEB_A}:41000", f"{EXAMPLE}:443"),
    ]
    names = resolver()
    graph = build_graph(flows, names, scope={WEB})
    dns = names.cluster_dns(flows)
    assert dns.node_local == (IpPeer("169.254.20.10/32", description="node-local DNS cache"),)
    policies = synthesize(graph, cluster_dns=dns, node_addresses=cluster().node_by_address).policies
    [web] = policies
    assert len(web.egress) == 3
    assert rules_to(web.egress) == {
        "kube-system/Deployment/coredns": (("TCP", 53), ("UDP", 53)),
        "169.254.20.10/32": (("TCP", 53), ("UDP", 53)),
        f"{EXAMPLE}/32": (("TCP", 443),),
    }
    files = render_policy_files(policies, default_denies=[], provenance=Provenance())
    assert "# 169.254.20.10/32: node-local DNS cache" in "".join(files.values())
    ensure_policies_allow(
        parse_policy_texts(files).policies, graph, cluster_facts(cluster(), names)
    )
    # Only link-local addresses on port 53 are a node-local cache.
    assert names.cluster_dns([flows[1]]).node_local == ()


def _public_traffic() -> list[Any]:
    """web serves 40 outside clients on 8080 (IPv4 and IPv6) and one on 9090; it calls 40
    addresses of a cloud API on 443 and one partner on 8443."""
    flows = []
    for index in range(40):
        client = f"203.0.113.{index + 1}" if index % 4 else f"[2001:db8::{index + 1:x}]"
        flows.append(flow(f"{client}:{40000 + index}", f"{WEB_A}:8080"))
        flows.append(flow(f"{WEB_A}:{41000 + index}", f"198.51.100.{index + 1}:443"))
    flows.append(flow("192.0.2.77:40999", f"{WEB_A}:9090"))
    flows.append(flow(f"{WEB_A}:42000", "192.0.2.88:8443"))
    return flows


def test_many_outside_addresses_on_a_port_become_anywhere_on_that_port() -> None:
    graph, names, result = synthesized(_public_traffic(), {WEB}, max_outside_addresses=32)
    web = by_workload(result)[str(WEB)]
    anywhere = "anywhere: more than 32 outside addresses were seen on these ports"
    blocks = {k: v for k, v in rules_to(web.ingress).items() if k[0].isdigit() or ":" in k}
    assert blocks == {
        "0.0.0.0/0": (("TCP", 8080),),
        "::/0": (("TCP", 8080),),
        "192.0.2.77/32": (("TCP", 9090),),  # one client on its port: still itself only
    }
    # Anywhere but the special addresses (metadata endpoints, link-local, multicast...).
    v4_except = (
        "0.0.0.0/32",
        "100.100.100.200/32",
        "168.63.129.16/32",
        "169.254.0.0/16",
        "192.0.0.192/32",
        "224.0.0.0/4",
        "255.255.255.255/32",
    )
    v6_except = ("::/128", "fd00:ec2::23/128", "fd00:ec2::254/128", "fe80::/10", "ff00::/8")
    assert IpPeer("0.0.0.0/0", description=anywhere, excluded=v4_except) in [
        r.peer for r in web.ingress
    ]
    assert IpPeer("::/0", description=anywhere, excluded=v6_except) in [r.peer for r in web.ingress]
    outside = {k: v for k, v in rules_to(web.egress).items() if k[0].isdigit()}
    assert outside == {"0.0.0.0/0": (("TCP", 443),), "192.0.2.88/32": (("TCP", 8443),)}
    # What was observed is still allowed, by the rendered and parsed-back policies.
    policies, denies = result.policies, result.default_denies
    files = render_policy_files(policies, default_denies=denies, provenance=Provenance())
    assert f"# 0.0.0.0/0: {anywhere}" in "".join(files.values())
    assert """cidr: "0.0.0.0/0"
            except:
              - "0.0.0.0/32"
              - "100.100.100.200/32"
""" in files["shop.web.yaml"]
    loaded = parse_policy_texts(files)
    ensure_policies_allow(loaded.policies, graph, cluster_facts(cluster(), names))


def test_outside_addresses_up_to_the_limit_stay_single_blocks() -> None:
    _, _, result = synthesized(_public_traffic(), {WEB}, max_outside_addresses=40)
    web = by_workload(result)[str(WEB)]
    cidrs = [r.peer.cidr for r in web.ingress if isinstance(r.peer, IpPeer)]
    assert len(cidrs) == 41 and "0.0.0.0/0" not in cidrs


def test_an_exposed_port_is_allowed_from_anywhere_and_covers_the_clients_seen_on_it() -> None:
    """A LoadBalancer with externalTrafficPolicy Local keeps client addresses: the few seen
    during the capture are not its users. Clients on other ports stay exact."""
    exposure = Exposure(PortSpec(Protocol.TCP, 8080), "Service shop/web (LoadBalancer)", (4, 6))
    graph, names, result = synthesized(
        _public_traffic(), {WEB}, max_outside_addresses=100, exposures={str(WEB): [exposure]}
    )
    web = by_workload(result)[str(WEB)]
    outside = {k: v for k, v in rules_to(web.ingress).items() if k[0].isdigit() or ":" in k}
    assert outside == {
        "0.0.0.0/0": (("TCP", 8080),),
        "::/0": (("TCP", 8080),),
        "192.0.2.77/32": (("TCP", 9090),),  # not exposed: the client seen, nothing more
    }
    why = "anywhere: exposed by Service shop/web (LoadBalancer)"
    anywhere = {r.peer.cidr: r.peer for r in web.ingress if isinstance(r.peer, IpPeer)}
    assert anywhere["0.0.0.0/0"].description == anywhere["::/0"].description == why
    # Never from a special address (a forged metadata or broadcast source)
    assert "169.254.0.0/16" in anywhere["0.0.0.0/0"].excluded
    # Egress (the 40 cloud API addresses) is not touched by an exposure.
    assert sum(1 for r in web.egress if isinstance(r.peer, IpPeer)) == 41
    policies, denies = result.policies, result.default_denies
    files = render_policy_files(policies, default_denies=denies, provenance=Provenance())
    assert f"# 0.0.0.0/0: {why}" in "".join(files.values())
    ensure_policies_allow(
        parse_policy_texts(files).policies, graph, cluster_facts(cluster(), names)
    )


def test_without_exposures_the_clients_seen_are_all_that_is_allowed() -> None:
    _, _, exposed = synthesized(_public_traffic(), {WEB}, max_outside_addresses=100)
    cidrs = [
        r.peer.cidr for r in by_workload(exposed)[str(WEB)].ingress if isinstance(r.peer, IpPeer)
    ]
    assert "0.0.0.0/0" not in cidrs and len(cidrs) == 41


def test_one_way_traffic_to_many_outside_addresses_does_not_widen() -> None:
    """40 addresses sent UDP on 8125 (statsd: nothing comes back) and 40 more sent web UDP on
    5353 that it never answered: each keeps its own rule, none becomes anywhere. Answered
    addresses widen as before, and unanswered ones on such a port are then covered too."""
    flows = []
    for index in range(40):
        one_way: dict[str, Any] = {"protocol": UDP, "evidence": Evidence.HEURISTIC}
        flows.append(
            replace(
                flow(f"{WEB_A}:{41000 + index}", f"198.51.100.{index + 1}:8125", **one_way),
                answered=False,
            )
        )
        flows.append(
            replace(
                flow(f"203.0.113.{index + 1}:40000", f"{WEB_A}:5353", **one_way), answered=False
            )
        )
        flows.append(flow(f"{WEB_A}:{42000 + index}", f"192.0.2.{index + 1}:443"))
    flows.append(replace(flow(f"{WEB_A}:43000", "192.0.2.200:443"), answered=False))
    _, _, result = synthesized(flows, {WEB}, max_outside_addresses=32)
    web = by_workload(result)[str(WEB)]
    egress = {k: v for k, v in rules_to(web.egress).items() if k[0].isdigit()}
    ingress = {k: v for k, v in rules_to(web.ingress).items() if k[0].isdigit()}
    assert len([k for k, v in egress.items() if v == (("UDP", 8125),)]) == 40
    assert len([k for k, v in ingress.items() if v == (("UDP", 5353),)]) == 40
    assert egress["0.0.0.0/0"] == (("TCP", 443),)
    assert "192.0.2.200/32" not in egress  # covered by anywhere on 443
    assert "0.0.0.0/0" not in ingress


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("169.254.169.254", SpecialAddress.METADATA),
        ("fd00:ec2::254", SpecialAddress.METADATA),
        ("100.100.100.200", SpecialAddress.METADATA),
        ("168.63.129.16", SpecialAddress.METADATA),
        ("::ffff:169.254.169.254", SpecialAddress.METADATA),  # IPv4-mapped: the same endpoint
        ("64:ff9b::a9fe:a9fe", SpecialAddress.METADATA),  # NAT64 of 169.254.169.254
        ("169.254.20.10", SpecialAddress.LINK_LOCAL),
        ("fe80::1", SpecialAddress.LINK_LOCAL),
        ("0.0.0.0", SpecialAddress.UNSPECIFIED),
        ("::", SpecialAddress.UNSPECIFIED),
        ("255.255.255.255", SpecialAddress.BROADCAST),
        ("239.255.255.250", SpecialAddress.MULTICAST),
        ("ff02::fb", SpecialAddress.MULTICAST),
        ("127.0.0.53", SpecialAddress.LOOPBACK),
        ("::ffff:127.0.0.1", SpecialAddress.LOOPBACK),
        ("93.184.216.34", None),
        ("10.0.0.1", None),
        ("2001:db8::1", None),
        ("64:ff9b::808:808", None),  # NAT64 of 8.8.8.8
    ],
)
def test_special_addresses(address: str, kind: SpecialAddress | None) -> None:
    assert special_address(address) is kind


def _special_traffic() -> list[Any]:
    """web calls the metadata endpoint, SSDP multicast, a broadcast and a node-local DNS cache
    (also on a port that is not DNS), and gets a packet from 0.0.0.0 (DHCP)."""
    udp: dict[str, Any] = {"protocol": UDP, "evidence": Evidence.HEURISTIC}
    return [
        flow(f"{WEB_A}:41000", "169.254.169.254:80"),
        flow(f"{WEB_A}:41001", "[fd00:ec2::254]:80"),
        flow(f"{WEB_A}:41002", "239.255.255.250:1900", **udp),
        flow(f"{WEB_A}:41003", "255.255.255.255:67", **udp),
        flow(f"{WEB_A}:41004", "169.254.20.10:53", **udp),
        flow(f"{WEB_A}:41005", "169.254.20.10:9253"),
        flow("0.0.0.0:68", f"{WEB_A}:67", **udp),
        flow(f"{WEB_A}:41006", f"{EXAMPLE}:443"),
    ]


def test_traffic_with_special_addresses_is_left_out_and_listed() -> None:
    flows = _special_traffic()
    names = resolver()
    graph = build_graph(flows, names, scope={WEB})
    dns = names.cluster_dns(flows)
    policies = synthesize(graph, cluster_dns=dns, node_addresses=cluster().node_by_address).policies
    [web] = policies
    assert rules_to(web.egress) == {
        "kube-system/Deployment/coredns": (("TCP", 53), ("UDP", 53)),
        "169.254.20.10/32": (("TCP", 53), ("UDP", 53)),  # the node-local cache rule stays
        f"{EXAMPLE}/32": (("TCP", 443),),
    }
    assert all(not isinstance(rule.peer, IpPeer) for rule in web.ingress)
    w = str(WEB)
    assert web.left_out == tuple(
        sorted(
            [
                LeftOut(w, "egress", "169.254.169.254", PortSpec(TCP, 80), SpecialAddress.METADATA),
                LeftOut(w, "egress", "fd00:ec2::254", PortSpec(TCP, 80), SpecialAddress.METADATA),
                LeftOut(
                    w, "egress", "239.255.255.250", PortSpec(UDP, 1900), SpecialAddress.MULTICAST
                ),
                LeftOut(
                    w, "egress", "255.255.255.255", PortSpec(UDP, 67), SpecialAddress.BROADCAST
                ),
                LeftOut(
                    w, "egress", "169.254.20.10", PortSpec(TCP, 9253), SpecialAddress.LINK_LOCAL
                ),
                LeftOut(w, "ingress", "0.0.0.0", PortSpec(UDP, 67), SpecialAddress.UNSPECIFIED),
            ]
        )
    )
    files = render_policy_files(policies, default_denies=[], provenance=Provenance())
    loaded = parse_policy_texts(files).policies
    facts = cluster_facts(cluster(), names)
    # Without the list, the safety check sees what was left out; with it, the rest is allowed.
    with pytest.raises(UnsafePolicies, match=r"169\.254\.169\.254"):
        ensure_policies_allow(loaded, graph, facts)
    ensure_policies_allow(
        loaded, graph, facts, left_out={(i.address, i.port) for i in web.left_out}
    )


def test_a_class_of_special_addresses_allowed_on_purpose_gets_its_rules() -> None:
    flows = _special_traffic()
    names = resolver()
    graph = build_graph(flows, names, scope={WEB})
    allowed = {SpecialAddress.METADATA, SpecialAddress.LINK_LOCAL}
    [web] = synthesize(
        graph, cluster_dns=names.cluster_dns(flows), allowed_special=allowed
    ).policies
    egress = rules_to(web.egress)
    assert egress["169.254.169.254/32"] == (("TCP", 80),)
    assert egress["fd00:ec2::254/128"] == (("TCP", 80),)
    cache_rules = [
        [(str(p.protocol), p.port) for p in r.ports]
        for r in web.egress
        if isinstance(r.peer, IpPeer) and r.peer.cidr == "169.254.20.10/32"
    ]
    assert cache_rules == [[("TCP", 53), ("UDP", 53)], [("TCP", 9253)]]
    assert {i.kind for i in web.left_out} == {
        SpecialAddress.MULTICAST,
        SpecialAddress.BROADCAST,
        SpecialAddress.UNSPECIFIED,
    }


def test_anywhere_excepts_the_special_addresses_not_allowed_and_never_absorbs_those_allowed() -> (
    None
):
    flows = [
        *[flow(f"{WEB_A}:{41000 + i}", f"198.51.100.{i + 1}:80") for i in range(40)],
        flow(f"{WEB_A}:42000", "169.254.169.254:80"),
    ]
    names = resolver()
    graph = build_graph(flows, names, scope={WEB})
    [web] = synthesize(
        graph,
        cluster_dns=names.cluster_dns(flows),
        max_outside_addresses=32,
        allowed_special={SpecialAddress.METADATA, SpecialAddress.MULTICAST},
    ).policies
    blocks = {r.peer.cidr: r.peer for r in web.egress if isinstance(r.peer, IpPeer)}
    assert blocks["0.0.0.0/0"].excluded == (
        "0.0.0.0/32",
        "169.254.0.0/16",  # link-local is not allowed: the metadata endpoint has its own rule
        "255.255.255.255/32",
    )
    assert rules_to(web.egress)["169.254.169.254/32"] == (("TCP", 80),)
    assert web.left_out == ()


def _twins_snapshot() -> Snapshot:
    """Namespace app: Deployments web and web2 whose pods both carry only app=web, and api."""
    objects: list[dict[str, Any]] = []
    for name, ip, labels in (
        ("web", "10.1.0.5", {"app": "web"}),
        ("web2", "10.1.0.6", {"app": "web"}),
        ("api", "10.1.0.7", {"app": "api"}),
    ):
        objects.append(
            {
                "kind": "Deployment",
                "metadata": {"name": name, "namespace": "app", "uid": f"uid-{name}"},
                "spec": {
                    "selector": {"matchLabels": labels},
                    "template": {"metadata": {"labels": labels}},
                },
            }
        )
        objects.append(
            {
                "kind": "Pod",
                "metadata": {
                    "name": f"{name}-5d8f9-x1",
                    "namespace": "app",
                    "uid": f"uid-{name}-pod",
                    "labels": {**labels, "pod-template-hash": "5d8f9"},
                    "ownerReferences": [
                        {"kind": "ReplicaSet", "name": f"{name}-5d8f9", "controller": True}
                    ],
                },
                "status": {"podIP": ip},
            }
        )
    return Snapshot(parse_snapshot_documents(objects, source="twins.json"))


def test_a_workload_whose_selector_selects_another_gets_no_policy_and_a_warning() -> None:
    names = Resolver(_twins_snapshot())
    web, api = WorkloadRef("app", "Deployment", "web"), WorkloadRef("app", "Deployment", "api")
    graph = build_graph([flow("10.1.0.7:41000", "10.1.0.5:8080")], names, scope={web, api})
    result = synthesize(graph, cluster_dns=ClusterDns(), default_deny=True)
    assert unselectable_workloads(graph) == (str(web),)
    assert unselectable_reasons(graph, [str(web)]) == {
        str(web): "its selector app=web also selects pods of app/Deployment/web2, and no stable "
        "label selects only its pods"
    }
    # api gets its policy; its rule to web admits web2's pods too, and a warning says so.
    assert len(result.policies) == 1
    assert result.default_denies == ()  # it would cut web off
    assert rules_to(by_workload(result)[str(api)].egress)[str(web)] == (("TCP", 8080),)
    assert selector_warnings(graph) == (
        SelectorWarning(
            str(web),
            "no stable label selects only its pods: where another policy names it as a peer, "
            "its selector app=web admits the pods of app/Deployment/web2 too",
        ),
    )


def test_special_addresses_are_never_node_blocks() -> None:
    graph = build_graph([], resolver(), scope=set())
    blocks = node_blocks(graph, ["192.168.49.2", "169.254.169.254", "fe80::1", "0.0.0.0"])
    assert [block.cidr for block in blocks] == ["192.168.49.2/32"]


def test_anywhere_never_opens_the_cluster_itself() -> None:
    """Calico and kube-router match ipBlocks against pod addresses too: a rule from anywhere
    (an exposure, or widening) excepts the cluster's pod and Service networks, so inside the
    cluster only the exact rules allow anything."""
    exposure = Exposure(PortSpec(Protocol.TCP, 8080), "Service shop/web (LoadBalancer)", (4, 6))
    _, _, result = synthesized(
        _public_traffic(),
        {WEB},
        max_outside_addresses=32,
        exposures={str(WEB): [exposure]},
        internal_networks=("10.244.0.0/16", "10.96.0.0/12", "fd00:10:244::/56"),
    )
    web = by_workload(result)[str(WEB)]
    anywhere = [
        r.peer
        for r in (*web.ingress, *web.egress)
        if isinstance(r.peer, IpPeer) and r.peer.excluded
    ]
    assert {peer.cidr for peer in anywhere} == {"0.0.0.0/0", "::/0"}
    for peer in anywhere:
        internal = {"0.0.0.0/0": {"10.244.0.0/16", "10.96.0.0/12"}, "::/0": {"fd00:10:244::/56"}}
        assert internal[peer.cidr] <= set(peer.excluded), peer


def _many_peers() -> list[Any]:
    """web calls db on 5432 four times and on 7000-7002 once each; talks with single addresses:
    192.0.2.1 answered three times on 443 and 192.0.2.2-5 once each; 10.244.1.200 (in the
    cluster, held by no pod: unresolved) answered twice on 9000; UDP sent one way to
    198.51.100.1-5 on 8125, five datagrams' flows each, and from 203.0.113.1-3 on 5353, one each."""
    one_way: dict[str, Any] = {"protocol": UDP, "evidence": Evidence.HEURISTIC}
    flows = [flow(f"{WEB_A}:{39000 + i}", f"{DB}:5432") for i in range(4)]
    flows += [flow(f"{WEB_A}:{39100 + i}", f"{DB}:{7000 + i}") for i in range(3)]
    flows += [flow(f"{WEB_A}:{40000 + i}", "192.0.2.1:443") for i in range(3)]
    flows += [flow(f"{WEB_A}:{41000 + i}", f"192.0.2.{i}:443") for i in range(2, 6)]
    flows += [flow(f"{WEB_A}:{42000 + i}", "10.244.1.200:9000") for i in range(2)]
    for index in range(1, 6):
        flows += [
            replace(
                flow(f"{WEB_A}:{43000 + 10 * index + i}", f"198.51.100.{index}:8125", **one_way),
                answered=False,
            )
            for i in range(5)
        ]
    for index in range(1, 4):
        flows.append(
            replace(flow(f"203.0.113.{index}:40000", f"{WEB_A}:5353", **one_way), answered=False)
        )
    return flows


def _left_out_excused(
    plan: PolicyPlan, graph: WorkloadGraph, names: Resolver, denied: str
) -> tuple[PolicySet, ClusterFacts, set[tuple[str, str, str, PortSpec]]]:
    """The safety check on ``plan``'s rendered and parsed-back policies sees the traffic they
    left out for size (``denied`` matches it), unless told; told, the rest is allowed. Return
    the policies read back, the cluster's facts and what it was told."""
    files = render_policy_files(plan.policies, default_denies=[], provenance=Provenance())
    loaded = parse_policy_texts(files).policies
    facts = cluster_facts(cluster(), names)
    with pytest.raises(UnsafePolicies, match=denied):
        ensure_policies_allow(loaded, graph, facts)
    left = {(i.workload, i.direction, i.peer, p) for i in plan.rules_left_out for p in i.ports}
    ensure_policies_allow(loaded, graph, facts, rules_left_out=left)
    return loaded, facts, left


def test_rules_past_the_size_bound_are_left_out_the_least_evidence_first() -> None:
    """Past the bytes a policy's rules for the peers seen may take, the peers' ports with the
    least evidence lose their rules: answered before one-way, then by flows; a peer may keep
    some of its ports. Once one is left out, so are all after it, even one that would fit."""
    postgres, https, unresolved = PortSpec(TCP, 5432), PortSpec(TCP, 443), PortSpec(TCP, 9000)
    statsd, mdns = PortSpec(UDP, 8125), PortSpec(UDP, 5353)
    db = by_workload(synthesized(_many_peers(), {WEB})[2])[str(WEB)].egress[0].peer
    assert isinstance(db, PodPeer) and db.description == str(DB_W)
    kept: list[tuple[Peer, PortSpec]] = [
        (db, postgres),
        (IpPeer("192.0.2.1/32"), https),
        (IpPeer("10.244.1.200/32"), unresolved),
    ]
    budget = sum(peer_bytes(peer) + port_bytes(port) for peer, port in kept) + 20
    graph, names, result = synthesized(
        _many_peers(), {WEB}, max_outside_addresses=100, max_rule_bytes=budget
    )
    assert graph.node("unresolved:10.244.1.200").role is NodeRole.UNRESOLVED
    [web] = result.policies
    assert {
        key: ports
        for key, ports in rules_to((*web.ingress, *web.egress)).items()
        if "dns" not in key
    } == {
        str(DB_W): (("TCP", 5432),),
        "192.0.2.1/32": (("TCP", 443),),
        "10.244.1.200/32": (("TCP", 9000),),
    }
    w = str(WEB)
    assert web.rules_left_out == (
        *(RuleLeftOut(w, "egress", f"192.0.2.{i}", (https,), 1) for i in range(2, 6)),
        *(RuleLeftOut(w, "egress", f"198.51.100.{i}", (statsd,), 5) for i in range(1, 6)),
        RuleLeftOut(w, "egress", str(DB_W), tuple(PortSpec(TCP, p) for p in (7000, 7001, 7002)), 3),
        *(RuleLeftOut(w, "ingress", f"203.0.113.{i}", (mdns,), 1) for i in range(1, 4)),
    )
    assert result.rules_left_out == web.rules_left_out
    [egress, ingress] = sides_left_out(web.rules_left_out)
    assert (egress.direction, len(egress.peers), egress.flows) == ("egress", 10, 32)
    assert egress.ports == (https, *(PortSpec(TCP, p) for p in (7000, 7001, 7002)), statsd)
    assert ingress == SideLeftOut(
        w, "ingress", tuple(f"203.0.113.{i}" for i in (1, 2, 3)), (mdns,), 3
    )
    # The order of the flows does not matter.
    again = synthesized(
        _many_peers()[::-1], {WEB}, max_outside_addresses=100, max_rule_bytes=budget
    )[2]
    assert again == result
    # The default bound leaves nothing out of so few.
    assert synthesized(_many_peers(), {WEB}, max_outside_addresses=100)[2].rules_left_out == ()
    loaded, facts, left = _left_out_excused(result, graph, names, r"198\.51\.100\.2")
    # Told of another workload's (or the other direction's), it still checks this one's.
    for other in (
        {(str(DB_W), direction, peer, port) for _, direction, peer, port in left},
        {(w, "ingress", peer, port) for _, _, peer, port in left},
    ):
        with pytest.raises(UnsafePolicies, match=r"198\.51\.100\.2"):
            ensure_policies_allow(loaded, graph, facts, rules_left_out=other)


@pytest.mark.parametrize(
    "ports",
    [
        [PortSpec(TCP, 443)],
        [PortSpec(UDP, 53), PortSpec(TCP, 8080), PortSpec(Protocol.SCTP, 65535)],
    ],
)
@pytest.mark.parametrize(
    "peer",
    [
        IpPeer("192.0.2.1/32"),
        IpPeer("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff/128"),
        IpPeer("0.0.0.0/0", excluded=("169.254.0.0/16", "10.244.0.0/16")),
        PodPeer(LabelSelector((("app", "db"),))),
        PodPeer(LabelSelector((("app", "db"), ("tier", "backend"))), namespace="data"),
        PodPeer(
            LabelSelector(
                (("app", "db"),),
                (LabelRequirement("track", "In", ("stable", "canary")),),
            ),
            namespace="data-platform-production",
        ),
    ],
)
def test_peer_and_port_bytes_are_at_least_what_the_rule_takes_in_the_policy_json(
    peer: Peer, ports: list[PortSpec]
) -> None:
    """The bound counts at most what `kubectl apply` would store: the rule in the object's
    JSON, with a comma; and not much more."""
    rule = Rule(peer, tuple(ports))
    policy = Policy("shop", "web", str(WEB), LabelSelector((("app", "web"),)), ingress=(rule,))
    [written] = policy_object(policy, provenance=Provenance())["spec"]["ingress"]
    actual = len(json.dumps(written, separators=(",", ":"))) + 1
    counted = peer_bytes(peer) + sum(port_bytes(port) for port in ports)
    assert actual <= counted <= actual + 8


def test_a_port_widened_to_anywhere_counts_towards_the_size_bound() -> None:
    """A rule from or to anywhere lists its ports too: a capture claiming conversations with 33
    addresses on each of thousands of ports would make it as big. Past the bound, a widened port
    is left out as the conversations it stood for, address by address."""
    flows = [flow(f"{WEB_A}:{40000 + n}", f"198.51.100.{n + 1}:443") for n in range(40)]
    flows += [flow(f"{WEB_A}:{41000 + n}", f"192.0.2.{n + 1}:8443") for n in range(35)]
    graph, names, plain = synthesized(flows, {WEB}, max_outside_addresses=32)
    [block] = [
        r.peer
        for r in plain.policies[0].egress
        if isinstance(r.peer, IpPeer) and r.peer.cidr == "0.0.0.0/0"
    ]
    https, alternate = PortSpec(TCP, 443), PortSpec(TCP, 8443)
    budget = peer_bytes(block) + port_bytes(https) + 10
    _, _, result = synthesized(flows, {WEB}, max_outside_addresses=32, max_rule_bytes=budget)
    [web] = result.policies
    assert rules_to(web.egress)["0.0.0.0/0"] == (("TCP", 443),)
    assert web.rules_left_out == tuple(
        sorted(
            RuleLeftOut(str(WEB), "egress", f"192.0.2.{n + 1}", (alternate,), 1) for n in range(35)
        )
    )
    _left_out_excused(result, graph, names, r"8443")
