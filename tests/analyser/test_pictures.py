"""The picture a reviewer reads: namespaces as groups, infrastructure apart and gathered per
namespace, outside addresses gathered by DNS name, a namespace summary for big graphs."""

from __future__ import annotations

import random
import shutil
import subprocess

import pytest

from analyser import analysing
from analyser.analysing import GRAPH_DOT, GRAPH_SVG, graph_svg
from analyser.flows import Evidence, Protocol
from analyser.graphs import EdgeStats, GraphEdge, GraphNode, NodeRole, WorkloadGraph
from analyser.peers import PortSpec
from analyser.pictures import (
    MAX_LONE_ADDRESSES,
    GroupKind,
    infrastructure_ids,
    namespace_group,
    namespace_picture,
    picture_of,
)
from analyser.rendering import render_dot
from kernel.errors import RenderError
from tests.analyser.test_rendering import workload_node

TCP, UDP = Protocol.TCP, Protocol.UDP


def stats(flows: int) -> EdgeStats:
    return EdgeStats(flows, flows * 2, flows * 100, 1.0, 2.0, frozenset({Evidence.HANDSHAKE}))


def edge(client: str, server: str, *ports: tuple[PortSpec, int]) -> GraphEdge:
    return GraphEdge(client, server, {port: stats(flows) for port, flows in ports})


def outside(address: str, *names: str) -> GraphNode:
    return GraphNode(f"ip:{address}", NodeRole.EXTERNAL, address, names=names)


WEB, CART, DB = "shop/Deployment/web", "shop/Deployment/cart", "data/StatefulSet/db"
DNS = "kube-system/Deployment/coredns"
NODE = "node:worker-1"


def cluster_graph(
    *extra_nodes: GraphNode, extra_edges: tuple[GraphEdge, ...] = ()
) -> WorkloadGraph:
    nodes = (
        workload_node(WEB),
        workload_node(CART),
        workload_node(DB),
        GraphNode(DNS, NodeRole.WORKLOAD, DNS, workload_node(DNS).workload),
        GraphNode(NODE, NodeRole.NODE, "worker-1 (10.1.0.1)", addresses=("10.1.0.1",)),
        *extra_nodes,
    )
    edges = (
        edge(WEB, CART, (PortSpec(TCP, 8080), 3)),
        edge(CART, DB, (PortSpec(TCP, 5432), 2)),
        edge(WEB, DNS, (PortSpec(UDP, 53), 10)),
        edge(CART, DNS, (PortSpec(UDP, 53), 4)),
        edge(NODE, WEB, (PortSpec(TCP, 8080), 5)),
        edge(NODE, CART, (PortSpec(TCP, 9090), 5)),
        edge(NODE, DB, (PortSpec(TCP, 5432), 5)),
        *extra_edges,
    )
    return WorkloadGraph(nodes, edges)


def infrastructure(graph: WorkloadGraph) -> frozenset[str]:
    return infrastructure_ids(graph, dns_workloads={DNS}, node_local_dns=())


def test_workloads_are_grouped_by_namespace_with_short_titles() -> None:
    graph = cluster_graph()
    picture = picture_of(graph, infrastructure=infrastructure(graph))
    assert [(g.id, g.kind) for g in picture.groups] == [
        ("namespace:data", GroupKind.NAMESPACE),
        ("namespace:shop", GroupKind.NAMESPACE),
        ("infrastructure", GroupKind.INFRASTRUCTURE),
    ]
    shown = {node.id: (node.group, node.title, node.detail) for node in picture.nodes}
    assert shown[WEB] == ("namespace:shop", "web", "Deployment")
    assert shown[DB] == ("namespace:data", "db", "StatefulSet")
    # the cluster DNS and the node are apart, the DNS saying where it runs
    assert shown[DNS] == ("infrastructure", "coredns", "Deployment in kube-system")
    assert shown[NODE] == ("infrastructure", "worker-1", "10.1.0.1")


