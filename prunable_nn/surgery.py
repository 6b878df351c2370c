"""Shrinking tensors in place of their owners: parameters, their gradients and optimizer state.

A parameter ``p`` of shape ``(..., C, ...)`` becomes ``p.index_select(dim, keep)``. The
``nn.Parameter`` object stays the same (an optimizer that holds it stays valid) but receives
a fresh autograd identity: changing ``p.data`` alone would leave autograd's gradient
accumulator expecting the old shape while an older graph (the user's last ``loss``) is alive.
The swap is the primitive under :func:`torch.utils.swap_tensors`, without that function's
use-count check: the old graph's saved variables may still hold the old tensor, and that is
fine, they keep it (a backward through the old graph then reaches only the old tensor). Its ``.grad`` and every optimizer state tensor shaped like ``p`` (SGD momentum, Adam
moments, ...) are sliced the same way, so surviving channels keep their state.
"""

from __future__ import annotations

import weakref

import torch
from torch import nn


def shrink_parameter(
    param: nn.Parameter,
    dim: int,
    keep: torch.Tensor,
    optimizer: torch.optim.Optimizer | None = None,
) -> None:
    """Keep only the slices ``keep`` of ``param`` along ``dim``, in place of the object."""
    old_shape = param.shape
    keep = keep.to(param.device)
    grad = param.grad
    param.grad = None  # a live reference to the gradient would block the swap
    with torch.no_grad():
        shrunk = nn.Parameter(param.index_select(dim, keep), requires_grad=param.requires_grad)
    _swap_tensor_identity(param, shrunk)
    if grad is not None:
        param.grad = grad.index_select(dim, keep)
    if optimizer is not None:
        _shrink_state(optimizer.state.get(param, {}), old_shape, dim, keep)


def check_resizable(param: nn.Parameter, *, owner: str) -> None:
    """Raise unless :func:`shrink_parameter` can give ``param`` a new tensor."""
    if weakref.getweakrefs(param):
        raise RuntimeError(f"{owner}: cannot resize a parameter that has weak references to it")


def _swap_tensor_identity(param: nn.Parameter, replacement: nn.Parameter) -> None:
    """Make ``param`` (same Python object, same attributes) hold ``replacement``'s tensor."""
    check_resizable(param, owner="parameter")
    torch._C._swap_tensor_impl(param, replacement)


def shrink_buffer(tensor: torch.Tensor | None, dim: int, keep: torch.Tensor) -> torch.Tensor | None:
    """The slices ``keep`` of a buffer along ``dim`` (``None`` stays ``None``)."""
    if tensor is None:
        return None
    return tensor.index_select(dim, keep.to(tensor.device))


def _shrink_state(state: dict, old_shape: torch.Size, dim: int, keep: torch.Tensor) -> None:
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and value.shape == old_shape:
            state[key] = value.index_select(dim, keep.to(value.device))
