"""Fixtures of the hostile-input suite: a fresh copy of the recorded bundle per test, and the
policies of the clean run to compare with."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.hostile.hostile_helpers import copy_example, policy_files, run


@pytest.fixture(scope="session")
def clean_policies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The policy files of the untouched bundle."""
    return policy_files(run(copy_example(tmp_path_factory.mktemp("clean") / "bundle")))


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    """A copy of the recorded bundle that a test may tamper with."""
    return copy_example(tmp_path / "bundle")