def test_infrastructure_edges_are_gathered_per_namespace_and_marked() -> None:
    graph = cluster_graph()
    picture = picture_of(graph, infrastructure=infrastructure(graph))
    edges = {(e.client, e.server): e for e in picture.edges}
    assert set(edges) == {
        (WEB, CART),
        (CART, DB),
        (namespace_group("shop"), DNS),
        (NODE, namespace_group("shop")),
        (NODE, namespace_group("data")),
    }
    dns = edges[(namespace_group("shop"), DNS)]
    assert dns.infrastructure and dns.label == ("2 workloads", "UDP/53 ×14")
    assert dns.members == ((CART, DNS), (WEB, DNS))
    probes = edges[(NODE, namespace_group("shop"))]
    assert probes.label == ("2 workloads", "TCP/8080 ×5", "TCP/9090 ×5")
    assert not edges[(WEB, CART)].infrastructure
    assert edges[(WEB, CART)].label == ("TCP/8080 ×3",)


def test_outside_addresses_are_gathered_by_dns_name() -> None:
    named = [outside(f"198.51.100.{i}", "api.example.com") for i in range(3)]
    other = outside("203.0.113.9", "cdn.example.net", "img.example.net")
    unnamed = [outside(f"192.0.2.{i}") for i in range(2)]
    graph = cluster_graph(
        *named,
        other,
        *unnamed,
        extra_edges=tuple(
            edge(WEB, node.id, (PortSpec(TCP, 443), 1)) for node in (*named, other, *unnamed)
        ),
    )
    picture = picture_of(graph, infrastructure=infrastructure(graph))
    shown = [(n.title, n.detail, len(n.members)) for n in picture.nodes if n.group == "outside"]
    assert shown == [
        ("192.0.2.0", "", 1),
        ("192.0.2.1", "", 1),
        ("api.example.com", "3 addresses", 3),
        ("cdn.example.net", "+1 name · 203.0.113.9", 1),
    ]
    (to_api,) = [e for e in picture.edges if e.server.startswith("addresses:")]
    assert to_api.label == ("TCP/443 ×3",) and len(to_api.members) == 3


def test_many_addresses_without_a_name_become_one_node() -> None:
    unnamed = [outside(f"192.0.2.{i}") for i in range(MAX_LONE_ADDRESSES + 1)]
    graph = cluster_graph(
        *unnamed,
        extra_edges=tuple(edge(CART, node.id, (PortSpec(TCP, 443), 1)) for node in unnamed),
    )
    picture = picture_of(graph, infrastructure=infrastructure(graph))
    (gathered,) = [n for n in picture.nodes if n.group == "outside"]
    assert (gathered.title, gathered.detail) == (
        f"{MAX_LONE_ADDRESSES + 1} addresses",
        "without a DNS name",
    )


