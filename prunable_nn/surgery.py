"""Shrinking tensors in place of their owners: parameters, their gradients and optimizer state.

A parameter ``p`` of shape ``(..., C, ...)`` becomes ``p.index_select(dim, keep)``. The
``nn.Parameter`` object stays the same (an optimizer that holds it stays valid) but receives
a fresh autograd identity: changing ``p.data`` alone would leave autograd's gradient
accumulator expecting the old shape while an older graph (the user's last ``loss``) is alive.
The swap is the primitive under :func:`torch.utils.swap_tensors`, without that function's
use-count check: the old graph's saved variables may still hold the old tensor, and that is
fine, they keep it (a backward through the old graph then reaches only the old tensor). Its ``.grad`` and every optimizer state tensor shaped like ``p`` (SGD momentum, Adam
moments, ...) are sliced the same way, so surviving channels keep their state.

Every tensor keeps its memory layout: a ``channels_last`` weight, its gradient and its
momentum come back ``channels_last``.

Any number of optimizers may hold the parameter. A state tensor is sliced along the same dim
when it has the parameter's number of dims and, at every dim, its size or 1 (Adafactor's
factored moments: ``(O, I, kh, 1)`` for a ``(O, I, kh, kw)`` weight); single numbers (step
counts) stay. LBFGS keeps a flat history of all its parameters, which cannot be sliced: it
is reset, with a warning. Any other state makes :func:`check_optimizers` refuse, before
anything changes.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from .compat import forget_parameter_count, swap_tensor_identity

#: What ``optimizer=`` of the pruning calls takes: one optimizer, several, or none.
Optimizers = torch.optim.Optimizer | Sequence[torch.optim.Optimizer] | None


def shrink_parameter(param: nn.Parameter, dim: int, keep: torch.Tensor, optimizer: Optimizers = None) -> None:
    """Keep only the slices ``keep`` of ``param`` along ``dim``, in place of the object."""
    old_shape = param.shape
    keep = keep.to(param.device)
    grad = param.grad
    param.grad = None  # a live reference to the gradient would block the swap
    with torch.no_grad():
        shrunk = nn.Parameter(select(param, dim, keep), requires_grad=param.requires_grad)
    _swap_checked(param, shrunk)
    if grad is not None:
        param.grad = select(grad, dim, keep)
    for each in as_optimizers(optimizer):
        _shrink_state(each, param, old_shape, dim, keep)


def select(tensor: torch.Tensor, dim: int, keep: torch.Tensor) -> torch.Tensor:
    """``tensor.index_select(dim, keep)`` in ``tensor``'s memory layout (dims ordered by
    stride, as ``channels_last`` orders them)."""
    selected = tensor.index_select(dim, keep.to(tensor.device))
    order = sorted(range(tensor.dim()), key=lambda axis: -tensor.stride(axis))
    if order == list(range(tensor.dim())):
        return selected
    inverse = sorted(range(tensor.dim()), key=order.__getitem__)
    return selected.permute(order).contiguous().permute(inverse)


def as_optimizers(optimizer: Optimizers) -> tuple[torch.optim.Optimizer, ...]:
    """``optimizer`` as a tuple; ``TypeError`` names anything that is not an optimizer."""
    optimizers = () if optimizer is None else (optimizer,) if isinstance(optimizer, torch.optim.Optimizer) else tuple(optimizer)
    for each in optimizers:
        if not isinstance(each, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer or a sequence of them, got {type(each).__name__}")
    return optimizers


def check_optimizers(optimizer: Optimizers, params: Iterable[nn.Parameter], owner: str) -> None:
    """Raise ``ValueError`` (naming ``owner``, the state and its shape) unless every state
    tensor that the optimizers hold for ``params`` can be sliced with them."""
    params = list(params)
    for each in as_optimizers(optimizer):
        if isinstance(each, torch.optim.LBFGS):
            continue  # reset instead
        for param in params:
            for key, value in each.state.get(param, {}).items():
                if isinstance(value, torch.Tensor) and not _sliceable(value, param.shape):
                    raise ValueError(
                        f"{owner}: {type(each).__name__} holds state {key!r} of shape {tuple(value.shape)} for a "
                        f"parameter of shape {tuple(param.shape)}, which cannot be sliced with it"
                    )


def check_resizable(param: nn.Parameter, *, owner: str) -> None:
    """Raise unless :func:`shrink_parameter` can give ``param`` a new tensor."""
    if weakref.getweakrefs(param):
        raise RuntimeError(f"{owner}: cannot resize a parameter that has weak references to it")


def _swap_checked(param: nn.Parameter, replacement: nn.Parameter) -> None:
    """Make ``param`` (same Python object, same attributes) hold ``replacement``'s tensor."""
    check_resizable(param, owner="parameter")
    swap_tensor_identity(param, replacement)


def shrink_buffer(tensor: torch.Tensor | None, dim: int, keep: torch.Tensor) -> torch.Tensor | None:
    """The slices ``keep`` of a buffer along ``dim`` (``None`` stays ``None``)."""
    return None if tensor is None else select(tensor, dim, keep)


def _sliceable(value: torch.Tensor, shape: torch.Size) -> bool:
    return value.numel() == 1 or (value.dim() == len(shape) and all(v in (s, 1) for v, s in zip(value.shape, shape)))


def _shrink_state(optimizer: torch.optim.Optimizer, param: nn.Parameter, old_shape: torch.Size, dim: int, keep: torch.Tensor) -> None:
    if isinstance(optimizer, torch.optim.LBFGS):
        if optimizer.state:
            warnings.warn(
                "LBFGS keeps a flat history of all its parameters, which cannot follow a prune: its state is reset",
                stacklevel=2,
            )
            optimizer.state.clear()
        forget_parameter_count(optimizer)
        return
    state = optimizer.state.get(param, {})
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and value.numel() != 1 and value.dim() == len(old_shape) and value.shape[dim] == old_shape[dim]:
            state[key] = select(value, dim, keep)
