"""Accuracy against FLOPs when the same start model is pruned by each criterion.

What is measured
    For each seed, one start model (``start_model.trained_vgg``: a VGG-11 with batch norm at
    ``--width``, trained for ``--steps`` steps on Fashion-MNIST) is copied once per variant
    and pruned by ``prune_loop`` down to ``--target`` of its FLOPs, with the same budget for
    every variant: rounds of ``--steps-per-round`` Adam steps (fresh optimizer, learning
    rate 1e-3, the same shuffled batches) then ``prune(--max-to-prune)``. After every round
    the accuracy is measured on ``--val-size`` held-out images, right after the prune.

    The variants: Taylor as the pruner ranks by default (L2-normalised per layer), without
    the normalisation, and with FLOPs regularisation ``--flops-regularization``; activation
    mean, activation std, APoZ, minimum weight and random (all L2-normalised); and, with
    ``--oracle``, the oracle on ``--oracle-images`` training images (one pass of those
    images per prunable channel at every prune: slow).

    The accuracy at a FLOPs fraction is interpolated linearly between the rounds around it
    (the rounds remove up to ``--max-to-prune`` channels each, so they do not land on the
    same fractions). The table gives its mean and standard deviation over the seeds at 75%,
    50% and 25% of the FLOPs; the plot shows every variant's mean curve.

Usage: ``python benchmarks/criteria_curves.py [--seeds N] [--target F] [--oracle] [--quick]
[--out table.md]``; the plot (``.png``) and every number (``.json``) go next to ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import report  # noqa: E402 (benchmarks/, the script's own folder)
import start_model  # noqa: E402
from start_model import BATCH_SIZE, LEARNING_RATE, load, trained_vgg  # noqa: E402
from prunable_nn import FlopsTarget, TaylorPruner, prune_loop  # noqa: E402
from prunable_nn.criteria import (  # noqa: E402
    APoZ, ActivationMean, ActivationStd, Criterion, MinWeight, Oracle, RandomScores, Taylor,
)
from prunable_nn.training import make_loader  # noqa: E402

LEVELS = (0.75, 0.5, 0.25)


def variants(args: argparse.Namespace, seed: int, oracle_batches) -> dict[str, Callable[[torch.nn.Module], TaylorPruner]]:
    """Each variant's name and how it makes its pruner for a copy of the start model."""

    def pruner(criterion: Criterion, normalize: bool = True, flops_regularization: float = 0.0):
        return lambda model: TaylorPruner(
            model, model.example_inputs(), criterion=criterion, normalize=normalize,
            flops_regularization=flops_regularization,
        )

    made = {
        "Taylor": pruner(Taylor()),
        "Taylor, no L2": pruner(Taylor(), normalize=False),
        f"Taylor, FLOPs reg. {args.flops_regularization:g}": pruner(Taylor(), flops_regularization=args.flops_regularization),
        "activation mean": pruner(ActivationMean()),
        "activation std": pruner(ActivationStd()),
        "APoZ": pruner(APoZ()),
        "minimum weight": pruner(MinWeight()),
        "random": pruner(RandomScores(seed)),
    }
    if args.oracle:
        made["oracle"] = pruner(Oracle(oracle_batches))
    return made


def accuracy_at(fractions: list[float], accuracies: list[float], level: float) -> float:
    """The accuracy at FLOPs fraction ``level``, interpolated between the rounds (NaN when
    the curve does not reach it)."""
    if min(fractions) > level:
        return float("nan")
    return float(np.interp(level, fractions[::-1], accuracies[::-1]))  # np.interp wants rising x


