"""Helpers of the single-layer tests: hypothesis strategies of indices and convolution
options, one backward pass, and the snapshots that removals and failed drops are checked against."""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
import torch
from hypothesis import strategies as st
from torch import nn
from torch.testing import assert_close

from prunable_nn import PrunableLayer

DOUBLE = torch.float64
SIZE_ATTRIBUTES = ("in_channels", "out_channels", "groups", "num_features", "in_features", "out_features")
assert_equal = functools.partial(assert_close, rtol=0, atol=0)

INDEX_FORMATS = st.sampled_from([list, tuple, torch.tensor, np.array])
CONV_CONFIGS = st.fixed_dictionaries(
    {
        "kernel_size": st.integers(1, 3),
        "stride": st.integers(1, 2),
        "padding": st.integers(0, 1),
        "dilation": st.integers(1, 2),
        "bias": st.booleans(),
    }
)


# -- helpers ----------------------------------------------------------------------------------------
def run_backward(layer: nn.Module, x: torch.Tensor) -> None:
    """One training backward pass: fills ``.grad`` and the layer's estimates (the input
    requires grad so that a layer without parameters records too)."""
    out = layer(x.detach().requires_grad_())
    (out * torch.randn_like(out)).sum().backward()


def no_grad_forward(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return layer(x)


def channels_to_drop(data: st.DataObject, size: int) -> list[int]:
    """Distinct channels of ``range(size)``, in any order, at least one and not all."""
    return data.draw(
        st.lists(st.integers(0, size - 1), min_size=1, max_size=size - 1, unique=True), label="drop"
    )


def kept(size: int, drop: list[int]) -> torch.Tensor:
    return torch.tensor([k for k in range(size) if k not in drop], dtype=torch.long)


class Before(NamedTuple):
    """A layer's parameters (the objects and clones of their values and gradients) and estimates."""

    objects: dict[str, nn.Parameter]
    values: dict[str, torch.Tensor]
    grads: dict[str, torch.Tensor]
    estimates: torch.Tensor

    @classmethod
    def of(cls, layer: PrunableLayer) -> Before:
        params = dict(layer.named_parameters())
        return cls(
            objects=params,
            values={name: p.detach().clone() for name, p in params.items()},
            grads={name: p.grad.clone() for name, p in params.items()},
            estimates=layer.taylor_estimates.clone(),
        )


def assert_parameters_follow(
    layer: PrunableLayer, before: Before, dims: dict[str, int], keep: torch.Tensor
) -> None:
    """Every parameter is the same object; its value and ``.grad`` are the old ones sliced at
    ``keep`` along ``dims[name]`` (unchanged when the name is not in ``dims``)."""
    params = dict(layer.named_parameters())
    assert params.keys() == before.objects.keys()
    for name, param in params.items():
        assert param is before.objects[name], f"{name} is a new Parameter object"
        dim = dims.get(name)
        pairs = {name: (param.detach(), before.values[name]), f"{name}.grad": (param.grad, before.grads[name])}
        for what, (now, old) in pairs.items():
            expected = old if dim is None else old.index_select(dim, keep)
            assert_equal(now, expected, msg=lambda m, what=what: f"{what}: {m}")


def snapshot(layer: PrunableLayer) -> dict:
    """Everything a failed drop must leave as it was."""
    return {
        "sizes": {name: getattr(layer, name) for name in SIZE_ATTRIBUTES if hasattr(layer, name)},
        "state": {key: value.clone() for key, value in layer.state_dict().items()},
        "grads": {name: p.grad.clone() for name, p in layer.named_parameters() if p.grad is not None},
        "estimates": layer.taylor_estimates.clone(),
        "examples": layer.examples_seen,
    }


OPTIMIZERS = {
    "SGD momentum": lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9),
    "Adam": lambda params: torch.optim.Adam(params, lr=0.05),
    "Adam amsgrad": lambda params: torch.optim.Adam(params, lr=0.05, amsgrad=True),
}


PER_ELEMENT_STATE = {"momentum_buffer", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}


def channel_mask(size: int, keep: torch.Tensor) -> torch.Tensor:
    mask = torch.zeros(size, dtype=DOUBLE)
    mask[keep] = 1
    return mask


def train_step(optimizer: torch.optim.Optimizer, output: torch.Tensor) -> torch.Tensor:
    optimizer.zero_grad()
    loss = (output - 0.3).square().sum()
    loss.backward()
    optimizer.step()
    return loss


def map_input(channels: int, size: int = 5) -> torch.Tensor:
    return torch.randn(3, channels, size, size, dtype=DOUBLE)


def randomized(module: nn.Module) -> nn.Module:
    """``module`` with every floating-point parameter and buffer drawn at random (positive,
    so that running variances stay valid)."""
    with torch.no_grad():
        for tensor in module.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand_like(tensor) + 0.5)
    return module
