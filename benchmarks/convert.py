"""Cost of making a model prunable, and of one pruning step.

What is measured
    For each model (random init) and one example input of shape ``1x3xSxS`` (``S = 224``
    unless ``--size``): by default ``resnet50`` and ``densenet121`` of ``torchvision.models``,
    timm's ``resnet50d`` and ``efficientnet_b0`` (named ``timm/NAME``), and from
    ``benchmarks/zoo.py`` YOLOv8n, torchvision's ``fcn_resnet50`` and the dense part of its
    ``retinanet_resnet50_fpn``:

    * convert: ``TaylorPruner(model, example_inputs)`` on a fresh model: swapping
      ``nn.Conv2d``/``nn.BatchNorm2d``/``nn.Linear`` for their prunable twins, the
      ``torch.fx`` trace with its shape-propagating forward pass, and the channel graph.
      Side by side, in the same run, Torch-Pruning builds its dependency graph on another
      fresh model of the same architecture and the same inputs:
      ``torch_pruning.DependencyGraph().build_dependency(model, example_inputs=...)`` (one
      forward pass with autograd, then a walk of the ``grad_fn`` graph). Every timed call
      gets a model built (same seed) before its timer starts, since both mutate or hook it.
    * prune: one ``pruner.prune(max_to_prune=8)`` on the converted model. Before each timed
      step, and outside the timer, one training forward and backward pass (a batch of
      ``--train-batch`` random images and labels, cross-entropy) gives fresh Taylor
      estimates (the loss: cross-entropy of a classifier's logits, else the mean square of every
      output tensor); the steps follow one another on the same model, each removing 8 more units.

How
    One process, ``torch.set_num_threads(--threads)`` (1 by default: on a small shared
    machine a second busy process stalls multi-threaded kernels at every barrier; the
    thread count is printed), denormals flushed to zero, the Python garbage collector
    collected before and switched off during each timed call. After ``--warmup`` untimed
    pairs, each *pair* times our conversion and Torch-Pruning's build with
    ``time.perf_counter``, alternating which goes first, so that drifts in machine speed hit
    both alike; the ratio of a pair is ``time(ours) / time(Torch-Pruning)``, and the table
    gives the median ratio over the pairs with its interquartile range, plus the median
    times. Prune steps report the median time over ``--steps`` steps with its IQR.

    Torch-Pruning is imported lazily and only for the comparison: without it the script
    says how to install it (``pip install --no-deps torch-pruning``: pure Python, and
    ``--no-deps`` keeps pip away from the installed torch) and measures ours alone, unless
    ``--require-torch-pruning``. Its version is printed.

Targets: convert ratio ours / Torch-Pruning at most 1 (median); one prune step of 8 units
under 100 ms (median) on every model, and under 50 ms on resnet50.

Usage: ``python benchmarks/convert.py [--models resnet50 timm/resnet50d yolov8n ...] [--size S]
[--pairs N] [--steps N] [--threads T] [--seed S] [--quick] [--require-torch-pruning]
[--out result.md]``. ``--quick`` is a smoke run for CI (resnet18, 32x32, 2 pairs,
2 steps, no warm-up) that passes with or without Torch-Pruning.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import zoo  # noqa: E402 (benchmarks/, the script's own folder)
from prunable_nn import TaylorPruner  # noqa: E402
from timing import time_once, time_pair  # noqa: E402

CONVERT_TARGET = 1.0  # median time(ours) / time(Torch-Pruning)
PRUNE_TARGET_MS = 100.0  # median time of one prune(max_to_prune=8) on every model
PRUNE_TARGETS_MS = {"resnet50": 50.0}  # ... and on these
DEFAULT_MODELS = [
    "resnet50", "densenet121", "timm/resnet50d", "timm/efficientnet_b0", "yolov8n", "fcn_resnet50",
    "retinanet_resnet50_fpn",
]
TIMM = "timm/"
MAX_TO_PRUNE = 8
INSTALL_HINT = "pip install --no-deps torch-pruning"


def load_torch_pruning(required: bool) -> tuple[ModuleType | None, str | None]:
    """Torch-Pruning and its installed version, or ``(None, None)`` with a hint when missing."""
    try:
        import torch_pruning
    except ImportError as error:
        message = f"Torch-Pruning is not installed ({error}); install it with: {INSTALL_HINT}"
        if required:
            raise SystemExit(f"error: {message}") from error
        print(f"{message}; measuring ours alone")
        return None, None
    try:
        version = metadata.version("torch-pruning")
    except metadata.PackageNotFoundError:
        version = getattr(torch_pruning, "__version__", "unknown")
    return torch_pruning, version


def fresh_model(name: str, seed: int) -> nn.Module:
    """``name`` of torchvision's classifiers, ``timm/NAME`` or a model of ``zoo.OTHER_MODELS``."""
    torch.manual_seed(seed)
    if name.startswith(TIMM):
        import timm

        return timm.create_model(name[len(TIMM):])
    if name in zoo.OTHER_MODELS:
        return zoo.OTHER_MODELS[name]()
    return getattr(torchvision.models, name)(weights=None)