def one_seed(args: argparse.Namespace, seed: int) -> dict[str, dict]:
    train_set, validation = load(args.data, seed, args.val_size)
    start, loss = trained_vgg(train_set, seed, args.width, args.hidden, args.steps)
    print(f"seed {seed}: start model trained, loss {loss:.3f}", flush=True)
    images, labels = train_set[list(range(args.oracle_images))]
    val_loader = make_loader(validation, 1000)
    curves = {}
    for name, make_pruner in variants(args, seed, [(images, labels)]).items():
        model = copy.deepcopy(start)
        pruner = make_pruner(model)
        optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
        started = time.perf_counter()
        history = prune_loop(
            model, pruner, make_loader(train_set, BATCH_SIZE, shuffle=True, seed=seed), val_loader, optimizer,
            target=FlopsTarget(args.target), steps_per_round=args.steps_per_round,
            max_to_prune=args.max_to_prune, progress=False,
        )
        fractions = [row.flops / history[0].flops for row in history]
        accuracies = [row.accuracy for row in history]
        curves[name] = {
            "flops": fractions, "accuracy": accuracies, "parameters": [row.parameters for row in history],
            "at": {str(level): accuracy_at(fractions, accuracies, level) for level in LEVELS},
            "seconds": time.perf_counter() - started,
        }
        at = ", ".join(f"{level:.0%}: {curves[name]['at'][str(level)]:.2%}" for level in LEVELS)
        print(f"  {name}: {len(history) - 1} rounds in {curves[name]['seconds']:.0f} s; accuracy at {at}", flush=True)
    return curves


def table(per_seed: list[dict[str, dict]]) -> list[str]:
    lines = ["| criterion | " + " | ".join(f"accuracy at {level:.0%} FLOPs" for level in LEVELS) + " |",
             "| --- |" + " ---: |" * len(LEVELS)]
    for name in per_seed[0]:
        cells = []
        for level in LEVELS:
            values = [seed[name]["at"][str(level)] for seed in per_seed]
            if any(np.isnan(values)):  # a curve that stopped above this level
                cells.append("-")
                continue
            cells.append(report.mean_and_spread(values, scale=100, unit="%"))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def plot(per_seed: list[dict[str, dict]], title: str, path: Path) -> None:
    """Each variant's accuracy against FLOPs, the mean over the seeds on a common grid."""
    grid = np.linspace(1.0, max(min(curve["flops"][-1] for curve in seed.values()) for seed in per_seed), 60)
    figure, axes = plt.subplots(figsize=(8, 5))
    for name in per_seed[0]:
        mean = np.mean([np.interp(grid, seed[name]["flops"][::-1], seed[name]["accuracy"][::-1]) for seed in per_seed], axis=0)
        axes.plot(100 * grid, 100 * mean, label=name, linestyle="--" if name == "random" else "-")
    axes.invert_xaxis()
    axes.set_xlabel("FLOPs, % of the start model")
    axes.set_ylabel("validation accuracy right after each prune, %")
    axes.set_title(title, fontsize=9)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", type=float, default=0.25, help="prune down to this fraction of the FLOPs")
    parser.add_argument("--steps-per-round", type=int, default=30)
    parser.add_argument("--max-to-prune", type=int, default=32)
    parser.add_argument("--flops-regularization", type=float, default=0.01)
    parser.add_argument("--val-size", type=int, default=2000)
    parser.add_argument("--oracle", action="store_true", help="also prune by the oracle (slow)")
    parser.add_argument("--oracle-images", type=int, default=256)
    start_model.add_arguments(parser, seeds=2)
    report.add_common_arguments(parser, "criteria_curves.md")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.width, args.hidden, args.steps, args.target = 2, 0.0625, 16, 20, 0.5
        args.steps_per_round, args.max_to_prune, args.val_size, args.data = 2, 32, 100, "digits"
        args.oracle, args.oracle_images = True, 16
    if args.threads:
        torch.set_num_threads(args.threads)

    per_seed = [one_seed(args, seed) for seed in range(args.seeds)]
    title = (
        f"VGG-11 width {args.width:g} on {args.data}: {args.steps} training steps,\nthen rounds of "
        f"{args.steps_per_round} steps and up to {args.max_to_prune} channels; mean of {args.seeds} seeds"
    )
    header = f"{title.replace(chr(10), ' ')} ({report.machine()})"
    report.write(args, header, table(per_seed), {"seeds": per_seed})
    plot(per_seed, title, args.out.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
