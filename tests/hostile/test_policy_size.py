"""A policy a cluster takes, whatever the capture: a pod's own capture claiming connections to
another workload on thousands of ports, lookups of names under domains of their own (no pattern
folds them) with a connection to each answer, and datagrams sprayed at thousands of addresses,
all at once, reach every size bound together (``policies.MAX_RULE_BYTES``,
``cilium.MAX_FQDN_BYTES`` and ``MAX_DNS_NAME_BYTES``): each policy written, in both formats,
stays under the 256 KiB that client-side `kubectl apply` can store, and the output says what
was left out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from cli.main import ExitStatus, main
from tests.bundle_builders import dns_exchange, handshake, udp
from tests.hostile.hostile_helpers import add_capture, pod_ip, window_start

# What an object's annotations may take: `kubectl apply` keeps the whole object in one.
ANNOTATIONS_LIMIT = 256 * 1024


def test_every_policy_stays_under_what_kubectl_apply_can_store(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frontend, cart = pod_ip(bundle, "frontend"), pod_ip(bundle, "cartservice")
    start = window_start(bundle) + 10
    frames = []
    for n in range(6000):  # more ports than fit: some are left out
        frames += handshake(frontend, 30000 + n % 30000, cart, 1024 + n, start + n / 1000)
    for n in range(800):  # names just under the bounds: the Cilium policy at its biggest
        server, at = f"198.51.{n // 250}.{n % 250 + 1}", start + 100 + n / 1000
        frames += dns_exchange(frontend, "10.96.0.10", f"api.t{n}.example{n}.com", server, at)
        frames += handshake(frontend, 20000 + n, server, 443, at + 0.0005)
    for n in range(3000):  # one way only: the least evidence, left out first
        address = f"203.0.{n // 250}.{n % 250 + 1}"
        frames.append((start + 200 + n / 10000, udp(frontend, 41000, address, 9999, b"x")))
    add_capture(bundle, "frontend", frames, name="sizes.pcap")
    out = tmp_path / "out"
    status = main(["analyse", str(bundle), "--out", str(out), "--format", "all", "--json"])
    captured = capsys.readouterr()
    assert status == ExitStatus.OK, captured.err
    [side] = json.loads(captured.out)["rules_left_out"]
    assert side["workload"] == "default/Deployment/frontend" and side["peers"] > 3000
    assert "UDP/9999" in side["ports"] and "TCP/1024" not in side["ports"]
    sizes = {
        str(path.relative_to(out)): len(
            json.dumps(yaml.safe_load(path.read_text()), separators=(",", ":"))
        )
        for path in out.glob("*/*.yaml")
    }
    assert max(sizes.values()) < ANNOTATIONS_LIMIT, sizes
    # Both bounds of the NetworkPolicy and the Cilium policy near their fullest.
    assert sizes["networkpolicy/default.frontend.yaml"] > 120 * 1024
    assert sizes["cilium/default.frontend.yaml"] > 190 * 1024
