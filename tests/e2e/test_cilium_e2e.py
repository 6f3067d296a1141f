"""The Cilium format as a real API server meets it: with the CiliumNetworkPolicy CRD of Cilium
v1.20.2 installed, ``kubectl apply`` accepts the cilium folder of ``analyse --format all`` (the
CRD's structural schema runs on the server), egress by name and the DNS rule included."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from analyser.analysing import PolicyFormat, analyse, write_output
from analyser.bundles import open_bundle
from tests.cilium_helpers import CRDS, named_egress
from tests.e2e.controlplane import ControlPlane
from tests.hostile.hostile_helpers import add_capture, copy_example, pod_ip, window_start

pytestmark = pytest.mark.e2e

CRD = CRDS / "cilium-v1.20.2-ciliumnetworkpolicies.yaml"


@pytest.fixture(scope="module")
def with_crd(control_plane: ControlPlane) -> Iterator[ControlPlane]:
    with control_plane.custom_resources(CRD):
        yield control_plane


@pytest.mark.parametrize("how", [["-f"], ["-k"]], ids=["-f", "-k"])
def test_kubectl_applies_the_cilium_policies(
    with_crd: ControlPlane, tmp_path: Path, how: list[str]
) -> None:
    bundle = copy_example(tmp_path / "bundle")
    add_capture(bundle, "frontend", named_egress(pod_ip(bundle, "frontend"), window_start(bundle)))
    analysis = analyse(
        open_bundle(bundle), workers=1, policy_format=PolicyFormat.ALL, default_deny=True
    )
    out = tmp_path / "out"
    write_output(analysis.files, out)
    assert "toFQDNs" in (out / "cilium" / "default.frontend.yaml").read_text()
    result = with_crd.kubectl(
        "apply", "--dry-run=server", "-o", "name", *how, str(out / "cilium"), check=False
    )
    assert result.returncode == 0, result.stderr
    applied = result.stdout.split()
    assert len(applied) == 13 and all(
        name.startswith("ciliumnetworkpolicy.cilium.io/") for name in applied
    )
    # The server's schema is the one the tests validate against: a numeric port is refused.
    text = (out / "cilium" / "default.frontend.yaml").read_text().replace('"443"', "443")
    refused = with_crd.kubectl("apply", "--dry-run=server", "-f", "-", stdin=text, check=False)
    assert refused.returncode != 0 and "port" in refused.stderr
