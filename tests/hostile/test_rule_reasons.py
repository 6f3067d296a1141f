"""The comment above each rule (why it exists: the flows behind it) counts only what the
policy's own side vouched for, and stays one inert comment line whatever a capture holds."""

from __future__ import annotations

from pathlib import Path

from kernel.times import utc_text
from tests.bundle_builders import Frame, dns_exchange, handshake
from tests.hostile.hostile_helpers import NAMESPACE, add_capture, pod_ip, run, window_start
from tests.hostile.test_inert_output import CLUSTER_DNS, HOSTILE_NAMES, only_our_lines
from tests.hostile.test_vouched_sides import COVERED

PAYMENT = f"{NAMESPACE}.paymentservice.yaml"


def comments(text: str) -> list[str]:
    return [line.strip() for line in text.split("\n") if line.lstrip().startswith("#")]


def test_a_capture_cannot_add_flows_to_another_workloads_rule_comments(
    bundle: Path, tmp_path: Path
) -> None:
    """frontend's capture claims 50 more calls to paymentservice: frontend's egress comment
    counts them (its own side), paymentservice's ingress comment does not (its capture did not
    see them, and it has one)."""
    clean = run(bundle)
    frontend, payment = pod_ip(bundle, "frontend"), pod_ip(bundle, "paymentservice")
    # After paymentservice's capture began (a flow before it would be excused: ``vouching``).
    start = window_start(bundle) + COVERED
    frames: list[Frame] = []
    for index in range(50):
        frames += handshake(frontend, 41000 + index, payment, 50051, start + index * 0.01)
    add_capture(bundle, "frontend", frames)
    claimed = run(bundle)
    assert comments(claimed.files[PAYMENT]) == comments(clean.files[PAYMENT])
    to_payment = f"# to {NAMESPACE}/Deployment/paymentservice"
    lines = comments(claimed.files[f"{NAMESPACE}.frontend.yaml"])
    assert lines[lines.index(to_payment) + 1].startswith("# TCP/50051: 50 flows, at ")


def test_names_in_a_capture_stay_inside_their_comment_line(bundle: Path) -> None:
    frontend, at = pod_ip(bundle, "frontend"), window_start(bundle) + 1.0
    outside = "203.0.113.7"
    frames: list[Frame] = []
    for index, name in enumerate(HOSTILE_NAMES):
        frames += dns_exchange(frontend, CLUSTER_DNS, name, outside, at + index * 0.01)
    add_capture(bundle, "frontend", frames + handshake(frontend, 40123, outside, 443, at + 0.5))
    text = run(bundle).files[f"{NAMESPACE}.frontend.yaml"]
    only_our_lines(text)
    assert f"# TCP/443: 1 flow, at {utc_text(at + 0.5)}" in comments(text)
