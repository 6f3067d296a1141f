"""The cluster baseline as a real API server meets it: with the ClusterNetworkPolicy CRD of
network-policy-api v0.3.0 installed, ``kubectl apply`` accepts the output folder of ``analyse
--baseline cluster`` (the CRD's OpenAPI schema and its CEL rules run on the server), and the
baseline of a big cluster, split within the CRD's limits, too."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from analyser.analysing import analyse, write_output
from analyser.baselines import Baseline
from analyser.bundles import open_bundle
from analyser.peers import DEFAULT_DNS_PEER, DNS_PORTS, IpPeer
from analyser.rendering import Provenance, render_baseline
from tests.e2e.controlplane import ControlPlane

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "microservices-demo" / "bundle"
CRD = ROOT / "tests" / "data" / "crds" / "network-policy-api-v0.3.0-clusternetworkpolicies.yaml"
BASELINE = "clusternetworkpolicy.policy.networking.k8s.io/netpol-sniffer-baseline"


@pytest.fixture(scope="module")
def with_crd(control_plane: ControlPlane) -> Iterator[ControlPlane]:
    with control_plane.custom_resources(CRD):
        yield control_plane


@pytest.mark.parametrize("how", [["-f"], ["-k"]], ids=["-f", "-k"])
def test_kubectl_applies_the_baseline_with_the_policies(
    with_crd: ControlPlane, tmp_path: Path, how: list[str]
) -> None:
    analysis = analyse(open_bundle(EXAMPLE), workers=1, baseline=True)
    write_output(analysis.files, tmp_path)
    result = with_crd.kubectl(
        "apply", "--dry-run=server", "-o", "name", *how, str(tmp_path), check=False
    )
    assert result.returncode == 0, result.stderr
    applied = result.stdout.split()
    assert BASELINE in applied
    assert len(applied) == len(analysis.policy_files)


def test_a_big_baseline_is_accepted_and_a_cidr_with_host_bits_is_not(
    with_crd: ControlPlane, tmp_path: Path
) -> None:
    baseline = Baseline(
        exempt_namespaces=tuple(f"team-{n:03}" for n in range(200)),
        dns=(DEFAULT_DNS_PEER,),
        dns_ports=DNS_PORTS,
        node_local_dns=(IpPeer("169.254.20.10/32"),),
        nodes=tuple(IpPeer(f"10.{n // 256}.{n % 256}.0/24") for n in range(1000)),
    )
    text = render_baseline(baseline, provenance=Provenance())
    applied = with_crd.kubectl("apply", "--dry-run=server", "-o", "name", "-f", "-", stdin=text)
    assert applied.stdout.split() == [BASELINE]
    # The server runs the CRD's CEL rules: the check our own reader makes is the server's.
    refused = with_crd.kubectl(
        "apply",
        "--dry-run=server",
        "-f",
        "-",
        stdin=text.replace("10.0.0.0/24", "10.0.0.1/24"),
        check=False,
    )
    assert refused.returncode != 0 and "Invalid CIDR format provided" in refused.stderr
