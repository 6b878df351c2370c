"""Measured CPU latency of a model's forward pass, with ``torch.utils.benchmark``.

The model runs in eval mode under ``torch.inference_mode()`` (every module's training flag is
restored afterwards). ``torch.utils.benchmark.Timer`` warms up, picks how many calls to time
per block and reports the median time of one call.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils import benchmark

from .flops import ExampleInputs, as_tuple, evaluating


def measure_latency(
    model: nn.Module,
    example_inputs: ExampleInputs,
    *,
    min_run_time: float = 1.0,
    threads: int | None = None,
) -> float:
    """Median seconds of one forward pass of ``example_inputs``, timed for at least
    ``min_run_time`` seconds on ``threads`` torch threads (default: the current number)."""
    if min_run_time <= 0:
        raise ValueError(f"min_run_time must be positive, got {min_run_time}")
    threads = torch.get_num_threads() if threads is None else threads
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    inputs = as_tuple(example_inputs)
    with evaluating(model), torch.inference_mode():
        timer = benchmark.Timer(
            stmt="model(*inputs)", globals={"model": model, "inputs": inputs}, num_threads=threads
        )
        return timer.blocked_autorange(min_run_time=min_run_time).median


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block on ``threads`` torch threads (``None``: the current number), and
    restore the number after. ``torch.compile`` generates its CPU kernels for the number of
    threads it compiles under, so compile and time a model in the same block."""
    before = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True)
class LatencyComparison:
    """Two models timed side by side: each one's median seconds per forward pass, and
    ``speedup``, the median over the alternating pairs of ``first / second`` (above 1: the
    second is faster)."""

    first: float
    second: float
    speedup: float


def compare_latency(
    first: nn.Module,
    second: nn.Module,
    example_inputs: ExampleInputs,
    *,
    repeats: int = 20,
    min_run_time: float = 0.1,
    threads: int | None = None,
) -> LatencyComparison:
    """Latencies of two models side by side: :func:`measure_latency` of each for
    ``min_run_time`` seconds, ``repeats`` times in alternation (first, second, then second,
    first, ...). Each pair's ratio is taken between measurements seconds apart, so the slow
    drifts of a noisy machine cancel out of ``speedup``, the median ratio."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    firsts, seconds = [], []
    for repeat in range(repeats):
        pair = (firsts, first), (seconds, second)
        for times, model in pair if repeat % 2 == 0 else reversed(pair):
            times.append(measure_latency(model, example_inputs, min_run_time=min_run_time, threads=threads))
    ratios = [a / b for a, b in zip(firsts, seconds)]
    return LatencyComparison(statistics.median(firsts), statistics.median(seconds), statistics.median(ratios))
