"""A pod's capture speaks only for that pod: flows in which it is neither end are dropped as
foreign, and the DNS names it holds annotate only its own flows; names that are no valid DNS
names are never read."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from analyser import dns
from analyser.analysing import Analysis
from tests.bundle_builders import dns_exchange, handshake
from tests.hostile.hostile_helpers import (
    NAMESPACE,
    add_capture,
    copy_example,
    pod_folder,
    pod_ip,
    policy_files,
    run,
    snapshot,
    window_start,
    write_snapshot,
)

DNS_SERVICE = "10.96.0.10"  # kube-system/kube-dns in the recorded bundle
PAYMENT_PORT = 50051
OUTSIDE = "203.0.113.50"  # only paymentservice talks to it (in the DNS tests)


def _foreign_problems(analysis: Analysis) -> dict[str, str]:
    return {p.path: p.problem for p in analysis.problems if "dropped as foreign" in p.problem}


def test_a_pod_s_capture_cannot_speak_for_other_pods(
    bundle: Path, clean_policies: dict[str, str]
) -> None:
    """frontend's capture holds a handshake between redis-cart and paymentservice, and 40
    outside addresses calling paymentservice: without the filter, paymentservice would admit
    redis-cart and (past 32 addresses) 0.0.0.0/0."""
    start = window_start(bundle) + 1
    redis, payment = pod_ip(bundle, "redis-cart"), pod_ip(bundle, "paymentservice")
    frames = handshake(redis, 45000, payment, PAYMENT_PORT, start)
    for host in range(1, 41):
        frames += handshake(f"198.51.100.{host}", 46000, payment, PAYMENT_PORT, start + host)
    crafted = add_capture(bundle, "frontend", frames)

    analysis = run(bundle)

    assert policy_files(analysis) == clean_policies
    relative = crafted.relative_to(bundle).as_posix()
    assert _foreign_problems(analysis) == {
        relative: "41 flows in which this pod is neither end were dropped as foreign: a pod's "
        "capture speaks only for that pod"
    }
    assert analysis.summary()["foreign_flows"] == 41
    report = analysis.files["report.md"]
    assert "| foreign flows dropped | 41 " in report
    assert "41 flows in which this pod is neither end were dropped as foreign" in report
    assert "198.51.100." not in report and "198.51.100." not in analysis.files["graph.dot"]


def test_a_forged_flow_in_another_pod_s_capture_is_foreign(
    bundle: Path, clean_policies: dict[str, str]
) -> None:
    """redis-cart's capture claims frontend called paymentservice (they never talk)."""
    frontend, payment = pod_ip(bundle, "frontend"), pod_ip(bundle, "paymentservice")
    add_capture(
        bundle,
        "redis-cart",
        handshake(frontend, 45000, payment, PAYMENT_PORT, window_start(bundle) + 1),
    )

    analysis = run(bundle)

    assert policy_files(analysis) == clean_policies
    assert analysis.summary()["foreign_flows"] == 1
    [problem] = _foreign_problems(analysis).values()
    assert problem.startswith("1 flow in which this pod is neither end was dropped as foreign")


def test_a_capture_tied_to_two_pods_speaks_for_both_and_nobody_else(bundle: Path) -> None:
    """bundle.json ties a file in frontend's folder to redis-cart too (a confused or tampered
    bundle): a flow of either pod is kept, a flow between two others is foreign."""
    redis, checkout = pod_ip(bundle, "redis-cart"), pod_ip(bundle, "checkoutservice")
    payment = pod_ip(bundle, "paymentservice")
    start = window_start(bundle) + 1
    crafted = add_capture(
        bundle,
        "frontend",
        [
            *handshake(redis, 45000, payment, PAYMENT_PORT, start),
            *handshake(checkout, 45001, payment, PAYMENT_PORT, start + 1),
        ],
    )
    relative = crafted.relative_to(bundle).as_posix()
    redis_pod = pod_folder(bundle, "redis-cart").name
    manifest = json.loads((bundle / "bundle.json").read_text())
    manifest["captures"].append(
        {
            "namespace": NAMESPACE,
            "path": relative,
            "pod": redis_pod,
            "sha256": hashlib.sha256(crafted.read_bytes()).hexdigest(),
            "size": crafted.stat().st_size,
        }
    )
    (bundle / "bundle.json").write_text(json.dumps(manifest, indent=2))

    analysis = run(bundle)

    frontend_pod = pod_folder(bundle, "frontend").name
    assert _foreign_problems(analysis) == {
        relative: "1 flow in which neither end is one of the pods it is tied to (pod "
        f"{NAMESPACE}/{frontend_pod}, pod {NAMESPACE}/{redis_pod}) was dropped as foreign: a "
        "pod's capture speaks only for that pod"
    }
    payment_policy = policy_files(analysis)[f"{NAMESPACE}.paymentservice.yaml"]
    assert '"app": "redis-cart"' in payment_policy