def known_model(name: str) -> bool:
    if name.startswith(TIMM):
        import timm

        return name[len(TIMM):] in timm.list_models()
    return name in zoo.OTHER_MODELS or callable(getattr(torchvision.models, name, None))


def training_loss(output: object, generator: torch.Generator) -> torch.Tensor:
    """Cross-entropy of a classifier's logits against random labels, else the mean square of
    every tensor of the output (a stand-in for a detector's or segmenter's loss)."""
    if isinstance(output, torch.Tensor) and output.dim() == 2:
        return F.cross_entropy(output, torch.randint(0, output.shape[1], (output.shape[0],), generator=generator))
    return zoo.mean_square(output)


def time_collected(step: Callable[[], object]) -> float:
    """:func:`timing.time_once` after a garbage collection, with the collector off."""
    gc.collect()
    gc.disable()
    try:
        return time_once(step)
    finally:
        gc.enable()


def spread(values: list[float]) -> tuple[float, float, float]:
    """Median and quartiles (q1, q3)."""
    ordered = sorted(values)
    quartiles = statistics.quantiles(ordered, n=4) if len(ordered) >= 2 else [ordered[0]] * 3
    return statistics.median(ordered), quartiles[0], quartiles[2]


def measure_convert(
    name: str, inputs: torch.Tensor, tp: ModuleType | None, pairs: int, warmup: int, seed: int
) -> dict[str, object]:
    def ours() -> Callable[[], object]:
        model = fresh_model(name, seed)
        return lambda: TaylorPruner(model, inputs)

    def theirs() -> Callable[[], object]:
        model = fresh_model(name, seed)
        return lambda: tp.DependencyGraph().build_dependency(model, example_inputs=inputs, verbose=False)

    times_ours: list[float] = []
    times_theirs: list[float] = []
    ratios: list[float] = []
    for index in range(warmup + pairs):
        # Both fresh models exist before either timer starts.
        call_ours = ours()
        call_theirs = theirs() if tp is not None else None
        if call_theirs is None:
            time_ours = time_collected(call_ours)
        else:
            time_ours, time_theirs = time_pair(index, call_ours, call_theirs, time_collected)
        del call_ours, call_theirs
        if index < warmup:
            continue
        times_ours.append(time_ours)
        if tp is not None:
            times_theirs.append(time_theirs)
            ratios.append(time_ours / time_theirs)
    ms_ours = spread([1e3 * t for t in times_ours])
    result: dict[str, object] = {"pairs": pairs, "ms_ours": ms_ours, "times_ours": times_ours}
    if tp is not None:
        ratio = spread(ratios)
        result.update(
            ms_theirs=spread([1e3 * t for t in times_theirs]),
            ratio=ratio,
            ratios=ratios,
            target_met=ratio[0] <= CONVERT_TARGET,
        )
    return result


def measure_prune(
    name: str, inputs: torch.Tensor, steps: int, warmup: int, train_batch: int, seed: int
) -> dict[str, object]:
    model = fresh_model(name, seed)
    pruner = TaylorPruner(model, inputs)
    model.train()
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(train_batch, *inputs.shape[1:], generator=generator)
    units_before = pruner.num_prunables
    times: list[float] = []
    for index in range(warmup + steps):
        model.zero_grad(set_to_none=True)
        training_loss(model(images), generator).backward()
        elapsed = time_collected(lambda: pruner.prune(max_to_prune=MAX_TO_PRUNE))
        if index >= warmup:
            times.append(elapsed)
    removed = units_before - pruner.num_prunables
    median = spread([1e3 * t for t in times])
    target = PRUNE_TARGETS_MS.get(name, PRUNE_TARGET_MS)
    return {
        "steps": steps,
        "ms": median,
        "times": times,
        "units_before": units_before,
        "units_removed_per_step": removed / (warmup + steps),
        "target_ms": target,
        "target_met": None if target is None else median[0] < target,
    }


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _ms(values: tuple[float, float, float] | None) -> str:
    return "-" if values is None else f"{values[0]:.1f}"


def _iqr(values: tuple[float, float, float] | None, digits: int) -> str:
    return "-" if values is None else f"{values[1]:.{digits}f}-{values[2]:.{digits}f}"


def _met(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "NO")


