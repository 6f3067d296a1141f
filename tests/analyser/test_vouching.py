"""Which side of a flow its captures vouch for: the pod's own capture, a node's capture for its
pods, or no capture that could have seen it (not captured then, before its ring's first packet);
never a flow claimed before the pod existed."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

from analyser.analysing import analyse
from analyser.bundles import open_bundle
from analyser.evaluation import Direction
from analyser.flows import Flow, Protocol
from analyser.graphs import ALWAYS, TWIN_WINDOW, EdgeStats, Sides, WorkloadGraph, build_graph
from analyser.identities import Vantage
from analyser.peers import PortSpec
from analyser.policies import synthesize
from analyser.policysets import parse_policy_texts
from analyser.rendering import Provenance, render_policy_files
from analyser.replaying import check_policies_allow, cluster_facts, verify_graph
from analyser.sources import CaptureReport
from analyser.vouching import Witnesses
from analyser.workloads import WorkloadRef
from tests.analyser.flow_builders import (
    API_BLUE,
    API_SVC,
    NODE_A,
    WEB_A,
    WEB_B,
    WEB_SVC,
    at,
    cluster,
    flow,
    resolver,
)
from tests.bundle_builders import CART_IP, FRONTEND_IP, T0, handshake, make_bundle, write_pcap

WEB_A_POD = Vantage("shop", "web-7c5d8f9b4-aaaaa")  # on node-a; web-…bbbbb (node-b) uncaptured
API_POD = Vantage("shop", "api-blue-5f6d7c8b9-q1w2e")
WEB_CAPTURE = "captures/shop/web-7c5d8f9b4-aaaaa/capture.pcap0"
API_CAPTURE = "captures/shop/api-blue-5f6d7c8b9-q1w2e/capture.pcap0"
NODE_CAPTURE = "node-a.pcap"
OUTSIDE = "203.0.113.9"


def _report(path: str, first: str | None, *, packets: int = 10, ok: bool = True) -> CaptureReport:
    return CaptureReport(
        path,
        packets,
        packets * 100,
        error=None if ok else "MalformedCapture",
        first_seen=None if first is None else at(first),
    )


def _witnesses(*reports: CaptureReport, node_capture: bool = False) -> Witnesses:
    vantages = {WEB_CAPTURE: (WEB_A_POD,), API_CAPTURE: (API_POD,)}
    if node_capture:
        vantages[NODE_CAPTURE] = (Vantage(node="node-a"),)
    return Witnesses(vantages, reports, resolver())


def _vouches(witnesses: Witnesses, ip: str, clock: str, *captures: str) -> bool:
    moment = at(clock)
    return witnesses.vouches(resolver().resolve(ip, moment), moment, frozenset(captures))


def test_a_pod_s_own_capture_vouches_for_its_side_and_another_s_does_not() -> None:
    witnesses = _witnesses(_report(WEB_CAPTURE, "09:30:00"), _report(API_CAPTURE, "09:30:00"))

    assert _vouches(witnesses, WEB_A, "09:40:00", WEB_CAPTURE)
    assert _vouches(witnesses, API_BLUE, "09:40:00", WEB_CAPTURE, API_CAPTURE)
    # web's capture ran since 09:30 and did not see what api's capture claims about it.
    assert not _vouches(witnesses, WEB_A, "09:40:00", API_CAPTURE)
    # Nothing could vouch for an address outside the cluster, a node or an uncaptured replica.
    assert _vouches(witnesses, OUTSIDE, "09:40:00", API_CAPTURE)
    assert _vouches(witnesses, NODE_A, "09:40:00", API_CAPTURE)
    assert _vouches(witnesses, WEB_B, "09:40:00", API_CAPTURE)


def test_a_flow_before_the_pod_s_first_retained_packet_is_not_held_against_it() -> None:
    """A ring that rotated keeps the last files only: web's capture starts at 09:40, so a flow
    api saw at 09:35 (or within clock skew of 09:40) could not have been in it."""
    witnesses = _witnesses(_report(WEB_CAPTURE, "09:40:00"), _report(API_CAPTURE, "09:30:00"))

    assert _vouches(witnesses, WEB_A, "09:35:00", API_CAPTURE)
    assert _vouches(witnesses, WEB_A, "09:40:04", API_CAPTURE)
    assert not _vouches(witnesses, WEB_A, "09:40:06", API_CAPTURE)


def test_the_earliest_file_of_a_ring_says_since_when_the_pod_was_captured() -> None:
    later = "captures/shop/web-7c5d8f9b4-aaaaa/capture.pcap1"
    witnesses = Witnesses(
        {WEB_CAPTURE: (WEB_A_POD,), later: (WEB_A_POD,), API_CAPTURE: (API_POD,)},
        [
            _report(later, "09:50:00"),
            _report(WEB_CAPTURE, "09:40:00"),
            _report(API_CAPTURE, "09:30:00"),
        ],
        resolver(),
    )

    assert witnesses.captured_since(resolver().resolve(WEB_A, at("09:45:00"))) == at("09:40:00")
    assert not _vouches(witnesses, WEB_A, "09:45:00", API_CAPTURE)


def test_a_capture_that_saw_nothing_covers_all_its_time() -> None:
    """A silent pod's capture was read and held no flow: whatever another capture claims about
    it, it did not happen. An unreadable capture says nothing, so its pod is not captured."""
    silent = _witnesses(_report(WEB_CAPTURE, None, packets=0), _report(API_CAPTURE, "09:30:00"))
    assert silent.captured_since(resolver().resolve(WEB_A, at("09:40:00"))) == -math.inf
    assert not _vouches(silent, WEB_A, "08:30:00", API_CAPTURE)

    unreadable = _witnesses(
        _report(WEB_CAPTURE, None, packets=0, ok=False), _report(API_CAPTURE, "09:30:00")
    )
    assert _vouches(unreadable, WEB_A, "09:40:00", API_CAPTURE)


def test_a_flow_claimed_before_the_pod_existed_is_never_excused() -> None:
    """Web's pod started at 08:00 (its capture's first packet at 09:40): a flow another capture
    dates to 07:00 or to 2001, older than the pod, is no flow of web's, however it resolves.
    Within five minutes of its start it is (clock skew)."""
    witnesses = _witnesses(_report(WEB_CAPTURE, "09:40:00"), _report(API_CAPTURE, "09:30:00"))

    assert not _vouches(witnesses, WEB_A, "07:00:00", API_CAPTURE)
    moment = at("09:40:00") - 25 * 365 * 86400
    web = resolver().resolve(WEB_A, moment)
    assert web.pod is not None
    assert not witnesses.vouches(web, moment, frozenset({API_CAPTURE}))
    assert not _vouches(witnesses, WEB_B, "07:00:00", API_CAPTURE)
    assert _vouches(witnesses, WEB_A, "07:56:00", API_CAPTURE)


def test_a_node_capture_vouches_for_the_pods_on_its_node() -> None:
    """``tcpdump -i any`` on node-a sees web-…aaaaa's traffic: it vouches for that pod, and
    makes it captured (a flow only api's capture claims is then refused at web's side); web's
    replica on node-b is not on that node."""
    witnesses = _witnesses(
        _report(API_CAPTURE, "09:30:00"), _report(NODE_CAPTURE, "09:30:00"), node_capture=True
    )

    assert _vouches(witnesses, WEB_A, "09:40:00", NODE_CAPTURE)
    assert not _vouches(witnesses, WEB_A, "09:40:00", API_CAPTURE)
    assert _vouches(witnesses, WEB_B, "09:40:00", API_CAPTURE)


# -- the graph, the policies and the replay on the vouched sides ------------------------------

WEB = "shop/Deployment/web"
API_BLUE_W, API_GREEN_W = "shop/Deployment/api-blue", "shop/Deployment/api-green"
SCOPE = {WorkloadRef("shop", "Deployment", "web"), WorkloadRef("shop", "Deployment", "api-blue")}


def _graph(flows: list[Flow]) -> WorkloadGraph:
    witnesses = _witnesses(_report(WEB_CAPTURE, "09:30:00"), _report(API_CAPTURE, "09:30:00"))
    names = resolver()
    return build_graph(flows, names, scope=SCOPE, witness=witnesses)


def _stats(graph: WorkloadGraph, client: str, server: str, port: int) -> EdgeStats:
    return graph.edge(client, server).ports[PortSpec(Protocol.TCP, port)]


def test_a_service_flow_and_its_twin_vouch_for_both_sides() -> None:
    """api's capture saw the ClusterIP, web's the pod address: both sides saw the connection."""
    graph = _graph(
        [
            flow(f"{API_BLUE}:41000", f"{WEB_SVC}:80", capture=API_CAPTURE),
            flow(f"{API_BLUE}:41000", f"{WEB_A}:8080", clock="09:40:01", capture=WEB_CAPTURE),
        ]
    )

    assert _stats(graph, API_BLUE_W, WEB, 8080).vouched == Sides(client=True, server=True)
    assert not graph.unvouched_pairs()


def test_a_flow_only_the_client_claims_makes_no_ingress_rule_at_a_captured_server() -> None:
    """api's capture claims it called web's pod on 9999; web's own capture, running then, did
    not see it. api's egress keeps it (its word about its own side), web's ingress does not."""
    graph = _graph([flow(f"{API_BLUE}:41000", f"{WEB_A}:9999", capture=API_CAPTURE)])

    assert _stats(graph, API_BLUE_W, WEB, 9999).vouched == Sides(client=True, server=False)
    [pair] = graph.unvouched_pairs()
    assert (pair.client, pair.server, pair.ports_text, pair.sides) == (
        API_BLUE_W,
        WEB,
        "TCP/9999",
        1,
    )
    assert pair.why == (
        f"not seen by the capture of {WEB} while it ran (or dated before that pod existed): no "
        f"ingress rule for it at {WEB}; only the other side's captures claim it"
    )
    policies = {p.workload: p for p in synthesize(graph).policies}
    assert [r.ports for r in policies[API_BLUE_W].egress if r.peer.description == WEB] == [
        (PortSpec(Protocol.TCP, 9999),)
    ]
    assert not [r for r in policies[WEB].ingress if r.peer.description == API_BLUE_W]


def test_a_flow_only_the_server_claims_makes_no_egress_rule_at_a_captured_client() -> None:
    graph = _graph([flow(f"{WEB_A}:41000", f"{API_BLUE}:9999", capture=API_CAPTURE)])

    assert _stats(graph, WEB, API_BLUE_W, 9999).vouched == Sides(client=False, server=True)
    policies = {p.workload: p for p in synthesize(graph).policies}
    assert not [r for r in policies[WEB].egress if r.peer.description == API_BLUE_W]
    assert [r.ports for r in policies[API_BLUE_W].ingress if r.peer.description == WEB] == [
        (PortSpec(Protocol.TCP, 9999),)
    ]


def test_assumed_backends_are_refused_only_where_their_capture_ran() -> None:
    """web calls the api Service and no backend's capture saw it: api-blue was captured then (it
    was not the one), api-green was not (it may have been). Behind the web Service, one of two
    replicas is uncaptured: the workload's side stays vouched for."""
    graph = _graph(
        [
            flow(f"{WEB_A}:41000", f"{API_SVC}:80", capture=WEB_CAPTURE),
            flow(f"{API_BLUE}:42000", f"{WEB_SVC}:80", capture=API_CAPTURE),
        ]
    )

    assert _stats(graph, WEB, API_BLUE_W, 8080).vouched == Sides(client=True, server=False)
    assert _stats(graph, WEB, API_GREEN_W, 9090).vouched == Sides()
    assert _stats(graph, API_BLUE_W, WEB, 8080).vouched == Sides()
    assert _stats(graph, API_BLUE_W, WEB, 8080).assumed


