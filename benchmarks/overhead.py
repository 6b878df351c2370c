"""Overhead of the prunable layers against the same network built from plain torch layers.

What is measured
    Model A is ``models.VGG("vgg11", in_channels=3, input_size=32, num_classes=10)`` (VGG-11
    with batch norm, written with ``PConv2d``/``PBatchNorm2d``/``PLinear``) after its
    ``model.pruner`` has been built, so only the layers that end a chain (the BN layers and
    the hidden ``PLinear`` layers) compute Taylor estimates. Model B is a deep copy of A
    whose prunable layers are replaced by ``layer.to_torch()``: plain ``nn.Conv2d``,
    ``nn.BatchNorm2d`` and ``nn.Linear`` with the same weights (checked: same eval outputs).

    * train: one training step = ``zero_grad``, forward, cross-entropy, backward and an SGD
      step (momentum 0.9), model in ``train()`` mode, on one fixed batch of 32x32 images.
    * eval: one forward pass in ``eval()`` mode under ``torch.inference_mode()``; here the
      prunable layers compute no estimate, so what remains is the cost of their Python
      ``forward`` override.
    * compiled: the training step of ``train`` with both models compiled by
      ``torch.compile`` (``--backend``, inductor by default, which needs a C++ compiler):
      the estimates are then computed in the compiled backward, and what remains is their
      kernels and one eager call per estimating layer and step.

How
    Both models run in one process with the same ``torch.set_num_threads`` (1 by default:
    on a small shared machine a second busy process stalls a multi-threaded step at every
    OpenMP barrier, which made 2-thread steps jump from 0.5 s to 2.5 s here; pass
    ``--threads`` to measure with more) and with denormals flushed to zero. After a warm-up,
    each *pair* times one step of A and one of B with ``time.perf_counter`` (the Python
    garbage collector is switched off while timing), alternating the order (A then B,
    B then A, ...) so that drifts in machine speed hit both alike. The ratio of a pair is
    ``time(A) / time(B)``; the result is the median ratio over all pairs with its
    interquartile range and a distribution-free 95% confidence interval of the median
    (order statistics). A ratio of 1.00 means no overhead. The ratio of the fastest times
    and the load average before and after are printed as a check on outside noise.

Targets: median ratio at most 1.02 for training, 1.01 for eval and 1.05 for compiled
training.

Usage: ``python benchmarks/overhead.py [--pairs N] [--batch B] [--threads T] [--modes ...]
[--backend B] [--quick] [--out result.json]``.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import os
import platform
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models import VGG  # noqa: E402
from timing import time_pair  # noqa: E402 (benchmarks/, the script's own folder)
from prunable_nn import PrunableLayer  # noqa: E402

TARGETS = {"train": 1.02, "eval": 1.01, "compiled": 1.05}


def plain_twin(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose prunable layers are replaced by their plain torch layers."""
    plain = copy.deepcopy(model)
    plain.__dict__.pop("_pruner", None)
    for name, module in list(plain.named_modules()):
        if isinstance(module, PrunableLayer):
            parent_name, _, child = name.rpartition(".")
            setattr(plain.get_submodule(parent_name), child, module.to_torch())
    leftovers = [name for name, module in plain.named_modules() if isinstance(module, PrunableLayer)]
    assert not leftovers, f"prunable layers left in the plain model: {leftovers}"
    return plain


def build_models(seed: int) -> tuple[nn.Module, nn.Module, list[str]]:
    torch.manual_seed(seed)
    prunable = VGG("vgg11", in_channels=3, input_size=32, num_classes=10)
    # Build the pruner first (only chain ends keep estimating; it may also make in-place
    # activations out of place), then copy, so that both models run the same modules.
    prunable.pruner
    plain = plain_twin(prunable)
    estimating = [m.name_in_model for m in prunable.modules() if isinstance(m, PrunableLayer) and m.estimating]
    return prunable, plain, estimating


def check_same_function(prunable: nn.Module, plain: nn.Module, batch: torch.Tensor) -> None:
    prunable.eval()
    plain.eval()
    with torch.inference_mode():
        torch.testing.assert_close(prunable(batch), plain(batch))


def make_steps(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> dict[str, Callable[[], None]]:
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def train() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(inputs), labels)
        loss.backward()
        optimizer.step()

    def evaluate() -> None:
        with torch.inference_mode():
            model(inputs)

    return {"train": train, "eval": evaluate}


def compiled_steps(
    models: dict[str, nn.Module], inputs: torch.Tensor, labels: torch.Tensor, backend: str
) -> dict[str, dict[str, Callable[[], None]]]:
    """The training step of each model compiled by ``torch.compile`` (compiled here, by a
    first step, so that no timed step compiles)."""
    steps = {}
    for name, model in models.items():
        model.train()
        steps[name] = {"compiled": make_steps(torch.compile(model, backend=backend), inputs, labels)["train"]}
        steps[name]["compiled"]()
    return steps


