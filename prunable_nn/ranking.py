"""Ranking channels of different layers against each other.

Raw Taylor estimates are not comparable across layers (their scale depends on depth and
width), so each chain's estimates ``theta`` are divided by their L2 norm (paper, sec. 2.2):

    theta_hat = theta / max(||theta||_2, eps).

FLOPs regularisation (paper, eq. 9) then subtracts the cost of keeping a channel,

    score = theta_hat - lambda * cost,

where ``cost`` is the FLOPs that one channel of the chain takes (in its producers and
consumers) divided by the mean of that number over all chains, so ``lambda`` is unitless
(paper value: 1e-3). The lowest scores are removed first, never a chain's last channel.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

EPSILON = 1e-12


def l2_normalise(estimates: torch.Tensor) -> torch.Tensor:
    """``estimates / max(||estimates||_2, eps)``."""
    return estimates / estimates.norm().clamp_min(EPSILON)


def relative_costs(flops_per_channel: Sequence[float]) -> list[float]:
    """Each chain's FLOPs per channel divided by the mean over chains (all 0 if no FLOPs)."""
    mean = sum(flops_per_channel) / len(flops_per_channel) if flops_per_channel else 0.0
    return [cost / mean if mean > 0 else 0.0 for cost in flops_per_channel]


def select_lowest(scores: Sequence[torch.Tensor], max_to_prune: int) -> list[list[int]]:
    """Up to ``max_to_prune`` (chain, channel) pairs with the lowest scores overall, at least
    one channel left in every chain. Returns the chosen channels of each chain, sorted; ties
    go to the earlier chain and lower channel."""
    flat = torch.cat([score.detach().double().cpu() for score in scores])
    chain_of = torch.cat([torch.full((len(score),), i) for i, score in enumerate(scores)])
    offsets = [0]
    for score in scores[:-1]:
        offsets.append(offsets[-1] + len(score))
    room = [len(score) - 1 for score in scores]
    chosen: list[list[int]] = [[] for _ in scores]
    taken = 0
    for position in torch.argsort(flat, stable=True).tolist():
        if taken == max_to_prune:
            break
        chain = int(chain_of[position])
        if room[chain] > 0:
            room[chain] -= 1
            chosen[chain].append(position - offsets[chain])
            taken += 1
    return [sorted(channels) for channels in chosen]
