"""Accuracy against FLOPs when the same start model is pruned by each criterion.

What is measured
    For each seed, one start model (``start_model.trained_vgg``: a VGG-11 with batch norm at
    ``--width``, trained for ``--steps`` steps on Fashion-MNIST) is copied once per variant
    and pruned by ``prune_loop`` down to ``--target`` of its FLOPs, with the same budget for
    every variant: rounds of ``--steps-per-round`` Adam steps (fresh optimizer, learning
    rate 1e-3, the same shuffled batches, the same dropout masks: torch's generator is
    seeded alike for every variant) then ``prune(--max-to-prune)``. With
    ``--flops-per-round F``, every prune removes ``F`` of the start model's FLOPs instead
    (``prune_loop(flops_per_round=F)``): every criterion then reaches a level in about the
    same number of rounds, so with the same training.

    Two accuracies:

    - *After fine-tuning*, at 50% and 25% of the FLOPs, on the data set's test images
      (10,000 for Fashion-MNIST): the models of the two rounds around the level are copied
      and each fine-tuned for ``--recovery-steps`` Adam steps (fresh optimizer, the same
      batches and dropout masks for every variant); the accuracy at the level is
      interpolated linearly in FLOPs between the two. This is what a user keeps. With
      ``--total-steps T``, the copy of round ``r`` is fine-tuned for ``T - r *
      --steps-per-round`` steps instead: every copy has then been trained for the same ``T``
      steps since the start model, however many rounds its criterion took to reach the level.
    - *Right after each prune*, on ``--val-size`` held-out training images, on a copy whose
      batch-norm statistics are re-estimated on ``--bn-batches`` training batches
      (``torch.optim.swa_utils.update_bn``): the damage of the prune before any training
      repairs it. Without the re-estimation, the running statistics of every batch norm
      after a pruned layer still describe inputs that are no longer there, and the accuracy
      swings by several points from one round to the next (the JSON keeps that raw accuracy
      as ``accuracy``). It is interpolated between the rounds at 75%, 50% and 25% of the
      FLOPs.

    The copies measured along the way draw their random numbers from a generator of their
    own (``own_generator``), so that measuring leaves the pruning run as it would be without.

    The variants: Taylor, activation mean, activation std, APoZ, minimum weight and random,
    each L2-normalised per layer, as the pruner ranks by default (``--ranking l2``; Taylor
    also without the normalisation and with FLOPs regularisation ``--flops-regularization``),
    or every one of them with that FLOPs regularisation too (``--ranking flops``); and, with
    ``--oracle``, the oracle on ``--oracle-images`` training images (one pass of those
    images per prunable channel at every prune: slow). ``--only NAME`` (repeated) runs just
    the variants named, each the same run as among all the others. The table gives the mean
    and standard deviation over the seeds, the best mean of each column in bold; the plot
    shows every variant's mean curve and its fine-tuned accuracies.

Usage: ``python benchmarks/criteria_curves.py [--seeds N] [--jobs J] [--ranking l2|flops]
[--target F] [--flops-per-round F] [--total-steps T] [--oracle] [--only NAME ...] [--quick] [--out table.md]``;
the plot (``.png``) and every number (``.json``) go next to ``--out``. ``--jobs J`` runs J
seeds at a time, each in its own process (the numbers are the same as one after another).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.optim.swa_utils import update_bn  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import report  # noqa: E402 (benchmarks/, the script's own folder)
import start_model  # noqa: E402
from start_model import BATCH_SIZE, LEARNING_RATE, load, trained_vgg  # noqa: E402
from prunable_nn import FlopsTarget, Round, TaylorPruner, prune_loop  # noqa: E402
from prunable_nn.criteria import (  # noqa: E402
    APoZ, ActivationMean, ActivationStd, Criterion, MinWeight, Oracle, RandomScores, Taylor,
)
from prunable_nn.training import endless, evaluate, make_loader, train_steps  # noqa: E402

#: FLOPs fractions of the right-after-prune columns, and of the fine-tuned ones.
LEVELS = (0.75, 0.5, 0.25)
FINE_TUNED_LEVELS = (0.5, 0.25)
#: Added to the seed for the batches of the fine-tuning copies and of the batch-norm
#: re-estimation, so that they differ from the pruning rounds' batches.
RECOVERY_SEED, BN_SEED = 1000, 2000


@contextmanager
def own_generator(seed: int) -> Iterator[None]:
    """Inside, torch's global (CPU) generator starts from ``seed``; after, it is as it was before."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def variants(args: argparse.Namespace, seed: int, oracle_batches) -> dict[str, Callable[[torch.nn.Module], TaylorPruner]]:
    """Each variant's name and how it makes its pruner for a copy of the start model.

    ``--ranking l2``: every criterion L2-normalised per layer, and Taylor also without the
    normalisation and with FLOPs regularisation. ``--ranking flops``: every criterion
    L2-normalised with FLOPs regularisation ``--flops-regularization``.
    """
    penalty = args.flops_regularization if args.ranking == "flops" else 0.0

    def pruner(criterion: Criterion, normalize: bool = True, flops_regularization: float = penalty):
        return lambda model: TaylorPruner(
            model, model.example_inputs(), criterion=criterion, normalize=normalize,
            flops_regularization=flops_regularization,
        )

    made = {"Taylor": pruner(Taylor())}
    if args.ranking == "l2":
        made["Taylor, no L2"] = pruner(Taylor(), normalize=False)
        made[f"Taylor, FLOPs reg. {args.flops_regularization:g}"] = pruner(Taylor(), flops_regularization=args.flops_regularization)
    made.update({
        "activation mean": pruner(ActivationMean()),
        "activation std": pruner(ActivationStd()),
        "APoZ": pruner(APoZ()),
        "minimum weight": pruner(MinWeight()),
        "random": pruner(RandomScores(seed)),
    })
    if args.oracle:
        made["oracle"] = lambda model: pruner(Oracle(oracle_batches))(model)  # needs the batches when it runs
    return made


