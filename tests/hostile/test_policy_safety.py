"""Hostile input against what the policies allow: special addresses (cloud metadata endpoints,
multicast, broadcast, 0.0.0.0), one-way traffic to or from many outside addresses, spoofed TCP
handshakes, selectors that select more than their workload, captures linked out of the bundle.

Each attack is placed where a hostile workload can put it (its own capture, or a tampered
snapshot), and the policies must come out as the clean run's, with the attack reported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest
import yaml

from analyser.peers import SpecialAddress
from analyser.rendering import KUSTOMIZATION
from cli.main import ExitStatus, main
from tests.bundle_builders import ACK, SYN, Frame, handshake, tcp, udp
from tests.hostile.hostile_helpers import (
    NAMESPACE,
    add_capture,
    pod_folder,
    pod_ip,
    policy_files,
    run,
    snapshot,
    window_start,
    write_snapshot,
)

RST = 0x04
FRONTEND_POLICY = f"{NAMESPACE}.frontend.yaml"


def _special_traffic(frontend: str, at: float) -> list[Frame]:
    return [
        *handshake(frontend, 41000, "169.254.169.254", 80, at),
        (at + 2, udp(frontend, 41002, "239.255.255.250", 1900, b"M-SEARCH * HTTP/1.1\r\n")),
        (at + 3, udp(frontend, 68, "255.255.255.255", 67, b"\x01" * 240)),
        (at + 4, udp("0.0.0.0", 68, frontend, 67, b"\x01" * 240)),
    ]


def test_traffic_with_metadata_endpoints_and_multicast_is_left_out_and_reported(
    bundle: Path, clean_policies: dict[str, str]
) -> None:
    frontend = pod_ip(bundle, "frontend")
    add_capture(bundle, "frontend", _special_traffic(frontend, window_start(bundle) + 10))
    analysis = run(bundle)
    assert policy_files(analysis) == clean_policies
    left_out = analysis.summary()["left_out"]
    assert isinstance(left_out, list)
    assert {(item["address"], item["port"], item["class"]) for item in left_out} == {
        ("169.254.169.254", 80, "metadata"),
        ("239.255.255.250", 1900, "multicast"),
        ("255.255.255.255", 67, "broadcast"),
        ("0.0.0.0", 67, "unspecified"),
    }
    assert {item["workload"] for item in left_out} == {f"{NAMESPACE}/Deployment/frontend"}
    report = analysis.files["report.md"]
    assert "## Addresses left out of the policies" in report
    assert (
        f"| {NAMESPACE}/Deployment/frontend | egress | 169.254.169.254 | TCP/80 | a cloud metadata "
        "endpoint" in report
    )


def test_a_class_allowed_on_purpose_gets_its_rule_and_only_that_class(bundle: Path) -> None:
    frontend = pod_ip(bundle, "frontend")
    add_capture(bundle, "frontend", _special_traffic(frontend, window_start(bundle) + 10))
    analysis = run(bundle, allowed_special=frozenset({SpecialAddress.METADATA}))
    policy = policy_files(analysis)[FRONTEND_POLICY]
    assert 'cidr: "169.254.169.254/32"' in policy
    cidrs = {
        peer["ipBlock"]["cidr"]
        for side, key in (("ingress", "from"), ("egress", "to"))
        for rule in yaml.safe_load(policy)["spec"].get(side, [])
        for peer in rule[key]
        if "ipBlock" in peer
    }
    assert not cidrs & {"239.255.255.250/32", "255.255.255.255/32", "0.0.0.0/32"}
    assert {item.kind for item in analysis.left_out} == {
        SpecialAddress.MULTICAST,
        SpecialAddress.BROADCAST,
        SpecialAddress.UNSPECIFIED,
    }


def test_one_way_udp_to_or_from_many_outside_addresses_does_not_become_anywhere(
    bundle: Path, clean_policies: dict[str, str]
) -> None:
    """40 addresses sent to, 40 forged sources received from: nothing answered. Each address
    keeps a rule of its own in the frontend's policy (one-way protocols exist); none of it
    widens to 0.0.0.0/0, and no other policy changes."""
    frontend = pod_ip(bundle, "frontend")
    at = window_start(bundle) + 10
    frames = [
        (at + n / 100, udp(frontend, 42000 + n, f"198.51.100.{n + 1}", 8125, b"x:1|c"))
        for n in range(40)
    ] + [(at + n / 100, udp(f"203.0.113.{n + 1}", 40000, frontend, 8080, b"x")) for n in range(40)]
    add_capture(bundle, "frontend", frames)
    analysis = run(bundle)
    files = policy_files(analysis)
    # No anywhere beyond the clean run's (the frontend is exposed by its LoadBalancer on TCP 8080).
    assert all(
        text.count("0.0.0.0/0") == clean_policies[path].count("0.0.0.0/0")
        for path, text in files.items()
    )
    assert {path: text for path, text in files.items() if path != FRONTEND_POLICY} == {
        path: text for path, text in clean_policies.items() if path != FRONTEND_POLICY
    }
    assert files[FRONTEND_POLICY].count("/32") - clean_policies[FRONTEND_POLICY].count("/32") == 80


def _spoofed_syn(source: str, port: int, server: str, at: float, *, times: int) -> list[Frame]:
    """A SYN forged in ``source``'s name, the server's SYN+ACK, and the RST (no ACK) with which
    the real ``source`` disowns it, ``times`` over."""
    frames: list[Frame] = []
    for attempt in range(times):
        moment = at + attempt
        frames += [
            (moment, tcp(source, port, server, 8080, SYN)),
            (moment + 0.001, tcp(server, 8080, source, port, SYN | ACK)),
            (moment + 0.002, tcp(source, port, server, 8080, RST)),
        ]
    return frames


def test_spoofed_syns_answered_by_a_rst_are_not_established(
    bundle: Path, clean_policies: dict[str, str]
) -> None:
    """40 spoofed sources (more than --max-outside-addresses) and one repeated 8 times: the
    frontend answered with a SYN+ACK each time, the real hosts with a RST. No rule, no 0.0.0.0/0;
    every attempt is listed as never established."""
    frontend = pod_ip(bundle, "frontend")
    at = window_start(bundle) + 10
    frames = [
        frame
        for n in range(40)
        for frame in _spoofed_syn(f"203.0.113.{n + 1}", 40000 + n, frontend, at + n, times=1)
    ]
    frames += _spoofed_syn("192.0.2.99", 39999, frontend, at, times=8)
    add_capture(bundle, "frontend", frames)
    analysis = run(bundle)
    assert policy_files(analysis) == clean_policies
    spoofed = {
        a.client.removeprefix("ip:") for a in analysis.graph.attempts if frontend in a.servers
    }
    assert spoofed == {f"203.0.113.{n + 1}" for n in range(40)} | {"192.0.2.99"}


def _deployment(document: dict[str, object], name: str) -> dict[str, Any]:
    items = document["items"]
    assert isinstance(items, list)
    (found,) = (i for i in items if i["kind"] == "Deployment" and i["metadata"]["name"] == name)
    return found  # type: ignore[no-any-return]


def _add_deployment(document: dict[str, object], name: str, labels: dict[str, str]) -> None:
    """A Deployment scaled to 0 (no pod yet) whose pods would carry ``labels``."""
    items = document["items"]
    assert isinstance(items, list)
    items.append(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": NAMESPACE, "uid": f"uid-{name}"},
            "spec": {
                "replicas": 0,
                "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels}},
            },
        }
    )


def test_a_selector_by_key_only_is_narrowed_to_the_pod_labels(
    bundle: Path, clean_policies: dict[str, str]
) -> None:
    """frontend's Deployment selects `app` Exists (every pod of the namespace): its policy
    would apply to all of them. It is narrowed to its pod template's labels, app=frontend, as
    the clean run has it, with a warning."""
    document = snapshot(bundle)
    _deployment(document, "frontend")["spec"]["selector"] = {
        "matchExpressions": [{"key": "app", "operator": "Exists"}]
    }
    write_snapshot(bundle, document)
    analysis = run(bundle)
    assert policy_files(analysis) == clean_policies
    assert analysis.summary()["selector_warnings"] == [
        {
            "workload": f"{NAMESPACE}/Deployment/frontend",
            "warning": "its selector app names no label value (it would select every pod with "
            "those keys): narrowed to its pod labels app=frontend",
        }
    ]
    assert "## Selectors narrowed or too wide" in analysis.files["report.md"]


def test_a_selector_that_would_select_another_workloads_pods_excludes_them(
    bundle: Path, clean_policies: dict[str, str]
) -> None:
    """A Deployment 'lookalike' (no pods yet) whose pods would carry app=frontend plus a label of
    its own: frontend's policy and every rule naming frontend must not cover them."""
    document = snapshot(bundle)
    _add_deployment(document, "lookalike", {"app": "frontend", "role": "shadow"})
    write_snapshot(bundle, document)
    analysis = run(bundle)
    narrowed = (
        '"app": "frontend"\n'
        "    matchExpressions:\n"
        '      - key: "role"\n'
        '        operator: "DoesNotExist"'
    )
    files = policy_files(analysis)
    assert narrowed in files[FRONTEND_POLICY]
    naming_frontend = [path for path, text in clean_policies.items() if '"app": "frontend"' in text]
    assert len(naming_frontend) > 1  # frontend's own policy and its peers'
    for path in naming_frontend:
        assert files[path].count('operator: "DoesNotExist"') == clean_policies[path].count(
            '"app": "frontend"'
        ), path
    warnings = cast(list[dict[str, str]], analysis.summary()["selector_warnings"])
    assert [w["workload"] for w in warnings] == [f"{NAMESPACE}/Deployment/frontend"]


