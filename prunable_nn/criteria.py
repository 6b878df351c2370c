"""Criteria of channel importance: what :class:`~prunable_nn.TaylorPruner` ranks.

Every criterion gives raw values for the positions of some members (layer sides) of the
pruner's chains; the pruner L2-normalises each member's values (when ``normalize``), sums
them into units and subtracts the FLOPs penalty (:mod:`prunable_nn.ranking`). Higher means
more important: the lowest units go first.

*Statistics* are recorded by the estimator layers (those whose outputs the readers see,
:mod:`prunable_nn.graph`) from every forward that a gradient reaches (:mod:`prunable_nn.recording`),
per example ``n`` and channel ``k`` over the ``M`` positions ``m`` of the channel's map ``a``,
and averaged over the examples seen since the last prune (Molchanov et al. 2017, sec. 2.2 and 2.3):

- :class:`Taylor` (the default): ``| (1/M) sum_m a[n,k,m] * dL/da[n,k,m] |`` (eq. 8);
- :class:`ActivationMean`: ``(1/M) sum_m z[n,k,m]`` with ``z = relu(a)``, the map as a
  following ReLU passes it on (the paper measures maps after their nonlinearity);
- :class:`ActivationStd`: the standard deviation of ``z[n,k,:]`` over the positions (for
  a map of one position, a ``Linear``'s output or a 1x1 map, over the batch's examples);
- :class:`APoZ`: ``1 - (1/M) sum_m [z[n,k,m] == 0]``, one minus the average percentage of
  zeros (Hu et al. 2016), so that a channel that is mostly zero scores low.

*Scores* are computed when the pruner ranks, from the weights or by running the model:

- :class:`MinWeight`: ``(1/|W_k|) sum W_k^2``, the mean squared weight of each output
  channel of every convolution and linear layer that makes the chain's channels;
- :class:`RandomScores`: uniform random numbers (a baseline);
- :class:`Oracle`: the change of the loss when the unit is removed, measured by zeroing its
  channels at every reader's input (which is what removal computes, DESIGN.md rule 1) on
  given batches, in eval mode: ``|L(without k) - L|`` (the paper's "oracle-abs"), or
  ``L(without k) - L`` with ``absolute=False``. It runs one pass of the batches per unit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import torch
from torch import nn

from .chain import INPUT, OUTPUT, Member
from .flops import evaluating
from .layers import PrunableLayer
from .taylor import TAYLOR, Statistic

if TYPE_CHECKING:
    from .pruner import TaylorPruner

#: Raw importance of the positions of some members: ``(member, values)`` pairs.
MemberValues = list[tuple[Member, torch.Tensor]]
class Criterion:
    """Base class: ``member_values(pruner)`` gives each member's raw values."""

    #: How errors and tables call it.
    name: str = ""
    #: Per-example statistic the estimator layers record (:class:`~prunable_nn.taylor.Statistic`),
    #: or None for a criterion that needs no recording (the pruner then switches the layers'
    #: recording off). Under ``torch.distributed`` the all-reduced estimates are divided by
    #: ``world_size ** p``, ``p`` its ``gradient_power`` (:mod:`prunable_nn.distributed`).
    statistic: Statistic | None = None

    def member_values(self, pruner: TaylorPruner) -> MemberValues:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class RecordedStatistic(Criterion):
    """A statistic that the estimator layers record; its values are their estimates."""

    def member_values(self, pruner: TaylorPruner) -> MemberValues:
        recorded = [(member, member.layer.taylor_estimates) for member in pruner.estimator_members]
        return [(member, estimates) for member, estimates in recorded if estimates is not None]


class Taylor(RecordedStatistic):
    """``|mean_m a * dL/da|`` per example, averaged (eq. 8)."""

    name = "Taylor"
    statistic = TAYLOR