def interpolated(level: float, fractions: list[float], accuracies: list[float]) -> float:
    """The accuracy at FLOPs fraction ``level``, linear between the points around it
    (``fractions`` falling; NaN when they do not reach the level)."""
    if min(fractions) > level:
        return float("nan")
    return float(np.interp(level, fractions[::-1], accuracies[::-1]))  # np.interp wants rising x


class Measurements:
    """The benchmark's own accuracies of one variant's run, taken from ``prune_loop``'s
    ``on_round`` (the pruning run itself only ever sees copies being made).

    ``recalibrated[i]``: row ``i``'s accuracy on ``val_loader`` with re-estimated batch-norm
    statistics; ``fine_tuned``: round -> accuracy on ``test_loader`` after
    ``recovery_steps(round)`` fine-tuning steps (``fine_tuning_steps``: round -> those
    steps), for the rounds around each of ``FINE_TUNED_LEVELS``; ``fine_tuned_at``: level ->
    those accuracies interpolated at the level (NaN until the run reaches it).
    """

    def __init__(self, model: torch.nn.Module, train_set: Dataset, val_loader: DataLoader, test_loader: DataLoader,
                 seed: int, recovery_steps: Callable[[int], int], bn_batches: int) -> None:
        self.model, self.train_set, self.val_loader, self.test_loader = model, train_set, val_loader, test_loader
        self.seed, self.recovery_steps = seed, recovery_steps
        loader = make_loader(train_set, BATCH_SIZE, shuffle=True, seed=seed + BN_SEED)
        self.bn_batches = [images for (images, _), _ in zip(loader, range(bn_batches))]
        self.start_flops: int | None = None
        self.fractions: list[float] = []
        self.recalibrated: list[float] = []
        self.fine_tuned: dict[int, float] = {}
        self.fine_tuning_steps: dict[int, int] = {}
        self.fine_tuned_at = {level: float("nan") for level in FINE_TUNED_LEVELS}
        self.previous: torch.nn.Module | None = None  # a copy of the model as the last row saw it

    def __call__(self, row: Round) -> None:
        if self.start_flops is None:  # row 0
            self.start_flops = row.flops
        fraction = row.flops / self.start_flops
        copied = copy.deepcopy(self.model)
        with own_generator(self.seed + BN_SEED):  # update_bn draws dropout masks, evaluate's loader a seed
            update_bn(self.bn_batches, copied)
            self.recalibrated.append(evaluate(copied, self.val_loader, progress=False))
        for level in FINE_TUNED_LEVELS:
            if self.fractions and fraction <= level < self.fractions[-1]:  # the first row at or below it
                around = ((row.round - 1, self.fractions[-1], self.previous), (row.round, fraction, self.model))
                for round_, _, model in around:
                    if round_ not in self.fine_tuned:
                        self.fine_tuning_steps[round_] = self.recovery_steps(round_)
                        self.fine_tuned[round_] = self.recovered_accuracy(model, self.fine_tuning_steps[round_])
                self.fine_tuned_at[level] = interpolated(
                    level, [at for _, at, _ in around], [self.fine_tuned[round_] for round_, _, _ in around]
                )
        self.fractions.append(fraction)
        self.previous = copy.deepcopy(self.model)

    def recovered_accuracy(self, model: torch.nn.Module, steps: int) -> float:
        """Test accuracy of a copy of ``model`` after ``steps`` Adam steps (learning rate
        1e-3) on batches and dropout masks that are the same for every variant."""
        model = copy.deepcopy(model)
        optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
        batches = endless(make_loader(self.train_set, BATCH_SIZE, shuffle=True, seed=self.seed + RECOVERY_SEED))
        with own_generator(self.seed + RECOVERY_SEED):
            train_steps(model, optimizer, batches, steps, progress=False)
            return evaluate(model, self.test_loader, progress=False)


