"""Hostile input against the Cilium format: what a pod's capture can make a CiliumNetworkPolicy
say. Text in an answer is never a name in a policy unless it is a valid DNS name the pod itself
was answered with; special addresses get no rule by name or by address; another pod's answers
name nothing in its policy; anywhere rules except the cluster's and the special networks; the
comment lines saying why each rule exists name only what the model holds, each one line."""

from __future__ import annotations

import ipaddress
import json
import shutil
from pathlib import Path

import pytest
import yaml

from analyser.analysing import PolicyFormat, PolicyOptions
from analyser.bundles import open_bundle
from analyser.cilium import cilium_plan
from analyser.rendering import Provenance, cilium_policy_object, policy_path
from analyser.windows import analyse_windows
from kernel.times import utc_text
from tests.bundle_builders import Frame, dns_exchange, handshake
from tests.cilium_helpers import lookup, schema_errors
from tests.hostile.hostile_helpers import (
    add_capture,
    copy_example,
    pod_ip,
    policy_files,
    run,
    window_start,
)
from tests.hostile.test_inert_output import (
    CLUSTER_DNS,
    HOSTILE_NAMES,
    LOADERS,
    frontend_calls_outside,
    objects,
    only_our_lines,
    without_dns_names,
)
from tests.hostile.test_rule_reasons import comments

FRONTEND = "default.frontend.yaml"


