"""Index arithmetic of "drop these channels": the one place that turns a user's list of
channels to remove into the sorted indices to keep, and expands them to feature blocks.

For a dimension of size ``C`` and a set ``D`` of channels to drop, the surviving channels are
``K = sorted({0, ..., C-1} \\ D)`` and every tensor indexed by channel along that dimension
becomes ``t.index_select(dim, K)``. A consumer fed by a flattened ``(C, H, W)`` map owns
``B = H * W`` consecutive features per channel, so its kept features are
``{k * B + j : k in K, 0 <= j < B}``.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable

import torch


def keep_indices(drop: Iterable[int] | torch.Tensor, size: int, *, owner: str) -> torch.Tensor:
    """Validate channels to ``drop`` from a dimension of ``size`` and return those to keep.

    ``drop`` must hold distinct integers in ``[0, size)``, at least one, and not all of them:
    a layer always keeps one channel. ``owner`` names the layer in the error messages.
    Returns a sorted ``int64`` tensor on the CPU.
    """
    values = as_channel_list(drop, owner=owner)
    if not values:
        raise ValueError(f"{owner}: no channels given to drop (got an empty list)")
    bad = [v for v in values if not 0 <= v < size]
    if bad:
        raise IndexError(
            f"{owner}: channel indices {bad} are out of range for {size} channels "
            f"(valid: 0 to {size - 1})"
        )
    if len(set(values)) != len(values):
        repeated = sorted({v for v in values if values.count(v) > 1})
        raise ValueError(f"{owner}: channel indices {repeated} are given more than once")
    if len(values) >= size:
        raise ValueError(
            f"{owner}: cannot drop all {size} channels; at least one must remain"
        )
    mask = torch.ones(size, dtype=torch.bool)
    mask[values] = False
    return mask.nonzero().flatten()


def expand_to_blocks(keep: torch.Tensor, block: int) -> torch.Tensor:
    """Indices of the features owned by channels ``keep`` when each owns ``block`` in a row."""
    if block == 1:
        return keep
    return (keep[:, None] * block + torch.arange(block)).flatten()


def as_channel_list(drop: Iterable[int] | torch.Tensor, *, owner: str) -> list[int]:
    """``drop`` as a list of Python ints; a clear error for anything that is not integers."""
    if isinstance(drop, torch.Tensor):
        if drop.dtype.is_floating_point or drop.dtype.is_complex or drop.dtype == torch.bool:
            raise TypeError(f"{owner}: channel indices must be integers, got a {drop.dtype} tensor")
        return [int(v) for v in drop.flatten().tolist()]
    if isinstance(drop, (str, bytes)) or not isinstance(drop, Iterable):
        raise TypeError(f"{owner}: channel indices must be a list of integers, got {drop!r}")
    values = list(drop)
    for value in values:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{owner}: channel index {value!r} is not an integer")
    return [int(v) for v in values]
