"""A pod's capture widens only that pod's own policy: each side of a flow is vouched for by the
captures at that side. A flow frontend's capture claims with paymentservice (whose own capture
ran then and did not see it) gives frontend its egress rule and paymentservice nothing; the
mirror claim in paymentservice's capture gives frontend nothing. A side no capture could have
seen (an uncaptured backend, a flow before a rotated ring's first packet) is not held against.

The recorded window is 7 seconds long and its captures start within 1.4 s of it: crafted flows
meant to be covered by paymentservice's capture go at +6 s or later (its first packet, +0.5 s,
and five seconds for clock skew between nodes).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import dpkt
import pytest
import yaml

from cli.main import ExitStatus, main
from tests.bundle_builders import handshake
from tests.hostile.hostile_helpers import (
    NAMESPACE,
    add_capture,
    pod_folder,
    pod_ip,
    policy_files,
    run,
    window_start,
)

FRONTEND_POLICY = f"{NAMESPACE}.frontend.yaml"
PAYMENT_POLICY = f"{NAMESPACE}.paymentservice.yaml"
FRONTEND = f"{NAMESPACE}/Deployment/frontend"
PAYMENT = f"{NAMESPACE}/Deployment/paymentservice"
PAYMENT_SERVICE = "10.96.0.107"  # default/paymentservice's ClusterIP: 50051 → 50051
ADMIN_PORT = 9090  # nothing listens there: nobody uses it
COVERED = 6.0  # seconds after the window's start: paymentservice's capture covers it


def _rules(text: str, direction: str) -> list[dict[str, Any]]:
    """A policy's ingress or egress rules, parsed."""
    return list(yaml.safe_load(text)["spec"].get(direction) or [])


def _added(before: str, after: str, direction: str) -> list[dict[str, Any]]:
    """The rules of ``after`` that ``before`` does not have."""
    known = _rules(before, direction)
    return [rule for rule in _rules(after, direction) if rule not in known]


def _app(rule: dict[str, Any], side: str) -> str:
    [peer] = rule[side]
    return str(peer["podSelector"]["matchLabels"]["app"])


def test_a_forged_flow_in_the_client_s_capture_opens_only_its_own_egress(
    bundle: Path, clean_policies: dict[str, str]
) -> None:
    """frontend's capture claims frontend called paymentservice's admin port: frontend's
    egress gets it (its capture speaks for frontend), paymentservice's ingress does not."""
    frontend, payment = pod_ip(bundle, "frontend"), pod_ip(bundle, "paymentservice")
    add_capture(
        bundle,
        "frontend",
        handshake(frontend, 45000, payment, ADMIN_PORT, window_start(bundle) + COVERED),
    )

    analysis = run(bundle)

    policies = policy_files(analysis)
    assert policies[PAYMENT_POLICY] == clean_policies[PAYMENT_POLICY]
    assert {p for p, text in policies.items() if clean_policies.get(p) != text} == {FRONTEND_POLICY}
    before, after = clean_policies[FRONTEND_POLICY], policies[FRONTEND_POLICY]
    assert _rules(after, "ingress") == _rules(before, "ingress")
    [egress] = _added(before, after, "egress")
    assert (_app(egress, "to"), egress["ports"]) == (
        "paymentservice",
        [{"port": ADMIN_PORT, "protocol": "TCP"}],
    )
    assert analysis.summary()["unvouched_sides"] == 1
    [pair] = analysis.unvouched
    assert (pair.client, pair.server, pair.ports_text) == (FRONTEND, PAYMENT, "TCP/9090")
    report = analysis.files["report.md"]
    assert "## Traffic one side's capture did not vouch for" in report
    assert f"no ingress rule for it at {PAYMENT}" in report


def test_the_mirror_claim_in_the_server_s_capture_opens_only_its_own_ingress(
    bundle: Path, clean_policies: dict[str, str]
) -> None:
    """paymentservice's capture claims frontend called it: paymentservice's ingress admits
    frontend on that port, frontend's egress stays as it was."""
    frontend, payment = pod_ip(bundle, "frontend"), pod_ip(bundle, "paymentservice")
    add_capture(
        bundle,
        "paymentservice",
        handshake(frontend, 45000, payment, ADMIN_PORT, window_start(bundle) + COVERED),
    )

    analysis = run(bundle)

    policies = policy_files(analysis)
    assert policies[FRONTEND_POLICY] == clean_policies[FRONTEND_POLICY]
    before, after = clean_policies[PAYMENT_POLICY], policies[PAYMENT_POLICY]
    [ingress] = _added(before, after, "ingress")
    assert (_app(ingress, "from"), ingress["ports"]) == (
        "frontend",
        [{"port": ADMIN_PORT, "protocol": "TCP"}],
    )
    assert _rules(after, "egress") == _rules(before, "egress")
    [pair] = analysis.unvouched
    assert pair.why.startswith(f"not seen by the capture of {FRONTEND}")
    assert f"no egress rule for it at {FRONTEND};" in pair.why