def test_the_safety_check_and_verify_hold_each_side_to_what_it_vouched_for() -> None:
    """Policies made from the graph pass the safety check although web's ingress does not allow
    what only api's capture claims; verify lists that connection as unchecked at web's ingress,
    and does not count it as observed for the pair."""
    graph = _graph([flow(f"{API_BLUE}:41000", f"{WEB_A}:9999", capture=API_CAPTURE)])
    policies = synthesize(graph).policies
    loaded = parse_policy_texts(render_policy_files(policies, provenance=Provenance()))
    facts = cluster_facts(cluster(), resolver())

    assert check_policies_allow(loaded.policies, graph, facts) == []
    result = verify_graph(loaded.policies, graph, facts)
    assert result.passed
    [unvouched] = result.unvouched
    assert (str(unvouched.client), str(unvouched.server), unvouched.port) == (
        API_BLUE_W,
        WEB,
        9999,
    )
    assert unvouched.unchecked == (Direction.INGRESS,)
    # Policies that allow it anyway are not blamed for the claim, and it is no evidence that
    # the pair needs the port: one side's word.
    everything = parse_policy_texts(
        {
            "all.yaml": "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
            "metadata: {name: all, namespace: shop}\n"
            "spec: {podSelector: {}, ingress: [{}], egress: [{}]}\n"
        }
    )
    result = verify_graph(everything.policies, graph, facts)
    assert result.passed
    [allowance] = [a for a in result.allowances if (a.client, a.server) == (API_BLUE_W, WEB)]
    assert not allowance.observed and allowance.unobserved.covers_all_of(Protocol.TCP)