def recovery_steps(args: argparse.Namespace) -> Callable[[int], int]:
    """Round -> fine-tuning steps of the copy of that round's model: ``--recovery-steps``,
    or what brings its training since the start model to ``--total-steps``."""
    if args.total_steps is None:
        return lambda round_: args.recovery_steps

    def remaining(round_: int) -> int:
        done = round_ * args.steps_per_round
        if done > args.total_steps:
            raise ValueError(f"--total-steps {args.total_steps} is fewer than the {done} steps of round {round_}")
        return args.total_steps - done

    return remaining


def one_seed(args: argparse.Namespace, seed: int) -> dict[str, dict]:
    if args.threads:
        torch.set_num_threads(args.threads)  # again: a --jobs worker is a fresh process
    train_set, validation = load(args.data, seed, args.val_size)
    start, loss = trained_vgg(train_set, seed, args.width, args.hidden, args.steps)
    report.say(f"seed {seed}: start model trained, loss {loss:.3f}")
    images, labels = train_set[list(range(args.oracle_images))]
    val_loader = make_loader(validation, 1000)
    test_loader = make_loader(start_model.images(args.data, train=False), 1000)
    curves = {}
    for name, make_pruner in variants(args, seed, [(images, labels)]).items():
        if args.only and name not in args.only:
            continue
        model = copy.deepcopy(start)
        pruner = make_pruner(model)
        optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
        measured = Measurements(model, train_set, val_loader, test_loader, seed, recovery_steps(args), args.bn_batches)
        torch.manual_seed(seed)  # the same dropout masks for every variant
        started = time.perf_counter()
        history = prune_loop(
            model, pruner, make_loader(train_set, BATCH_SIZE, shuffle=True, seed=seed), val_loader, optimizer,
            target=FlopsTarget(args.target), steps_per_round=args.steps_per_round,
            max_to_prune=None if args.flops_per_round else args.max_to_prune, flops_per_round=args.flops_per_round,
            progress=False, on_round=measured,
        )
        curves[name] = {
            "flops": measured.fractions, "accuracy": [row.accuracy for row in history],
            "recalibrated": measured.recalibrated, "parameters": [row.parameters for row in history],
            "at": {str(level): interpolated(level, measured.fractions, measured.recalibrated) for level in LEVELS},
            "fine_tuned_rounds": {str(round_): accuracy for round_, accuracy in sorted(measured.fine_tuned.items())},
            "fine_tuning_steps": {str(round_): steps for round_, steps in sorted(measured.fine_tuning_steps.items())},
            "fine_tuned_at": {str(level): accuracy for level, accuracy in measured.fine_tuned_at.items()},
            "seconds": time.perf_counter() - started,
        }
        tuned = ", ".join(f"{level:.0%}: {accuracy:.2%}" for level, accuracy in measured.fine_tuned_at.items()
                          if not np.isnan(accuracy))  # a level below the target is never reached
        report.say(f"  seed {seed}, {name}: {len(history) - 1} rounds in {curves[name]['seconds']:.0f} s; "
                   f"fine-tuned accuracy at {tuned or 'no level'}")
    return curves


