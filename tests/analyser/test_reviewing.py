"""report.html's data: the rules behind each connection (as verify evaluates the files), where
they are written, what each workload allows that was never observed, and the page's pieces made
safe (graph.svg re-serialized, the data as script-safe JSON). The page itself: tests/browser."""

from __future__ import annotations

import dataclasses
import json
from xml.etree import ElementTree

import pytest
import yaml

from analyser import reviewing
from analyser.analysing import Analysis, PolicyFormat, analyse
from analyser.bundles import open_bundle
from analyser.evaluation import Direction, PolicySet, RuleAllowing, compile_policy, pod
from analyser.flows import Evidence, Protocol
from analyser.graphs import EdgeStats, GraphEdge, GraphNode, NodeRole
from analyser.peers import PortSpec
from analyser.pictures import picture_of
from analyser.policysets import parse_policy_texts
from analyser.rendering import script_json
from analyser.replaying import cluster_facts
from analyser.reviewing import PortReview, Review, review_of, rule_lines, svg_for_page
from tests.hostile.hostile_helpers import EXAMPLE

POLICY = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: "web"
  namespace: "shop"
spec:
  podSelector: {}
  egress:
    # why the first rule is there
    - to:
        - podSelector: {}
      ports:
        - port: 80
    # why the second rule is there
    # (two lines)
    - ports:
        - protocol: "UDP"
          port: 53
  ingress:
    - {}
