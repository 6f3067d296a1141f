"""Why each CiliumNetworkPolicy rule exists: ``explain_cilium`` says it from the policy rules the
Cilium rule was made from, in ``explain``'s words (merged where Cilium merges rules: the nodes'
entities, names on one port set), names a rule by name's answers and a pattern's names, bounded;
rendering writes the lines as comments, which change no field."""

from __future__ import annotations

from typing import Any

import yaml

from analyser.cilium import CiliumRule, cilium_plan
from analyser.explaining import MAX_NAME_LINES, WHY_DNS, WHY_NODES, explain, explain_cilium
from analyser.flows import Evidence, Protocol
from analyser.peers import Exposure, PortSpec
from analyser.rendering import Provenance, render_cilium_files
from tests.analyser.flow_builders import (
    COREDNS_A,
    KUBE_DNS,
    NODE_A,
    NODE_B,
    WEB_A,
    FakeDns,
    flow,
)
from tests.analyser.test_explaining import uncommented
from tests.analyser.test_policies import (
    COREDNS,
    PAGE,
    RATINGS_W,
    V1,
    V3,
    WEB,
    bookinfo_flows,
    synthesized,
)
from tests.cilium_helpers import schema_errors

UDP = Protocol.UDP


def _label(rule: CiliumRule) -> str:
    """``endpoints app=db TCP/5432``, ``entities host+remote-node TCP/8080``, ``fqdns
    api.shop.example TCP/443``, ``cidrs 192.0.2.88/32 TCP/8443``."""
    if rule.endpoints is not None:
        labels = [f"{k}={v}" for k, v in rule.endpoints.match_labels if not k.startswith("k8s:")]
        peer = "endpoints " + ",".join(labels)
    elif rule.entities:
        peer = "entities " + "+".join(rule.entities)
    elif rule.fqdns:
        peer = "fqdns " + "+".join(selector.text for selector in rule.fqdns)
    else:
        peer = "cidrs " + "+".join(block.cidr for block in rule.cidrs)
    return f"{peer} {','.join(f'{p.protocol}/{p.port}' for p in rule.ports)}"


def cilium_reasons(
    flows: list[Any], scope: set[Any], *, names_per_suffix: int = 10, **options: Any
) -> dict[str, dict[str, tuple[str, ...]]]:
    """Workload → ``"ingress <rule>"`` / ``"egress <rule>"`` (:func:`_label`) → its lines."""
    graph, names, plan = synthesized(flows, scope, **options)
    exposures = options.get("exposures")
    cilium = cilium_plan(plan, graph, exposures=exposures, max_names_per_suffix=names_per_suffix)
    explained = explain_cilium(cilium, graph, cluster_dns=names.cluster_dns())
    assert explained == explain_cilium(cilium, graph, cluster_dns=names.cluster_dns())
    return {
        workload: {f"{d} {_label(rule)}": lines for (d, rule), lines in reasons.items()}
        for workload, reasons in explained.items()
    }


def test_a_rule_made_from_one_policy_rule_says_what_the_networkpolicy_rule_says() -> None:
    graph, names, plan = synthesized(bookinfo_flows(), {PAGE, V1, V3, RATINGS_W})
    cilium = cilium_plan(plan, graph)
    plain = explain(plan, graph, cluster_dns=names.cluster_dns())
    explained = explain_cilium(cilium, graph, cluster_dns=names.cluster_dns())
    compared = 0
    for item in cilium.policies:
        reasons = explained[item.policy.workload]
        for direction, rules in (("ingress", item.ingress), ("egress", item.egress)):
            for rule in rules:
                if rule.endpoints is not None:  # one policy rule, on the same ports
                    (source,) = rule.sources
                    assert rule.ports == source.ports
                    assert (
                        reasons[(direction, rule)]
                        == plain[item.policy.workload][(direction, source)]
                    )
                    compared += 1
    assert compared >= 6
    v3 = explained[str(V3)]
    assert (
        f"from {PAGE}",
        "TCP/9080: 1 flow via Service bookinfo/reviews, "
        "first 2026-11-26T09:41:00Z, last 2026-11-26T09:41:02Z",
    ) in v3.values()


