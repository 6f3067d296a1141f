"""Shared pytest configuration: markers for tests that need root."""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Tests that need root fail loudly in CI (root) and are skipped with a reason elsewhere.
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (network namespaces, iptables, tcpdump)")
    for item in items:
        if "root" in item.keywords or "lab" in item.keywords:
            item.add_marker(skip)