#: The table's columns: (heading, key of the curve's values, FLOPs level).
COLUMNS = ([(f"fine-tuned, {level:.0%} FLOPs (test)", "fine_tuned_at", level) for level in FINE_TUNED_LEVELS]
           + [(f"right after prune, {level:.0%}", "at", level) for level in LEVELS])


def table(per_seed: list[dict[str, dict]]) -> list[str]:
    """Mean ± standard deviation over the seeds, the best mean of each column in bold."""
    names = list(per_seed[0])
    cells: dict[str, list[str]] = {name: [] for name in names}
    for _, key, level in COLUMNS:
        values = {name: [seed[name][key][str(level)] for seed in per_seed] for name in names}
        means = {name: float(np.mean(v)) for name, v in values.items() if not np.isnan(v).any()}
        for name in names:
            if name not in means:  # a curve that stopped above this level
                cells[name].append("-")
                continue
            cell = report.mean_and_spread(values[name], scale=100, unit="%")
            cells[name].append(f"**{cell}**" if means[name] == max(means.values()) else cell)
    return (["| criterion | " + " | ".join(heading for heading, _, _ in COLUMNS) + " |",
             "| --- |" + " ---: |" * len(COLUMNS)]
            + [f"| {name} | " + " | ".join(cells[name]) + " |" for name in names])


