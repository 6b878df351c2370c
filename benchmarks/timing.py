"""Timing shared by the benchmark scripts: one call, and two calls side by side."""

from __future__ import annotations

import time
from collections.abc import Callable

Step = Callable[[], object]


def time_once(step: Step) -> float:
    """Seconds that one call of ``step`` takes."""
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def time_pair(index: int, step_a: Step, step_b: Step, timer: Callable[[Step], float] = time_once) -> tuple[float, float]:
    """Seconds of ``step_a`` and ``step_b``, ``a`` first for an even ``index`` and ``b`` first
    for an odd one, so that neither always runs in the wake of the other."""
    if index % 2 == 0:
        time_a = timer(step_a)
        return time_a, timer(step_b)
    time_b = timer(step_b)
    return timer(step_a), time_b