def table(results: dict[str, dict[str, dict[str, object]]], size: int) -> list[str]:
    lines = [
        "| measure | model | input | reps | ours ms | ours IQR ms | Torch-Pruning ms "
        "| ours / TP | ratio IQR | target | met |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    shape = f"1x3x{size}x{size}"
    for name, result in results.items():
        c = result["convert"]
        ratio = c.get("ratio")
        lines.append(
            f"| convert | {name} | {shape} | {c['pairs']} | {_ms(c['ms_ours'])} | {_iqr(c['ms_ours'], 1)} "
            f"| {_ms(c.get('ms_theirs'))} | {'-' if ratio is None else f'{ratio[0]:.2f}'} | {_iqr(ratio, 2)} "
            f"| ratio <= {CONVERT_TARGET:g} | {_met(c.get('target_met'))} |"
        )
    for name, result in results.items():
        p = result["prune"]
        target = "-" if p["target_ms"] is None else f"< {p['target_ms']:g} ms"
        lines.append(
            f"| prune{MAX_TO_PRUNE} | {name} | {shape} | {p['steps']} | {_ms(p['ms'])} | {_iqr(p['ms'], 1)} "
            f"| - | - | - | {target} | {_met(p['target_met'])} |"
        )
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=None,
                        help="torchvision.models names, timm/NAME, or models of benchmarks/zoo.py")
    parser.add_argument("--size", type=int, default=None, help="height and width of the input (default 224)")
    parser.add_argument("--pairs", type=int, default=None, help="timed convert pairs per model (default 11)")
    parser.add_argument("--steps", type=int, default=None, help="timed prune steps per model (default 10)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed pairs and steps first (default 1)")
    parser.add_argument("--train-batch", type=int, default=2,
                        help="batch of the forward/backward before each prune step (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--require-torch-pruning", action="store_true",
                        help="fail instead of measuring ours alone when Torch-Pruning is missing")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: resnet18, 32x32, 2 pairs, 2 steps, no warm-up")
    parser.add_argument("--out", type=Path, help="also write the markdown table to this file")
    args = parser.parse_args(argv)
    quick = args.quick
    args.models = args.models or (["resnet18"] if quick else DEFAULT_MODELS)
    args.size = args.size or (32 if quick else 224)
    args.pairs = args.pairs or (2 if quick else 11)
    args.steps = args.steps or (2 if quick else 10)
    if args.warmup is None:
        args.warmup = 0 if quick else 1
    for name in ("size", "pairs", "steps", "threads", "train_batch"):
        value = getattr(args, name)
        if value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if args.warmup < 0:
        parser.error(f"--warmup must be at least 0, got {args.warmup}")
    for name in args.models:
        if not known_model(name):
            parser.error(f"--models: {name!r} is neither a model of torchvision.models, timm/NAME nor of benchmarks/zoo.py")
    return args


def main(argv: list[str] | None = None) -> dict[str, object]:
    args = parse_args(argv)
    tp, tp_version = load_torch_pruning(args.require_torch_pruning)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    threads = torch.get_num_threads()
    inputs = torch.randn(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(args.seed))
    header = (
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"Torch-Pruning {tp_version or 'not installed'}, {threads} thread(s) "
        f"(torch.set_num_threads({args.threads})), {platform.processor() or platform.machine()}; "
        f"input 1x3x{args.size}x{args.size}, {args.pairs} alternated convert pairs and "
        f"{args.steps} prune steps per model after {args.warmup} warm-up"
    )
    print(header, flush=True)
    load_before = _load_average()
    results: dict[str, dict[str, object]] = {}
    for name in args.models:
        results[name] = {
            "convert": measure_convert(name, inputs, tp, args.pairs, args.warmup, args.seed),
            "prune": measure_prune(name, inputs, args.steps, args.warmup, args.train_batch, args.seed),
        }
        removed = results[name]["prune"]["units_removed_per_step"]
        print(f"{name}: done ({removed:g} units removed per prune step)", flush=True)
    load_after = _load_average()

    lines = table(results, args.size)
    notes = [
        "",
        "ms: medians; IQR: q1-q3; ours / TP: median of the per-pair ratios time(TaylorPruner(model, x)) / "
        "time(DependencyGraph().build_dependency(model, example_inputs=x)), each call on a fresh model; "
        f"prune{MAX_TO_PRUNE}: pruner.prune(max_to_prune={MAX_TO_PRUNE}) after a forward/backward outside the timer.",
        f"load average (1 min) before {load_before}, after {load_after}",
    ]
    if tp is None:
        notes.append(f"Torch-Pruning missing: no comparison ({INSTALL_HINT}).")
    print()
    print("\n".join(lines + notes))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join([header, ""] + lines + notes) + "\n")
        print(f"\nwrote {args.out}")
    return {
        "threads": threads,
        "torch_pruning": tp_version,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "results": results,
    }


if __name__ == "__main__":
    main()
