"""Why each rule exists: the comment lines ``explain`` gives a policy's rules (the flows behind
them, or why DNS and node rules are there without one), bounded, and as rendering writes them."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from analyser.explaining import MAX_LISTED_PEERS, MAX_PORT_LINES, WHY_DNS, WHY_NODES, explain
from analyser.flows import Evidence, Protocol
from analyser.peers import Exposure, IpPeer, PortSpec
from analyser.policies import EGRESS
from analyser.rendering import Provenance, render_policy_files
from tests.analyser.flow_builders import COREDNS_A, DB, KUBE_DNS, NODE_A, NODE_B, WEB_A, flow
from tests.analyser.test_policies import (
    COREDNS,
    DB_W,
    PAGE,
    RATINGS_W,
    V1,
    V3,
    WEB,
    _public_traffic,
    bookinfo_flows,
    synthesized,
)

UDP = Protocol.UDP


def reasons_of(flows: list[Any], scope: set[Any], **options: Any) -> dict[str, dict[str, Any]]:
    """Workload → ``"ingress <peer>"`` / ``"egress <peer>"`` → the rule's lines (the peer: its
    description, or its block for an address)."""
    graph, names, plan = synthesized(flows, scope, **options)
    explained = explain(plan, graph, cluster_dns=names.cluster_dns())
    assert set(explained) == {policy.workload for policy in plan.policies}
    out: dict[str, dict[str, Any]] = {}
    for workload, reasons in explained.items():
        out[workload] = {}
        for (direction, rule), lines in reasons.items():
            peer = rule.peer
            label = peer.cidr if isinstance(peer, IpPeer) else peer.description
            out[workload][f"{direction} {label}"] = lines
    return out


def test_a_rule_names_its_peer_and_the_flows_behind_it_through_their_service() -> None:
    reasons = reasons_of(bookinfo_flows(), {PAGE, V1, V3, RATINGS_W})
    assert reasons[str(V3)][f"ingress {PAGE}"] == (
        f"from {PAGE}",
        "TCP/9080: 1 flow via Service bookinfo/reviews, "
        "first 2026-11-26T09:41:00Z, last 2026-11-26T09:41:02Z",
    )
    assert reasons[str(V3)][f"egress {RATINGS_W}"][0] == f"to {RATINGS_W}"


def test_flows_on_one_port_are_counted_together_first_and_last_over_all_of_them() -> None:
    flows = [
        flow(f"{WEB_A}:41000", f"{DB}:5432", clock="09:40:00"),
        flow(f"{WEB_A}:41001", f"{DB}:5432", clock="09:45:00"),
        flow(f"{WEB_A}:41002", f"{DB}:5432", clock="09:50:00"),
    ]
    reasons = reasons_of(flows, {WEB, DB_W})
    assert reasons[str(WEB)][f"egress {DB_W}"][1] == (
        "TCP/5432: 3 flows, first 2026-11-26T09:40:00Z, last 2026-11-26T09:50:02Z"
    )


def test_dns_says_why_it_is_allowed_when_no_lookup_was_seen_and_counts_those_that_were() -> None:
    flows = [
        flow(f"{WEB_A}:33333", f"{KUBE_DNS}:53", protocol=UDP),
        flow(f"{WEB_A}:33333", f"{COREDNS_A}:53", protocol=UDP),
    ]
    reasons = reasons_of(flows, {WEB, COREDNS})
    dns = reasons[str(WEB)][f"egress {COREDNS}"]
    assert dns[1] == "TCP/53: no flow seen: DNS"
    assert dns[2].startswith("UDP/53: 1 flow via Service kube-system/kube-dns, first ")
    assert dns[-1] == WHY_DNS
    # The DNS pods' own policy names them in its own namespace (no namespaceSelector): still DNS
    own = reasons[str(COREDNS)][f"egress {COREDNS}"]
    assert own[1:] == ("TCP/53: no flow seen: DNS", "UDP/53: no flow seen: DNS", WHY_DNS)


def test_node_rules_name_the_nodes_seen_and_say_why_every_node_is_allowed() -> None:
    flows = [
        flow(f"{NODE_B}:52000", f"{WEB_A}:8080", evidence=Evidence.KNOWN_LISTENER),
        flow(f"{NODE_A}:52001", f"{WEB_A}:8081", evidence=Evidence.KNOWN_LISTENER),
        flow(f"{WEB_A}:41000", f"{NODE_A}:9100"),  # a hostNetwork DaemonSet's pod on node-a
    ]
    nodes = [NODE_A, "192.168.49.9"]  # node-b seen, not listed: its own block
    reasons = reasons_of(flows, {WEB}, node_addresses=nodes)[str(WEB)]
    assert reasons["ingress 192.168.49.2/31"] == (
        "TCP/8080: 1 flow from node-b (192.168.49.3), "
        "first 2026-11-26T09:40:00Z, last 2026-11-26T09:40:02Z",
        "TCP/8081: 1 flow from node-a (192.168.49.2), "
        "first 2026-11-26T09:40:00Z, last 2026-11-26T09:40:02Z",
        WHY_NODES,
    )
    # A node no flow was seen with gets the same ports, and says so.
    assert reasons["ingress 192.168.49.9/32"] == (
        "TCP/8080: no flow seen from these nodes",
        "TCP/8081: no flow seen from these nodes",
        WHY_NODES,
    )
    assert reasons["egress 192.168.49.2/31"][0].startswith(
        "TCP/9100: 1 flow to kube-system/DaemonSet/node-exporter, "
    )


def test_an_anywhere_rule_names_a_few_of_its_addresses_and_counts_the_rest() -> None:
    reasons = reasons_of(_public_traffic(), {WEB}, max_outside_addresses=32)[str(WEB)]
    (line,) = reasons["egress 0.0.0.0/0"]
    listed = ", ".join(f"198.51.100.{n}" for n in ("1", "10", "11")[:MAX_LISTED_PEERS])
    assert line.startswith(f"TCP/443: 40 flows to {listed} and 37 more, first ")
    # An address with a rule of its own counts its own flows only.
    assert reasons["egress 192.0.2.88/32"][0].startswith("TCP/8443: 1 flow, first ")


def test_an_exposed_port_no_outside_client_was_seen_on_says_so() -> None:
    exposure = Exposure(PortSpec(Protocol.TCP, 9090), "Service shop/web (LoadBalancer)")
    flows = [flow(f"{WEB_A}:41000", f"{DB}:5432")]
    reasons = reasons_of(flows, {WEB}, exposures={str(WEB): [exposure]})[str(WEB)]
    assert reasons["ingress 0.0.0.0/0"] == ("TCP/9090: no flow seen from outside the cluster",)


def test_a_rule_on_many_ports_shows_a_few_and_counts_the_rest() -> None:
    ports = range(5000, 5000 + MAX_PORT_LINES + 3)
    flows = [flow(f"{WEB_A}:{40000 + p}", f"{DB}:{p}") for p in ports for _ in range(2)]
    lines = reasons_of(flows, {WEB}, node_addresses=[])[str(WEB)][f"egress {DB_W}"]
    assert len(lines) == 1 + MAX_PORT_LINES  # the peer, then the port lines
    assert lines[1].startswith("TCP/5000: 2 flows, ")
    assert lines[-1] == "and 4 more ports: 8 flows"


def test_flows_nothing_answered_are_said() -> None:
    unanswered = replace(flow(f"{WEB_A}:41000", f"{DB}:5432"), answered=False)
    line = reasons_of([unanswered], {WEB})[str(WEB)][f"egress {DB_W}"][1]
    assert line.endswith(", none answered")


def test_the_lines_are_comments_above_their_rules_and_the_same_every_run() -> None:
    graph, names, plan = synthesized(bookinfo_flows(), {PAGE, V1, V3, RATINGS_W})
    reasons = explain(plan, graph, cluster_dns=names.cluster_dns())
    assert reasons == explain(plan, graph, cluster_dns=names.cluster_dns())
    files = render_policy_files(plan.policies, provenance=Provenance(), reasons=reasons)
    assert (
        "  ingress:\n"
        f"    # from {PAGE}\n"
        "    # TCP/9080: 1 flow via Service bookinfo/reviews, "
        "first 2026-11-26T09:41:00Z, last 2026-11-26T09:41:02Z\n"
        "    - from:\n"
    ) in files["bookinfo.reviews-v3.yaml"]
    # The comments are all that changes.
    plain = render_policy_files(plan.policies, provenance=Provenance())
    assert {path: uncommented(text) for path, text in files.items()} == {
        path: uncommented(text) for path, text in plain.items()
    }
    assert files != plain


def uncommented(text: str) -> list[str]:
    return [line for line in text.split("\n") if not line.lstrip().startswith("#")]


def test_hostile_text_in_a_line_stays_one_comment_line() -> None:
    """The lines hold names from the snapshot and addresses from captures: rendering keeps any
    of them from ending its comment (a YAML line break) or reaching a terminal raw."""
    _, _, plan = synthesized(bookinfo_flows(), {PAGE, V1, V3, RATINGS_W})
    policy = plan.policies[0]
    hostile = "x\u2028    - {}\n    - to: []\x85\r\x1b[31m\u202e"
    reasons = {policy.workload: {(EGRESS, rule): (hostile,) for rule in policy.egress}}
    path = f"{policy.namespace}.{policy.name}.yaml"
    text = render_policy_files(plan.policies, provenance=Provenance(), reasons=reasons)[path]
    plain = render_policy_files(plan.policies, provenance=Provenance())[path]
    assert all(line.isprintable() for line in text.split("\n"))
    assert uncommented(text) == uncommented(plain)
    assert len(text.split("\n")) == len(plain.split("\n")) + len(policy.egress)