def test_a_pod_s_word_about_its_own_flows_is_kept(
    bundle: Path, clean_policies: dict[str, str]
) -> None:
    """frontend's capture claims frontend called paymentservice: frontend is an end, so the flow
    is its own word and is kept, not foreign; but only about frontend's side. frontend's egress
    allows it; paymentservice's ingress does not, because paymentservice's own capture ran then
    and did not see it (tests/hostile/test_vouched_sides.py). Also its loopback traffic stays
    inside the pod: kept (counted, no rule)."""
    frontend, payment = pod_ip(bundle, "frontend"), pod_ip(bundle, "paymentservice")
    # Past paymentservice's first packet (+0.5 s) and the five seconds allowed for clock skew.
    start = window_start(bundle) + 6
    add_capture(
        bundle,
        "frontend",
        [
            *handshake(frontend, 45000, payment, PAYMENT_PORT, start),
            *handshake("127.0.0.1", 45001, "127.0.0.1", 15000, start + 1),
        ],
    )

    analysis = run(bundle)

    assert analysis.summary()["foreign_flows"] == 0
    assert not _foreign_problems(analysis)
    assert analysis.summary()["loopback_flows"] == 1
    changed = {
        path for path, text in policy_files(analysis).items() if clean_policies.get(path) != text
    }
    assert changed == {f"{NAMESPACE}.frontend.yaml"}
    assert '"app": "paymentservice"' in policy_files(analysis)[f"{NAMESPACE}.frontend.yaml"]
    assert analysis.summary()["unvouched_sides"] == 1


def test_a_pod_whose_address_nobody_knows_speaks_for_nothing(bundle: Path) -> None:
    """paymentservice's address is in no input (snapshot, meta.json, pod-ips.jsonl): none of its
    capture's flows can be told to be its own, and the warning says why."""
    payment = pod_ip(bundle, "paymentservice")
    document = snapshot(bundle)
    for item in document["items"]:  # type: ignore[attr-defined]
        if item["kind"] == "Pod" and item["metadata"]["name"].startswith("paymentservice-"):
            item["status"].pop("podIP", None)
            item["status"].pop("podIPs", None)
    write_snapshot(bundle, document)
    meta_path = pod_folder(bundle, "paymentservice") / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["ips"] = []
    meta_path.write_text(json.dumps(meta))
    history = bundle / "pod-ips.jsonl"
    lines = history.read_text().splitlines()
    history.write_text("".join(f"{line}\n" for line in lines if payment not in line))

    analysis = run(bundle)

    [problem] = _foreign_problems(analysis).values()
    assert problem.endswith(
        "dropped as foreign: no address of it is known (not in the snapshot's Pod, meta.json or "
        "pod-ips.jsonl), so no flow can be told to be its own"
    )


def _with_outside_service(bundle: Path) -> Path:
    """paymentservice really looks up pay.example and calls it, in its own capture."""
    payment = pod_ip(bundle, "paymentservice")
    start = window_start(bundle) + 1
    add_capture(
        bundle,
        "paymentservice",
        [
            *dns_exchange(payment, DNS_SERVICE, "pay.example", OUTSIDE, start),
            *handshake(payment, 41000, OUTSIDE, 443, start + 5),
        ],
        name="outside.pcap",
    )
    return bundle


def _dns_names_of(analysis: Analysis, path: str) -> dict[str, list[str]]:
    text = analysis.files[path]
    marker = '"netpol-sniffer.io/dns-names": '
    if marker not in text:
        return {}
    value = text.split(marker, 1)[1].split("\n", 1)[0]
    return json.loads(json.loads(value))  # type: ignore[no-any-return]


