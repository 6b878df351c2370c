"""What :func:`~prunable_nn.prune_loop` records and when it stops: one :class:`Round` per
measurement in a :class:`History`, and the :class:`Target` that ends the loop (a share of the
FLOPs or parameters, a number of channel units, or an accuracy drop)."""

from __future__ import annotations

import csv
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import astuple, dataclass, fields
from numbers import Integral, Real
from pathlib import Path

@dataclass(frozen=True)
class Round:
    """The model as measured after one round (round 0: before any pruning).

    ``units_left``: channel units that can still be removed (``pruner.num_prunables``);
    ``units_removed``: units removed by this round's ``prune()``; ``flops``: of one forward
    pass of the pruner's ``example_inputs``; ``train_loss``: mean loss of the round's
    fine-tuning steps (``None`` for round 0); ``accuracy``: top-1 on the validation loader
    (0..1); ``seconds``: wall time since the loop started; ``reached``: the target's stopping
    condition holds for this row (only ever the last row).
    """

    round: int
    units_left: int
    units_removed: int
    parameters: int
    flops: int
    train_loss: float | None
    accuracy: float
    seconds: float
    reached: bool = False


class History(list[Round]):
    """The rows of a :func:`prune_loop`, one per round, row 0 the starting model.

    A plain list of :class:`Round` with ``stop_reason``, one line saying why the loop ended.
    """

    def __init__(self, rows: Iterable[Round] = (), stop_reason: str = "") -> None:
        super().__init__(rows)
        self.stop_reason = stop_reason

    def to_csv(self, path: str | Path) -> None:
        """Write a header (the :class:`Round` field names) and one line per row;
        ``train_loss`` of row 0 is left empty."""
        with open(path, "w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(field.name for field in fields(Round))
            for row in self:
                writer.writerow("" if value is None else value for value in astuple(row))


# -- targets ------------------------------------------------------------------------------------
class Target(ABC):
    """When :func:`prune_loop` stops. ``reached`` is asked of the starting row and of the row
    measured after every round; the first row for which it holds is the last one."""

    @abstractmethod
    def reached(self, start: Round, row: Round) -> bool:
        """Whether the loop should stop at ``row`` (``start`` is row 0)."""


@dataclass(frozen=True)
class _FractionTarget(Target):
    """A target that is a fraction (in (0, 1]) of the starting model's size."""

    fraction: float

    def __post_init__(self) -> None:
        fraction = self.fraction
        if isinstance(fraction, bool) or not isinstance(fraction, Real) or not 0 < fraction <= 1:
            raise ValueError(f"{type(self).__name__}: fraction must be in (0, 1], got {fraction!r}")


@dataclass(frozen=True)
class FlopsTarget(_FractionTarget):
    """Stop once the FLOPs are at most ``fraction`` (in (0, 1]) of the starting model's:
    ``FlopsTarget(0.5)`` stops at the first round with FLOPs <= 50 % of the start."""

    def reached(self, start: Round, row: Round) -> bool:
        return row.flops <= self.fraction * start.flops


@dataclass(frozen=True)
class ParamsTarget(_FractionTarget):
    """Stop once the parameters are at most ``fraction`` (in (0, 1]) of the starting model's."""

    def reached(self, start: Round, row: Round) -> bool:
        return row.parameters <= self.fraction * start.parameters


@dataclass(frozen=True)
class ChannelsTarget(Target):
    """Stop once at least ``removed`` (>= 1) channel units have been removed in all.

    A unit is what ``pruner.num_prunables`` counts: one channel, or one position of every
    group of a grouped convolution. Rounds remove up to ``max_to_prune`` each, so the last
    round may overshoot.
    """

    removed: int

    def __post_init__(self) -> None:
        if isinstance(self.removed, bool) or not isinstance(self.removed, Integral) or self.removed < 1:
            raise ValueError(f"ChannelsTarget: removed must be a positive integer, got {self.removed!r}")

    def reached(self, start: Round, row: Round) -> bool:
        return start.units_left - row.units_left >= self.removed


@dataclass(frozen=True)
class AccuracyDrop(Target):
    """Stop before the validation accuracy drops by more than ``max_drop`` (0..1, accuracy
    units: 0.05 is five points) below the starting model's.

    The first round whose accuracy is below ``start.accuracy - max_drop`` is the last: its row
    is flagged (``reached=True``) and the model holds that round's pruned network, already
    past the budget (the history shows it). The row before it is the last within budget: to
    get that model, save a copy after each round or run again with ``max_rounds`` one less.
    """

    max_drop: float

    def __post_init__(self) -> None:
        drop = self.max_drop
        if isinstance(drop, bool) or not isinstance(drop, Real) or not 0 <= drop <= 1:
            raise ValueError(f"AccuracyDrop: max_drop must be in [0, 1] (accuracy units), got {drop!r}")

    def reached(self, start: Round, row: Round) -> bool:
        return row.accuracy < start.accuracy - self.max_drop


# -- the loop -------------------------------------------------------------------------------------


def checked_targets(target: Target | Sequence[Target]) -> tuple[Target, ...]:
    """``target`` as a tuple of targets, or a ``TypeError`` naming what it got."""
    if isinstance(target, Target):
        targets: tuple = (target,)
    elif isinstance(target, Sequence):
        targets = tuple(target)
    else:
        targets = ()
    if not targets or not all(isinstance(t, Target) for t in targets):
        raise TypeError(
            f"target must be a Target (FlopsTarget, ParamsTarget, ChannelsTarget, AccuracyDrop) "
            f"or a non-empty sequence of them, got {target!r}"
        )
    return targets


def describe_targets(targets: list[Target]) -> str:
    """``a and b``: how errors and reasons name several targets."""
    return " and ".join(repr(t) for t in targets)