"""


def test_rule_lines_hold_each_rule_with_the_comments_above_it() -> None:
    lines = rule_lines(POLICY)
    shown = {key[1:]: POLICY.split("\n")[first - 1 : last] for key, (first, last) in lines.items()}
    assert shown == {
        (Direction.EGRESS, 0): [
            "    # why the first rule is there",
            "    - to:",
            "        - podSelector: {}",
            "      ports:",
            "        - port: 80",
        ],
        (Direction.EGRESS, 1): [
            "    # why the second rule is there",
            "    # (two lines)",
            "    - ports:",
            '        - protocol: "UDP"',
            "          port: 53",
        ],
        (Direction.INGRESS, 0): ["    - {}"],
    }
    assert {key[0] for key in lines} == {"shop/web"}


def test_rules_allowing_names_each_side_and_rule() -> None:
    policies = PolicySet.of([compile_policy(yaml.safe_load(POLICY))])
    web = pod(namespace="shop", labels={"app": "web"}, name="shop/Deployment/web")
    other = pod(namespace="shop", labels={"app": "db"}, name="shop/Deployment/db")
    assert policies.rules_allowing(web, other, Protocol.TCP, 80) == (
        RuleAllowing(Direction.EGRESS, "shop/Deployment/web", "shop/web", 0),
        RuleAllowing(Direction.INGRESS, "shop/Deployment/db", "shop/web", 0),
    )
    allowing = policies.rules_allowing(web, other, Protocol.UDP, 53)
    assert [(r.direction, r.index) for r in allowing] == [
        (Direction.EGRESS, 1),
        (Direction.INGRESS, 0),
    ]
    # no egress rule allows it: only the ingress side has one
    allowing = policies.rules_allowing(web, other, Protocol.TCP, 81)
    assert [(r.direction, r.index) for r in allowing] == [(Direction.INGRESS, 0)]


@pytest.fixture(scope="module")
def demo() -> tuple[Analysis, Review]:
    analysis = analyse(open_bundle(EXAMPLE), workers=1)
    policy_files = {n: t for n, t in analysis.files.items() if n.endswith(".yaml")}
    return analysis, review_of(
        analysis.graph,
        source="bundle",
        window="",
        drawings=(),
        policy_files=policy_files,
        policies=parse_policy_texts(policy_files).policies,
        cluster=cluster_facts(analysis.snapshot, analysis.resolver),
    )


def port_review(review: Review, client: str, server: str, port: PortSpec) -> PortReview:
    (edge,) = (e for e in review.edges if (e.client, e.server) == (client, server))
    (found,) = (p for p in edge.ports if p.port == port)
    return found


def test_a_side_without_a_policy_says_so(demo: tuple[Analysis, Review]) -> None:
    analysis, review = demo
    dns = port_review(
        review,
        "default/Deployment/frontend",
        "kube-system/Deployment/coredns",
        PortSpec(Protocol.UDP, 53),
    )
    ((rule),) = dns.rules
    assert (rule.direction, rule.file) == (Direction.EGRESS, "default.frontend.yaml")
    written = analysis.files[rule.file].split("\n")[rule.first - 1 : rule.last]
    assert '              "k8s-app": "kube-dns"' in written and "          port: 53" in written
    assert dns.notes == (
        "ingress at kube-system/Deployment/coredns: no policy selects it, nothing is blocked",
    )
    assert dns.flows == len(dns.listed) + dns.unlisted == 41


def test_a_kubelet_probe_is_allowed_by_the_nodes_rule(demo: tuple[Analysis, Review]) -> None:
    analysis, review = demo
    probe = port_review(
        review, "node:lab-node-1", "default/Deployment/redis-cart", PortSpec(Protocol.TCP, 6379)
    )
    ((rule),) = probe.rules
    assert rule.direction is Direction.INGRESS
    written = analysis.files[rule.file].split("\n")[rule.first - 1 : rule.last]
    assert written[0] == "    # 172.18.0.2/32: cluster nodes"


def test_workloads_carry_their_files_and_verify_s_unobserved_allowances(
    demo: tuple[Analysis, Review],
) -> None:
    _, review = demo
    workloads = {w.id: w for w in review.workloads}
    frontend = workloads["default/Deployment/frontend"]
    assert frontend.files == ("default.frontend.yaml",)
    assert [(u.direction, u.peer, u.ports, u.observed) for u in frontend.unobserved] == [
        (Direction.EGRESS, "kube-system/Deployment/coredns", "53/TCP", "53/UDP")
    ]
    coredns = workloads["kube-system/Deployment/coredns"]
    assert not coredns.in_scope and coredns.files == ()


def test_the_page_s_svg_keeps_only_what_graphviz_draws_with() -> None:
    svg = (
        '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
        'onload="x()"><g id="n0" class="node"><title>a&lt;/script&gt;</title>'
        '<a xlink:href="javascript:x()" xlink:title="t"><text>b &amp; c</text></a>'
        "<script>x()</script><foreignObject><div/></foreignObject></g></svg>"
    )
    page = svg_for_page(svg)
    root = ElementTree.fromstring(page)
    assert [e.tag.rpartition("}")[2] for e in root.iter()] == ["svg", "g", "title", "a", "text"]
    assert [a for e in root.iter() for a in e.attrib if "href" in a or a == "onload"] == []
    assert "a&lt;/script&gt;" in page and "<script" not in page
    with pytest.raises(ElementTree.ParseError):
        svg_for_page("<svg><g></svg>")


def test_script_json_reads_back_and_cannot_end_its_script() -> None:
    value = {"name": "</script><!--<script>\u2028&", "n": [1, None, True]}
    text = script_json(value)
    assert not set(text) & set("<>&\u2028\u2029")
    assert json.loads(text) == value


def test_past_the_pairs_limit_the_unobserved_allowances_are_left_to_verify(
    demo: tuple[Analysis, Review], monkeypatch: pytest.MonkeyPatch
) -> None:
    analysis, _ = demo
    monkeypatch.setattr(reviewing, "MAX_CHECKED_PAIRS", 10)
    policy_files = {n: t for n, t in analysis.files.items() if n.endswith(".yaml")}
    review = review_of(
        analysis.graph,
        source="bundle",
        window="",
        drawings=(),
        policy_files=policy_files,
        policies=parse_policy_texts(policy_files).policies,
        cluster=cluster_facts(analysis.snapshot, analysis.resolver),
    )
    assert review.unchecked.startswith("not worked out here: ")
    assert review.unchecked.endswith(
        "(up to 10 are); netpol-sniffer verify BUNDLE POLICIES lists them"
    )
    assert all(workload.unobserved == () for workload in review.workloads)
    assert review.as_json()["unchecked"] == review.unchecked


def test_the_page_of_a_cilium_set_points_at_its_rules() -> None:
    # --format cilium: the page reviews CiliumNetworkPolicies, named with their kind.
    analysis = analyse(open_bundle(EXAMPLE), workers=1, policy_format=PolicyFormat.CILIUM)
    assert "report.html" in analysis.files
    files = {n: t for n, t in analysis.files.items() if n.endswith(".yaml")}
    page = review_of(
        analysis.graph,
        source="bundle",
        window="",
        drawings=(),
        policy_files=files,
        policies=parse_policy_texts(files).policies,
        cluster=cluster_facts(analysis.snapshot, analysis.resolver),
    )
    cart = port_review(
        page,
        "default/Deployment/cartservice",
        "default/Deployment/redis-cart",
        PortSpec(Protocol.TCP, 6379),
    )
    sides = {(rule.direction, rule.policy, rule.file) for rule in cart.rules}
    assert sides == {
        (
            Direction.EGRESS,
            "CiliumNetworkPolicy default/cartservice",
            "default.cartservice.yaml",
        ),
        (
            Direction.INGRESS,
            "CiliumNetworkPolicy default/redis-cart",
            "default.redis-cart.yaml",
        ),
    }
    for rule in cart.rules:
        written = "\n".join(files[rule.file].split("\n")[rule.first - 1 : rule.last])
        assert "6379" in written
        assert ("toEndpoints" if rule.direction is Direction.EGRESS else "fromEndpoints") in written
        # The excerpt starts with the comment lines saying why the rule exists.
        way, other = (
            ("to", "redis-cart") if rule.direction is Direction.EGRESS else ("from", "cartservice")
        )
        excerpt = [line.strip() for line in written.split("\n")]
        assert excerpt[0].startswith(f"# {way} default/") and excerpt[0].endswith(other)
        assert excerpt[1].startswith("# TCP/6379: ")


def test_past_so_many_connections_with_single_addresses_a_workload_s_are_summed_up(
    demo: tuple[Analysis, Review], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A public ingress meets thousands of clients: past MAX_ADDRESS_EDGES of a workload in one
    direction, the page sums its connections with single addresses up (the picture's edges point
    at the sum), so that the page does not grow with them."""
    analysis, plain = demo
    monkeypatch.setattr(reviewing, "MAX_ADDRESS_EDGES", 2)
    frontend = "default/Deployment/frontend"
    clients = [f"198.51.100.{n}" for n in range(1, 6)]
    at = 1_767_261_600.0

    def stats(flows: int) -> EdgeStats:
        return EdgeStats(
            flows, 2 * flows, 100 * flows, at, at + flows, frozenset({Evidence.HANDSHAKE})
        )

    graph = dataclasses.replace(
        analysis.graph,
        nodes=(
            *analysis.graph.nodes,
            *(GraphNode(f"ip:{a}", NodeRole.EXTERNAL, a) for a in [*clients, "203.0.113.9"]),
        ),
        edges=(
            *analysis.graph.edges,
            *(
                GraphEdge(f"ip:{a}", frontend, {PortSpec(Protocol.TCP, 8080 + n % 2): stats(n)})
                for n, a in enumerate(clients, 1)
            ),
            GraphEdge(frontend, "ip:203.0.113.9", {PortSpec(Protocol.TCP, 443): stats(1)}),
        ),
    )
    policy_files = {n: t for n, t in analysis.files.items() if n.endswith(".yaml")}
    review = reviewing.review(
        graph,
        source="bundle",
        window="",
        drawings=(
            reviewing.Drawing(None, picture_of(graph), '<svg xmlns="http://www.w3.org/2000/svg"/>'),
        ),
        policy_files=policy_files,
        policies=parse_policy_texts(policy_files).policies,
        cluster=cluster_facts(analysis.snapshot, analysis.resolver),
        allowances=(),
    )
    reviewed = {(edge.client, edge.server) for edge in review.edges}
    # The graph's order: the first two clients reviewed, one by one; the only egress one too.
    assert {("ip:198.51.100.1", frontend), ("ip:198.51.100.2", frontend)} <= reviewed
    assert (frontend, "ip:203.0.113.9") in reviewed
    assert not {(f"ip:{a}", frontend) for a in clients[2:]} & reviewed
    assert len(review.edges) == len(plain.edges) + 3
    assert review.folded == (
        reviewing.FoldedEdges(
            frontend, frontend, Direction.INGRESS, 3, 3 + 4 + 5, 24, 1200, "TCP/8080, TCP/8081"
        ),
    )
    page = review.as_json()
    assert page["folded"][0]["edges"] == 3 and page["folded"][0]["direction"] == "ingress"
    # Each picture edge points at what it draws: reviewed connections, or the sum.
    shapes = page["views"][0]["shapes"]["edges"].values()
    pointed = sorted(index for shape in shapes for index in shape["edges"])
    assert pointed == list(range(len(review.edges)))
    # (five addresses are drawn one by one: the three summed up each point at the sum)
    assert [shape["folded"] for shape in shapes if "folded" in shape] == [[0], [0], [0]]
    # Nothing summed up: the page's data is as it was (no "folded" key).
    assert "folded" not in plain.as_json()