def test_a_loose_file_tied_to_a_pod_vouches_for_that_pod_only(tmp_path: Path) -> None:
    """A plain folder: each pod's capture is a loose file, tied to its pod by its flows, and
    ``frontend.pcap`` (one conversation, named after frontend) claims frontend called cart on
    9999 while cart's file covered that time and did not see it. frontend's egress gets it,
    cart's ingress does not."""
    bundle = make_bundle(tmp_path / "bundle")
    folder = tmp_path / "plain"
    folder.mkdir()
    shutil.copy(bundle / "snapshot.json", folder / "snapshot.json")
    for index, pcap in enumerate(sorted(bundle.glob("captures/*/*/capture.pcap0"))):
        shutil.copy(pcap, folder / f"trace-{index}.pcap")
    write_pcap(folder / "frontend.pcap", handshake(FRONTEND_IP, 41000, CART_IP, 9999, T0 + 9))

    analysis = analyse(open_bundle(folder), workers=1)

    policies = {p.workload: p for p in analysis.policies}
    frontend, cart = "web/Deployment/frontend", "shop/Deployment/cart"
    assert [r.ports for r in policies[frontend].egress if r.peer.description == cart] == [
        (PortSpec(Protocol.TCP, 8080), PortSpec(Protocol.TCP, 9999))
    ]
    assert [r.ports for r in policies[cart].ingress if r.peer.description == frontend] == [
        (PortSpec(Protocol.TCP, 8080),)
    ]
    assert [(p.client, p.server, p.ports_text) for p in analysis.unvouched] == [
        (frontend, cart, "TCP/9999")
    ]


def test_a_side_is_vouched_for_over_one_span_of_time() -> None:
    # The graph counts a group of connections once per stretch of time with the same vouched
    # sides (graphs.build_graph): the span says when, as vouches says at each moment.
    witnesses = _witnesses(_report(WEB_CAPTURE, "09:30:00"), _report(API_CAPTURE, "09:30:00"))
    web = resolver().resolve(WEB_A, at("09:40:00"))
    assert witnesses.span(web, frozenset({WEB_CAPTURE})) == ALWAYS
    assert witnesses.span(resolver().resolve(OUTSIDE, at("09:40:00")), frozenset()) == ALWAYS
    # Only api's capture claims it: web's side until web's own capture ran (09:30, give or take
    # the clock skew between captures), from when web's pod existed.
    claimed = witnesses.span(web, frozenset({API_CAPTURE}))
    assert claimed.end == at("09:30:00") + TWIN_WINDOW
    for minute in range(0, 60, 3):
        moment = at(f"09:{minute:02d}:00")
        assert (moment in claimed) == witnesses.vouches(web, moment, frozenset({API_CAPTURE}))