def test_a_workload_no_selector_tells_apart_gets_no_policy(
    bundle: Path, clean_policies: dict[str, str]
) -> None:
    """A Deployment 'twin' whose pods would carry exactly frontend's labels: no selector selects
    frontend's pods alone, so frontend gets no policy (the reason is given), and the rules
    naming it as a peer are flagged as admitting twin's pods too."""
    document = snapshot(bundle)
    _add_deployment(document, "twin", {"app": "frontend"})
    write_snapshot(bundle, document)
    analysis = run(bundle)
    files = policy_files(analysis)
    assert FRONTEND_POLICY not in files
    assert {p: t for p, t in files.items() if p != KUSTOMIZATION} == {
        p: t for p, t in clean_policies.items() if p not in (FRONTEND_POLICY, KUSTOMIZATION)
    }
    frontend = f"{NAMESPACE}/Deployment/frontend"
    assert analysis.unselectable_reasons == {
        frontend: f"its selector app=frontend also selects pods of {NAMESPACE}/Deployment/twin, "
        "and no stable label selects only its pods"
    }
    assert analysis.summary()["selector_warnings"] == [
        {
            "workload": frontend,
            "warning": "no stable label selects only its pods: where another policy names it "
            f"as a peer, its selector app=frontend admits the pods of {NAMESPACE}/Deployment/twin "
            "too",
        }
    ]


