"""Shared pytest configuration: markers for tests that need root; a cache home of the tests' own."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Tests that need root fail loudly in CI (root) and are skipped with a reason elsewhere.
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (network namespaces, iptables, tcpdump)")
    for item in items:
        if "root" in item.keywords or "lab" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _no_cache_in_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    # analyse keeps compiled templates under $XDG_CACHE_HOME (cli.caches): the tests' go to a
    # temporary folder of their own (shared by the session, as one user's runs share theirs),
    # never ~/.cache. Session-wide, so it is set before any fixture runs analyse (module-scoped
    # ones included); subprocesses inherit it. Tests of the cache itself point it elsewhere.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
        yield
