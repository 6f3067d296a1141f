"""Fixtures for the lab's end-to-end tests: run the lab into a temporary bundle and make sure
nothing it made is left behind, even when a test fails; print how long the lab runs took."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import netns
from tests.lab.lab_helpers import LAB_SECONDS, LabRun, LabRunner, own_namespaces


@pytest.fixture
def run_lab(tmp_path: Path) -> Iterator[LabRunner]:
    """``run_lab(manifests_yaml, plan_yaml, capture_mode=..., duration=..., vantage=...)`` →
    LabRun."""
    from kernel.capture import CaptureMode
    from lab.capturing import Vantage
    from lab.running import LabOptions
    from lab.running import run_lab as run

    count = 0

    def runner(
        manifests: str,
        plan: str,
        *,
        capture_mode: str = "handshake",
        duration: float | None = None,
        vantage: str = "pod",
    ) -> LabRun:
        nonlocal count
        count += 1
        folder = tmp_path / f"run{count}"
        folder.mkdir()
        (folder / "manifests.yaml").write_text(manifests)
        (folder / "plan.yaml").write_text(plan)
        started = time.monotonic()
        result = run(
            LabOptions(
                manifests=(folder / "manifests.yaml",),
                plan=folder / "plan.yaml",
                out=folder / "bundle",
                capture_mode=CaptureMode(capture_mode),
                duration=duration,
                vantage=Vantage(vantage),
            )
        )
        LAB_SECONDS.append(time.monotonic() - started)
        assert own_namespaces() == []
        return LabRun(result.out, result.truth, result.report)

    yield runner
    left = own_namespaces()
    for name in left:  # never leave them to the next test, even when this one failed
        netns.delete_namespace(name)
    assert left == [], f"the lab left namespaces behind: {left}"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if LAB_SECONDS:
        terminalreporter.write_line(
            f"lab: {len(LAB_SECONDS)} runs took {sum(LAB_SECONDS):.1f}s "
            f"(longest {max(LAB_SECONDS):.1f}s)"
        )