def _positions(values: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """``values`` as ``(N, C, M)``: examples, channels, positions."""
    moved = values.movedim(channel_dim, 1)
    return moved.reshape(moved.shape[0], moved.shape[1], -1)


def activation_mean(activation: torch.Tensor, grad: torch.Tensor, channel_dim: int) -> torch.Tensor:
    return _positions(activation.clamp(min=0), channel_dim).mean(dim=2)


def activation_std(activation: torch.Tensor, grad: torch.Tensor, channel_dim: int) -> torch.Tensor:
    z = _positions(activation.clamp(min=0), channel_dim)
    if z.shape[2] == 1:  # one position (a Linear's output, a 1x1 map): the spread over the batch
        return z[:, :, 0].std(dim=0, correction=0).expand(z.shape[0], -1)
    return z.std(dim=2, correction=0)


def nonzero_fraction(activation: torch.Tensor, grad: torch.Tensor, channel_dim: int) -> torch.Tensor:
    return _positions(activation > 0, channel_dim).to(activation.dtype).mean(dim=2)


class ActivationMean(RecordedStatistic):
    """``mean_m relu(a)`` per example, averaged."""

    name = "activation mean"
    statistic = Statistic(activation_mean, gradient_power=0)


class ActivationStd(RecordedStatistic):
    """Standard deviation of ``relu(a)`` over the positions per example, averaged (over the
    batch's examples where a map has one position)."""

    name = "activation std"
    statistic = Statistic(activation_std, gradient_power=0)


class APoZ(RecordedStatistic):
    """One minus the average percentage of zeros of ``relu(a)``."""

    name = "APoZ"
    statistic = Statistic(nonzero_fraction, gradient_power=0)


class MinWeight(Criterion):
    """Mean squared weight of each output channel of the convolutions and linear layers
    (each layer's kind gives the weights that make each output: :mod:`prunable_nn.kinds`)."""

    name = "minimum weight"

    def member_values(self, pruner: TaylorPruner) -> MemberValues:
        values = []
        for member in pruner.channel_map.members:
            if member.side != OUTPUT or not pruner.has_prunable(member):
                continue
            rows = member.layer.kind.output_weights(member.layer)
            if rows is not None:
                values.append((member, rows.pow(2).mean(dim=1)))
        return values


class RandomScores(Criterion):
    """Uniform random numbers for every estimator's positions, from a seeded generator:
    the same seed gives the same sequence of rankings."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)

    def member_values(self, pruner: TaylorPruner) -> MemberValues:
        return [
            (member, torch.rand(len(member.units), generator=self.generator, dtype=torch.float64))
            for member in pruner.estimator_members
        ]

    def __repr__(self) -> str:
        return f"RandomScores(seed={self.seed})"


class Oracle(Criterion):
    """The loss change of removing each unit, measured on ``batches`` of ``(inputs, targets)``.

    ``loss(model(inputs), targets)`` is averaged over the batches in eval mode without
    gradients, once as the model is and once per prunable unit with that unit's channels
    zeroed at every reader's input. Each estimator's positions get their unit's change,
    shared equally among the estimators that see the unit.
    """

    name = "oracle"

    def __init__(
        self,
        batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
        loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = nn.functional.cross_entropy,
        *,
        absolute: bool = True,
    ) -> None:
        self.batches = list(batches)
        if not self.batches:
            raise ValueError("Oracle needs at least one batch of (inputs, targets)")
        self.loss = loss
        self.absolute = absolute

    def unit_changes(self, pruner: TaylorPruner) -> torch.Tensor:
        """``L(without unit) - L`` for every prunable unit (0 for the others)."""
        readers = [member for member in pruner.channel_map.members if member.side == INPUT]
        zeroed: dict[PrunableLayer, torch.Tensor] = {}

        def zero_inputs(layer: PrunableLayer, args: tuple) -> tuple | None:
            positions = zeroed.get(layer)
            if positions is None or not len(positions):
                return None
            masked = args[0].clone()
            masked.index_fill_(layer.kind.input_dim(layer, masked.dim()), positions, 0.0)
            return (masked, *args[1:])

        handles = [layer.register_forward_pre_hook(zero_inputs) for layer in {m.layer for m in readers}]
        try:
            with evaluating(pruner.model), torch.no_grad():
                baseline = self._mean_loss(pruner.model)
                changes = torch.zeros(pruner.channel_map.num_units, dtype=torch.float64)
                for unit in pruner.channel_map.prunable.nonzero().flatten():
                    zeroed.clear()
                    for member in readers:
                        positions = member.positions_of(unit.view(1))
                        if len(positions):
                            zeroed[member.layer] = torch.cat([zeroed.get(member.layer, positions[:0]), positions])
                    changes[unit] = self._mean_loss(pruner.model) - baseline
        finally:
            for handle in handles:
                handle.remove()
        return changes

    def member_values(self, pruner: TaylorPruner) -> MemberValues:
        changes = self.unit_changes(pruner)
        if self.absolute:
            changes = changes.abs()
        members = pruner.estimator_members
        seen_by = torch.zeros(pruner.channel_map.num_units, dtype=torch.float64)
        for member in members:
            seen_by.index_add_(0, member.units, torch.ones(len(member.units), dtype=torch.float64))
        return [(member, changes[member.units] / seen_by[member.units]) for member in members]

    def _mean_loss(self, model: nn.Module) -> float:
        device = next(model.parameters()).device
        total = sum(float(self.loss(model(inputs.to(device)), targets.to(device))) for inputs, targets in self.batches)
        return total / len(self.batches)

    def __repr__(self) -> str:
        return f"Oracle({len(self.batches)} batches, absolute={self.absolute})"