def test_a_capture_linked_out_of_the_bundle_is_not_read_and_its_bytes_go_nowhere(
    bundle: Path, tmp_path: Path, clean_policies: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"SECRET-SHADOW-LINE:$6$salt$hash\n" * 4)
    link = pod_folder(bundle, "frontend") / "capture.pcap1"
    link.symlink_to(secret)
    out = tmp_path / "out"
    status = main(["analyse", str(bundle), "-o", str(out), "--json"])
    captured = capsys.readouterr()
    assert status == ExitStatus.OK, captured.err
    report = (out / "report.md").read_text()
    for text in (captured.out, captured.err, report):
        assert "SECRET" not in text and secret.read_bytes()[:4].hex() not in text
    relative = link.relative_to(bundle).as_posix()
    assert f"warning: {relative}: a symbolic link to outside the bundle: not read" in captured.err
    assert policy_files(run(bundle)) == clean_policies


def test_a_metadata_endpoint_listed_as_a_node_address_is_not_a_node(
    bundle: Path, clean_policies: dict[str, str]
) -> None:
    """A tampered snapshot gives the node the address 169.254.169.254 (and a pod's hostIP the
    broadcast address): the rules for 'every node' must not carry them."""
    document = snapshot(bundle)
    items = document["items"]
    assert isinstance(items, list)
    (node,) = (i for i in items if i["kind"] == "Node")
    node["status"]["addresses"].append({"type": "InternalIP", "address": "169.254.169.254"})
    pod = next(i for i in items if i["kind"] == "Pod")
    pod["status"]["hostIPs"] = [{"ip": pod["status"]["hostIP"]}, {"ip": "255.255.255.255"}]
    write_snapshot(bundle, document)
    analysis = run(bundle)
    assert 'cidr: "172.18.0.2/32"' in "".join(clean_policies.values())
    assert policy_files(analysis) == clean_policies


def test_a_datagram_from_a_low_port_gives_the_receiver_no_egress_rule(
    bundle: Path, clean_policies: dict[str, str]
) -> None:
    """A datagram forged from 203.0.113.9:123 to frontend:40000, never answered: port heuristics
    would make frontend the client of 203.0.113.9:123 (an egress rule to wherever the sender
    likes). The one end that sent is the client: at most an ingress rule for what arrived."""
    frontend = pod_ip(bundle, "frontend")
    at = window_start(bundle) + 10
    add_capture(bundle, "frontend", [(at, udp("203.0.113.9", 123, frontend, 40000, b"x" * 48))])
    analysis = run(bundle)
    policy = yaml.safe_load(policy_files(analysis)[FRONTEND_POLICY])
    clean = yaml.safe_load(clean_policies[FRONTEND_POLICY])
    assert policy["spec"]["egress"] == clean["spec"]["egress"]
    (flow,) = (f for f in analysis.flows if f.client.ip == "203.0.113.9")
    assert (flow.server.ip, flow.server.port) == (frontend, 40000)