def test_the_nodes_entities_merge_every_node_block_with_their_flows() -> None:
    flows = [
        flow(f"{NODE_B}:52000", f"{WEB_A}:8080", evidence=Evidence.KNOWN_LISTENER),
        flow(f"{NODE_A}:52001", f"{WEB_A}:8081", evidence=Evidence.KNOWN_LISTENER),
    ]
    nodes = [NODE_A, "192.168.49.9"]  # two node blocks in the NetworkPolicy, one entity rule
    reasons = cilium_reasons(flows, {WEB}, node_addresses=nodes)[str(WEB)]
    assert reasons["ingress entities host+remote-node TCP/8080,TCP/8081"] == (
        "TCP/8080: 1 flow from node-b (192.168.49.3), "
        "first 2026-11-26T09:40:00Z, last 2026-11-26T09:40:02Z",
        "TCP/8081: 1 flow from node-a (192.168.49.2), "
        "first 2026-11-26T09:40:00Z, last 2026-11-26T09:40:02Z",
        WHY_NODES,
    )


def test_dns_says_why_it_is_allowed_as_the_networkpolicy_does() -> None:
    flows = [
        flow(f"{WEB_A}:33333", f"{KUBE_DNS}:53", protocol=UDP),
        flow(f"{WEB_A}:33333", f"{COREDNS_A}:53", protocol=UDP),
    ]
    reasons = cilium_reasons(flows, {WEB, COREDNS})[str(WEB)]
    dns = reasons["egress endpoints k8s-app=kube-dns TCP/53,UDP/53"]
    assert dns[:2] == (f"to {COREDNS}", "TCP/53: no flow seen: DNS")
    assert dns[2].startswith("UDP/53: 1 flow via Service kube-system/kube-dns, first ")
    assert dns[-1] == WHY_DNS


def test_an_exposed_port_as_world_says_no_outside_client_was_seen() -> None:
    exposure = Exposure(PortSpec(Protocol.TCP, 9090), "Service shop/web (LoadBalancer)")
    reasons = cilium_reasons([], {WEB}, exposures={str(WEB): [exposure]})[str(WEB)]
    assert reasons["ingress entities world TCP/9090"] == (
        "TCP/9090: no flow seen from outside the cluster",
    )


def test_a_rule_by_name_names_each_name_with_the_addresses_it_was_answered_with() -> None:
    dns = FakeDns(
        {
            "203.0.113.10": ["api.shop.example"],
            "203.0.113.11": ["api.shop.example"],
            "203.0.113.20": ["pay.example.org"],
        }
    )
    flows = [
        flow(f"{WEB_A}:41000", "203.0.113.10:443"),
        flow(f"{WEB_A}:41001", "203.0.113.11:443", clock="09:41:00"),
        flow(f"{WEB_A}:41002", "203.0.113.20:443", clock="09:42:00"),
    ]
    reasons = cilium_reasons(flows, {WEB}, dns=dns)[str(WEB)]
    assert reasons["egress fqdns api.shop.example+pay.example.org TCP/443"] == (
        "api.shop.example: answered with 203.0.113.10, 203.0.113.11",
        "pay.example.org: answered with 203.0.113.20",
        "TCP/443: 3 flows to 203.0.113.10, 203.0.113.11, 203.0.113.20, "
        "first 2026-11-26T09:40:00Z, last 2026-11-26T09:42:02Z",
    )


