"""Measured CPU latency of a model's forward pass, with ``torch.utils.benchmark``.

The model runs in eval mode under ``torch.inference_mode()`` (every module's training flag is
restored afterwards). ``torch.utils.benchmark.Timer`` warms up, picks how many calls to time
per block and reports the median time of one call.
"""

from __future__ import annotations

import statistics

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


def compare_latency(
    first: nn.Module,
    second: nn.Module,
    example_inputs: ExampleInputs,
    *,
    repeats: int = 3,
    min_run_time: float = 1.0,
    threads: int | None = None,
) -> tuple[float, float]:
    """Latencies of two models side by side: :func:`measure_latency` of each, ``repeats``
    times in alternation (first, second, second, first, ...), so that a noisy machine's
    drifts hit both; returns the median of each model's measurements."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    times: dict[int, list[float]] = {0: [], 1: []}
    for repeat in range(repeats):
        order = (0, 1) if repeat % 2 == 0 else (1, 0)
        for index in order:
            model = (first, second)[index]
            times[index].append(measure_latency(model, example_inputs, min_run_time=min_run_time, threads=threads))
    return statistics.median(times[0]), statistics.median(times[1])
