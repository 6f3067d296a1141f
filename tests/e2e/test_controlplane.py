"""The harness itself: the build module's go.mod, and a control plane that cleans up."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.e2e.controlplane import (
    KUBERNETES_VERSION,
    ControlPlane,
    ControlPlaneError,
    staging_replacements,
    throwaway_go_mod,
)

KUBERNETES_GO_MOD = """module k8s.io/kubernetes

go 1.24.0

require (
\tgo.etcd.io/etcd/client/v3 v3.6.4
\tk8s.io/api v0.0.0
\tk8s.io/kube-openapi v0.0.0-20250710124328-f3f2b991d03b
)

replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\tk8s.io/cri-client => ./staging/src/k8s.io/cri-client
\tk8s.io/kube-aggregator => ./staging/src/k8s.io/kube-aggregator
)
"""


def test_each_staging_module_is_pinned_to_the_published_v0_release() -> None:
    assert staging_replacements(KUBERNETES_GO_MOD, "v1.34.4") == {
        "k8s.io/api": "v0.34.4",
        "k8s.io/cri-client": "v0.34.4",
        "k8s.io/kube-aggregator": "v0.34.4",
    }


def test_the_build_module_requires_kubernetes_and_replaces_the_staging_modules() -> None:
    go_mod = throwaway_go_mod("v1.34.4", {"k8s.io/api": "v0.34.4"})
    assert "require k8s.io/kubernetes v1.34.4\n" in go_mod
    assert "\tk8s.io/api => k8s.io/api v0.34.4\n" in go_mod
    # Modules that are not staging keep the version kubernetes requires.
    assert "kube-openapi" not in go_mod


@pytest.mark.parametrize("version", ["1.34.4", "v1.34", "v0.34.4", "v1.34.4-rc.0"])
def test_a_version_that_is_not_a_release_is_refused(version: str) -> None:
    with pytest.raises(ControlPlaneError, match="not a Kubernetes release"):
        staging_replacements(KUBERNETES_GO_MOD, version)


def test_a_go_mod_without_staging_modules_is_refused() -> None:
    with pytest.raises(ControlPlaneError, match="no staging replace"):
        staging_replacements("module k8s.io/kubernetes\n", "v1.34.4")


@pytest.mark.e2e
def test_the_api_server_runs_the_pinned_release(control_plane: ControlPlane) -> None:
    versions = json.loads(control_plane.kubectl("version", "-o", "json").stdout)
    assert versions["serverVersion"]["gitVersion"] == KUBERNETES_VERSION


@pytest.mark.e2e
def test_a_stopped_control_plane_leaves_no_process_and_no_data(
    control_plane_binaries: Path,
) -> None:
    plane = ControlPlane(bin_dir=control_plane_binaries).start()
    pids = [process.popen.pid for process in plane._processes]
    assert [process.name for process in plane._processes] == [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
    ]
    plane.stop()
    assert not plane.workdir.exists()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
