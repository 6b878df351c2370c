"""The same start model and budget pruned by prunable_nn and by Torch-Pruning.

What is measured
    For each seed, one start model (``start_model.trained_vgg``: VGG-11 with batch norm at
    ``--width``, ``--steps`` Adam steps on Fashion-MNIST) is copied once per method and
    pruned until its FLOPs are at most ``--target`` of the start's, with the same budget:
    rounds of ``--steps-per-round`` Adam steps (learning rate 1e-3, the same shuffled
    batches) then one pruning step, and ``--finetune-steps`` more steps after the last one.

    * prunable_nn, Taylor: ``TaylorPruner`` and ``prune(--max-to-prune)`` per round (the
      estimates gathered over the round's steps; the optimizer's state is sliced);
    * prunable_nn, Taylor + FLOPs regularisation ``--flops-regularization``;
    * Torch-Pruning's ``TaylorImportance`` and ``MagnitudeImportance`` (L2), each with its
      ``MetaPruner`` (global ranking, the classifier's last layer kept), ``--max-to-prune``
      channels' worth of its ratio schedule per ``step()``. Its Taylor importance reads
      ``weight * grad``: before each step the gradients of ``--taylor-batches`` training
      batches are accumulated, as its documentation shows. Its pruning replaces the
      parameters, so Adam is made anew after each step, as its users do.

    With ``--round-to R`` both libraries keep every layer at a multiple of ``R`` channels
    (``TaylorPruner(round_to=R)``; Torch-Pruning's own ``round_to``).

    Then: test accuracy on the 10000 test images, FLOPs and parameters
    (``torch.utils.flop_counter``), the latency of the exported network (plain torch, eval)
    side by side with the unpruned one's (``compare_latency``, eager, ``--latency-batch``
    images), and the wall time of the pruning and fine-tuning. Mean and standard deviation
    over the seeds.

Usage: ``python benchmarks/vs_torch_pruning.py [--seeds N] [--target F] [--quick]
[--out table.md]``; Torch-Pruning must be installed (``pip install --no-deps
torch-pruning``); every number also goes to ``.json`` next to ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import report  # noqa: E402 (benchmarks/, the script's own folder)
import start_model  # noqa: E402
from start_model import BATCH_SIZE, IMAGE_SIZE, LEARNING_RATE, images, load, trained_vgg  # noqa: E402
from prunable_nn import TaylorPruner, count_flops, count_parameters, evaluate, to_torch  # noqa: E402
from prunable_nn.latency import compare_latency  # noqa: E402
from prunable_nn.training import endless, make_loader, train_steps  # noqa: E402

#: ``prune_round(model, optimizer) -> optimizer``: one pruning step; returns the optimizer to go on with.
PruneRound = Callable[[nn.Module, torch.optim.Optimizer], torch.optim.Optimizer]


def ours(args: argparse.Namespace, flops_regularization: float) -> Callable[[nn.Module, object], PruneRound]:
    def make(model: nn.Module, batches) -> PruneRound:
        pruner = TaylorPruner(
            model, model.example_inputs(), flops_regularization=flops_regularization, round_to=args.round_to
        )

        def prune_round(model: nn.Module, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
            pruner.prune(args.max_to_prune, optimizer=optimizer)
            return optimizer

        return prune_round

    return make


def torch_pruning(args: argparse.Namespace, importance: str) -> Callable[[nn.Module, object], PruneRound]:
    import torch_pruning as tp

    def make(model: nn.Module, batches) -> PruneRound:
        units = sum(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)) + sum(
            m.out_features for m in model.modules() if isinstance(m, nn.Linear)
        ) - model.classifier[-1].out_features
        ratio = 0.9
        pruner = tp.pruner.MetaPruner(
            model, model.example_inputs(),
            importance=tp.importance.TaylorImportance() if importance == "taylor" else tp.importance.MagnitudeImportance(p=2),
            global_pruning=True, pruning_ratio=ratio,
            iterative_steps=max(1, round(ratio * units / args.max_to_prune)),
            ignored_layers=[model.classifier[-1]], round_to=args.round_to if args.round_to > 1 else None,
        )

        def prune_round(model: nn.Module, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
            if importance == "taylor":
                model.zero_grad(set_to_none=True)
                model.train()
                for _ in range(args.taylor_batches):
                    images, labels = next(batches)
                    F.cross_entropy(model(images), labels).backward()
            pruner.step()
            model.zero_grad(set_to_none=True)
            return torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)

        return prune_round

    return make


def run_method(
    args: argparse.Namespace, start: nn.Module, plain: bool, make: Callable, train_set, seed: int
) -> tuple[nn.Module, dict]:
    """Prune a copy of ``start`` (its plain-torch copy when ``plain``) to the target with
    the budget; the pruned network and what the run took."""
    model = to_torch(start) if plain else copy.deepcopy(start)
    example = torch.zeros(1, 1, IMAGE_SIZE, IMAGE_SIZE)
    batches = endless(make_loader(train_set, BATCH_SIZE, shuffle=True, seed=seed))
    started = time.perf_counter()
    prune_round = make(model, batches)
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    start_flops = count_flops(model, example)
    rounds = 0
    while count_flops(model, example) > args.target * start_flops and rounds < args.max_rounds:
        train_steps(model, optimizer, batches, args.steps_per_round, progress=False)
        optimizer = prune_round(model, optimizer)
        rounds += 1
    train_steps(model, optimizer, batches, args.finetune_steps, progress=False)
    return model, {"rounds": rounds, "seconds": time.perf_counter() - started}


def one_seed(args: argparse.Namespace, seed: int) -> dict[str, dict]:
    train_set, _ = load(args.data, seed, 0)
    test_loader = make_loader(images(args.data, train=False), 1000)
    start, _ = trained_vgg(train_set, seed, args.width, args.hidden, args.steps)
    example = torch.zeros(1, 1, IMAGE_SIZE, IMAGE_SIZE)
    unpruned = to_torch(start).eval()
    start_flops, start_parameters = count_flops(unpruned, example), count_parameters(unpruned)
    results = {"unpruned": {"accuracy": evaluate(unpruned, test_loader, progress=False), "flops": 1.0,
                            "parameters": 1.0, "speedup": 1.0, "rounds": 0, "seconds": 0.0}}
    methods = {
        "prunable_nn Taylor": (False, ours(args, 0.0)),
        f"prunable_nn Taylor, FLOPs reg. {args.flops_regularization:g}": (False, ours(args, args.flops_regularization)),
        "Torch-Pruning Taylor": (True, torch_pruning(args, "taylor")),
        "Torch-Pruning magnitude (L2)": (True, torch_pruning(args, "magnitude")),
    }
    inputs = torch.randn(args.latency_batch, 1, IMAGE_SIZE, IMAGE_SIZE)
    for name, (plain, make) in methods.items():
        model, run = run_method(args, start, plain, make, train_set, seed)
        exported = to_torch(model).eval()
        results[name] = {
            "accuracy": evaluate(exported, test_loader, progress=False),
            "flops": count_flops(exported, example) / start_flops,
            "parameters": count_parameters(exported) / start_parameters,
            "speedup": compare_latency(unpruned, exported, inputs, repeats=args.repeats,
                                       min_run_time=args.latency_time / args.repeats).speedup,
            "conv_widths": [layer.out_channels for layer in exported.modules() if isinstance(layer, nn.Conv2d)],
            **run,
        }
        print(f"seed {seed}, {name}: {results[name]}", flush=True)
    return results


def table(per_seed: list[dict[str, dict]]) -> list[str]:
    def cell(name: str, key: str, scale: float, unit: str, digits: int = 2) -> str:
        return report.mean_and_spread([seed[name][key] for seed in per_seed], scale, digits, unit)

    lines = ["| method | test accuracy | FLOPs | parameters | latency speed-up | rounds | wall time |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name in per_seed[0]:
        lines.append(
            f"| {name} | {cell(name, 'accuracy', 100, '%')} | {cell(name, 'flops', 100, '%', 1)} | "
            f"{cell(name, 'parameters', 100, '%', 1)} | {cell(name, 'speedup', 1, 'x')} | "
            f"{cell(name, 'rounds', 1, '', 1)} | {cell(name, 'seconds', 1, ' s', 0)} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", type=float, default=0.5, help="prune until the FLOPs are at most this fraction")
    parser.add_argument("--steps-per-round", type=int, default=30)
    parser.add_argument("--max-to-prune", type=int, default=32)
    parser.add_argument("--max-rounds", type=int, default=100)
    parser.add_argument("--round-to", type=int, default=1, help="every layer keeps a multiple of this many channels")
    parser.add_argument("--finetune-steps", type=int, default=400)
    parser.add_argument("--flops-regularization", type=float, default=0.01)
    parser.add_argument("--taylor-batches", type=int, default=4)
    parser.add_argument("--latency-batch", type=int, default=64)
    parser.add_argument("--latency-time", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=20)
    start_model.add_arguments(parser, seeds=2)
    report.add_common_arguments(parser, "vs_torch_pruning.md")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.width, args.hidden, args.steps, args.steps_per_round = 1, 0.0625, 16, 10, 2
        args.max_to_prune, args.finetune_steps, args.taylor_batches, args.data = 16, 2, 1, "digits"
        args.latency_batch, args.latency_time, args.repeats = 2, 0.02, 2
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        import torch_pruning as tp
    except ImportError:
        print("Torch-Pruning is missing: pip install --no-deps torch-pruning", file=sys.stderr)
        return 1

    per_seed = [one_seed(args, seed) for seed in range(args.seeds)]
    header = (
        f"VGG-11 width {args.width:g} on {args.data}, pruned to {args.target:.0%} of its FLOPs: rounds of "
        f"{args.steps_per_round} steps and up to {args.max_to_prune} channels"
        + (f" in blocks of {args.round_to}" if args.round_to > 1 else "")
        + f", then {args.finetune_steps} steps; "
        f"mean ± std over {args.seeds} seeds (Torch-Pruning {tp.__version__}, {report.machine()})"
    )
    report.write(args, header, table(per_seed), {"seeds": per_seed})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
