"""The cluster baseline (`analyse --baseline cluster`) on hostile input: it covers the whole
cluster, so nothing one pod's capture claims may widen it, and the namespace names it lists come
only from a snapshot whose names were checked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cli.main import ExitStatus, main
from tests.bundle_builders import dns_exchange, handshake, udp
from tests.hostile.hostile_helpers import (
    add_capture,
    copy_example,
    pod_ip,
    policy_files,
    run,
    snapshot,
    window_start,
    write_snapshot,
)

BASELINE_FILE = "ClusterNetworkPolicy.netpol-sniffer-baseline.yaml"
NODE = "172.18.0.2"  # the recorded bundle's node
CLUSTER_DNS = "10.96.0.10"


@pytest.fixture(scope="module")
def clean_baseline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The policy files of the untouched bundle, analysed with the baseline."""
    return policy_files(
        run(copy_example(tmp_path_factory.mktemp("clean") / "bundle"), baseline=True)
    )


def test_a_pods_forged_traffic_does_not_widen_the_baseline(
    bundle: Path, clean_baseline: dict[str, str]
) -> None:
    frontend, start = pod_ip(bundle, "frontend"), window_start(bundle) + 1
    frames = [
        # the node's ssh, etcd and kubelet, an outside resolver and address, a fake DNS answer
        *(
            frame
            for n, port in enumerate((22, 2379, 10250))
            for frame in handshake(frontend, 41000 + n, NODE, port, start + n)
        ),
        *dns_exchange(frontend, CLUSTER_DNS, "evil.example.com", "203.0.113.9", start + 4),
        *handshake(frontend, 41010, "203.0.113.9", 443, start + 5),
        (start + 6, udp(frontend, 41020, "8.8.8.8", 53, b"\x00" * 12)),
    ]
    add_capture(bundle, "frontend", frames)
    analysis = run(bundle, baseline=True)
    assert analysis.files[BASELINE_FILE] == clean_baseline[BASELINE_FILE]
    # frontend's own policy speaks for frontend: it got the node's ports (its own capture says so).
    assert analysis.files["default.frontend.yaml"] != clean_baseline["default.frontend.yaml"]


def test_a_hostile_namespace_name_is_a_clean_error_not_a_listed_exemption(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = snapshot(bundle)
    items: list[dict[str, Any]] = document["items"]  # type: ignore[assignment]
    items.append(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": 'team\u2028        - "default"', "labels": {}},
        }
    )
    write_snapshot(bundle, document)
    out = tmp_path / "out"
    status = main(
        ["analyse", str(bundle), "--out", str(out), "--baseline", "cluster", "--workers", "1"]
    )
    stderr = capsys.readouterr().err
    assert status == ExitStatus.ERROR
    (line,) = stderr.splitlines()
    assert "metadata.name" in line and "\\u2028" in line
    assert line.isprintable()
    assert not out.exists()
