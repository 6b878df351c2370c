"""How well each criterion ranks channels like the oracle does (Molchanov et al., Table 1).

What is measured
    For each seed, a VGG-11 with batch norm (``--width`` of its 64..512 channels) is trained
    for ``--steps`` Adam steps on Fashion-MNIST (Debian's IDX files; ``--data digits``:
    scikit-learn's 8x8 digits scaled to 28x28, which needs nothing installed). Then, on the
    same ``--batches`` held-out batches of ``--batch-size`` validation images:

    * the oracle: ``|L(without k) - L|`` for every prunable channel ``k``, the channel zeroed
      at its readers' inputs, in eval mode (``prunable_nn.Oracle``);
    * Taylor, activation mean, activation std and APoZ: one training-mode forward and
      backward pass over the batches, the estimators recording the criterion's statistic
      (weights and batch-norm statistics are restored afterwards);
    * minimum weight and random, from the weights and a seeded generator.

    Spearman's rank correlation with the oracle is taken three ways: within each layer
    (chain), averaged over the layers; across all layers on the raw values; across all
    layers after each layer's values are divided by their L2 norm, as the pruner ranks them.
    The table gives the mean and standard deviation over the seeds.

Paper (VGG-16 on Birds-200, per layer / all layers with L2): Taylor 0.73 / 0.73, weight
0.27 / 0.33, activation mean 0.56 / 0.64, activation std 0.59 / 0.66, APoZ 0.51 / 0.44,
random 0.0 / 0.0.

Usage: ``python benchmarks/oracle_correlation.py [--seeds N] [--width W] [--steps S]
[--batches B] [--batch-size N] [--data fashion-mnist|digits] [--quick] [--out table.md]``;
the JSON of every number goes next to ``--out``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import report  # noqa: E402 (benchmarks/, the script's own folder)
import start_model  # noqa: E402
from start_model import load, trained_vgg  # noqa: E402
from prunable_nn import TaylorPruner  # noqa: E402
from prunable_nn.criteria import (  # noqa: E402
    APoZ, ActivationMean, ActivationStd, Criterion, MinWeight, Oracle, RandomScores, Taylor,
)

WAYS = ("per layer", "all layers", "all layers, L2")


def criteria(seed: int) -> list[Criterion]:
    return [Taylor(), ActivationMean(), ActivationStd(), APoZ(), MinWeight(), RandomScores(seed)]


def record(model: torch.nn.Module, pruner: TaylorPruner, criterion: Criterion, batches) -> None:
    """The estimators record ``criterion``'s statistic over one pass of ``batches``; the
    weights, batch-norm statistics and gradients are left as they were."""
    saved = {name: value.clone() for name, value in model.state_dict().items()}
    for member in pruner.estimator_members:
        member.layer.statistic = criterion.statistic
    pruner.reset_estimates()
    model.train()
    for images, labels in batches:
        F.cross_entropy(model(images), labels).backward()
    model.load_state_dict(saved)
    model.zero_grad(set_to_none=True)


def correlations(pruner: TaylorPruner, criterion: Criterion, oracle: list[torch.Tensor]) -> dict[str, float]:
    """Spearman's correlation of ``criterion`` with the oracle, the three ways."""
    pruner.criterion = criterion
    pruner.normalize = False
    raw = pruner.scores()
    pruner.normalize = True
    normalised = pruner.scores()
    per_layer = [spearman(values, truth) for values, truth in zip(raw, oracle)]
    truth = torch.cat(oracle)
    return {
        "per layer": statistics.fmean(per_layer),
        "all layers": spearman(torch.cat(raw), truth),
        "all layers, L2": spearman(torch.cat(normalised), truth),
    }


def spearman(values: torch.Tensor, truth: torch.Tensor) -> float:
    """Spearman's rank correlation; 0 where either side is constant (no ranking at all)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns about constant input, handled here
        correlation = float(spearmanr(values.numpy(), truth.numpy()).statistic)
    return 0.0 if math.isnan(correlation) else correlation


def one_seed(args: argparse.Namespace, seed: int) -> tuple[dict[str, dict[str, float]], dict]:
    train_set, validation = load(args.data, seed, args.batches * args.batch_size)
    model, loss = trained_vgg(train_set, seed, args.width, args.hidden, args.steps)
    pruner = TaylorPruner(model, model.example_inputs())
    batches = list(zip(validation.tensors[0].split(args.batch_size), validation.tensors[1].split(args.batch_size)))

    started = time.perf_counter()
    oracle = Oracle(batches)
    changes = oracle.unit_changes(pruner).abs()
    truth = [changes[chain.units] for chain in pruner.chains]
    oracle_seconds = time.perf_counter() - started
    results = {}
    for criterion in criteria(seed):
        if criterion.statistic is not None:
            record(model, pruner, criterion, batches)
        results[criterion.name] = correlations(pruner, criterion, truth)
    info = {"train_loss": loss, "units": int(changes.numel()), "oracle_seconds": oracle_seconds}
    return results, info


def table(per_seed: list[dict[str, dict[str, float]]]) -> list[str]:
    lines = ["| criterion | " + " | ".join(WAYS) + " |", "| --- |" + " ---: |" * len(WAYS)]
    for name in per_seed[0]:
        cells = []
        for way in WAYS:
            values = [seed[name][way] for seed in per_seed]
            cells.append(report.mean_and_spread(values))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=250)
    start_model.add_arguments(parser, seeds=3)
    report.add_common_arguments(parser, "oracle_correlation.md")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.width, args.hidden, args.steps, args.batches, args.batch_size, args.data = (
            2, 0.0625, 16, 10, 1, 64, "digits"
        )
    if args.threads:
        torch.set_num_threads(args.threads)

    per_seed, infos = [], []
    for seed in range(args.seeds):
        results, info = one_seed(args, seed)
        per_seed.append(results)
        infos.append(info)
        print(f"seed {seed}: {info['units']} units, training loss {info['train_loss']:.3f}, "
              f"oracle in {info['oracle_seconds']:.0f} s", flush=True)
    header = (
        f"Spearman correlation with the oracle (|loss change| of removing the channel), VGG-11 width "
        f"{args.width:g} on {args.data}, {args.steps} training steps, {args.batches}x{args.batch_size} "
        f"held-out images, mean ± std over {args.seeds} seeds ({report.machine()})"
    )
    report.write(args, header, table(per_seed), {"seeds": per_seed, "runs": infos})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
