"""FLOPs of a model and of each of its layers, counted by ``torch.utils.flop_counter``.

One forward pass of ``example_inputs`` runs in eval mode under ``torch.no_grad()`` (so batch
norm statistics and Taylor estimates are left alone); every module's training flag is
restored afterwards. A multiply-add counts as two FLOPs, as in ``FlopCounterMode``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

ExampleInputs = torch.Tensor | tuple[torch.Tensor, ...]


def flops_per_module(model: nn.Module, example_inputs: ExampleInputs) -> tuple[int, dict[str, int]]:
    """Total FLOPs of one forward pass, and the FLOPs of each named submodule."""
    counter = FlopCounterMode(display=False)
    with evaluating(model), torch.no_grad(), counter:
        model(*as_tuple(example_inputs))
    prefix = type(model).__name__ + "."
    per_module = {
        name[len(prefix):]: sum(counts.values())
        for name, counts in counter.get_flop_counts().items()
        if name.startswith(prefix)
    }
    return counter.get_total_flops(), per_module


def count_flops(model: nn.Module, example_inputs: ExampleInputs) -> int:
    """FLOPs of one forward pass of ``example_inputs``."""
    return flops_per_module(model, example_inputs)[0]


def count_parameters(model: nn.Module) -> int:
    """Number of parameter elements."""
    return sum(param.numel() for param in model.parameters())


@contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """Run the block with ``model`` in eval mode; every module's training flag comes back.

    The module of a ``torch.export`` program refuses ``eval()``: its mode was fixed when it
    was exported, so it runs as it is.
    """
    modes = {module: module.training for module in model.modules()}
    try:
        model.eval()
    except NotImplementedError:  # an exported program's module
        pass
    try:
        yield
    finally:
        for module, training in modes.items():
            module.training = training


def as_tuple(example_inputs: ExampleInputs) -> tuple[torch.Tensor, ...]:
    return example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
