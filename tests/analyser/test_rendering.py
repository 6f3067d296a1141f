"""Rendering: hand-built policies and graphs → YAML/DOT/Markdown that parse, validate and render."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from analyser import rendering
from analyser.bundles import FileProblem
from analyser.flows import Evidence, Protocol
from analyser.graphs import EdgeStats, GraphEdge, GraphNode, NodeRole, WorkloadGraph
from analyser.peers import IpPeer, PodPeer, PortSpec
from analyser.pictures import picture_of
from analyser.policies import DefaultDeny, Policy, Rule
from analyser.rendering import (
    Provenance,
    ReportFacts,
    render_default_deny,
    render_dot,
    render_policy,
    render_policy_files,
    render_report,
    yaml_quoted,
)
from analyser.selectors import LabelRequirement, LabelSelector
from analyser.workloads import Workload, WorkloadRef
from kernel.errors import RenderError
from tests.kubectl import kubectl

KUBERNETES_VERSION = "1.30.0"
PROVENANCE = Provenance("2026-01-01T10:00:00Z", "2026-01-01T11:00:00Z")
TCP = Protocol.TCP
UDP = Protocol.UDP


def selector(**labels: str) -> LabelSelector:
    return LabelSelector(match_labels=tuple(sorted(labels.items())))


def cart_policy() -> Policy:
    return Policy(
        namespace="shop",
        name="cart",
        workload="shop/Deployment/cart",
        pod_selector=selector(app="cart"),
        ingress=(
            Rule(
                PodPeer(selector(app="frontend"), description="shop/Deployment/frontend"),
                (PortSpec(TCP, 8080),),
            ),
            Rule(
                PodPeer(
                    LabelSelector(
                        (("app", "prometheus"),),
                        (LabelRequirement("tier", "In", ("a", "b")),),
                    ),
                    namespace="monitoring",
                ),
                (PortSpec(TCP, 9090),),
            ),
        ),
        egress=(
            Rule(
                IpPeer("203.0.113.7/32", ("api.example.com", "cdn.example.com")),
                (PortSpec(TCP, 443),),
            ),
            Rule(IpPeer("2001:db8::7/128", ("v6.example.com",)), (PortSpec(TCP, 443),)),
            Rule(
                PodPeer(selector(**{"k8s-app": "kube-dns"}), namespace="kube-system"),
                (PortSpec(UDP, 53), PortSpec(TCP, 53)),
            ),
            Rule(PodPeer(selector(app="redis"), namespace="shop"), (PortSpec(TCP, 6379),)),
        ),
        labels=(("app", "cart"),),
    )


def parse_one(text: str) -> dict[str, Any]:
    documents = [d for d in yaml.safe_load_all(text) if d is not None]
    assert len(documents) == 1
    document = documents[0]
    assert isinstance(document, dict)
    return document


def validate(document: dict[str, Any]) -> None:
    kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_policy_parses_back_and_validates_against_the_openapi_schema() -> None:
    document = parse_one(render_policy(cart_policy(), provenance=PROVENANCE))
    validate(document)
    assert document["metadata"]["name"] == "cart"
    assert document["metadata"]["namespace"] == "shop"
    spec = document["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert spec["podSelector"] == {"matchLabels": {"app": "cart"}}
    assert len(spec["ingress"]) == 2
    assert len(spec["egress"]) == 4


def test_generated_by_and_window_are_recorded_without_a_run_time() -> None:
    metadata = parse_one(render_policy(cart_policy(), provenance=PROVENANCE))["metadata"]
    assert metadata["labels"] == {"app": "cart", "app.kubernetes.io/managed-by": "netpol-sniffer"}
    annotations = metadata["annotations"]
    assert annotations["netpol-sniffer.io/workload"] == "shop/Deployment/cart"
    assert annotations["netpol-sniffer.io/capture-window"] == (
        "2026-01-01T10:00:00Z/2026-01-01T11:00:00Z"
    )


def test_a_peer_in_another_namespace_has_both_selectors_in_one_peer() -> None:
    spec = parse_one(render_policy(cart_policy(), provenance=PROVENANCE))["spec"]
    monitoring = [r for r in spec["ingress"] if "namespaceSelector" in r["from"][0]]
    assert len(monitoring) == 1
    assert monitoring[0]["from"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
            "podSelector": {
                "matchLabels": {"app": "prometheus"},
                "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}],
            },
        }
    ]
    assert monitoring[0]["ports"] == [{"protocol": "TCP", "port": 9090}]


def test_a_peer_in_the_own_namespace_has_no_namespace_selector() -> None:
    spec = parse_one(render_policy(cart_policy(), provenance=PROVENANCE))["spec"]
    peers = [
        peer
        for rule in spec["ingress"] + spec["egress"]
        for peer in rule["to" if "to" in rule else "from"]
    ]
    frontend = [p for p in peers if p.get("podSelector") == {"matchLabels": {"app": "frontend"}}]
    redis = [p for p in peers if p.get("podSelector") == {"matchLabels": {"app": "redis"}}]
    assert frontend == [{"podSelector": {"matchLabels": {"app": "frontend"}}}]
    assert redis == [{"podSelector": {"matchLabels": {"app": "redis"}}}]


def test_ip_blocks_are_single_addresses_with_their_dns_names() -> None:
    text = render_policy(cart_policy(), provenance=PROVENANCE)
    assert "//" not in text
    document = parse_one(text)
    blocks = [
        rule["to"][0]["ipBlock"]["cidr"]
        for rule in document["spec"]["egress"]
        if "ipBlock" in rule["to"][0]
    ]
    assert blocks == ["203.0.113.7/32", "2001:db8::7/128"]  # IPv4 first, then by value
    names = json.loads(document["metadata"]["annotations"]["netpol-sniffer.io/dns-names"])
    assert names == {
        "203.0.113.7/32": ["api.example.com", "cdn.example.com"],
        "2001:db8::7/128": ["v6.example.com"],
    }
    assert "# 203.0.113.7/32: api.example.com, cdn.example.com\n" in text


def test_dns_egress_goes_to_the_cluster_dns_pods_on_both_protocols() -> None:
    spec = parse_one(render_policy(cart_policy(), provenance=PROVENANCE))["spec"]
    dns = [
        r
        for r in spec["egress"]
        if r["to"][0].get("podSelector", {}).get("matchLabels") == {"k8s-app": "kube-dns"}
    ]
    assert dns == [
        {
            "to": [
                {
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": "kube-system"}
                    },
                    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                }
            ],
            "ports": [{"protocol": "TCP", "port": 53}, {"protocol": "UDP", "port": 53}],
        }
    ]


def test_empty_sections_are_omitted_and_an_empty_selector_selects_all() -> None:
    policy = Policy("shop", "lonely", "shop/Pod/lonely", LabelSelector())
    document = parse_one(render_policy(policy, provenance=Provenance()))
    validate(document)
    assert document["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    assert "netpol-sniffer.io/capture-window" not in document["metadata"]["annotations"]


def test_a_rule_without_ports_allows_all_ports_of_that_peer() -> None:
    policy = Policy(
        "shop",
        "a",
        "shop/Deployment/a",
        selector(app="a"),
        egress=(Rule(IpPeer("198.51.100.1/32"), ()),),
    )
    document = parse_one(render_policy(policy, provenance=PROVENANCE))
    validate(document)
    assert document["spec"]["egress"] == [{"to": [{"ipBlock": {"cidr": "198.51.100.1/32"}}]}]


@pytest.mark.parametrize(
    "value",
    [
        "true",
        "no",
        "123",
        "0x1f",
        "1e3",
        "null",
        "~",
        'say "hi"',
        "a: b",
        "#x",
        "- y",
        "ä\u2028\x85\t",
    ],
)
def test_strings_stay_strings_whatever_they_look_like(value: str) -> None:
    assert yaml.safe_load(f"key: {yaml_quoted(value)}") == {"key": value}
    policy = Policy("shop", "a", value, selector(app="a"), labels=(("example.com/note", value),))
    metadata = parse_one(render_policy(policy, provenance=PROVENANCE))["metadata"]
    assert metadata["labels"]["example.com/note"] == value
    assert metadata["annotations"]["netpol-sniffer.io/workload"] == value


def test_dns_names_with_line_breaks_cannot_break_out_of_the_comment() -> None:
    policy = Policy(
        "shop",
        "a",
        "shop/Deployment/a",
        selector(app="a"),
        egress=(Rule(IpPeer("198.51.100.1/32", ("evil\nkind: Secret",)), ()),),
    )
    text = render_policy(policy, provenance=PROVENANCE)
    document = parse_one(text)
    assert document["kind"] == "NetworkPolicy"
    assert "\nkind: Secret" not in text


@pytest.mark.parametrize("cidr", ["203.0.113.7//32", "203.0.113.7/33", "not-an-ip", "10.0.0.1/8"])
def test_a_bad_ip_block_is_a_render_error(cidr: str) -> None:
    policy = Policy(
        "shop",
        "a",
        "shop/Deployment/a",
        selector(app="a"),
        egress=(Rule(IpPeer(cidr), ()),),
    )
    with pytest.raises(RenderError, match="bad ipBlock"):
        render_policy(policy, provenance=PROVENANCE)


@pytest.mark.parametrize(
    ("namespace", "name"), [("Shop", "a"), ("shop", "../a"), ("shop", "a/b"), ("shop", "")]
)
def test_invalid_names_are_render_errors(namespace: str, name: str) -> None:
    with pytest.raises(RenderError, match="not a valid"):
        render_policy(Policy(namespace, name, "w", LabelSelector()), provenance=PROVENANCE)


def test_default_deny_selects_every_pod_and_allows_nothing() -> None:
    document = parse_one(render_default_deny(DefaultDeny("shop"), provenance=PROVENANCE))
    validate(document)
    assert document["metadata"]["name"] == "default-deny-all"
    assert document["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}


def test_policy_files_come_with_a_kustomization_listing_each_of_them() -> None:
    files = render_policy_files(
        [cart_policy(), Policy("web", "front", "web/Deployment/front", selector(app="front"))],
        default_denies=[DefaultDeny("shop"), DefaultDeny("web")],
        provenance=PROVENANCE,
    )
    assert list(files) == [
        "Kustomization",
        "shop.cart.yaml",
        "shop.default-deny-all.yaml",
        "web.default-deny-all.yaml",
        "web.front.yaml",
    ]
    kustomization = parse_one(files["Kustomization"])
    assert kustomization["resources"] == sorted(set(files) - {"Kustomization"})
    for path, text in files.items():
        if path != "Kustomization":
            validate(parse_one(text))


def test_two_policies_for_one_file_are_refused() -> None:
    twice = [cart_policy(), cart_policy()]
    with pytest.raises(RenderError, match=r"shop\.cart\.yaml"):
        render_policy_files(twice, provenance=PROVENANCE)


def test_output_is_byte_identical_whatever_the_order_of_rules() -> None:
    policy = cart_policy()
    shuffled = Policy(
        policy.namespace,
        policy.name,
        policy.workload,
        policy.pod_selector,
        ingress=tuple(reversed(policy.ingress)),
        egress=tuple(Rule(r.peer, tuple(reversed(r.ports))) for r in reversed(policy.egress)),
        labels=policy.labels,
    )
    first = render_policy_files([policy], provenance=PROVENANCE)
    again = render_policy_files([shuffled], provenance=PROVENANCE)
    assert first == again


@pytest.mark.kubectl
def test_kustomize_builds_the_directory(tmp_path: Path) -> None:
    files = render_policy_files(
        [cart_policy(), Policy("web", "front", "web/Deployment/front", selector(app="front"))],
        default_denies=[DefaultDeny("shop")],
        provenance=PROVENANCE,
    )
    for path, text in files.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    built = subprocess.run(
        [kubectl(), "kustomize", str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert built.returncode == 0, built.stderr
    objects = [d for d in yaml.safe_load_all(built.stdout) if d]
    assert sorted((o["metadata"]["namespace"], o["metadata"]["name"]) for o in objects) == [
        ("shop", "cart"),
        ("shop", "default-deny-all"),
        ("web", "front"),
    ]


def workload_node(node_id: str, label: str | None = None) -> GraphNode:
    """A captured workload's node (``NS/Kind/name``), shown as ``label``."""
    namespace, kind, name = node_id.split("/", 2)
    workload = Workload(WorkloadRef(namespace, kind, name), LabelSelector())
    return GraphNode(node_id, NodeRole.WORKLOAD, label or node_id, workload, in_scope=True)


