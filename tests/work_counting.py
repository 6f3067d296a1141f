"""Work counted in Python lines executed, not in seconds: a test can assert that a cost grows
linearly (4× the input, about 4× the lines; a quadratic loop gives 16×) on a machine where
timings are noise. Only the lines of the named modules are counted (and traced)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import FrameType, ModuleType
from typing import Any


def executed_lines(run: Callable[[], object], *, modules: tuple[ModuleType, ...]) -> int:
    """How many lines of ``modules`` executing ``run()`` went through."""
    files = {module.__file__ for module in modules}
    count = 0

    def lines(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal count
        if event == "line":
            count += 1
        return lines

    def calls(frame: FrameType, event: str, arg: Any) -> Any:
        return lines if frame.f_code.co_filename in files else None

    previous = sys.gettrace()
    sys.settrace(calls)
    try:
        run()
    finally:
        sys.settrace(previous)
    return count


def growth(work: Callable[[int], int], size: int, *, factor: int = 4) -> float:
    """How much ``work(n)`` grows from ``size`` to ``factor`` × ``size``, per unit of input
    growth: about 1 when linear, about ``factor`` when quadratic."""
    return work(size * factor) / work(size) / factor