def test_a_pattern_says_which_names_it_stands_for_and_the_lines_are_bounded() -> None:
    """12 shards, each at its own address: past --max-outside-addresses (a rule to anywhere,
    every address named: a rule by name) and past the pattern threshold (one pattern)."""
    shards = {f"203.0.113.{n + 1}": [f"s{n}.cdn.example"] for n in range(12)}
    others = {f"192.0.2.{n + 1}": [f"api{n}.example.org"] for n in range(MAX_NAME_LINES + 1)}
    flows = [
        flow(f"{WEB_A}:{41000 + index}", f"{address}:443")
        for index, address in enumerate([*shards, *others])
    ]
    lookups = {WEB_A: [name for names in (*shards.values(), *others.values()) for name in names]}
    dns = FakeDns(shards | others, lookups)
    reasons = cilium_reasons(
        flows, {WEB, COREDNS}, dns=dns, max_outside_addresses=8, names_per_suffix=10
    )[str(WEB)]
    (key,) = [key for key in reasons if key.startswith("egress fqdns")]
    lines = reasons[key]
    # Names sorted by suffix: the example.org ones, then the pattern; four lines at most.
    assert lines[: MAX_NAME_LINES - 1] == tuple(
        f"api{n}.example.org: answered with 192.0.2.{n + 1}" for n in range(MAX_NAME_LINES - 1)
    )
    assert lines[MAX_NAME_LINES - 1] == "and 3 more names and patterns"  # api3, api4, the pattern
    assert lines[MAX_NAME_LINES].startswith("TCP/443: 17 flows to 192.0.2.1, 192.0.2.2, ")
    # The DNS rule's pattern names what it stands for, a few of them.
    (dns_key,) = [key for key in reasons if "kube-dns TCP/53,UDP/53" in key]
    assert reasons[dns_key][-1] == (
        "lookups: *.cdn.example stands for 12 names seen: "
        "s0.cdn.example, s1.cdn.example, s10.cdn.example and 9 more"
    )


def test_a_pattern_to_reach_names_its_names_and_their_answers() -> None:
    shards = {f"203.0.113.{n + 1}": [f"s{n}.cdn.example"] for n in range(12)}
    flows = [flow(f"{WEB_A}:{41000 + n}", f"{address}:443") for n, address in enumerate(shards)]
    reasons = cilium_reasons(flows, {WEB}, dns=FakeDns(shards), max_outside_addresses=100)
    assert reasons[str(WEB)]["egress fqdns *.cdn.example TCP/443"][0] == (
        "*.cdn.example stands for 12 names seen: "
        "s0.cdn.example, s1.cdn.example, s10.cdn.example and 9 more; "
        "answered with 203.0.113.1, 203.0.113.2, 203.0.113.3 and 9 more"
    )


def test_the_lines_are_comments_above_their_rules_and_change_no_field() -> None:
    shards = {f"203.0.113.{n + 1}": [f"s{n}.cdn.example"] for n in range(12)}
    flows = [
        *bookinfo_flows(),
        *(flow(f"{WEB_A}:{41000 + n}", f"{address}:443") for n, address in enumerate(shards)),
        flow(f"{NODE_B}:52000", f"{WEB_A}:8080", evidence=Evidence.KNOWN_LISTENER),
    ]
    graph, names, plan = synthesized(flows, {PAGE, V1, V3, RATINGS_W, WEB}, dns=FakeDns(shards))
    cilium = cilium_plan(plan, graph)
    reasons = explain_cilium(cilium, graph, cluster_dns=names.cluster_dns())
    files = render_cilium_files(cilium, provenance=Provenance(), reasons=reasons)
    assert files == render_cilium_files(cilium, provenance=Provenance(), reasons=reasons)
    web = files["shop.web.yaml"]
    assert (
        "    # *.cdn.example stands for 12 names seen: s0.cdn.example, s1.cdn.example, "
        "s10.cdn.example and 9 more; answered with 203.0.113.1, 203.0.113.2, 203.0.113.3 "
        "and 9 more\n"
        "    # TCP/443: 12 flows to 203.0.113.1, 203.0.113.10, 203.0.113.11 and 9 more, "
        "first 2026-11-26T09:40:00Z, last 2026-11-26T09:40:02Z\n"
        "    - toFQDNs:\n"
    ) in web
    assert "    # cluster nodes\n    # TCP/8080: 1 flow from node-b (192.168.49.3), " in web
    plain = render_cilium_files(cilium, provenance=Provenance())
    assert files != plain
    assert {path: uncommented(text) for path, text in files.items()} == {
        path: uncommented(text) for path, text in plain.items()
    }
    for path, text in files.items():
        if path.endswith(".yaml"):
            assert schema_errors(yaml.safe_load(text)) == [], path
