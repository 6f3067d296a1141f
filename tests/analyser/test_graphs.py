"""Flows + identities → the workload graph: Service joins, target ports, scope, nodes, DNS names."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from analyser import graphs
from analyser.flows import Evidence, Flow, Protocol
from analyser.graphs import (
    AttemptGroup,
    AttemptTotals,
    EdgeStats,
    FlowsLeftOut,
    GraphEdge,
    GraphNode,
    NodeRole,
    Sides,
    UnvouchedPair,
    WorkloadGraph,
    build_graph,
    merge_attempts,
    merge_flows_left_out,
)
from analyser.peers import PortSpec
from analyser.selectors import LabelSelector
from analyser.workloads import Workload, WorkloadRef
from tests.analyser.flow_builders import (
    API_BLUE,
    API_SVC,
    COREDNS_A,
    KUBE_DNS,
    NODE_A,
    PRODUCTPAGE,
    PRODUCTPAGE_SVC,
    REUSED,
    REVIEWS_SVC,
    REVIEWS_V1,
    REVIEWS_V3,
    WEB_A,
    WEB_A6,
    WEB_B,
    WEB_SVC,
    WEB_SVC6,
    FakeDns,
    at,
    flow,
    resolver,
)
from tests.work_counting import executed_lines, growth

TCP, UDP = Protocol.TCP, Protocol.UDP
WEB, API_BLUE_W = "shop/Deployment/web", "shop/Deployment/api-blue"
SCOPE = {
    WorkloadRef("shop", "Deployment", "web"),
    WorkloadRef("shop", "Deployment", "api-blue"),
}


def ports(graph: WorkloadGraph, client: str, server: str) -> dict[PortSpec, EdgeStats]:
    return dict(graph.edge(client, server).ports)


def ends(graph: WorkloadGraph) -> list[tuple[str, str]]:
    return [(edge.client, edge.server) for edge in graph.edges]


def test_service_flow_joined_to_the_server_side_capture() -> None:
    client_side = flow(f"{API_BLUE}:41000", f"{WEB_SVC}:80", capture="captures/shop/api/c.pcap")
    server_side = flow(
        f"{API_BLUE}:41000",
        f"{WEB_B}:8080",
        clock="09:40:01",
        packets=12,
        capture="captures/shop/web/c.pcap",
    )
    graph = build_graph([client_side, server_side], resolver(), scope=SCOPE)
    assert ends(graph) == [(API_BLUE_W, WEB)]
    [(spec, stats)] = ports(graph, API_BLUE_W, WEB).items()
    assert spec == PortSpec(TCP, 8080)  # the target port, never the Service port 80
    assert (stats.flows, stats.packets, stats.assumed) == (1, 12, False)
    assert stats.services == {"shop/web"}
    [attribution] = graph.flows_on_edge(API_BLUE_W, WEB)
    assert attribution.flow == client_side and attribution.twin == server_side


def test_service_flow_without_server_capture_goes_to_the_backends_target_port() -> None:
    graph = build_graph([flow(f"{API_BLUE}:41000", f"{WEB_SVC}:80")], resolver(), scope=SCOPE)
    [(spec, stats)] = ports(graph, API_BLUE_W, WEB).items()
    assert spec == PortSpec(TCP, 8080)
    assert stats.assumed and stats.flows == 1


def test_dual_stack_cluster_ip_is_the_same_service() -> None:
    graph = build_graph([flow(f"[{WEB_A6}]:41000", f"[{WEB_SVC6}]:80")], resolver(), scope=SCOPE)
    assert ports(graph, WEB, WEB) == {
        PortSpec(TCP, 8080): graph.edge(WEB, WEB).ports[PortSpec(TCP, 8080)]
    }


def test_named_target_port_differs_per_backend() -> None:
    graph = build_graph([flow(f"{WEB_A}:41000", f"{API_SVC}:80")], resolver(), scope=SCOPE)
    assert set(ports(graph, WEB, API_BLUE_W)) == {PortSpec(TCP, 8080)}
    assert set(ports(graph, WEB, "shop/Deployment/api-green")) == {PortSpec(TCP, 9090)}


def test_a_twin_to_one_of_two_deployments_only_makes_that_edge() -> None:
    flows = [
        flow(f"{PRODUCTPAGE}:50000", f"{REVIEWS_SVC}:9080"),
        flow(f"{PRODUCTPAGE}:50000", f"{REVIEWS_V3}:9080", clock="09:40:00"),
    ]
    graph = build_graph(flows, resolver(), scope=set())
    assert ends(graph) == [("bookinfo/Deployment/productpage-v1", "bookinfo/Deployment/reviews-v3")]


def test_twins_are_matched_by_client_port_and_time() -> None:
    flows = [
        flow(f"{PRODUCTPAGE}:50000", f"{REVIEWS_SVC}:9080", clock="09:40:00"),
        flow(f"{PRODUCTPAGE}:50001", f"{REVIEWS_SVC}:9080", clock="09:40:00"),
        # The same client port an hour later is another connection, not a twin.
        flow(f"{PRODUCTPAGE}:50000", f"{REVIEWS_V3}:9080", clock="08:40:00"),
        flow(f"{PRODUCTPAGE}:50001", f"{REVIEWS_V1}:9080", clock="09:40:02"),
    ]
    graph = build_graph(flows, resolver(), scope=set())
    page = "bookinfo/Deployment/productpage-v1"
    v1, v3 = "bookinfo/Deployment/reviews-v1", "bookinfo/Deployment/reviews-v3"
    # :50000 had no twin → both backends (assumed); :50001 → v1; the 08:40 flow → v3 directly.
    assert ports(graph, page, v1)[PortSpec(TCP, 9080)].flows == 2
    v3_stats = ports(graph, page, v3)[PortSpec(TCP, 9080)]
    assert v3_stats.flows == 2 and not v3_stats.assumed
    assert len(graph.attributions) == 4


def test_a_flow_elsewhere_from_the_same_client_port_is_not_a_twin() -> None:
    flows = [
        flow(f"{API_BLUE}:41000", f"{WEB_SVC}:80"),
        flow(f"{API_BLUE}:41000", "93.184.216.34:443"),
    ]
    graph = build_graph(flows, resolver(), scope=SCOPE)
    assert ports(graph, API_BLUE_W, WEB)[PortSpec(TCP, 8080)].assumed
    assert set(ports(graph, API_BLUE_W, "ip:93.184.216.34")) == {PortSpec(TCP, 443)}


def test_flows_between_pods_of_one_workload_are_a_self_loop() -> None:
    graph = build_graph([flow(f"{WEB_A}:41000", f"{WEB_B}:8080")], resolver(), scope=SCOPE)
    assert ends(graph) == [(WEB, WEB)]


def test_external_address_gets_dns_names_and_nodes_are_not_the_internet() -> None:
    dns = FakeDns({"93.184.216.34": ["example.com", "www.example.com"]})
    flows = [
        flow(f"{WEB_A}:41000", "93.184.216.34:443"),
        flow(f"{NODE_A}:52000", f"{WEB_A}:8080", evidence=Evidence.KNOWN_LISTENER),  # kubelet probe
        flow(f"{WEB_A}:41001", f"{NODE_A}:9100"),  # node-exporter, hostNetwork
        flow(f"{WEB_A}:41002", f"{NODE_A}:22"),  # nothing declared there: the node
    ]
    graph = build_graph(flows, resolver(), dns, scope=SCOPE)
    external = graph.node("ip:93.184.216.34")
    assert external.role is NodeRole.EXTERNAL
    assert external.names == ("example.com", "www.example.com")
    assert external.label == "93.184.216.34"
    node = graph.node("node:node-a")
    assert (node.role, node.addresses) == (NodeRole.NODE, (NODE_A,))
    assert set(ports(graph, "node:node-a", WEB)) == {PortSpec(TCP, 8080)}
    assert set(ports(graph, WEB, "node:node-a")) == {PortSpec(TCP, 22)}
    exporter = graph.node("kube-system/DaemonSet/node-exporter")
    assert exporter.role is NodeRole.WORKLOAD and exporter.addresses == (NODE_A,)
    assert ports(graph, WEB, "kube-system/DaemonSet/node-exporter")[
        PortSpec(TCP, 9100)
    ].evidence == {Evidence.HANDSHAKE}


def test_ip_reuse_gives_each_pod_its_own_edge() -> None:
    flows = [
        flow(f"{REUSED}:40000", f"{PRODUCTPAGE}:9080", clock="09:10:00"),
        flow(f"{REUSED}:40000", f"{PRODUCTPAGE}:9080", clock="09:35:00"),
    ]
    graph = build_graph(flows, resolver(), scope=set())
    page = "bookinfo/Deployment/productpage-v1"
    assert sorted(edge.client for edge in graph.edges_to(page)) == [
        "bookinfo/Deployment/details-v1",
        "bookinfo/Deployment/ratings-v1",
    ]


def test_scope_marks_captured_workloads_and_keeps_silent_ones() -> None:
    graph = build_graph([flow(f"{WEB_A}:41000", "93.184.216.34:443")], resolver(), scope=SCOPE)
    assert graph.node(WEB).in_scope
    assert graph.node(API_BLUE_W).in_scope  # captured, said nothing: still gets a policy
    assert not graph.node("ip:93.184.216.34").in_scope


def test_unresolved_addresses_and_services_without_backends() -> None:
    flows = [
        flow(f"{WEB_A}:41000", "10.244.1.200:8080"),
        flow(f"{WEB_A}:41001", "10.96.0.200:80"),  # a ClusterIP-range address, no Service
        flow(f"{WEB_A}:41002", f"{PRODUCTPAGE_SVC}:81"),  # a Service port that does not exist
    ]
    graph = build_graph(flows, resolver(), scope=SCOPE)
    assert graph.unresolved == ("10.96.0.200", "10.96.10.1", "10.244.1.200")
    assert graph.node("unresolved:10.244.1.200").role is NodeRole.UNRESOLVED


def test_dns_through_the_service_is_an_edge_to_the_dns_workload() -> None:
    flows = [
        flow(f"{WEB_A}:33333", f"{KUBE_DNS}:53", protocol=UDP, evidence=Evidence.KNOWN_LISTENER),
        flow(f"{WEB_A}:33333", f"{COREDNS_A}:53", protocol=UDP, evidence=Evidence.KNOWN_LISTENER),
    ]
    graph = build_graph(flows, resolver(), scope=SCOPE)
    assert set(ports(graph, WEB, "kube-system/Deployment/coredns")) == {PortSpec(UDP, 53)}


def test_edge_rows_and_determinism() -> None:
    flows = [
        flow(f"{API_BLUE}:41000", f"{WEB_SVC}:80"),
        flow(f"{API_BLUE}:41000", f"{WEB_B}:8080"),
        flow(f"{WEB_A}:41000", f"{API_SVC}:80", clock="09:41:00"),
        flow(f"{WEB_A}:41001", "93.184.216.34:443", clock="09:42:00"),
        flow(f"{NODE_A}:52000", f"{WEB_A}:8080", clock="09:43:00"),
    ]
    first = build_graph(flows, resolver(), scope=SCOPE)
    shuffled = flows[:]
    random.Random(7).shuffle(shuffled)
    second = build_graph(shuffled, resolver(), scope=SCOPE)
    assert first.edge_rows() == second.edge_rows()
    assert first == second  # nodes, edges, attributions, attempts: all of it
    rows = first.edge_rows()
    assert [(r.client, r.server, r.port.port) for r in rows] == [
        ("node:node-a", WEB, 8080),
        (API_BLUE_W, WEB, 8080),
        (WEB, "ip:93.184.216.34", 443),
        (WEB, API_BLUE_W, 8080),
        (WEB, "shop/Deployment/api-green", 9090),
    ]
    assert (rows[0].client_label, rows[1].client_label) == (
        f"node-a ({NODE_A})",
        API_BLUE_W,
    )


def test_connections_never_established_make_no_edge_but_are_kept() -> None:
    flows = [
        flow(f"{WEB_A}:41000", f"{API_BLUE}:9090"),  # it worked
        replace(flow(f"{WEB_A}:41001", f"{API_BLUE}:7777"), established=False),  # refused
        replace(flow(f"{WEB_A}:41002", "10.96.0.200:80"), established=False),  # unanswered
    ]
    graph = build_graph(flows, resolver(), scope=SCOPE)
    assert set(ports(graph, WEB, API_BLUE_W)) == {PortSpec(TCP, 9090)}
    assert graph.unresolved == ()
    assert [(a.client, a.server, a.port.port, a.attempts) for a in graph.attempts] == [
        (WEB, API_BLUE_W, 7777, 1),
        (WEB, "unresolved:10.96.0.200", 80, 1),
    ]


def test_attempts_are_counted_per_client_server_and_port_not_kept_one_by_one() -> None:
    # a client retrying a blocked port all day makes one group, whatever the number of attempts
    start = at("09:40:00")
    retries = [
        replace(
            flow(f"{WEB_A}:{41000 + n}", f"{API_BLUE}:7777"),
            established=False,
            first_seen=start + n / 10,
            last_seen=start + n / 10 + 0.05,
        )
        for n in range(5000)
    ]
    graph = build_graph(retries, resolver(), scope=SCOPE)
    (group,) = graph.attempts
    assert (group.client, group.server, group.port, group.servers) == (
        WEB,
        API_BLUE_W,
        PortSpec(TCP, 7777),
        (API_BLUE,),
    )
    assert (group.attempts, group.packets) == (5000, sum(f.packets for f in retries))
    assert (group.first_seen, group.last_seen) == (start, start + 499.9 + 0.05)
    assert graph.edges == ()


def test_attempts_of_several_graphs_merge_per_client_server_and_port() -> None:
    # what windows do with the attempts of each bundle's graph
    port = PortSpec(TCP, 7777)
    morning = AttemptGroup(WEB, API_BLUE_W, port, ("10.0.1.9",), 3, 6, 100.0, 110.0)
    evening = AttemptGroup(WEB, API_BLUE_W, port, ("10.0.1.10", "10.0.1.9"), 2, 4, 50.0, 60.0)
    other = AttemptGroup(WEB, API_BLUE_W, PortSpec(TCP, 80), ("10.0.1.9",), 1, 1, 1.0, 2.0)
    groups, left_out = merge_attempts([morning, other, evening])
    assert sorted(groups, key=AttemptGroup.key) == [
        other,  # port 80 sorts first
        AttemptGroup(WEB, API_BLUE_W, port, ("10.0.1.9", "10.0.1.10"), 5, 10, 50.0, 110.0),
    ]
    assert left_out == AttemptTotals()


def test_a_scan_s_attempts_past_max_attempt_groups_are_counted_together(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A port scan (or SYNs forged to every address) would make one group, and a report row,
    # per address: past MAX_ATTEMPT_GROUPS groups, attempts are counted together instead; the
    # groups kept are the first in the flows' order, and merging graphs keeps the bound.
    monkeypatch.setattr(graphs, "MAX_ATTEMPT_GROUPS", 3)
    start = at("09:40:00")
    scan = [
        replace(
            flow(f"{WEB_A}:{41000 + n}", f"198.51.100.{n + 1}:443"),
            established=False,
            first_seen=start + n,
            last_seen=start + n + 0.5,
        )
        for n in range(10)
    ]
    graph = build_graph(scan, resolver(), scope=SCOPE)
    assert [group.server for group in graph.attempts] == [
        "ip:198.51.100.1",
        "ip:198.51.100.2",
        "ip:198.51.100.3",
    ]
    assert graph.attempts_left_out == AttemptTotals(
        7, sum(f.packets for f in scan[3:]), start + 3, start + 9.5
    )
    assert graph.edges == ()
    groups, left_out = merge_attempts(
        [*graph.attempts, *reversed(graph.attempts)], [graph.attempts_left_out] * 2
    )
    assert len(groups) == 3  # the same three, twice: room for no more
    assert left_out == AttemptTotals(
        14, 2 * graph.attempts_left_out.packets, start + 3, start + 9.5
    )
    groups, left_out = merge_attempts(
        [replace(graph.attempts[0], port=PortSpec(TCP, port)) for port in (1, 2, 3, 4)]
    )
    assert len(groups) == 3 and left_out.attempts == 1


def test_flows_with_addresses_past_max_addresses_make_no_edge_and_are_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Datagrams sprayed at every address (or spoofed from them), or conversations forged with
    # free pod addresses, would make a node, an edge and a rule per address: past MAX_ADDRESSES
    # of one side in one direction, over all its ports (a spray on a port per address is as
    # big), and counted apart for one-way flows and answered ones, a flow makes no edge and is
    # counted, by port. An address kept gets its other ports too. Outside addresses that
    # answered are not bounded: past 32 on a port they widen to anywhere.
    monkeypatch.setattr(graphs, "MAX_ADDRESSES", 3)

    def one_way(client: str, server: str, packets: int) -> Flow:
        return replace(flow(client, server, protocol=UDP), answered=False, packets=packets)

    spray = [one_way(f"{WEB_A}:41000", f"198.51.100.{n + 1}:9999", 1) for n in range(10)]
    other_port = [one_way(f"{WEB_A}:41002", f"198.51.100.{n}:8888", 1) for n in (1, 50)]
    answered = flow(f"{WEB_A}:41001", "198.51.100.200:9999", protocol=UDP)
    conversations = [flow(f"{WEB_A}:{42000 + n}", f"192.0.2.{n + 1}:443") for n in range(4)]
    forged = [flow(f"{WEB_A}:{43000 + n}", f"10.244.1.{201 + n}:443") for n in range(4)]
    spoofed = [one_way(f"203.0.113.{n + 1}:5000", f"{API_BLUE}:7777", 2) for n in range(5)]
    flows = [*spray, *other_port, answered, *conversations, *forged, *spoofed]
    graph = build_graph(flows, resolver(), scope=SCOPE)
    outside = {edge.server: set(edge.ports) for edge in graph.edges if edge.client == WEB}
    assert outside == {
        "ip:198.51.100.1": {PortSpec(UDP, 8888), PortSpec(UDP, 9999)},
        **{f"ip:198.51.100.{n}": {PortSpec(UDP, 9999)} for n in (2, 3, 200)},
        **{f"ip:192.0.2.{n}": {PortSpec(TCP, 443)} for n in range(1, 5)},
        **{f"unresolved:10.244.1.{n}": {PortSpec(TCP, 443)} for n in range(201, 204)},
    }
    assert sum(1 for edge in graph.edges if edge.server == API_BLUE_W) == 3
    start = at("09:40:00")
    https, udp_9999 = PortSpec(TCP, 443), PortSpec(UDP, 9999)
    assert graph.flows_left_out == (
        FlowsLeftOut(API_BLUE_W, "from", PortSpec(UDP, 7777), False, 3, 2, 4, start, start + 2.0),
        FlowsLeftOut(WEB, "to", https, True, 3, 1, 10, start, start + 2.0),
        FlowsLeftOut(WEB, "to", PortSpec(UDP, 8888), False, 3, 1, 1, start, start + 2.0),
        FlowsLeftOut(WEB, "to", udp_9999, False, 3, 7, 7, start, start + 2.0),
    )
    merged = merge_flows_left_out([*graph.flows_left_out, *graph.flows_left_out])
    assert [(found.flows, found.packets) for found in merged] == [(4, 8), (2, 20), (2, 2), (14, 14)]


def test_loopback_flows_inside_a_pod_make_no_edge_and_no_node() -> None:
    flows = [
        flow(f"{WEB_A}:41000", f"{API_BLUE}:9090"),
        flow("127.0.0.1:45000", "127.0.0.1:5432"),  # the app and its proxy container, over lo
        flow("[::1]:45001", "[::1]:15000"),
    ]
    graph = build_graph(flows, resolver(), scope=SCOPE)
    assert [node.id for node in graph.nodes] == [API_BLUE_W, WEB]
    assert graph.loopback == 2


def test_one_five_tuple_used_by_two_pods_in_turn_gives_each_its_edge() -> None:
    # The conversation table merges both connections (same 5-tuple) into one flow that spans
    # the hand-over of the address from ratings' old pod to details.
    merged = replace(
        flow(f"{REUSED}:40000", f"{PRODUCTPAGE}:9080", clock="09:10:00"),
        last_seen=at("09:35:00"),
    )
    graph = build_graph([merged], resolver(), scope=set())
    page = "bookinfo/Deployment/productpage-v1"
    assert sorted(edge.client for edge in graph.edges_to(page)) == [
        "bookinfo/Deployment/details-v1",
        "bookinfo/Deployment/ratings-v1",
    ]


def test_a_service_the_snapshot_lacks_is_joined_to_the_server_sides_capture() -> None:
    # web's capture saw 10.96.0.200:80 (a ClusterIP of no Service in the snapshot), api-blue's
    # saw the same client address and port reach it on 9090: one connection, DNAT'd
    client_side = flow(f"{WEB_A}:41000", "10.96.0.200:80", capture="captures/shop/web/c.pcap")
    server_side = flow(
        f"{WEB_A}:41000", f"{API_BLUE}:9090", clock="09:40:01", capture="captures/shop/api/c.pcap"
    )
    graph = build_graph([client_side, server_side], resolver(), scope=SCOPE)
    assert set(ports(graph, WEB, API_BLUE_W)) == {PortSpec(TCP, 9090)}
    assert graph.unresolved == ()
    # one capture that saw both: two connections from one client port, both kept
    both = [replace(f, captures=frozenset({"node.pcap"})) for f in (client_side, server_side)]
    graph = build_graph(both, resolver(), scope=SCOPE)
    assert graph.unresolved == ("10.96.0.200",)
    assert set(ports(graph, WEB, API_BLUE_W)) == {PortSpec(TCP, 9090)}


def _client_port_shared_by(count: int) -> list[Flow]:
    """``count`` connections from one client address and port to outside addresses, seen by the
    client's capture, and ``count`` to pods seen by another capture, all within TWIN_WINDOW: each
    outside flow looks for its server-side twin among the pod flows."""
    flows = []
    for index in range(count):
        moment = f"09:40:0{index % 4}"
        outside = f"198.18.{index // 250}.{index % 250 + 1}:443"
        flows.append(flow(f"{API_BLUE}:41000", outside, clock=moment, capture="api.pcap"))
        pod = (WEB_A, WEB_B, PRODUCTPAGE)[index % 3]
        flows.append(flow(f"{API_BLUE}:41000", f"{pod}:{1000 + index}", clock=moment, capture="p"))
    return flows


def test_twins_are_found_in_near_linear_work_when_thousands_share_a_client_port() -> None:
    # Every candidate list of a twin used to be every flow from that client address and port.
    def work(count: int) -> int:
        flows = _client_port_shared_by(count)
        return executed_lines(
            lambda: build_graph(flows, resolver(), scope=SCOPE), modules=(graphs,)
        )

    assert growth(work, 150) < 1.6


def _near_and_far_twins() -> list[Flow]:
    """One client port to three outside addresses and three pods: 198.18.0.1 and .2 are at the
    same moment (the tie goes to the first), .3 has no pod within TWIN_WINDOW."""
    return [
        flow(f"{API_BLUE}:41000", "198.18.0.1:443", clock="09:40:05", capture="a"),
        flow(f"{API_BLUE}:41000", "198.18.0.2:443", clock="09:40:05", capture="a"),
        flow(f"{API_BLUE}:41000", "198.18.0.3:443", clock="09:40:20", capture="a"),
        flow(f"{API_BLUE}:41000", f"{WEB_A}:8080", clock="09:40:03", capture="b"),
        flow(f"{API_BLUE}:41000", f"{WEB_B}:8080", clock="09:40:07", capture="b"),
        flow(f"{API_BLUE}:41000", f"{PRODUCTPAGE}:9080", clock="09:40:26", capture="b"),
    ]


def _twins(flows: list[Flow]) -> set[tuple[str, str]]:
    """The (outside address, pod address) of each flow joined to a twin."""
    return {
        (a.flow.server.ip, a.twin.server.ip)
        for a in build_graph(flows, resolver(), scope=SCOPE).attributions
        if a.twin is not None
    }


def test_twins_found_through_the_time_index_are_the_nearest_ones() -> None:
    # Ties in time go to the lowest index; taken twins are skipped; the window bounds the search.
    assert _twins(_near_and_far_twins()) == {("198.18.0.1", WEB_A), ("198.18.0.2", WEB_B)}


def test_a_crowded_client_port_finds_the_same_twins_as_a_quiet_one() -> None:
    # Past graphs.CROWDED flows from one client port, twins are looked up in time indexes
    # instead of looked through: the same ones, the nearest and then the first, are found.
    # Far away in time from the others, and from each other: nobody's twins.
    crowd = [
        flow(f"{API_BLUE}:41000", f"198.19.0.{n}:443", clock=f"10:{n:02d}:00", capture="a")
        for n in range(1, graphs.CROWDED + 2)
    ]
    assert _twins(_near_and_far_twins() + crowd) == _twins(_near_and_far_twins())


def test_the_graph_checks_its_schema_and_sorts_what_it_is_given() -> None:
    web = Workload(WorkloadRef("shop", "Deployment", "web"), LabelSelector((("app", "web"),)))
    served = GraphNode(WEB, NodeRole.WORKLOAD, WEB, workload=web, in_scope=True)
    node = GraphNode("node:node-a", NodeRole.NODE, "node-a", addresses=(NODE_A,))
    stats = EdgeStats(1, 3, 180, 0.0, 1.0, frozenset({Evidence.HANDSHAKE}))
    probe = GraphEdge(node.id, WEB, {PortSpec(TCP, 8080): stats})
    graph = WorkloadGraph((served, node), (probe,))
    assert [n.id for n in graph.nodes] == ["node:node-a", WEB]
    assert graph == WorkloadGraph((node, served), (probe,))
    assert (graph.edges_to(WEB), graph.edges_from(WEB)) == ((probe,), ())
    assert graph.edge(node.id, WEB) is probe and graph.with_role(NodeRole.NODE) == (node,)
    # A workload node is its workload's; any other node has none, and its id says what it is.
    with pytest.raises(ValueError, match="a workload node has its workload"):
        GraphNode(WEB, NodeRole.WORKLOAD, WEB)
    with pytest.raises(ValueError, match="starting with 'ip:'"):
        GraphNode("93.184.216.34", NodeRole.EXTERNAL, "93.184.216.34")
    with pytest.raises(ValueError, match="has no workload"):
        GraphNode("node:node-a", NodeRole.NODE, "node-a", workload=web)
    with pytest.raises(ValueError, match="no port"):
        GraphEdge(node.id, WEB, {})
    with pytest.raises(ValueError, match="an end is no node"):
        WorkloadGraph((served,), (probe,))
    with pytest.raises(ValueError, match="each node and each edge once"):
        WorkloadGraph((served, node, node), (probe,))


def _calls_to_a_service(count: int) -> list[Flow]:
    """A client calling a Service without keep-alive: a new source port per connection."""
    return [
        flow(
            f"{API_BLUE}:{40000 + n}",
            f"{WEB_SVC}:80",
            clock=f"09:{40 + n // 3600 % 10}:{n // 60 % 60:02d}",
            packets=10 + n % 3,
            capture="captures/shop/api/c.pcap",
        )
        for n in range(count)
    ]


def test_connections_of_one_pair_are_counted_as_each_would_be() -> None:
    flows = _calls_to_a_service(500)
    graph = build_graph(flows, resolver(), scope=SCOPE)
    stats = ports(graph, API_BLUE_W, WEB)[PortSpec(TCP, 8080)]
    assert (stats.flows, stats.assumed) == (500, True)
    assert stats.packets == sum(f.packets for f in flows)
    assert (stats.first_seen, stats.last_seen) == (
        min(f.first_seen for f in flows),
        max(f.last_seen for f in flows),
    )
    # The first ones one by one (report.html lists them), one attribution for the rest.
    attributions = graph.flows_on_edge(API_BLUE_W, WEB)
    assert [a.flow for a in attributions] == flows[: graphs.LISTED_FLOWS + 1]
    assert [a.connections for a in attributions] == [1] * graphs.LISTED_FLOWS + [480]


def test_an_edge_lists_its_first_connections_and_one_attribution_per_group_for_the_rest() -> None:
    # Two groups of connections counted alike on one edge and port (one per server address):
    # report.html lists the edge's first LISTED_FLOWS, whichever group they are in; the rest are
    # counted, one attribution per group (the addresses an end used come from them).
    flows = [
        flow(
            f"{API_BLUE}:{40000 + n}",
            f"{WEB_A if n % 2 else WEB_B}:8080",
            clock=f"09:{40 + n // 60}:{n % 60:02d}",
            capture="captures/shop/api/c.pcap",
        )
        for n in range(200)
    ]
    graph = build_graph(flows, resolver(), scope=SCOPE)
    attributions = graph.flows_on_edge(API_BLUE_W, WEB, PortSpec(TCP, 8080))
    listed, rest = attributions[: graphs.LISTED_FLOWS], attributions[graphs.LISTED_FLOWS :]
    assert [a.flow for a in listed] == flows[: graphs.LISTED_FLOWS]
    assert all(a.connections == 1 for a in listed)
    assert [(a.flow, a.connections) for a in rest] == [
        (flows[graphs.LISTED_FLOWS], 90),
        (flows[graphs.LISTED_FLOWS + 1], 90),
    ]
    assert {a.flow.server.ip for a in rest} == {WEB_A, WEB_B}
    # As it is made, so it stays: a graph of these attributions lists the same.
    again = WorkloadGraph(graph.nodes, graph.edges, tuple(reversed(graph.attributions)))
    assert again.attributions == graph.attributions


def test_the_first_connections_of_an_edge_are_listed_whatever_order_its_groups_come_in() -> None:
    # Groups counted one after the other (by client address and captures), the first with the
    # latest connections: each bucket keeps only what may still be listed (graphs._Bucket.prune),
    # and the edge lists its first LISTED_FLOWS all the same, then one per group for the rest.
    def calls(server: str, capture: str, hour: int, count: int) -> list[Flow]:
        return [
            flow(
                f"{API_BLUE}:{30000 + hour * 100 + n}",
                f"{server}:8080",
                clock=f"{hour:02d}:{n // 60:02d}:{n % 60:02d}",
                capture=f"captures/shop/api/{capture}",
            )
            for n in range(count)
        ]

    late, early, middle = (
        calls(WEB_A, "c.pcap", 11, 100),
        calls(WEB_B, "c.pcap", 9, 100),
        calls(WEB_A, "d.pcap", 10, 100),
    )
    graph = build_graph([*late, *early, *middle], resolver(), scope=SCOPE)
    attributions = graph.flows_on_edge(API_BLUE_W, WEB, PortSpec(TCP, 8080))
    listed, rest = attributions[: graphs.LISTED_FLOWS], attributions[graphs.LISTED_FLOWS :]
    assert [a.flow for a in listed] == early[: graphs.LISTED_FLOWS]
    assert all(a.connections == 1 for a in listed)
    assert sum(a.connections for a in attributions) == 300
    # the rest: per server address, its first connection not listed stands for the others
    assert [(a.flow, a.connections) for a in rest] == [
        (early[graphs.LISTED_FLOWS], 80),
        (middle[0], 200),
    ]
    assert graph == build_graph([*early, *middle, *late], resolver(), scope=SCOPE)


def test_connections_seen_from_both_ends_are_counted_as_each_would_be() -> None:
    # Joined to their twins one by one, then counted together (graphs._Joins): each connection
    # once with the larger count of its two views, the first ones listed with their twins.
    calls = _calls_to_a_service(300)
    twins = [
        replace(
            call,
            server=replace(call.server, ip=WEB_B, port=8080),
            packets=call.packets + 1,
            captures=frozenset({"captures/shop/web/c.pcap"}),
        )
        for call in calls
    ]
    graph = build_graph(twins + calls, resolver(), scope=SCOPE)
    stats = ports(graph, API_BLUE_W, WEB)[PortSpec(TCP, 8080)]
    assert (stats.flows, stats.assumed) == (300, False)
    assert stats.packets == sum(twin.packets for twin in twins)
    attributions = graph.flows_on_edge(API_BLUE_W, WEB)
    assert [(a.flow, a.twin) for a in attributions] == list(zip(calls, twins, strict=True))[
        : graphs.LISTED_FLOWS + 1
    ]
    assert [a.connections for a in attributions] == [1] * graphs.LISTED_FLOWS + [280]


def test_the_graph_costs_per_endpoint_pair_not_per_connection() -> None:
    # Resolving, listing the Service's backends and vouching once per connection was ~60 µs
    # each: a client without keep-alive makes a hundred thousand connections to a few Services.
    from analyser import claims, identities, services

    def work(count: int) -> int:
        flows = _calls_to_a_service(count)
        return executed_lines(
            lambda: build_graph(flows, resolver(), scope=SCOPE),
            modules=(graphs, identities, claims, services),
        )

    added = 600
    per_connection = (work(200 + added) - work(200)) / added
    assert per_connection < 20  # grouping and summing only (one by one: ~350 lines each)


def test_an_unvouched_pair_names_its_first_ports_and_counts_the_rest() -> None:
    # A capture may claim a connection on every port: a warning stays one readable line.
    ports = tuple(PortSpec(TCP, port) for port in range(1000, 1000 + graphs.LISTED_PORTS + 3))
    pair = UnvouchedPair("a", "b", ports, Sides(client=True, server=False))
    assert pair.ports_text == (
        ", ".join(f"TCP/{port}" for port in range(1000, 1000 + graphs.LISTED_PORTS))
        + " and 3 more ports"
    )
    assert UnvouchedPair("a", "b", ports[:2], Sides(False, True)).ports_text == "TCP/1000, TCP/1001"