def test_the_namespace_summary_has_one_node_per_group() -> None:
    graph = cluster_graph()
    summary = namespace_picture(picture_of(graph, infrastructure=infrastructure(graph)))
    assert summary.summary
    assert [(n.id, n.title, n.detail) for n in summary.nodes] == [
        ("namespace:data", "data", "1 workload"),
        ("namespace:shop", "shop", "2 workloads"),
        ("infrastructure", "cluster DNS and nodes", "2 members"),
    ]
    edges = {(e.client, e.server): e.label for e in summary.edges}
    assert edges[("namespace:shop", "namespace:data")] == ("1 edge", "2 flows")
    assert edges[("infrastructure", "namespace:shop")] == ("2 edges", "10 flows")


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz is not installed")
def test_a_picture_too_big_to_draw_is_drawn_by_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    graph = cluster_graph()
    picture = picture_of(graph, infrastructure=infrastructure(graph))
    monkeypatch.setattr(analysing, "MAX_SVG_NODES", 4)
    drawn = graph_svg(picture, render_dot(picture))
    assert drawn.svg is not None and ">shop</text>" in drawn.svg and ">web</text>" not in drawn.svg
    assert drawn.note == (
        f"{GRAPH_SVG} shows one box per namespace: the graph has 5 nodes and 5 edges to draw "
        f"(drawn up to 4 and 1,000); {GRAPH_DOT} has every workload"
    )
    monkeypatch.setattr(analysing, "MAX_SVG_NODES", 2)
    drawn = graph_svg(picture, render_dot(picture))
    assert drawn.svg is None
    assert drawn.note is not None and drawn.note.startswith(f"{GRAPH_SVG} not drawn: ")


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz is not installed")
def test_a_picture_of_many_namespaces_is_drawn_whole() -> None:
    """35 workloads in five namespaces calling across them, each probed by one of three nodes
    and asking the cluster DNS, some calling outside: Graphviz draws every box and edge without a
    complaint (newrank lost edges in Graphviz 2.43; infrastructure edges to a box must not
    rank, or ranking fails)."""
    chosen = random.Random(1)
    workloads = [
        f"{namespace}/Deployment/{namespace}-{index}"
        for namespace, count in (
            ("shop", 12),
            ("payments", 8),
            ("data", 6),
            ("auth", 5),
            ("ops", 4),
        )
        for index in range(count)
    ]
    nodes = [f"node:worker-{index}" for index in range(3)]
    outside_nodes = [
        outside(f"198.51.100.{i}", *(("api.example.com",) if i < 3 else ())) for i in range(5)
    ]
    edges: dict[tuple[str, str], GraphEdge] = {}
    for index, workload in enumerate(workloads):
        for server in chosen.sample(workloads, 2):
            port = PortSpec(TCP, chosen.choice([80, 8080, 5432, 6379]))
            edges[(workload, server)] = edge(workload, server, (port, chosen.randint(1, 20)))
        edges[(workload, DNS)] = edge(workload, DNS, (PortSpec(UDP, 53), 5))
        node = nodes[index % 3]
        edges[(node, workload)] = edge(node, workload, (PortSpec(TCP, 8080), 3))
    for workload, address in zip(workloads, outside_nodes, strict=False):
        edges[(workload, address.id)] = edge(workload, address.id, (PortSpec(TCP, 443), 2))
    graph = WorkloadGraph(
        (
            *(workload_node(w) for w in workloads),
            GraphNode(DNS, NodeRole.WORKLOAD, DNS, workload_node(DNS).workload),
            *(GraphNode(n, NodeRole.NODE, n.removeprefix("node:")) for n in nodes),
            *outside_nodes,
        ),
        tuple(edges[key] for key in edges if key[0] != key[1]),
    )
    picture = picture_of(graph, infrastructure=infrastructure(graph))
    drawn = subprocess.run(
        ["dot", "-Tsvg"], input=render_dot(picture), capture_output=True, text=True, check=False
    )
    assert drawn.returncode == 0 and drawn.stderr == ""
    for index in range(len(picture.edges)):
        assert f'<g id="e{index}" class="edge">' in drawn.stdout
    for group in range(len(picture.groups)):
        assert f'<g id="cluster_{group}" class="cluster">' in drawn.stdout


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz is not installed")
def test_a_picture_graphviz_cannot_lay_out_is_drawn_by_namespace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    graph = cluster_graph()
    picture = picture_of(graph, infrastructure=infrastructure(graph))
    drawing = analysing.render_svg

    def fails_with_every_workload(dot: str) -> str:
        if "legend_captured" in dot:  # the full picture's legend
            raise RenderError("Graphviz could not render graph.dot: Error: trouble in init_rank")
        return drawing(dot)

    monkeypatch.setattr(analysing, "render_svg", fails_with_every_workload)
    drawn = graph_svg(picture, render_dot(picture))
    assert drawn.svg is not None and drawn.picture is not None and drawn.picture.summary
    assert drawn.note == (
        f"{GRAPH_SVG} shows one box per namespace: Graphviz could not render graph.dot: Error: "
        f"trouble in init_rank with every workload; {GRAPH_DOT} has every workload"
    )