def test_a_forged_dns_answer_in_one_pod_s_capture_does_not_name_another_pod_s_peer(
    bundle: Path, tmp_path: Path
) -> None:
    """frontend's capture holds answers naming the outside address only paymentservice calls:
    one sent to frontend (its own lookup), one sent to paymentservice (foreign). Neither name
    reaches paymentservice's policy, the report or the graph."""
    clean = run(_with_outside_service(copy_example(tmp_path / "clean")))
    _with_outside_service(bundle)
    frontend, payment = pod_ip(bundle, "frontend"), pod_ip(bundle, "paymentservice")
    start = window_start(bundle)
    add_capture(
        bundle,
        "frontend",
        [
            *dns_exchange(frontend, DNS_SERVICE, "forged.example", OUTSIDE, start),
            *dns_exchange(payment, DNS_SERVICE, "also-forged.example", OUTSIDE, start + 0.5),
        ],
    )

    analysis = run(bundle)

    assert policy_files(analysis) == policy_files(clean)
    payment_policy = f"{NAMESPACE}.paymentservice.yaml"
    assert _dns_names_of(analysis, payment_policy) == {f"{OUTSIDE}/32": ["pay.example"]}
    for path, text in analysis.files.items():
        assert "forged.example" not in text, path
    assert analysis.summary()["foreign_flows"] == 1  # the answer sent to paymentservice


def test_names_that_are_no_dns_names_are_dropped_and_counted(bundle: Path, tmp_path: Path) -> None:
    """paymentservice's own capture answers its lookup with names holding a line separator (a
    YAML break-out), a bidi override and a space: they are left out, the valid one stays."""
    clean = run(_with_outside_service(copy_example(tmp_path / "clean")))
    _with_outside_service(bundle)
    payment = pod_ip(bundle, "paymentservice")
    bad_names = ["x\u2028- {}.example", "x\u202e.example", "two words.example"]
    frames = []
    for index, name in enumerate(bad_names):
        frames += dns_exchange(payment, DNS_SERVICE, name, OUTSIDE, window_start(bundle) + index)
    add_capture(bundle, "paymentservice", frames)

    analysis = run(bundle)

    assert policy_files(analysis) == policy_files(clean)
    assert analysis.traffic.dns_faults == {"bad_name": 3}
    for path, text in analysis.files.items():
        assert not any(char in text for char in "\u2028\u202e"), path
        assert "two words" not in text, path


def test_forged_answers_past_max_names_leave_names_out_not_rules_wider(
    bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """paymentservice's capture holds, before its real lookup, answers each naming a new
    address: its table of names stops growing at MAX_NAMES, the rest are left out with a warning
    naming the file, and the outside service it calls is then allowed by its address alone."""
    monkeypatch.setattr(dns, "MAX_NAMES", 20)
    _with_outside_service(bundle)
    payment = pod_ip(bundle, "paymentservice")
    frames = []
    for index in range(30):
        address = f"192.0.2.{index + 1}"
        frames += dns_exchange(
            payment, DNS_SERVICE, f"n{index}.example", address, window_start(bundle) + index / 10
        )
    add_capture(bundle, "paymentservice", frames, name="answers.pcap")

    analysis = run(bundle)

    relative = (pod_folder(bundle, "paymentservice") / "outside.pcap").relative_to(bundle)
    warnings = {p.path: p.problem for p in analysis.problems if "DNS name" in p.problem}
    forged = warnings.pop(relative.with_name("answers.pcap").as_posix())
    assert forged.startswith("40 DNS names (an address's, or a lookup) left out: ")
    assert "name more than 20, so the flows to the addresses only they name" in forged
    assert warnings == {relative.as_posix(): warnings[relative.as_posix()]}
    assert warnings[relative.as_posix()].startswith("2 DNS names")
    payment_policy = policy_files(analysis)[f"{NAMESPACE}.paymentservice.yaml"]
    assert _dns_names_of(analysis, f"{NAMESPACE}.paymentservice.yaml") == {}
    assert f"{OUTSIDE}/32" in payment_policy
    assert "0.0.0.0/0" not in payment_policy