def _service_call(bundle: Path, *, server_side: bool) -> None:
    """frontend calls paymentservice's ClusterIP (its capture); with ``server_side``,
    paymentservice's capture saw the same connection arrive from frontend's address."""
    frontend, payment = pod_ip(bundle, "frontend"), pod_ip(bundle, "paymentservice")
    at = window_start(bundle) + COVERED
    add_capture(bundle, "frontend", handshake(frontend, 45000, PAYMENT_SERVICE, 50051, at))
    if server_side:
        add_capture(bundle, "paymentservice", handshake(frontend, 45000, payment, 50051, at))


def test_a_service_call_both_captures_saw_is_vouched_for_on_both_sides(
    bundle: Path, clean_policies: dict[str, str]
) -> None:
    """The client's capture saw the ClusterIP, the server's the pod address: one connection,
    each side seen by its own capture, so both policies get their rule."""
    _service_call(bundle, server_side=True)

    analysis = run(bundle)

    policies = policy_files(analysis)
    [egress] = _added(clean_policies[FRONTEND_POLICY], policies[FRONTEND_POLICY], "egress")
    [ingress] = _added(clean_policies[PAYMENT_POLICY], policies[PAYMENT_POLICY], "ingress")
    assert (_app(egress, "to"), _app(ingress, "from")) == ("paymentservice", "frontend")
    assert egress["ports"] == ingress["ports"] == [{"port": 50051, "protocol": "TCP"}]
    assert analysis.summary()["unvouched_sides"] == 0


def test_a_service_call_the_captured_backend_never_saw_is_not_its_ingress(
    bundle: Path, clean_policies: dict[str, str]
) -> None:
    """Only frontend's capture has the call: the backend is assumed, but paymentservice's pod
    was captured then and saw no such connection, so it was not the one."""
    _service_call(bundle, server_side=False)

    analysis = run(bundle)

    assert policy_files(analysis)[PAYMENT_POLICY] == clean_policies[PAYMENT_POLICY]
    [pair] = analysis.unvouched
    assert (pair.client, pair.server, pair.ports_text) == (FRONTEND, PAYMENT, "TCP/50051")


def _forget_capture(bundle: Path, app: str) -> None:
    """The bundle without ``app``'s pod's captures (its folder and bundle.json entries)."""
    folder = pod_folder(bundle, app)
    shutil.rmtree(folder)
    manifest = json.loads((bundle / "bundle.json").read_text())
    manifest["captures"] = [e for e in manifest["captures"] if e["pod"] != folder.name]
    (bundle / "bundle.json").write_text(json.dumps(manifest, indent=2))


def test_an_assumed_backend_that_was_not_captured_keeps_its_ingress(bundle: Path) -> None:
    """paymentservice has no capture: nothing could vouch for its side, so the call frontend's
    capture saw reaches its policy (written with --default-deny from what others saw)."""
    _service_call(bundle, server_side=False)
    _forget_capture(bundle, "paymentservice")

    analysis = run(bundle, default_deny=True)

    [ingress] = [
        rule
        for rule in _rules(policy_files(analysis)[PAYMENT_POLICY], "ingress")
        if _app(rule, "from") == "frontend"
    ]
    assert ingress["ports"] == [{"port": 50051, "protocol": "TCP"}]
    assert analysis.summary()["unvouched_sides"] == 0


def _keep_from(bundle: Path, app: str, since: float) -> None:
    """``app``'s ring lost its oldest packets: its capture keeps those from ``since`` on (and
    bundle.json its new size and digest)."""
    [capture] = pod_folder(bundle, app).glob("capture.pcap*")
    with capture.open("rb") as stream:
        reader = dpkt.pcap.Reader(stream)
        linktype = reader.datalink()
        kept = [(at, bytes(frame)) for at, frame in reader if at >= since]
    with capture.open("wb") as stream:
        writer = dpkt.pcap.Writer(stream, linktype=linktype, nano=False)
        for at, frame in kept:
            writer.writepkt(frame, ts=at)
    manifest = json.loads((bundle / "bundle.json").read_text())
    for entry in manifest["captures"]:
        if entry["path"] == capture.relative_to(bundle).as_posix():
            entry["size"] = capture.stat().st_size
            entry["sha256"] = hashlib.sha256(capture.read_bytes()).hexdigest()
    (bundle / "bundle.json").write_text(json.dumps(manifest, indent=2))


