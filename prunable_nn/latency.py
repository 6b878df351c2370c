"""Measured CPU latency of a model's forward pass, with ``torch.utils.benchmark``.

The model runs in eval mode under ``torch.inference_mode()`` (every module's training flag is
restored afterwards). ``torch.utils.benchmark.Timer`` warms up, picks how many calls to time
per block and reports the median time of one call.
"""

from __future__ import annotations

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
