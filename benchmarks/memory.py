"""Memory that a training step holds: the prunable model against the same network in plain
torch layers, with out-of-place and in-place ReLUs.

What is measured
    Model A is ``models.VGG("vgg11", in_channels=3, input_size=32, num_classes=10)`` after
    its pruner has been built (its batch norms estimate); model B is its plain twin
    (``overhead.plain_twin``: ``nn.Conv2d``, ``nn.BatchNorm2d``, ``nn.Linear``, same
    weights). Every ``nn.ReLU`` of both is set in place or out of place. A training step's
    memory peaks when the forward is done: everything autograd saved for the backward is
    alive, and the estimates' own references with it. The figure is the heap in use (glibc's
    ``mallinfo2``: ``uordblks + hblkhd``, which counts the large tensors that ``malloc``
    maps directly) after the forward and loss, less the heap in use before it, after a
    garbage collection. Each step runs to its backward; the first steps are a warm-up.

Target: ratio A / B at most 1.02 for both kinds of ReLU.

Usage: ``python benchmarks/memory.py [--batch B] [--steps N] [--quick] [--out result.md]``
(Linux with glibc only).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from overhead import build_models  # noqa: E402 (benchmarks/, the script's own folder)

TARGET = 1.02


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")
    ]


def heap_in_use() -> int:
    """Bytes that ``malloc`` has handed out and not got back (glibc's ``mallinfo2``)."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    return info.uordblks + info.hblkhd


def held_by_forward(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, steps: int, warmup: int) -> float:
    """Median bytes in use at the end of the forward of a training step, over ``steps``."""
    held = []
    for step in range(warmup + steps):
        model.zero_grad(set_to_none=True)
        gc.collect()
        before = heap_in_use()
        loss = F.cross_entropy(model(inputs), labels)
        if step >= warmup:
            held.append(heap_in_use() - before)
        loss.backward()
        del loss
    return statistics.median(held)


def measure(batch: int, steps: int, warmup: int) -> list[dict[str, object]]:
    rows = []
    for inplace in (False, True):
        prunable, plain, _ = build_models(seed=0)
        for model in (prunable, plain):
            model.train()
            for module in model.modules():
                if isinstance(module, nn.ReLU):
                    module.inplace = inplace
        generator = torch.Generator().manual_seed(0)
        inputs = torch.randn(batch, 3, 32, 32, generator=generator)
        labels = torch.randint(0, 10, (batch,), generator=generator)
        ours = held_by_forward(prunable, inputs, labels, steps, warmup)
        theirs = held_by_forward(plain, inputs, labels, steps, warmup)
        rows.append({"relu": "in place" if inplace else "out of place", "prunable": ours, "plain": theirs, "ratio": ours / theirs})
    return rows


def table(rows: list[dict[str, object]], batch: int) -> list[str]:
    lines = [
        f"VGG-11-BN, 32x32 input, batch {batch}, torch {torch.__version__}: heap in use at the end of a training step's forward",
        "",
        "| ReLU | prunable MiB | plain MiB | ratio | target | met |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in rows:
        met = "yes" if row["ratio"] <= TARGET else "NO"
        lines.append(
            f"| {row['relu']} | {row['prunable'] / 2**20:.2f} | {row['plain'] / 2**20:.2f} | {row['ratio']:.3f} | {TARGET} | {met} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5, help="measured steps per model (default 5)")
    parser.add_argument("--quick", action="store_true", help="smoke run: batch 4, 1 step, 1 warm-up")
    parser.add_argument("--out", type=Path, help="also write the markdown table to this file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    batch, steps, warmup = (4, 1, 1) if args.quick else (args.batch, args.steps, 2)
    lines = table(measure(batch, steps, warmup), batch)
    print("\n".join(lines))
    if args.out is not None:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