@pytest.mark.parametrize(
    ("claimed_at", "payment_admits_it"),
    [(2.0, True), (11.0, False)],
    ids=["before-its-first-retained-packet", "while-it-was-captured"],
)
def test_a_flow_before_the_server_s_retained_capture_is_not_held_against_it(
    bundle: Path, clean_policies: dict[str, str], claimed_at: float, payment_admits_it: bool
) -> None:
    """paymentservice's ring kept its packets from +5 s on (first: +5.4 s): checkoutservice's
    calls at +0.5, +2.5 and +4.5 s are only in checkout's capture, and paymentservice still
    admits them. frontend's claim at +2 s could not have been seen either (so both sides get
    it); at +11 s paymentservice's capture ran, and did not see it."""
    start = window_start(bundle)
    _keep_from(bundle, "paymentservice", start + 5.0)
    frontend, payment = pod_ip(bundle, "frontend"), pod_ip(bundle, "paymentservice")
    add_capture(
        bundle, "frontend", handshake(frontend, 45000, payment, ADMIN_PORT, start + claimed_at)
    )

    analysis = run(bundle)

    policies = policy_files(analysis)
    added = _added(clean_policies[PAYMENT_POLICY], policies[PAYMENT_POLICY], "ingress")
    assert [(_app(rule, "from"), rule["ports"]) for rule in added] == (
        [("frontend", [{"port": ADMIN_PORT, "protocol": "TCP"}])] if payment_admits_it else []
    )
    kept = [rule for rule in _rules(policies[PAYMENT_POLICY], "ingress") if rule not in added]
    assert kept == _rules(clean_policies[PAYMENT_POLICY], "ingress")
    assert analysis.summary()["unvouched_sides"] == (0 if payment_admits_it else 1)


def test_a_flow_dated_before_the_server_existed_is_never_excused(
    bundle: Path, clean_policies: dict[str, str]
) -> None:
    """frontend's capture dates its claim to 2001, before every pod the inputs know: it still
    resolves to paymentservice (the earliest claim on its address), but paymentservice did not
    exist then, so no capture of it could have been missing it."""
    frontend, payment = pod_ip(bundle, "frontend"), pod_ip(bundle, "paymentservice")
    add_capture(bundle, "frontend", handshake(frontend, 45000, payment, ADMIN_PORT, 978_307_200.0))

    analysis = run(bundle)

    assert policy_files(analysis)[PAYMENT_POLICY] == clean_policies[PAYMENT_POLICY]
    assert analysis.summary()["unvouched_sides"] == 1


def test_analyse_warns_and_verify_reports_the_claim_without_failing(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """On the command line: a warning for the pair, ``unvouched_sides`` in --json; verify of
    the written policies passes (paymentservice's ingress is not held to frontend's claim) and
    lists the connection as not checked there, also in its --json."""
    frontend, payment = pod_ip(bundle, "frontend"), pod_ip(bundle, "paymentservice")
    add_capture(
        bundle,
        "frontend",
        handshake(frontend, 45000, payment, ADMIN_PORT, window_start(bundle) + COVERED),
    )
    out = tmp_path / "out"

    status = main(["analyse", str(bundle), "--out", str(out), "--workers", "1", "--json"])
    captured = capsys.readouterr()

    assert status == ExitStatus.OK
    assert json.loads(captured.out)["unvouched_sides"] == 1
    assert (
        f"netpol-sniffer analyse: warning: {FRONTEND} → {PAYMENT} (TCP/9090): not seen by the "
        f"capture of {PAYMENT} while it ran (or dated before that pod existed): no ingress rule "
        f"for it at {PAYMENT}; only the other side's captures claim it"
    ) in captured.err.splitlines()

    assert main(["verify", str(bundle), str(out)]) == ExitStatus.OK
    text = capsys.readouterr().out
    assert "OK: every observed flow is allowed" in text
    assert f"  {FRONTEND} → {PAYMENT} 9090/TCP: not checked at ingress of {PAYMENT}" in text
    assert main(["verify", str(bundle), str(out), "--json"]) == ExitStatus.OK
    document = json.loads(capsys.readouterr().out)
    assert document["passed"] and document["unvouched"] == [
        {
            "client": FRONTEND,
            "server": PAYMENT,
            "protocol": "TCP",
            "port": ADMIN_PORT,
            "unchecked": ["ingress"],
        }
    ]
