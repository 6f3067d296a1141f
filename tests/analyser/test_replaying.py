"""Replaying a workload graph against policies: cluster facts from a snapshot, the safety check
the analyse pipeline runs, verify on a graph, truth records."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from analyser import graphs
from analyser.evaluation import ContainerPort, Direction, PolicySet, PortRange, PortSet
from analyser.flows import Endpoint, Evidence, Flow, Protocol
from analyser.graphs import (
    EdgeStats,
    FlowAttribution,
    GraphEdge,
    GraphNode,
    NodeRole,
    WorkloadGraph,
)
from analyser.identities import Resolver
from analyser.peers import PortSpec
from analyser.replaying import (
    check_policies_allow,
    cluster_facts,
    ensure_policies_allow,
    observed_from_graph,
    observed_from_records,
    verify_graph,
)
from analyser.snapshot import Snapshot, parse_snapshot_documents
from analyser.verifying import check_observed
from kernel.errors import SnapshotError, UnsafePolicies
from tests.bundle_builders import API_IP, CART_POD, FRONTEND_POD, NODE_IP, snapshot
from tests.work_counting import executed_lines, growth

FRONTEND, CART, COREDNS = (
    "web/Deployment/frontend",
    "shop/Deployment/cart",
    ("kube-system/Deployment/coredns"),
)
TCP = Protocol.TCP


def cluster() -> tuple[Snapshot, Resolver]:
    parsed = Snapshot(parse_snapshot_documents([snapshot()], source="snapshot.json"))
    return parsed, Resolver(parsed)


PODS = {
    FRONTEND: ("web", FRONTEND_POD),
    CART: ("shop", CART_POD),
    COREDNS: ("kube-system", "coredns-5d78c-ccccc"),
}


def graph() -> WorkloadGraph:
    """frontend → cart:8080, cart → 203.0.113.7:443, node-1 → cart:8080 (a kubelet probe)."""
    _, resolver = cluster()
    nodes = []
    for name, scoped in ((FRONTEND, True), (CART, True), (COREDNS, False)):
        ref = resolver.workload_of_pod(*PODS[name])
        assert ref is not None and str(ref) == name
        nodes.append(
            GraphNode(name, NodeRole.WORKLOAD, name, resolver.workload(ref), in_scope=scoped)
        )
    nodes.append(GraphNode(f"ip:{API_IP}", NodeRole.EXTERNAL, API_IP))
    nodes.append(GraphNode("node:node-1", NodeRole.NODE, "node-1"))
    stats = EdgeStats(1, 3, 180, 0.0, 1.0, frozenset({Evidence.HANDSHAKE}))
    edges = (
        GraphEdge(FRONTEND, CART, {PortSpec(TCP, 8080): stats}),
        GraphEdge(CART, f"ip:{API_IP}", {PortSpec(TCP, 443): stats}),
        GraphEdge("node:node-1", CART, {PortSpec(TCP, 8080): stats}),
    )
    return WorkloadGraph(tuple(nodes), edges)


def _with_node_2(
    ports: dict[PortSpec, EdgeStats], attributions: tuple[FlowAttribution, ...]
) -> WorkloadGraph:
    """:func:`graph` and node-2, a node with two addresses, reaching cart on ``ports`` by the
    flows of ``attributions``."""
    base = graph()
    node = GraphNode("node:node-2", NodeRole.NODE, "node-2", addresses=("172.18.0.5", "172.18.0.6"))
    return replace(
        base,
        nodes=(*base.nodes, node),
        edges=(*base.edges, GraphEdge(node.id, CART, ports)),
        attributions=attributions,
    )


def netpol(namespace: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"policyTypes": ["Ingress", "Egress"], **spec},
    }


FRONTEND_POLICY = netpol(
    "web",
    "frontend",
    {
        "podSelector": {"matchLabels": {"app": "frontend"}},
        "egress": [
            {
                "to": [
                    {
                        "namespaceSelector": {
                            "matchLabels": {"kubernetes.io/metadata.name": "shop"}
                        },
                        "podSelector": {"matchLabels": {"app": "cart"}},
                    }
                ],
                "ports": [{"port": "http"}],  # named: cart's http is 8080 (frontend's is 3000)
            }
        ],
    },
)
CART_INGRESS = {
    "from": [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "web"}},
            "podSelector": {"matchLabels": {"app": "frontend"}},
        }
    ],
    "ports": [{"port": 8080}],
}
CART_POLICY = netpol(
    "shop",
    "cart",
    {
        "podSelector": {"matchLabels": {"app": "cart"}},
        "ingress": [CART_INGRESS],
        "egress": [{"to": [{"ipBlock": {"cidr": f"{API_IP}/32"}}], "ports": [{"port": 443}]}],
    },
)


def test_cluster_facts_from_the_snapshot() -> None:
    facts = cluster_facts(*cluster())
    assert sorted(facts.workloads) == [COREDNS, CART, FRONTEND]
    cart = facts.workloads[CART]
    assert cart.labels == (("app", "cart"),)  # pod-template-hash left out
    assert ("kubernetes.io/metadata.name", "shop") in cart.namespace_labels
    assert cart.ports == (ContainerPort("http", TCP, 8080),)
    assert facts.nodes_of[CART] == frozenset({"node-1"})
    assert facts.node_of_address == {"192.168.49.2": "node-1"}
    assert facts.host_network == {}


def test_policies_that_allow_every_observed_flow_pass_the_safety_check() -> None:
    policies = PolicySet.from_documents([FRONTEND_POLICY, CART_POLICY])
    facts = cluster_facts(*cluster())
    assert check_policies_allow(policies, graph(), facts) == []
    ensure_policies_allow(policies, graph(), facts)  # does not raise


def test_a_missing_rule_is_refused_naming_the_flow_and_side() -> None:
    no_ingress = netpol("shop", "cart", {**CART_POLICY["spec"], "ingress": []})
    policies = PolicySet.from_documents([FRONTEND_POLICY, no_ingress])
    facts = cluster_facts(*cluster())
    [denial] = check_policies_allow(policies, graph(), facts)
    assert (denial.client, denial.server, denial.port, denial.side) == (
        FRONTEND,
        CART,
        8080,
        Direction.INGRESS,
    )
    with pytest.raises(UnsafePolicies, match=r"web/Deployment/frontend → shop/Deployment/cart"):
        ensure_policies_allow(policies, graph(), facts)


def test_a_probe_from_the_pods_own_node_is_always_allowed() -> None:
    # The cart policy does not allow node-1, yet its kubelet probe passes: same node.
    policies = PolicySet.from_documents([FRONTEND_POLICY, CART_POLICY])
    observed = check_policies_allow(policies, graph(), cluster_facts(*cluster()))
    assert not [d for d in observed if d.client == "node:node-1"]


def test_verify_on_a_graph_reports_unobserved_allowances() -> None:
    wider = netpol(
        "shop",
        "cart",
        {
            **CART_POLICY["spec"],
            "ingress": [{**CART_INGRESS, "ports": [{"port": 8000, "endPort": 8090}]}],
        },
    )
    result = verify_graph(
        PolicySet.from_documents([FRONTEND_POLICY, wider]), graph(), cluster_facts(*cluster())
    )
    assert result.passed
    assert result.checked == 3
    # frontend's egress only allows cart's named port http (8080): the wider ingress adds nothing
    # for it; nothing else reaches cart. coredns (not captured) is open, but only pairs with a
    # captured end count: coredns → frontend is blocked by frontend's ingress, coredns → cart
    # by cart's.
    assert result.allowances == ()
    # Without frontend's policy, frontend may send anything anywhere: all of it unobserved.
    open_frontend = verify_graph(
        PolicySet.from_documents([wider]), graph(), cluster_facts(*cluster())
    )
    extra = {(a.client, a.server): a for a in open_frontend.allowances}
    assert extra[(FRONTEND, CART)].unobserved == PortSet.of(
        [PortRange(TCP, 8000, 8079), PortRange(TCP, 8081, 8090)]
    )
    assert extra[(FRONTEND, "ip:0.0.0.0/0")].all_ports == tuple(sorted(Protocol))
    assert extra[(COREDNS, FRONTEND)].unobserved == PortSet.everything()
    assert (COREDNS, COREDNS) not in extra  # neither end captured


def test_truth_records_are_replayed_by_name() -> None:
    facts = cluster_facts(*cluster())
    truth = [
        {"client": FRONTEND, "server": CART, "protocol": "TCP", "port": 8080},
        {"client": CART, "server": f"ip:{API_IP}", "protocol": "TCP", "port": 443},
        {"client": CART, "server": COREDNS, "protocol": "UDP", "port": 53},
    ]
    policies = PolicySet.from_documents([FRONTEND_POLICY, CART_POLICY])
    [denial] = check_observed(policies, observed_from_records(truth, facts))
    assert (denial.server, denial.protocol, denial.side) == (
        COREDNS,
        Protocol.UDP,
        Direction.EGRESS,
    )
    with pytest.raises(SnapshotError, match="shop/Deployment/nope"):
        observed_from_records([{**truth[0], "server": "shop/Deployment/nope"}], facts)


def test_a_truth_record_from_a_pods_own_node_is_exempt_as_in_the_graph() -> None:
    # A kubelet probe from node-1's address to cart, which runs on node-1: cart's policy admits
    # only frontend, yet traffic between a pod and its own node is always allowed.
    facts = cluster_facts(*cluster())
    probe = {"client": f"ip:{NODE_IP}", "server": CART, "protocol": "TCP", "port": 8080}
    policies = PolicySet.from_documents([FRONTEND_POLICY, CART_POLICY])
    assert check_observed(policies, observed_from_records([probe], facts)) == []
    # The same probe from an address that is no node's is denied.
    stranger = {**probe, "client": "ip:192.168.49.99"}
    [denial] = check_observed(policies, observed_from_records([stranger], facts))
    assert (denial.server, denial.side) == (CART, Direction.INGRESS)


def _node_on_many_ports(count: int) -> WorkloadGraph:
    """A node with two addresses reaching cart on ``count`` ports, one flow each."""
    stats = EdgeStats(1, 3, 180, 0.0, 1.0, frozenset({Evidence.HANDSHAKE}))
    ports = [PortSpec(TCP, 10000 + n) for n in range(count)]
    attributions = tuple(
        FlowAttribution(
            Flow(
                TCP,
                Endpoint("172.18.0.6", 41000 + n),
                Endpoint("10.244.2.7", port.port),
                0.0,
                1.0,
                3,
                180,
                frozenset({"captures/shop/cart/capture.pcap0"}),
                Evidence.HANDSHAKE,
            ),
            "node:node-2",
            CART,
            port,
        )
        for n, port in enumerate(ports)
    )
    return _with_node_2(dict.fromkeys(ports, stats), attributions)


def test_the_flows_of_an_edge_and_port_are_found_without_scanning_every_flow() -> None:
    # An end with several addresses is checked with those its flows used on each port; looking
    # them up went through every flow of the graph, for every edge and port.
    facts = cluster_facts(*cluster())

    def work(count: int) -> int:
        bigger = _node_on_many_ports(count)
        return executed_lines(lambda: observed_from_graph(bigger, facts), modules=(graphs,))

    assert growth(work, 200) < 1.5
    observed = observed_from_graph(_node_on_many_ports(3), facts)
    assert {(str(o.client), o.port) for o in observed if o.port >= 10000} == {
        ("node:node-2", 10000 + n) for n in range(3)
    }


def test_an_address_end_is_checked_with_the_addresses_its_flows_used() -> None:
    # A node with two addresses reached cart from 172.18.0.6 only; node-2 hosts no cart pod.
    stats = EdgeStats(1, 3, 180, 0.0, 1.0, frozenset({Evidence.HANDSHAKE}))
    flow = Flow(
        Protocol.TCP,
        Endpoint("172.18.0.6", 41000),
        Endpoint("10.244.2.7", 8080),
        0.0,
        1.0,
        3,
        180,
        frozenset({"captures/shop/cart/capture.pcap0"}),
        Evidence.HANDSHAKE,
    )
    result = _with_node_2(
        {PortSpec(TCP, 8080): stats},
        (FlowAttribution(flow, "node:node-2", CART, PortSpec(TCP, 8080)),),
    )

    def cart_allowing(cidr: str) -> PolicySet:
        from_node = {"from": [{"ipBlock": {"cidr": cidr}}], "ports": [{"port": 8080}]}
        spec = {**CART_POLICY["spec"], "ingress": [CART_INGRESS, from_node]}
        return PolicySet.from_documents([FRONTEND_POLICY, netpol("shop", "cart", spec)])

    facts = cluster_facts(*cluster())
    assert check_policies_allow(cart_allowing("172.18.0.6/32"), result, facts) == []
    [denial] = check_policies_allow(cart_allowing("172.18.0.5/32"), result, facts)
    assert (denial.client, denial.side) == ("node:node-2", Direction.INGRESS)
