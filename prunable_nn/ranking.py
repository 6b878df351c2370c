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
"""

from __future__ import annotations

import torch

EPSILON = 1e-12


def l2_normalise(estimates: torch.Tensor) -> torch.Tensor:
    """``estimates / max(||estimates||_2, eps)``."""
    return estimates / estimates.norm().clamp_min(EPSILON)


def relative_costs(costs: torch.Tensor, prunable: torch.Tensor) -> torch.Tensor:
    """``costs`` divided by their mean over the ``prunable`` units (all 0 if that is 0)."""
    mean = costs[prunable].mean() if prunable.any() else costs.new_zeros(())
    return costs / mean if mean > 0 else torch.zeros_like(costs)


def lowest_first(scores: torch.Tensor, prunable: torch.Tensor) -> list[int]:
    """The prunable units by increasing score; ties go to the lower unit."""
    candidates = prunable.nonzero().flatten()
    return candidates[torch.argsort(scores[candidates], stable=True)].tolist()
