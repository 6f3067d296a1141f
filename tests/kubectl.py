"""The kubectl the tests that render manifests use: on PATH, else the one `make control-plane`
builds for the end-to-end tests. Tests that need it are marked ``kubectl``: they run in CI's
second stage, after that build, and fail (not skip) when it is missing."""

from __future__ import annotations

import functools
import shutil

import pytest

from tests.e2e.controlplane import binary_dir


@functools.cache
def kubectl() -> str:
    on_path = shutil.which("kubectl")
    if on_path:
        return on_path
    built = binary_dir() / "kubectl"
    if not built.is_file():
        pytest.fail("no kubectl on PATH and none built yet: run `make control-plane`")
    return str(built)
