"""The output folder of ``analyse`` as kubectl meets it: ``apply -f DIR``, ``apply -R -f DIR`` and
``apply -k DIR`` each send exactly the generated NetworkPolicies to a real API server, and nothing
else in the folder (the marker, the Kustomization, the graph, the report) trips them up."""

from __future__ import annotations

from pathlib import Path

import pytest

from analyser.analysing import analyse, write_output
from analyser.bundles import open_bundle
from tests.e2e.controlplane import ControlPlane

pytestmark = pytest.mark.e2e

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "microservices-demo" / "bundle"


@pytest.fixture(scope="module")
def output(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """analyse's output for the recorded bundle, written twice (the second run replaces the
    first: the marker must not get in the way either), and the expected policy names."""
    out = tmp_path_factory.mktemp("policies")
    analysis = analyse(open_bundle(EXAMPLE), workers=1, default_deny=True)
    write_output(analysis.files, out)
    write_output(analysis.files, out)
    names = sorted(
        f"networkpolicy.networking.k8s.io/{path.removesuffix('.yaml').split('.', 1)[1]}"
        for path in analysis.policy_files
    )
    return out, names


@pytest.mark.parametrize("how", [["-f"], ["-R", "-f"], ["-k"]], ids=["-f", "-R -f", "-k"])
def test_kubectl_applies_exactly_the_policies(
    control_plane: ControlPlane, output: tuple[Path, list[str]], how: list[str]
) -> None:
    out, expected = output
    result = control_plane.kubectl(
        "apply", "--dry-run=server", "-o", "name", *how, str(out), check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert sorted(result.stdout.split()) == expected
