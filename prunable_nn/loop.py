"""The whole pruning job in one call: fine-tune, prune, measure, until a target is reached.

Each round of :func:`prune_loop` runs ``steps_per_round`` training steps (which accumulate
the Taylor estimates, :func:`prunable_nn.training.train_steps`), calls
``pruner.prune(max_to_prune, optimizer)`` (which removes the lowest-ranked channel units and
resets the estimates), then measures the model: prunable units left, parameters, FLOPs of
the pruner's ``example_inputs``, validation accuracy. One :class:`Round` per measurement
goes into the returned :class:`History` (row 0 is the model as it came in). The loop stops
when its :class:`Target` is reached, when nothing is left to prune, or after ``max_rounds``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from numbers import Integral, Real
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from .distributed import all_reduce_mean, is_distributed, rewrap
from .flops import count_flops, count_parameters
from .pruner import TaylorPruner
from .report import check_budget
from .targets import History, Round, Target, checked_targets, describe_targets
from .training import LossFunction, endless, evaluate, progress_disabled, train_steps


def prune_loop(
    model: nn.Module,
    pruner: TaylorPruner,
    train_loader: DataLoader,
    val_loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    *,
    target: Target | Sequence[Target],
    steps_per_round: int,
    max_to_prune: int | None = 8,
    flops_per_round: float | None = None,
    max_rounds: int | None = None,
    loss_fn: LossFunction = F.cross_entropy,
    progress: bool | None = None,
    csv_path: str | Path | None = None,
    on_round: Callable[[Round], None] | None = None,
    autocast: torch.dtype | None = None,
    grad_scaler: torch.amp.GradScaler | None = None,
) -> History:
    """Alternate fine-tuning and pruning of a trained ``model`` until ``target`` is reached.

    Each round: ``steps_per_round`` training steps of ``loss_fn`` on batches of
    ``train_loader`` (cycled endlessly), ``pruner.prune(max_to_prune, optimizer=optimizer)``,
    then a measurement (see :class:`Round`). Estimates gathered before the call are
    forgotten, so every round ranks channels by its own fine-tuning steps; when the loop
    returns, the last prune has reset them.

    ``flops_per_round`` (in (0, 1]): every prune stops once the channels it removes take
    that fraction of the starting model's FLOPs (``prune(flops=...)``; pass
    ``max_to_prune=None`` for no limit on their number). Each round then shrinks the model
    by about the same FLOPs, so a target is reached in about the same number of rounds
    whichever channels the criterion picks.

    Stops at the first row where ``target`` (or any of a sequence of targets) is reached (that
    row has ``reached=True``; it may be row 0, e.g. ``FlopsTarget(1.0)``), when nothing is left
    to prune (``pruner.num_prunables == 0``), or after ``max_rounds`` rounds. The model is
    left as the last round made it.

    ``autocast`` and ``grad_scaler``: mixed precision, as :func:`~prunable_nn.training.train_step`
    runs it; the pruner's estimates are then divided by the scaler's scale (``pruner.grad_scaler``).

    ``progress``: a tqdm bar of rounds with FLOPs %, accuracy and units left (``None``: only
    when stderr is a terminal). ``csv_path``: the history is written there (rewritten after
    every round, so an interrupted run keeps its rows). ``on_round``: called with every row
    as soon as it is measured, row 0 included (to print a table, log, or save a copy).

    Bad arguments raise ``ValueError`` (``TypeError`` for a target of the wrong kind) naming
    the value, before anything changes.

    **Distributed** (``torchrun``; :mod:`prunable_nn.distributed`): every rank calls it with
    ``model`` its :class:`~torch.nn.parallel.DistributedDataParallel` wrapper of
    ``pruner.model`` and ``train_loader`` its own shard of the training data (a
    ``DistributedSampler``). The rounds train through the wrapper; every ``prune()`` ranks the
    estimates of all ranks, and the wrapper is rebuilt for the new shapes
    (:func:`~prunable_nn.distributed.rewrap`), so ``model`` itself is stale afterwards: to
    train on, ``rewrap(model, optimizer)``. Each row's accuracy and training loss are the
    means over the ranks (the same numbers on every rank, so that all stop at the same
    round): give every rank the same validation data, or equal shards of it. Pass
    ``csv_path`` and ``on_round`` on one rank only if only that one should write.
    """
    targets = checked_targets(target)
    _check_positive("steps_per_round", steps_per_round)
    share = flops_per_round
    if share is not None and (isinstance(share, bool) or not isinstance(share, Real) or not 0 < share <= 1):
        raise ValueError(f"flops_per_round must be in (0, 1] or None, got {share!r}")
    check_budget(max_to_prune, flops_per_round, pruner.round_to, flops_name="flops_per_round")
    if max_rounds is not None:
        _check_positive("max_rounds", max_rounds)
    wrapped = model if isinstance(model, DistributedDataParallel) else None
    inner = model.module if wrapped is not None else model
    if pruner.model is not inner:
        raise ValueError(f"the pruner belongs to another model ({type(pruner.model).__name__}), not this one")
    distributed = is_distributed(pruner.process_group)
    if grad_scaler is not None:
        pruner.grad_scaler = grad_scaler

    started = time.perf_counter()
    history = History()

    def measure(round_: int, removed: int, loss: float | None) -> Round:
        accuracy = evaluate(inner, val_loader, desc=f"round {round_} validate", progress=progress)
        if distributed:
            accuracy, mean_loss = all_reduce_mean([accuracy, 0.0 if loss is None else loss], group=pruner.process_group)
            loss = None if loss is None else mean_loss
        row = Round(
            round=round_,
            units_left=pruner.num_prunables,
            units_removed=removed,
            parameters=count_parameters(inner),
            flops=count_flops(inner, pruner.example_inputs),
            train_loss=loss,
            accuracy=accuracy,
            seconds=time.perf_counter() - started,
        )
        start = history[0] if history else row
        reached = [t for t in targets if t.reached(start, row)]
        if reached:
            row = replace(row, reached=True)
            history.stop_reason = f"{describe_targets(reached)} reached in round {round_}"
        history.append(row)
        if csv_path is not None:
            history.to_csv(csv_path)
        if on_round is not None:
            on_round(row)
        return row

    with tqdm(total=max_rounds, desc="pruning", unit="round", disable=progress_disabled(progress)) as bar:
        row = measure(0, 0, None)
        bar.set_postfix(_postfix(history[0], row), refresh=False)
        batches = endless(train_loader)
        while not row.reached:
            if pruner.num_prunables == 0:
                history.stop_reason = f"nothing left to prune after round {row.round}"
                break
            if max_rounds is not None and row.round >= max_rounds:
                history.stop_reason = f"max_rounds={max_rounds} reached"
                break
            round_ = row.round + 1
            if round_ == 1:
                pruner.reset_estimates()  # rank by this round's steps, as every later round does
            loss = train_steps(
                model, optimizer, batches, steps_per_round, desc=f"round {round_}", progress=progress, loss_fn=loss_fn,
                autocast=autocast, grad_scaler=grad_scaler,
            )
            flops = None if flops_per_round is None else flops_per_round * history[0].flops
            removals = pruner.prune(max_to_prune, optimizer=optimizer, flops=flops)
            if wrapped is not None:
                model = wrapped = rewrap(wrapped, optimizer)  # DDP's buckets hold the old shapes
            row = measure(round_, sum(len(removal.indices) for removal in removals), loss)
            bar.set_postfix(_postfix(history[0], row), refresh=False)
            bar.update()
    return history


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _postfix(start: Round, row: Round) -> dict[str, str]:
    flops = 100 * row.flops / start.flops if start.flops else math.nan
    return {"FLOPs": f"{flops:.1f}%", "acc": f"{100 * row.accuracy:.2f}%", "left": str(row.units_left)}
