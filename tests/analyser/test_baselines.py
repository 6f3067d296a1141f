"""`analyse --baseline cluster`: one Baseline-tier ClusterNetworkPolicy, valid against the CRD of
network-policy-api v0.3.0 (standard channel), in the output folder and in the safety check."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from analyser.analysing import Analysis, analyse, check_safety, write_output
from analyser.baselines import (
    EXEMPT_LABEL,
    MAX_NETWORKS,
    MAX_PEERS,
    Baseline,
    baseline_for,
    egress_rules,
)
from analyser.bundles import open_bundle
from analyser.clusterpolicies import compile_cluster_policy
from analyser.evaluation import PolicySet
from analyser.flows import Protocol
from analyser.peers import DEFAULT_DNS_PEER, DNS_PORTS, ClusterDns, IpPeer, PodPeer, PortSpec
from analyser.policies import PolicyPlan, unselectable_workloads
from analyser.policysets import parse_policy_texts
from analyser.rendering import Provenance, baseline_object, render_baseline
from analyser.replaying import cluster_facts
from analyser.selectors import LabelSelector
from cli.main import ExitStatus, main
from kernel.errors import RenderError, UnsafePolicies
from tests.analyser.flow_builders import DEBUG, WEB_A, flow
from tests.analyser.test_policies import DB_W, PAGE, WEB, synthesized
from tests.analyser.test_rendering_inert import IN_YAML_VALUES
from tests.bundle_builders import handshake, make_bundle
from tests.hostile.hostile_helpers import (
    EXAMPLE,
    add_capture,
    copy_example,
    pod_ip,
    snapshot,
    window_start,
    write_snapshot,
)

CRD = (
    Path(__file__).parents[1]
    / "data"
    / "crds"
    / "network-policy-api-v0.3.0-clusternetworkpolicies.yaml"
)
BASELINE_FILE = "ClusterNetworkPolicy.netpol-sniffer-baseline.yaml"
PROVENANCE = Provenance("2026-01-01T10:00:00Z", "2026-01-01T11:00:00Z")


def _strict(schema: Any) -> Any:
    """The schema with every object closed to undeclared fields: the API server would prune a
    misspelt field silently (a rule that quietly does something else), so the tests refuse it."""
    if isinstance(schema, dict):
        closed = {key: _strict(value) for key, value in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema:
            closed["additionalProperties"] = False
        return closed
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    return schema


def _schemas() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    return {
        f"{crd['spec']['group']}/{version['name']}": _strict(version["schema"]["openAPIV3Schema"])
        for version in crd["spec"]["versions"]
        if version["served"]
    }


SCHEMAS = _schemas()


def assert_valid(document: dict[str, Any]) -> None:
    """Valid against the OpenAPI schema of every served version (v1beta1 and v1alpha2 share
    one), and against the CEL rules, which ``compile_cluster_policy`` checks as the CRD does
    (CIDRs without host bits, ranges with start < end)."""
    assert set(SCHEMAS) == {
        "policy.networking.k8s.io/v1beta1",
        "policy.networking.k8s.io/v1alpha2",
    }
    for version, schema in SCHEMAS.items():
        jsonschema.validate(dict(document, apiVersion=version), schema)
    compile_cluster_policy(document)


@pytest.fixture(scope="module")
def analysis(tmp_path_factory: pytest.TempPathFactory) -> Analysis:
    bundle = make_bundle(tmp_path_factory.mktemp("bundle"))
    return analyse(open_bundle(bundle), baseline=True, workers=1)


def test_one_baseline_is_written_listed_and_recorded(analysis: Analysis, tmp_path: Path) -> None:
    assert analysis.policy_files == (BASELINE_FILE, "shop.cart.yaml", "web.frontend.yaml")
    assert yaml.safe_load(analysis.files["Kustomization"])["resources"] == list(
        analysis.policy_files
    )
    write_output(analysis.files, tmp_path)
    marker = json.loads((tmp_path / ".netpol-sniffer-output").read_text())
    assert BASELINE_FILE in marker["files"]
    assert analysis.summary()["baseline"] == {
        "file": BASELINE_FILE,
        "exempt_namespaces": ["kube-system"],
    }


def test_the_baseline_covers_every_namespace_but_the_uncaptured_ones(analysis: Analysis) -> None:
    document = yaml.safe_load(analysis.files[BASELINE_FILE])
    assert_valid(document)
    spec = document["spec"]
    assert (spec["tier"], spec["priority"]) == ("Baseline", 1000)
    assert spec["subject"] == {
        "namespaces": {
            "matchExpressions": [
                {
                    "key": "kubernetes.io/metadata.name",
                    "operator": "NotIn",
                    "values": ["kube-system"],
                },
                {"key": EXEMPT_LABEL, "operator": "NotIn", "values": ["exempt"]},
            ]
        }
    }
    assert spec["ingress"] == [
        {"name": "deny-from-pods", "action": "Deny", "from": [{"namespaces": {}}]}
    ]
    dns, nodes, deny = spec["egress"]
    assert dns["action"] == "Accept" and dns["to"] == [
        {
            "pods": {
                "namespaceSelector": {
                    "matchLabels": {"kubernetes.io/metadata.name": "kube-system"}
                },
                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
            }
        }
    ]
    assert dns["protocols"] == [
        {"tcp": {"destinationPort": {"number": 53}}},
        {"udp": {"destinationPort": {"number": 53}}},
    ]
    assert nodes["action"] == "Accept" and "protocols" not in nodes  # every port
    assert deny == {
        "name": "deny-all",
        "action": "Deny",
        "to": [{"namespaces": {}}, {"networks": ["0.0.0.0/0", "::/0"]}],
    }


def test_a_big_cluster_is_split_within_the_crd_limits() -> None:
    dns = tuple(
        PodPeer(LabelSelector((("app", f"dns-{n}"),)), "dns", f"dns/{n}") for n in range(30)
    )
    nodes = tuple(IpPeer(f"10.{n // 256}.{n % 256}.0/24") for n in range(700))
    baseline = Baseline(
        exempt_namespaces=tuple(f"team-{n:03}" for n in range(300)),
        dns=dns,
        dns_ports=(*DNS_PORTS, PortSpec(Protocol.UDP, 5353), PortSpec(Protocol.UDP, 5354)),
        node_local_dns=(IpPeer("169.254.20.10/32"), IpPeer("fe80::a/128")),
        nodes=nodes,
    )
    document = yaml.safe_load(render_baseline(baseline, provenance=PROVENANCE))
    assert document == baseline_object(baseline, provenance=PROVENANCE)
    assert_valid(document)
    names = [rule["name"] for rule in document["spec"]["egress"]]
    assert names == ["dns-1", "dns-2", "node-local-dns", "nodes-1", "nodes-2", "deny-all"]
    nodes_written = [
        cidr
        for rule in document["spec"]["egress"]
        if rule["name"].startswith("nodes")
        for peer in rule["to"]
        for cidr in peer["networks"]
    ]
    assert nodes_written == [block.cidr for block in nodes]
    assert document["spec"]["egress"][0]["protocols"][-1] == {
        "udp": {"destinationPort": {"range": {"start": 5353, "end": 5354}}}
    }


def test_more_rules_than_the_crd_allows_is_an_error_naming_node_cidr() -> None:
    blocks = MAX_NETWORKS * MAX_PEERS * 25
    nodes = tuple(IpPeer(f"10.{n // 65536}.{n // 256 % 256}.{n % 256}/32") for n in range(blocks))
    baseline = Baseline((), (DEFAULT_DNS_PEER,), DNS_PORTS, nodes=nodes)
    with pytest.raises(RenderError, match="--node-cidr"):
        egress_rules(baseline)


def test_its_workloads_get_policies_as_with_default_deny_without_the_denies() -> None:
    _, _, denied = synthesized([], {WEB, DB_W, PAGE}, default_deny=True)
    _, _, based = synthesized([], {WEB, DB_W, PAGE}, baseline=True)
    assert based.policies == denied.policies
    assert based.default_denies == ()
    assert based.isolated_namespaces == denied.isolated_namespaces == ("bookinfo", "shop")
    _, _, neither = synthesized([], {WEB, DB_W, PAGE})
    assert neither.isolated_namespaces == ()


def test_a_namespace_where_a_seen_workload_cannot_be_selected_is_left_out() -> None:
    # debug (a bare pod without labels, not captured) calls web: the baseline would cut it off.
    graph, _, plan = synthesized(
        [flow(f"{DEBUG}:41000", f"{WEB_A}:8080")], {WEB, PAGE}, baseline=True
    )
    assert plan.isolated_namespaces == ("bookinfo",)
    baseline = baseline_for(
        plan, namespaces=("bookinfo", "kube-system", "shop"), cluster_dns=ClusterDns(), nodes=()
    )
    assert baseline is not None and baseline.exempt_namespaces == ("kube-system", "shop")
    # analyse lists debug as what keeps shop out (it asks as for a default-deny).
    assert unselectable_workloads(graph, default_deny=True) == ("shop/Pod/debug",)


def test_baseline_for_exempts_the_other_known_namespaces() -> None:
    plan = PolicyPlan(isolated_namespaces=("shop",))
    baseline = baseline_for(
        plan, namespaces=("kube-system", "shop", "web"), cluster_dns=ClusterDns(), nodes=()
    )
    assert baseline is not None and baseline.exempt_namespaces == ("kube-system", "web")
    assert (
        baseline_for(PolicyPlan(), namespaces=("shop",), cluster_dns=ClusterDns(), nodes=()) is None
    )


def read_back(files: dict[str, str]) -> PolicySet:
    return parse_policy_texts(files).policies


def _without(files: dict[str, str], *paths: str) -> dict[str, str]:
    return {
        path: text for path, text in files.items() if path not in paths and path.endswith(".yaml")
    }


def test_the_safety_check_evaluates_the_baseline(analysis: Analysis) -> None:
    files = dict(analysis.files)
    facts = cluster_facts(analysis.snapshot, analysis.resolver)
    # Without cart's own policy, the baseline decides for cart: frontend's call is denied.
    with pytest.raises(UnsafePolicies, match="ClusterNetworkPolicy netpol-sniffer-baseline"):
        check_safety(read_back(_without(files, "shop.cart.yaml")), analysis.graph, facts)
    # Without the baseline either, nothing isolates cart: allowed.
    check_safety(
        read_back(_without(files, "shop.cart.yaml", BASELINE_FILE)),
        analysis.graph,
        facts,
    )


def test_verify_names_the_cluster_policy(
    analysis: Analysis, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_output(analysis.files, tmp_path / "out")
    only = tmp_path / "only"
    only.mkdir()
    (only / BASELINE_FILE).write_text(analysis.files[BASELINE_FILE])
    bundle = str(analysis.bundle.root)
    assert main(["verify", bundle, str(tmp_path / "out")]) == ExitStatus.OK
    assert "(2 NetworkPolicies, 1 ClusterNetworkPolicy)" in capsys.readouterr().out
    # The baseline alone is a policy set, not "nothing found": it denies what was observed.
    assert main(["verify", bundle, str(only), "--json"]) == ExitStatus.DENIED
    verdict = json.loads(capsys.readouterr().out)
    assert verdict["cluster_network_policies"] == ["netpol-sniffer-baseline"]


def _namespaces(document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    return (item for item in document["items"] if item["kind"] == "Namespace")


def test_notes_for_a_snapshot_without_namespaces_and_an_exempt_label(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "bundle")
    document = json.loads((bundle / "snapshot.json").read_text())
    labelled = copy.deepcopy(document)
    for namespace in _namespaces(labelled):
        if namespace["metadata"]["name"] == "shop":
            namespace["metadata"]["labels"][EXEMPT_LABEL] = "exempt"
    (bundle / "snapshot.json").write_text(json.dumps(labelled))
    notes = analyse(open_bundle(bundle), baseline=True, workers=1).notes
    assert any("namespace shop is labelled netpol-sniffer.io/baseline=exempt" in n for n in notes)
    document["items"] = [item for item in document["items"] if item["kind"] != "Namespace"]
    (bundle / "snapshot.json").write_text(json.dumps(document))
    notes = analyse(open_bundle(bundle), baseline=True, workers=1).notes
    assert any("the snapshot lists no Namespace objects" in n for n in notes)


def test_the_cli_option(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "bundle")
    out = tmp_path / "out"
    assert (
        main(["analyse", str(bundle), "--out", str(out), "--baseline", "cluster"]) == ExitStatus.OK
    )
    assert (out / BASELINE_FILE).is_file()
    assert not list(out.glob("*default-deny-all.yaml"))
    with pytest.raises(SystemExit) as exit_info:
        main(["analyse", str(bundle), "--out", str(out), "--baseline", "namespaces"])
    assert exit_info.value.code == ExitStatus.USAGE


def test_the_schema_check_refuses_a_misspelt_or_out_of_range_field(analysis: Analysis) -> None:
    document = yaml.safe_load(analysis.files[BASELINE_FILE])
    misspelt = copy.deepcopy(document)
    misspelt["spec"]["egress"][0]["protocol"] = misspelt["spec"]["egress"][0].pop("protocols")
    with pytest.raises(jsonschema.ValidationError, match="protocol"):
        assert_valid(misspelt)
    too_big = copy.deepcopy(document)
    too_big["spec"]["priority"] = 1001
    with pytest.raises(jsonschema.ValidationError):
        assert_valid(too_big)


@pytest.mark.parametrize("text", IN_YAML_VALUES.values(), ids=IN_YAML_VALUES.keys())
def test_hostile_text_in_the_baseline_parses_back_to_exactly_the_model(text: str) -> None:
    # Labels are checked where they enter (the snapshot); rendering keeps them inert anyway.
    dns = PodPeer(LabelSelector((("k8s-app", text),)), "kube-system", text)
    baseline = Baseline(("kube-system",), (dns,), DNS_PORTS)
    document = yaml.safe_load(render_baseline(baseline, provenance=Provenance(text, text)))
    assert document == baseline_object(baseline, provenance=Provenance(text, text))


def test_a_namespace_name_no_api_server_stores_is_a_render_error() -> None:
    for baseline in (
        Baseline(("evil\u2028- x",), (DEFAULT_DNS_PEER,), DNS_PORTS),
        Baseline((), (PodPeer(LabelSelector(), None),), DNS_PORTS),
    ):
        with pytest.raises(RenderError, match="is not a valid namespace name"):
            render_baseline(baseline, provenance=PROVENANCE)


def test_a_bare_pod_without_labels_keeps_its_namespace_out_and_is_listed(tmp_path: Path) -> None:
    bundle = copy_example(tmp_path / "bundle")
    document = snapshot(bundle)
    items: list[dict[str, Any]] = document["items"]  # type: ignore[assignment]
    frontend = next(
        i for i in items if i["kind"] == "Pod" and i["metadata"]["name"].startswith("frontend")
    )
    debug = copy.deepcopy(frontend)
    debug["metadata"] = {
        "name": "debug",
        "namespace": "default",
        "uid": "uid-debug",
        "creationTimestamp": frontend["metadata"]["creationTimestamp"],
    }
    debug["status"]["podIP"], debug["status"]["podIPs"] = "10.244.0.50", [{"ip": "10.244.0.50"}]
    items.append(debug)
    write_snapshot(bundle, document)
    start = window_start(bundle) + 1
    add_capture(
        bundle, "frontend", handshake("10.244.0.50", 41000, pod_ip(bundle, "frontend"), 8080, start)
    )
    analysis = analyse(open_bundle(bundle), baseline=True, workers=1)
    assert analysis.baseline is None and BASELINE_FILE not in analysis.files
    assert "default/Pod/debug" in analysis.unselectable
    assert any(note.startswith("no cluster baseline") for note in analysis.notes)


def test_diff_shows_what_the_baseline_denies_to_a_workload_without_a_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    analysis = analyse(open_bundle(EXAMPLE), baseline=True, workers=1)
    old, new = tmp_path / "old", tmp_path / "new"
    # Both without emailservice's own policy; the new set with the baseline.
    policies = [p for p in analysis.policy_files if p != "default.emailservice.yaml"]
    for folder, files in ((old, [p for p in policies if p != BASELINE_FILE]), (new, policies)):
        folder.mkdir()
        for path in files:
            (folder / path).write_text(analysis.files[path])
    assert main(["diff", str(old), str(new), "--snapshot", str(EXAMPLE)]) == ExitStatus.OK
    lines = capsys.readouterr().out.splitlines()
    email, dns = "default/Deployment/emailservice", "kube-system/Deployment/coredns"
    assert f"- default/Deployment/checkoutservice → {email}: 8080/TCP" in lines
    assert f"- {email} → ip:::/0: all ports" in lines
    # DNS stays open: everything else to the DNS pods is denied.
    assert (
        f"- {email} → {dns}: all SCTP ports, 1-52/TCP, 54-65535/TCP, 1-52/UDP, 54-65535/UDP"
        in lines
    )
    assert not any("172.18.0.2" in line for line in lines)  # the node: accepted
    assert lines[-1] == "pairs gaining ports: 0, pairs losing ports: 7"