def example_graph() -> WorkloadGraph:
    web = 'shop/Deployment/web "v2"'
    nodes = (
        workload_node(web, f"{web}\nline two"),
        workload_node("shop/Deployment/cart"),
        GraphNode(
            "ip:203.0.113.7",
            NodeRole.EXTERNAL,
            "203.0.113.7",
            names=("api.example.com", "odd|name\\x"),
        ),
        GraphNode("node:worker-1", NodeRole.NODE, "worker-1 (10.1.0.1)"),
        GraphNode("unresolved:10.0.0.9", NodeRole.UNRESOLVED, "10.0.0.9"),
    )
    edges = (
        GraphEdge(
            web,
            "shop/Deployment/cart",
            {
                PortSpec(TCP, 8080): EdgeStats(
                    3, 30, 3000, 1_767_261_600.0, 1_767_261_660.0, frozenset({Evidence.HANDSHAKE})
                ),
            },
        ),
        GraphEdge(
            "shop/Deployment/cart",
            "ip:203.0.113.7",
            {
                PortSpec(TCP, 443): EdgeStats(
                    1, 12, 1400, 1_767_261_600.0, 1_767_261_601.0, frozenset({Evidence.HEURISTIC})
                ),
                PortSpec(UDP, 443): EdgeStats(
                    2,
                    4,
                    400,
                    1_767_261_600.0,
                    1_767_261_602.0,
                    frozenset({Evidence.HEURISTIC, Evidence.KNOWN_LISTENER}),
                ),
            },
        ),
        GraphEdge(
            "node:worker-1",
            "shop/Deployment/cart",
            {
                PortSpec(TCP, 8080): EdgeStats(
                    5, 20, 800, 1_767_261_600.0, 1_767_261_700.0, frozenset({Evidence.HANDSHAKE})
                ),
            },
        ),
    )
    return WorkloadGraph(nodes, edges)


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz is not installed")
def test_dot_with_quotes_and_line_breaks_renders_and_keeps_the_labels() -> None:
    dot = render_dot(picture_of(example_graph(), infrastructure={"node:worker-1"}))
    result = subprocess.run(
        ["dot", "-Tjson"], input=dot, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr and "syntax error" not in result.stderr
    rendered = json.loads(result.stdout)
    labels = {o["name"]: o["label"] for o in rendered["objects"]}
    small = '<BR/><FONT POINT-SIZE="8" COLOR="#5f6368">{}</FONT>'
    # a workload: its name, its kind small; the quote an entity inside the HTML-like label
    assert labels["n1"] == "<B>web &#34;v2&#34;</B>" + small.format("Deployment")
    assert labels["n3"] == "<B>api.example.com</B>" + small.format("+1 name · 203.0.113.7")
    assert labels["cluster_0"].endswith("<B>shop</B>")
    legend = {o["_gvid"] for o in rendered["objects"] if o["name"].startswith("legend_")}
    edge_labels = sorted(e["label"] for e in rendered["edges"] if e["tail"] not in legend)
    assert edge_labels == ["1 workload\\nTCP/8080 ×5", "TCP/443 ×1\\nUDP/443 ×2", "TCP/8080 ×3"]
    svg = subprocess.run(["dot", "-Tsvg"], input=dot, capture_output=True, text=True, check=True)
    assert "web &quot;v2&quot;" in svg.stdout


def test_dot_is_deterministic_whatever_the_insertion_order() -> None:
    graph = example_graph()
    reordered = WorkloadGraph(graph.nodes[::-1], graph.edges[::-1])
    assert render_dot(picture_of(graph)) == render_dot(picture_of(reordered))


def report_facts() -> ReportFacts:
    return ReportFacts(
        source="bundle-2026",
        provenance=PROVENANCE,
        producer="lab",
        capture_mode="sidecar",
        captures_read=3,
        packets=120,
        flows=11,
        evidence_counts={Evidence.HANDSHAKE: 8, Evidence.HEURISTIC: 3},
        file_problems=(FileProblem("captures/shop/cart-1/a.pcap", "truncated after 7 packets"),),
        policy_files=("shop.cart.yaml",),
        workload_policies={"shop/Deployment/cart": "shop.cart.yaml"},
        skipped_packets={"other_protocol": 4, "not_ip": 2},
    )


def test_report_lists_workloads_flows_names_problems_and_evidence() -> None:
    report = render_report(report_facts(), example_graph())
    assert report.startswith("# netpol-sniffer report: bundle-2026\n")
    assert "| shop/Deployment/cart | yes | shop.cart.yaml |" in report
    assert (
        "| shop/Deployment/cart | 203.0.113.7 | UDP/443 | — | 2 | 4 | 400 | 2026-01-01T10:00:00Z | "
        "2026-01-01T10:00:02Z | heuristic, known-listener |" in report
    )
    assert "| 203.0.113.7 | api.example.com, odd\\|name\\\\x |" in report
    assert "- worker-1 (10.1.0.1)" in report
    assert "- 10.0.0.9" in report
    assert "| captures/shop/cart-1/a.pcap | truncated after 7 packets |" in report
    assert "| handshake | 8 |" in report
    assert "| known-listener | 0 |" in report
    assert "| heuristic | 3 |" in report
    assert "| not_ip | 2 |\n| other_protocol | 4 |\n" in report
    # a line break in a label cannot start a new table row: it shows as its escape
    assert '| shop/Deployment/web "v2"\\\\nline two | yes | — |' in report


def test_report_names_services_assumed_backends_and_workloads_without_a_policy() -> None:
    graph = example_graph()
    stats = EdgeStats(
        4,
        8,
        800,
        1_767_261_600.0,
        1_767_261_601.0,
        frozenset({Evidence.KNOWN_LISTENER}),
        services=frozenset({"shop/cart"}),
        assumed=True,
    )
    graph = dataclasses.replace(
        graph,
        nodes=(*graph.nodes, workload_node("shop/Pod/debug")),
        edges=(
            *graph.edges,
            GraphEdge("shop/Pod/debug", "shop/Deployment/cart", {PortSpec(TCP, 8080): stats}),
        ),
    )
    facts = dataclasses.replace(report_facts(), unselectable=("shop/Pod/debug",))
    report = render_report(facts, graph)
    assert (
        "| shop/Pod/debug | shop/Deployment/cart | TCP/8080 | shop/cart (backend assumed: not "
        "captured) | 4 |" in report
    )
    assert "| shop/Pod/debug | yes | none: its pods have no stable label to select them by |" in (
        report
    )


def test_report_lists_a_node_local_dns_cache_with_the_nodes_not_the_outside() -> None:
    graph = example_graph()
    cache = GraphNode("ip:169.254.20.10", NodeRole.EXTERNAL, "169.254.20.10")
    graph = dataclasses.replace(graph, nodes=(*graph.nodes, cache))
    facts = dataclasses.replace(report_facts(), node_local_dns=("169.254.20.10",))
    report = render_report(facts, graph)
    external, _, nodes = report.partition("## Node addresses")
    assert "169.254.20.10" not in external.partition("## External names")[2]
    assert "| 203.0.113.7 |" in external  # the other external address is still listed
    assert "- 169.254.20.10: NodeLocal DNSCache on every node" in nodes


def test_report_of_an_empty_analysis_says_so() -> None:
    facts = report_facts()
    empty = ReportFacts(facts.source, Provenance(), None, None, 0, 0, 0, {}, (), (), {})
    report = render_report(empty, WorkloadGraph())
    assert "No flow was observed." in report
    assert "Every file was read in full." in report
    assert "| capture window | unknown |" in report


def test_a_template_missing_a_value_is_a_render_error_not_an_empty_field() -> None:
    # StrictUndefined: a typo or a missing context value fails loudly, naming the template
    with pytest.raises(RenderError, match=r"template networkpolicy\.yaml\.j2 failed: .*undefined"):
        rendering._render("networkpolicy.yaml.j2", policy=cart_policy())


def test_report_lists_the_first_addresses_of_a_port_and_counts_the_rest_in_one_row(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A public ingress meets a hundred thousand clients a day: past MAX_ADDRESS_ROWS addresses a
    # workload's port, one row counts the rest; past MAX_ADDRESS_LINES, so do the address lists.
    monkeypatch.setattr(rendering, "MAX_ADDRESS_ROWS", 3)
    monkeypatch.setattr(rendering, "MAX_ADDRESS_LINES", 2)
    graph = example_graph()
    web, cart = 'shop/Deployment/web "v2"', "shop/Deployment/cart"
    clients = [f"198.51.100.{n}" for n in range(1, 6)]
    free = [f"10.0.1.{n}" for n in range(1, 4)]
    first, last = 1_767_261_600.0, 1_767_261_700.0

    def stats(flows: int, evidence: Evidence = Evidence.HANDSHAKE) -> EdgeStats:
        return EdgeStats(
            flows, 2 * flows, 100 * flows, first + flows, last - flows, frozenset({evidence})
        )

    graph = dataclasses.replace(
        graph,
        nodes=(
            *graph.nodes,
            *(GraphNode(f"ip:{a}", NodeRole.EXTERNAL, a) for a in clients),
            *(GraphNode(f"unresolved:{a}", NodeRole.UNRESOLVED, a) for a in free),
        ),
        edges=(
            *graph.edges,
            *(
                GraphEdge(f"ip:{a}", cart, {PortSpec(TCP, 8443): stats(n)})
                for n, a in enumerate(clients, 1)
            ),
            GraphEdge(f"ip:{clients[0]}", web, {PortSpec(TCP, 8443): stats(7)}),
        ),
    )
    report = render_report(report_facts(), graph)
    rows = [line for line in report.splitlines() if "| TCP/8443 |" in line]
    # The graph's order: by client address, then server; per workload and port, three.
    assert [row.split(" | ")[:2] for row in rows] == [
        ["| 198.51.100.1", cart],
        ["| 198.51.100.1", 'shop/Deployment/web "v2"\\\\nline two'],
        ["| 198.51.100.2", cart],
        ["| 198.51.100.3", cart],
        ["| 2 more addresses", cart],
    ]
    # The rest: 4 + 5 flows, the earliest first packet, the latest last, their evidence.
    assert rows[-1].split(" | ")[4:10] == [
        "9",
        "18",
        "900",
        "2026-01-01T10:00:04Z",
        "2026-01-01T10:01:36Z",
        "handshake |",
    ]
    assert "| 4 more addresses | not listed here" in report
    assert "- and 2 more (`--json` lists them all: `unresolved_addresses`)" in report


def test_report_lists_at_most_so_many_addresses_of_a_direction_over_all_ports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Spread over many ports, addresses would pass any bound per port: past MAX_SIDE_ROWS of a
    # workload's direction, one row counts the others, with how many ports.
    monkeypatch.setattr(rendering, "MAX_ADDRESS_ROWS", 2)
    monkeypatch.setattr(rendering, "MAX_SIDE_ROWS", 3)
    cart = "shop/Deployment/cart"
    clients = [f"198.51.100.{n}" for n in range(1, 4)]
    seen = EdgeStats(1, 2, 100, 1_767_261_600.0, 1_767_261_601.0, frozenset({Evidence.HANDSHAKE}))
    graph = example_graph()
    graph = dataclasses.replace(
        graph,
        nodes=(*graph.nodes, *(GraphNode(f"ip:{a}", NodeRole.EXTERNAL, a) for a in clients)),
        edges=(
            *graph.edges,
            *(
                GraphEdge(f"ip:{a}", cart, {PortSpec(TCP, p): seen for p in (8001, 8002, 8003)})
                for a in clients
            ),
        ),
    )
    rows = [
        line.split(" | ")[:3]
        for line in render_report(report_facts(), graph).splitlines()
        if f"| {cart} | TCP/800" in line or f"| {cart} | 3 ports |" in line
    ]
    assert rows == [
        ["| 198.51.100.1", cart, "TCP/8001"],
        ["| 198.51.100.1", cart, "TCP/8002"],
        ["| 198.51.100.1", cart, "TCP/8003"],
        ["| 2 more addresses", cart, "3 ports"],
    ]