def plot(per_seed: list[dict[str, dict]], title: str, path: Path) -> None:
    """Left: each variant's accuracy right after each prune (batch norm re-estimated), the
    mean over the seeds on a common grid. Right: the fine-tuned accuracies at their levels,
    mean and standard deviation, at the levels that some curve reached."""
    grid = np.linspace(1.0, max(min(curve["flops"][-1] for curve in seed.values()) for seed in per_seed), 60)
    figure, (curves, tuned) = plt.subplots(1, 2, figsize=(13, 5), width_ratios=(3, 2))
    names = list(per_seed[0])
    levels = [level for level in FINE_TUNED_LEVELS
              if any(not np.isnan(seed[name]["fine_tuned_at"][str(level)]) for seed in per_seed for name in names)]
    for offset, name in enumerate(names):
        style = "--" if name == "random" else "-"
        mean = np.mean([np.interp(grid, seed[name]["flops"][::-1], seed[name]["recalibrated"][::-1]) for seed in per_seed], axis=0)
        line, = curves.plot(100 * grid, 100 * mean, label=name, linestyle=style)
        values = np.array([[seed[name]["fine_tuned_at"][str(level)] for level in levels] for seed in per_seed])
        shift = ((len(names) - 1) / 2 - offset) * 1.2  # the legend's order, left to right on the inverted axis
        tuned.errorbar(100 * np.array(levels) + shift, 100 * values.mean(axis=0), yerr=100 * values.std(axis=0),
                       fmt="o", color=line.get_color(), capsize=3, label=name)
    curves.invert_xaxis()
    curves.set_xlabel("FLOPs, % of the start model")
    curves.set_ylabel("validation accuracy right after each prune, %\n(batch-norm statistics re-estimated)")
    curves.set_title(textwrap.fill(title, 100), fontsize=9)
    curves.legend(fontsize=8)
    tuned.invert_xaxis()
    tuned.set_xticks([100 * level for level in levels])
    tuned.set_xlabel("FLOPs, % of the start model")
    tuned.set_ylabel("test accuracy after fine-tuning, %")
    tuned.set_title("after fine-tuning (mean and standard deviation over the seeds)", fontsize=9)
    for axes in (curves, tuned):
        axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main_parser() -> argparse.ArgumentParser:
    """The script's options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", type=float, default=0.25, help="prune down to this fraction of the FLOPs")
    parser.add_argument("--steps-per-round", type=int, default=30)
    parser.add_argument("--max-to-prune", type=int, default=32)
    parser.add_argument("--flops-per-round", type=float, metavar="F",
                        help="instead, every prune removes this fraction of the start model's FLOPs, "
                             "so that every criterion reaches a level in about the same rounds")
    parser.add_argument("--recovery-steps", type=int, default=150, help="fine-tuning steps of the fine-tuned accuracies")
    parser.add_argument("--total-steps", type=int, help="instead, fine-tune every copy to this many training steps "
                                                         "since the start model, the pruning rounds' included")
    parser.add_argument("--bn-batches", type=int, default=20, help="training batches that re-estimate batch norm")
    parser.add_argument("--ranking", choices=("l2", "flops"), default="l2",
                        help="l2: every criterion L2-normalised (and Taylor two more ways); flops: every "
                             "criterion L2-normalised with FLOPs regularisation")
    parser.add_argument("--flops-regularization", type=float, default=0.01)
    parser.add_argument("--val-size", type=int, default=2000)
    parser.add_argument("--oracle", action="store_true", help="also prune by the oracle (slow)")
    parser.add_argument("--oracle-images", type=int, default=256)
    parser.add_argument("--only", action="append", metavar="VARIANT",
                        help="run only this variant, named as in the table (repeat for more)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="seeds run at a time, each in its own process (with the CPUs shared among them "
                             "unless --threads says otherwise)")
    start_model.add_arguments(parser, seeds=3)
    report.add_common_arguments(parser, "criteria_curves.md")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = main_parser()
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.width, args.hidden, args.steps, args.target = 2, 0.0625, 16, 20, 0.5
        args.steps_per_round, args.max_to_prune, args.val_size, args.data = 2, 32, 100, "digits"
        args.recovery_steps, args.bn_batches, args.oracle, args.oracle_images = 2, 2, True, 16
    if args.jobs > 1 and not args.threads:
        # Each worker would take every CPU: two jobs of two threads on two cores stall at every
        # OpenMP barrier (the quick run took 190 s instead of 14).
        args.threads = max(1, (os.cpu_count() or 1) // args.jobs)
    if args.threads:
        torch.set_num_threads(args.threads)
    known = list(variants(args, 0, oracle_batches=[]))
    for name in set(args.only or ()) - set(known):
        parser.error(f"--only {name!r} is not a variant of --ranking {args.ranking}; "
                     f"they are: {', '.join(map(repr, known))}")

    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
            per_seed = list(pool.map(one_seed, [args] * args.seeds, range(args.seeds)))
    else:
        per_seed = [one_seed(args, seed) for seed in range(args.seeds)]
    fine_tuning = (f"{args.recovery_steps} steps" if args.total_steps is None
                   else f"to {args.total_steps} steps since the start model")
    pruned = (f"up to {args.max_to_prune} channels" if args.flops_per_round is None
              else f"{args.flops_per_round:.1%} of the FLOPs")
    ranked = "L2-normalised" if args.ranking == "l2" else f"L2-normalised, FLOPs reg. {args.flops_regularization:g}"
    title = (
        f"VGG-11 width {args.width:g} on {args.data}, criteria {ranked}: {args.steps} training steps, then "
        f"rounds of {args.steps_per_round} steps and {pruned}; fine-tuning "
        f"{fine_tuning}; mean of {args.seeds} seeds"
    )
    header = f"{title} ({report.machine()})"
    report.write(args, header, table(per_seed), {"seeds": per_seed})
    plot(per_seed, title, args.out.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
