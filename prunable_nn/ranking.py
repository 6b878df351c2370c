"""Ranking channels of different layers against each other.

Raw Taylor estimates are not comparable across layers (their scale depends on depth and
width), so each estimator's estimates ``theta`` are divided by their L2 norm (paper, sec. 2.2):

    theta_hat = theta / max(||theta||_2, eps).

A unit of channels that several estimators see (a residual stream channel, seen by the batch
norm of every block that adds into it) scores the sum of their normalised estimates: the
first-order loss change of removing it from all of them, each layer's share made comparable.

FLOPs regularisation (paper, eq. 9) then subtracts the cost of keeping a unit,

    score = theta_hat - lambda * cost,

where ``cost`` is the FLOPs that the unit's channels take in the layers that own and read
them (each layer's FLOPs shared equally among its channels or input features) divided by
the mean of that number over the prunable units, so ``lambda`` is unitless (paper value:
1e-3). The lowest scores are removed first.

A FLOPs budget uses the same FLOPs before the division (:func:`reaching`): ``prune(flops=F)``
removes blocks in increasing order of score until their units' FLOPs add up to at least
``F``. That is exact to first order: a layer of ``I`` input and ``O`` output channels that
loses ``a`` inputs and ``b`` outputs saves ``FLOPs * (a/I + b/O - ab/(IO))``, and the sum
counts the first two terms.

Rounding (``round_to = r > 1``) keeps every chain at a multiple of ``r`` channels, as the
vector units of a CPU or GPU want them (oneDNN blocks channels by 8 on AVX2 and by 16 on
AVX-512; a conv with 15 channels can be slower than one with 16). A chain of ``n`` channels
gives up its prunable units in *blocks*, taken in increasing order of score: the first block
holds ``n mod r`` of them (``r`` when that is 0), every later block ``r``, and the chain keeps
at least ``r``. A block's score is the highest score in it, so a block goes exactly when its
most important unit's turn comes in the increasing order of all units. With ``r = 1`` every
block is one unit.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

EPSILON = 1e-12


def l2_normalise(estimates: torch.Tensor) -> torch.Tensor:
    """``estimates / max(||estimates||_2, eps)``."""
    return estimates / estimates.norm().clamp_min(EPSILON)


def relative_costs(costs: torch.Tensor, prunable: torch.Tensor) -> torch.Tensor:
    """``costs`` divided by their mean over the ``prunable`` units (all 0 if that is 0)."""
    mean = costs[prunable].mean() if prunable.any() else costs.new_zeros(())
    return costs / mean if mean > 0 else torch.zeros_like(costs)


def lowest_blocks(
    scores: torch.Tensor, prunable: torch.Tensor, chains: list[torch.Tensor], round_to: int = 1
) -> list[list[int]]:
    """The blocks of prunable units (module docstring) of the ``chains`` (each given by the
    tensor of its units, in increasing order), by increasing block score; ties go to the
    block whose highest-scored unit is the lower unit. A chain whose prunable units cannot
    fill its next block, or that would keep fewer than ``round_to`` channels, gives no more."""
    values, keyed = scores.tolist(), []
    for units in chains:
        candidates = units[prunable[units]]
        candidates = candidates[torch.argsort(scores[candidates], stable=True)].tolist()
        channels, taken = len(units), 0
        size = channels % round_to or round_to
        while taken + size <= len(candidates) and channels - taken - size >= round_to:
            block = candidates[taken : taken + size]
            keyed.append((values[block[-1]], block[-1], block))
            taken += size
            size = round_to
    keyed.sort(key=lambda item: item[:2])
    return [block for _, _, block in keyed]


def reaching(blocks: list[Sequence[int]], costs: torch.Tensor, flops: float) -> list[Sequence[int]]:
    """The shortest prefix of ``blocks`` whose units' ``costs`` add up to at least ``flops``
    (all of them when they never do)."""
    total = 0.0
    for taken, block in enumerate(blocks, start=1):
        total += float(costs[list(block)].sum())
        if total >= flops:
            return blocks[:taken]
    return blocks
