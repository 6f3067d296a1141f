"""The progress bar and the steps after it (``cli.progress``), on a fake terminal."""

from __future__ import annotations

import io
import re
import time

import pytest

from cli.progress import Progress


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """``time.monotonic`` as the test sets it."""
    now = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    return now


def test_each_step_gets_a_line_and_the_time_it_took(clock: list[float]) -> None:
    terminal = FakeTerminal()
    with Progress("reading", total=10, stream=terminal) as bar:
        bar.advance(10)
        bar.step("orienting 5 conversations")
        clock[0] += 2.25
        bar.step("building the graph")
        clock[0] += 61.0
    assert terminal.getvalue().endswith(
        "\rreading [##############################] 10/10\n"
        "orienting 5 conversations ... 2.2 s\n"
        "building the graph ... 61.0 s\n"
    )


def test_counting_after_a_step_draws_the_bar_again_below(clock: list[float]) -> None:
    # several bundles: each one's reading, then its steps
    terminal = FakeTerminal()
    with Progress("reading", total=10, stream=terminal) as bar:
        bar.advance(4)
        bar.step("orienting the first window")
        clock[0] += 1.0
        bar.advance(6)
    # each line as it shows: what the last carriage return left
    lines = [line.rsplit("\r", 1)[-1] for line in terminal.getvalue().split("\n")]
    assert lines == [
        "reading [############------------------] 4/10",
        "orienting the first window ... 1.0 s",
        "reading [##############################] 10/10",
        "",
    ]


def test_an_error_during_a_step_still_ends_its_line(clock: list[float]) -> None:
    terminal = FakeTerminal()
    with pytest.raises(RuntimeError), Progress("reading", total=1, stream=terminal) as bar:
        bar.advance(1)
        bar.step("building the graph")
        clock[0] += 0.5
        raise RuntimeError("boom")
    assert terminal.getvalue().endswith("building the graph ... 0.5 s\n")


def test_nothing_is_drawn_when_not_a_terminal() -> None:
    stream = io.StringIO()
    with Progress("reading", total=3, stream=stream) as bar:
        bar.advance(3)
        bar.step("orienting 3 conversations")
        bar.advance(0)
    assert stream.getvalue() == ""


def test_step_times_have_one_decimal(clock: list[float]) -> None:
    terminal = FakeTerminal()
    with Progress("reading", stream=terminal) as bar:
        bar.step("a step")
        clock[0] += 12.345
    assert re.search(r"a step \.\.\. 12\.3 s\n$", terminal.getvalue())