def median_interval(sorted_values: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """Distribution-free confidence interval of the median from order statistics."""
    n = len(sorted_values)
    if n < 6:
        return sorted_values[0], sorted_values[-1]
    # Normal approximation of Binomial(n, 1/2): ranks n/2 -+ z * sqrt(n) / 2.
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
    half = z * math.sqrt(n) / 2
    low = max(0, int(math.floor(n / 2 - half)))
    high = min(n - 1, int(math.ceil(n / 2 + half)) - 1)
    return sorted_values[low], sorted_values[high]


def measure(
    mode: str,
    models: dict[str, nn.Module],
    steps: dict[str, dict[str, Callable[[], None]]],
    pairs: int,
    warmup: int,
) -> dict[str, object]:
    for model in models.values():
        model.train(mode != "eval")
    step_a, step_b = steps["prunable"][mode], steps["plain"][mode]
    for _ in range(warmup):
        step_a()
        step_b()
    ratios, times_a, times_b = [], [], []
    gc.collect()
    gc.disable()
    try:
        for index in range(pairs):
            time_a, time_b = time_pair(index, step_a, step_b)
            ratios.append(time_a / time_b)
            times_a.append(time_a)
            times_b.append(time_b)
            if index % 16 == 15:
                gc.enable()
                gc.collect()
                gc.disable()
    finally:
        gc.enable()
    ordered = sorted(ratios)
    quartiles = statistics.quantiles(ordered, n=4) if len(ordered) >= 2 else [ordered[0]] * 3
    low, high = median_interval(ordered)
    median = statistics.median(ordered)
    return {
        "median_ratio": median,
        "q1": quartiles[0],
        "q3": quartiles[2],
        "iqr": quartiles[2] - quartiles[0],
        "ci95_median": [low, high],
        "pairs": pairs,
        "median_ms_prunable": 1e3 * statistics.median(times_a),
        "median_ms_plain": 1e3 * statistics.median(times_b),
        "target": TARGETS[mode],
        "target_met": median <= TARGETS[mode],
        "fastest_ratio": min(times_a) / min(times_b),
        "ratios": ratios,
    }


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=None, help="timed pairs per mode (default 200 eval, 100 each other)")
    parser.add_argument("--batch", type=int, default=64, help="batch size (default 64)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed pairs first (default 5)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads for both models (default 1)")
    parser.add_argument("--modes", nargs="+", choices=sorted(TARGETS), default=["train", "eval", "compiled"])
    parser.add_argument("--backend", default="inductor", help="torch.compile backend of the compiled mode (default inductor)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny smoke run: 4 pairs, batch 8, 1 warm-up")
    parser.add_argument("--out", type=Path, help="also write the result as JSON to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.pairs = args.pairs or 4
        args.batch = 8 if args.batch == 64 else args.batch
        args.warmup = 1 if args.warmup is None else args.warmup
    if args.warmup is None:
        args.warmup = 5
    for name in ("pairs", "batch", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be at least 1, got {value}")
    return args


def main(argv: list[str] | None = None) -> dict[str, object]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    threads = torch.get_num_threads()
    load_before = _load_average()
    prunable, plain, estimating = build_models(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    inputs = torch.randn(args.batch, 3, 32, 32, generator=generator)
    labels = torch.randint(0, 10, (args.batch,), generator=generator)
    check_same_function(prunable, plain, inputs)
    models = {"prunable": prunable, "plain": plain}
    steps = {name: make_steps(model, inputs, labels) for name, model in models.items()}
    if "compiled" in args.modes:
        for name, compiled in compiled_steps(models, inputs, labels, args.backend).items():
            steps[name].update(compiled)

    print(
        f"VGG-11-BN, 32x32 input, batch {args.batch}, torch {torch.__version__}, "
        f"{threads} thread(s), {platform.processor() or platform.machine()}"
    )
    print(f"estimating layers ({len(estimating)}): {', '.join(estimating)}")
    results: dict[str, object] = {}
    for mode in args.modes:
        pairs = args.pairs or (200 if mode == "eval" else 100)
        results[mode] = measure(mode, models, steps, pairs, args.warmup)

    load_after = _load_average()

    print()
    print("time(prunable) / time(plain), one ratio per alternated pair")
    print(
        f"{'mode':<8} {'median':>7} {'IQR (q1-q3)':>17} {'95% CI median':>17} {'pairs':>6} "
        f"{'fastest':>7} {'ms P':>8} {'ms plain':>8} {'target':>7}  met"
    )
    for mode, r in results.items():
        print(
            f"{mode:<8} {r['median_ratio']:7.4f} {r['q1']:8.4f}-{r['q3']:<8.4f} "
            f"{r['ci95_median'][0]:8.4f}-{r['ci95_median'][1]:<8.4f} {r['pairs']:6d} "
            f"{r['fastest_ratio']:7.4f} {r['median_ms_prunable']:8.2f} {r['median_ms_plain']:8.2f} "
            f"{r['target']:7.2f}  {'yes' if r['target_met'] else 'NO'}"
        )
    print(f"load average (1 min) before {load_before}, after {load_after}")
    summary = {
        "model": "VGG('vgg11', in_channels=3, input_size=32, num_classes=10)",
        "batch": args.batch,
        "threads": threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "warmup_pairs": args.warmup,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "estimating_layers": estimating,
        "results": results,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2) + "\n")
        print(f"\nwrote {args.out}")
    return summary


if __name__ == "__main__":
    main()