@pytest.fixture(scope="session")
def clean_cilium(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The Cilium policy files of the untouched bundle."""
    bundle = copy_example(tmp_path_factory.mktemp("clean-cilium") / "bundle")
    return policy_files(run(bundle, policy_format=PolicyFormat.CILIUM))


def test_text_that_is_no_dns_name_never_reaches_a_policy(
    bundle: Path, clean_cilium: dict[str, str]
) -> None:
    frontend = pod_ip(bundle, "frontend")
    start = window_start(bundle)
    hostile = 'x.example"\nkind: ClusterRole\n#'
    frames = [
        *lookup(frontend, hostile, [(hostile, "A", "203.0.113.30")], start, port=40200),
        *lookup(frontend, "a b.example", [("a b.example", "A", "203.0.113.30")], start, port=40201),
    ]
    add_capture(bundle, "frontend", frames)
    analysis = run(bundle, policy_format=PolicyFormat.CILIUM)
    assert policy_files(analysis) == clean_cilium
    for text in policy_files(analysis).values():
        assert "ClusterRole" not in text and "a b.example" not in text


def test_forged_names_add_no_rule_and_every_line_is_ours(bundle: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    shutil.copytree(bundle, plain)
    add_capture(plain, "frontend", frontend_calls_outside(plain, ()))
    add_capture(bundle, "frontend", frontend_calls_outside(bundle, HOSTILE_NAMES))
    expected = run(plain, policy_format=PolicyFormat.CILIUM)
    hostile = run(bundle, policy_format=PolicyFormat.CILIUM)
    window = hostile.window
    assert window is not None
    provenance = Provenance(window.start_text, window.end_text)
    plan = cilium_plan(hostile.plan, hostile.graph, exposures=hostile.exposures)
    for item in plan.policies:
        text = hostile.files[policy_path(item.policy.namespace, item.policy.name)]
        for loader in LOADERS:
            assert [d for d in yaml.load_all(text, Loader=loader) if d is not None] == [
                cilium_policy_object(item, provenance=provenance)
            ]
    assert without_dns_names(objects(hostile)) == without_dns_names(objects(expected))
    for path, text in hostile.files.items():
        if path != "graph.svg":
            only_our_lines(text)


def test_special_addresses_get_no_rule_by_name_or_address(
    bundle: Path, clean_cilium: dict[str, str]
) -> None:
    frontend = pod_ip(bundle, "frontend")
    start = window_start(bundle)
    name = "metadata.google.internal"
    frames = [
        *lookup(frontend, name, [(name, "A", "169.254.169.254")], start, port=40300),
        *handshake(frontend, 40301, "169.254.169.254", 80, start + 1),
    ]
    add_capture(bundle, "frontend", frames)
    analysis = run(bundle, policy_format=PolicyFormat.CILIUM)
    text = policy_files(analysis)[FRONTEND]
    assert "169.254.169.254" not in text
    assert "- toFQDNs:" not in text
    # Its lookup is one the pod made: the DNS rule may let it ask, never connect.
    clean = yaml.safe_load(clean_cilium[FRONTEND])["spec"]
    assert yaml.safe_load(text)["spec"]["ingress"] == clean["ingress"]
    left_out = analysis.summary()["left_out"]
    assert isinstance(left_out, list)
    assert {(item["address"], item["class"]) for item in left_out} == {
        ("169.254.169.254", "metadata")
    }


def test_an_answer_sent_to_another_pod_names_nothing_in_any_policy(
    bundle: Path, clean_cilium: dict[str, str]
) -> None:
    frontend, cart = pod_ip(bundle, "frontend"), pod_ip(bundle, "cartservice")
    start = window_start(bundle)
    name = "exfil.example"
    frames = [
        *lookup(cart, name, [(name, "A", "203.0.113.40")], start, port=40400),
        *handshake(cart, 40401, "203.0.113.40", 443, start + 1),
        # The frontend's own connection to that address: its answer went to cartservice.
        *handshake(frontend, 40402, "203.0.113.40", 443, start + 2),
    ]
    add_capture(bundle, "frontend", frames)
    analysis = run(bundle, policy_format=PolicyFormat.CILIUM)
    files = policy_files(analysis)
    assert files["default.cartservice.yaml"] == clean_cilium["default.cartservice.yaml"]
    assert name not in json.dumps(files)
    assert {
        "toCIDRSet": [{"cidr": "203.0.113.40/32"}],
        "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}]}],
    } in yaml.safe_load(files[FRONTEND])["spec"]["egress"]


def test_anywhere_rules_except_the_cluster_and_special_networks(bundle: Path) -> None:
    frontend = pod_ip(bundle, "frontend")
    start = window_start(bundle)
    frames = []
    for index in range(40):  # past --max-outside-addresses: one rule to anywhere on 443
        frames += handshake(frontend, 43000 + index, f"198.51.100.{index + 1}", 443, start + index)
    add_capture(bundle, "frontend", frames)
    analysis = run(bundle, policy_format=PolicyFormat.CILIUM)
    spec = yaml.safe_load(policy_files(analysis)[FRONTEND])["spec"]
    assert schema_errors(yaml.safe_load(policy_files(analysis)[FRONTEND])) == []
    (anywhere,) = [
        block
        for rule in spec["egress"]
        for block in rule.get("toCIDRSet", ())
        if block["cidr"] == "0.0.0.0/0"
    ]
    holes = [ipaddress.ip_network(hole) for hole in anywhere["except"]]
    for address in ("10.244.0.9", "169.254.169.254", "224.0.0.1", "255.255.255.255"):
        assert any(ipaddress.ip_address(address) in hole for hole in holes), address
    # Ingress from anywhere only as Cilium's world, on the exposed port alone.
    worlds = [rule for rule in spec["ingress"] if "fromEntities" in rule]
    assert {
        "fromEntities": ["world"],
        "toPorts": [{"ports": [{"port": "8080", "protocol": "TCP"}]}],
    } in worlds
    assert not any("0.0.0.0/0" in json.dumps(rule) for rule in spec["ingress"])


def test_forged_names_in_rule_comments_stay_in_their_comment_line(
    bundle: Path, clean_cilium: dict[str, str]
) -> None:
    """Forged names and one real name all answered with one address: the rule by name, and the
    comment lines above it, name the real one alone; every line of every file is ours."""
    frontend, at = pod_ip(bundle, "frontend"), window_start(bundle) + 1.0
    outside = "203.0.113.7"
    frames: list[Frame] = []
    for index, name in enumerate((*HOSTILE_NAMES, "api.shop.example")):
        frames += dns_exchange(frontend, CLUSTER_DNS, name, outside, at + index * 0.01)
    add_capture(bundle, "frontend", frames + handshake(frontend, 40123, outside, 443, at + 0.5))
    analysis = run(bundle, policy_format=PolicyFormat.CILIUM)
    text = analysis.files[FRONTEND]
    for path, written in analysis.files.items():
        if path != "graph.svg":
            only_our_lines(written)
    lines = comments(text)
    at_rule = lines.index("# api.shop.example: answered with 203.0.113.7")
    assert lines[at_rule + 1] == f"# TCP/443: 1 flow to {outside}, at {utc_text(at + 0.5)}"
    # Comments are no fields: the objects are the model's, comments or not.
    assert [d for d in yaml.safe_load_all(text) if d is not None] == [
        yaml.safe_load(policy_files(analysis)[FRONTEND])
    ]
    for fragment in ("evil.", "a.example.com", "b.example.com", "script", "[31m", "moc."):
        assert fragment not in "\n".join(lines), fragment


def test_a_hostile_bundle_folder_name_stays_in_its_comment_line(
    tmp_path: Path, clean_cilium: dict[str, str]
) -> None:
    """A bundle's folder name is its capture window's label, which the comments name when
    several bundles are analysed together: any text a folder name may hold."""
    label = 'monday\u2028    - fromEntities: ["all"]\x85# \x1b[2J'
    monday, tuesday = copy_example(tmp_path / label), copy_example(tmp_path / "tuesday")
    analysis = analyse_windows(
        [open_bundle(monday), open_bundle(tuesday)],
        PolicyOptions(policy_format=PolicyFormat.CILIUM),
        workers=1,
    )
    assert policy_files(analysis) == clean_cilium
    for path, text in analysis.files.items():
        if path != "graph.svg":
            only_our_lines(text)
    lines = comments(analysis.files[FRONTEND])
    assert any("; in monday\\u2028    - fromEntities" in line for line in lines), lines
