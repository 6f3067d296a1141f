"""A small progress bar on stderr, and the steps after it, shown only when stderr is a terminal."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import TextIO


class Progress:
    """``with Progress("reading", total=n) as bar: bar.advance(k)``; silent when not a TTY.

    ``bar.step("orienting 5,234,567 conversations")`` says what runs after the counted work (on
    a day's bundle, as long again): each step on a line of its own, which gets the time the step
    took when the next step starts, the counting goes on (the bar is drawn again below) or the
    bar's block ends.
    """

    def __init__(
        self, label: str, *, total: int | None = None, stream: TextIO | None = None
    ) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty()
        self._last_draw = 0.0
        self._step: float | None = None  # when the step running started

    def __enter__(self) -> Progress:
        self._draw(force=True)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._step is not None:
            self._end_step()
            return
        self._draw(force=True)
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()

    def advance(self, amount: int = 1) -> None:
        self.done += amount
        if self._step is not None:  # counted work again (the next bundle's): the bar comes back
            self._end_step()
            self._draw(force=True)
            return
        self._draw()

    def step(self, text: str) -> None:
        """A step after the counted work (or the next one): ends the bar's line, or the step
        before's with the time it took, and shows ``text``."""
        if not self.enabled:
            return
        if self._step is None:
            self._draw(force=True)
            self.stream.write("\n")
        else:
            self._end_step()
        self.stream.write(f"{text} ...")
        self.stream.flush()
        self._step = time.monotonic()

    def _end_step(self) -> None:
        assert self._step is not None
        took = time.monotonic() - self._step
        self.stream.write(f" {took:.1f} s\n")
        self.stream.flush()
        self._step = None

    def _draw(self, *, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last_draw < 0.1:
            return
        self._last_draw = now
        if self.total:
            fraction = min(self.done / self.total, 1.0)
            filled = int(fraction * 30)
            bar = "#" * filled + "-" * (30 - filled)
            text = f"\r{self.label} [{bar}] {self.done}/{self.total}"
        else:
            text = f"\r{self.label} {self.done}"
        self.stream.write(text)
        self.stream.flush()


def reading_captures(captures: Iterable[Path]) -> Progress:
    """The bar ``analyse`` and ``verify`` show while reading ``captures``: bytes read of all."""
    return Progress("reading captures (bytes)", total=sum(path.stat().st_size for path in captures))
