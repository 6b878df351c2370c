"""Measured CPU latency of exported pruned networks against their FLOPs reduction.

What is measured
    Three networks, random init: ``models.DigitsNet`` (1x28x28), ``models.VGG("vgg11")`` at
    width 0.25 (1x28x28, the demo's) and torchvision's ``resnet18`` (3x``--resnet-size``
    squared, converted by ``TaylorPruner``). Each is pruned to every fraction of ``--levels``
    of its FLOPs: rounds of one training forward and backward pass on random images and
    labels (which gives Taylor estimates; latency depends on the shapes alone) and a
    ``prune()`` of ``--step`` of the prunable units, stopping at the first round at or under
    the level. With ``--round-to R`` every layer keeps a multiple of ``R`` channels
    (``TaylorPruner(round_to=R)``).

    For every pruned network, its plain-torch copy (``to_torch``, what a deployment exports)
    is timed side by side with the unpruned network's (``prunable_nn.latency.
    compare_latency``: alternating measurements, median ratio) for every batch size of
    ``--batches``, eagerly and compiled by ``torch.compile`` (static shapes; needs a C++
    compiler, else that column is left out). The table gives the FLOPs reduction factor
    ``F = unpruned FLOPs / pruned FLOPs``, the speed-up ``S`` and ``S / F`` (target: at least
    0.9). A last column gives, at the lowest level, the time of the pruned network in eval
    mode as it is (prunable layers, which record nothing in eval) over its plain-torch
    copy's: the cost of keeping the prunable layers at inference.

Usage: ``python benchmarks/latency.py [--levels 0.5 0.25] [--batches 1 64] [--round-to R]
[--no-compile] [--threads N] [--quick] [--out table.md]``; every number also goes to ``.json`` next to it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import report  # noqa: E402 (benchmarks/, the script's own folder)
from models import VGG, DigitsNet  # noqa: E402
from prunable_nn import TaylorPruner, count_flops, to_torch  # noqa: E402
from prunable_nn.latency import compare_latency  # noqa: E402

NETWORKS: dict[str, Callable[[argparse.Namespace], tuple[nn.Module, tuple[int, ...]]]] = {
    "digits net": lambda args: (DigitsNet(), (1, 28, 28)),
    "VGG-11 x0.25": lambda args: (VGG("vgg11", 10, 1, 28, width=0.25, hidden=128), (1, 28, 28)),
    "resnet18": lambda args: (torchvision.models.resnet18(num_classes=10), (3, args.resnet_size, args.resnet_size)),
}


def pruned_copies(
    model: nn.Module, shape: tuple[int, ...], levels: list[float], step: float, round_to: int = 1
) -> dict[float, tuple[nn.Module, int]]:
    """Plain-torch copies of ``model`` pruned to each FLOPs fraction of ``levels``, with
    their FLOPs, removing a ``step`` fraction of the prunable units per round (in blocks of
    ``round_to``). ``model`` itself is pruned along the way."""
    example = torch.zeros(1, *shape)
    pruner = TaylorPruner(model, example, round_to=round_to)
    max_to_prune = max(round_to, round(step * pruner.num_prunables))
    start = count_flops(model, example)
    generator = torch.Generator().manual_seed(0)
    copies = {}
    for level in sorted(levels, reverse=True):
        flops = count_flops(model, example)
        while flops > level * start and pruner.num_prunables:
            images = torch.randn(16, *shape, generator=generator)
            labels = torch.randint(10, (16,), generator=generator)
            model.train()
            F.cross_entropy(model(images), labels).backward()
            model.zero_grad(set_to_none=True)
            pruner.prune(max_to_prune)
            flops = count_flops(model, example)
        copies[level] = (to_torch(model).eval(), flops)
    return copies


def compiled(model: nn.Module, inputs: torch.Tensor) -> nn.Module:
    module = torch.compile(model, dynamic=False)
    with torch.inference_mode():
        module(inputs)
    return module


def measure(args: argparse.Namespace, name: str) -> list[dict]:
    torch.manual_seed(0)
    model, shape = NETWORKS[name](args)
    unpruned = to_torch(model).eval()  # a plain-torch copy, before any pruning
    start = count_flops(unpruned, torch.zeros(1, *shape))
    rows = []
    for level, (pruned, flops) in pruned_copies(model, shape, args.levels, args.step, args.round_to).items():
        widths = [layer.out_channels for layer in pruned.modules() if isinstance(layer, nn.Conv2d)]
        row = {"network": name + (f", blocks of {args.round_to}" if args.round_to > 1 else ""), "conv_widths": widths, "level": level, "flops_factor": start / flops, "speedup": {}}
        for batch in args.batches:
            inputs = torch.randn(batch, *shape)
            row["speedup"][f"eager, {batch}"] = compare_latency(
                unpruned, pruned, inputs, repeats=args.repeats, min_run_time=args.time / args.repeats
            ).speedup
            if args.compile:
                row["speedup"][f"compiled, {batch}"] = compare_latency(
                    compiled(unpruned, inputs), compiled(pruned, inputs), inputs,
                    repeats=args.repeats, min_run_time=args.time / args.repeats,
                ).speedup
        row["prunable_over_plain"] = None
        if level == min(args.levels):  # ``model`` has the shapes of the last level's copy
            inputs = torch.randn(args.batches[-1], *shape)
            row["prunable_over_plain"] = compare_latency(
                model.eval(), pruned, inputs, repeats=args.repeats, min_run_time=args.time / args.repeats
            ).speedup
        rows.append(row)
        print(f"{name} at {level:.0%} FLOPs: {row}", flush=True)
    return rows


def table(rows: list[dict]) -> list[str]:
    columns = list(rows[0]["speedup"])
    lines = [
        "| network | FLOPs kept | F | " + " | ".join(f"S {column} (S/F)" for column in columns)
        + " | prunable / plain, eval |",
        "| --- | ---: | ---: |" + " ---: |" * (len(columns) + 1),
    ]
    for row in rows:
        factor = row["flops_factor"]
        cells = [f"{row['speedup'][column]:.2f}x ({row['speedup'][column] / factor:.2f})" for column in columns]
        lines.append(
            f"| {row['network']} | {1 / factor:.1%} | {factor:.2f} | " + " | ".join(cells)
            + (" | - |" if row["prunable_over_plain"] is None else f" | {row['prunable_over_plain']:.2f} |")
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--networks", nargs="+", choices=list(NETWORKS), default=list(NETWORKS))
    parser.add_argument("--levels", type=float, nargs="+", default=[0.5, 0.25])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--resnet-size", type=int, default=112)
    parser.add_argument("--step", type=float, default=0.03, help="fraction of the prunable units removed per round")
    parser.add_argument("--round-to", type=int, default=1, help="every layer keeps a multiple of this many channels")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--time", type=float, default=2.0, help="seconds of timing per network and column")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    report.add_common_arguments(parser, "latency.md")
    args = parser.parse_args(argv)
    if args.quick:
        args.networks, args.levels, args.batches, args.resnet_size = ["digits net", "resnet18"], [0.5], [2], 32
        args.repeats, args.time, args.compile, args.step = 2, 0.02, False, 0.1
    if args.threads:
        torch.set_num_threads(args.threads)

    rows = [row for name in args.networks for row in measure(args, name)]
    header = (
        f"Latency speed-up S of the pruned plain-torch copy over the unpruned network, side by side "
        f"({args.repeats} alternating measurements, median ratio), against the FLOPs factor F ({report.machine()})"
    )
    report.write(args, header, table(rows), {"rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
