"""How much of each model can be pruned: ours beside Torch-Pruning's, on the zoo of other
libraries (``benchmarks/zoo.py``: timm's CNN families, torchvision's dense-prediction,
detection and video models, YOLOv8n).

What is measured
    The share of all convolution output channels (every module of a convolution kind, the
    ones kept whole included) that can be removed:

    * ours: a channel of a convolution's output whose unit is not frozen in
      ``TaylorPruner(model, x)`` (``pruner.channel_map.prunable``); the main reasons for the frozen
      ones, from the report, with the share of the channels each freezes;
    * Torch-Pruning's: a channel that one of the groups of
      ``DependencyGraph().build_dependency(model, x).get_all_groups(ignored_layers=[the
      classifier], root_module_types=[Conv, Linear])`` removes from a convolution's output
      (``prune_out_channels``), the classifier (the last ``Linear`` or the convolution that
      makes the output) ignored as Torch-Pruning requires. A model on which it raises gets
      the error's type. Then, on a fresh copy, whether its pruner can use those groups: one
      ``MetaPruner(..., pruning_ratio=0.1)`` step by L2 magnitude, and a forward pass of the
      pruned model ("ok", or the type of the error and where it came). Each of the two gets
      ``--tp-seconds`` (60 by default); its graph walk takes minutes on some models.

    Neither number says the pruning is right: the tests check ours against masking
    (``tests/test_timm_zoo.py``, ``tests/test_zoo.py``); Torch-Pruning's groups are taken as
    it reports them.

Usage: ``python benchmarks/coverage.py [--models NAME ...] [--quick] [--out table.md]``;
``--quick`` covers three models.
"""

from __future__ import annotations

import argparse
from importlib import metadata
from importlib.util import find_spec
import re
import signal
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import report  # noqa: E402 (benchmarks/, the script's own folder)
import zoo  # noqa: E402
from prunable_nn import TaylorPruner  # noqa: E402
from prunable_nn.chain import OUTPUT  # noqa: E402
from prunable_nn.kinds import ConvKind, kind_of, refusal  # noqa: E402
from prunable_nn.layers import PrunableLayer  # noqa: E402

QUICK_MODELS = ["resnet10t", "cspresnet50", "r3d_18"]


def build(name: str) -> tuple[nn.Module, torch.Tensor]:
    if name in zoo.OTHER_MODELS:
        return zoo.other_model(name, torch.float32)
    return zoo.timm_model(name, torch.float32)


def convolutions(model: nn.Module) -> dict[nn.Module, int]:
    """Every module of a convolution kind and its output channels."""
    return {module: module.out_channels for module in model.modules() if isinstance(kind_of(module), ConvKind)}


def general(reason: str) -> str:
    """A frozen reason without the names of the nodes and layers it cites."""
    return re.sub(r"'[^']*' ", "", reason).strip()


def ours(name: str) -> tuple[float, list[tuple[str, float]]]:
    """Our prunable share of the convolution output channels, and the main frozen reasons."""
    model, inputs = build(name)
    pruner = TaylorPruner(model, inputs)
    channels = convolutions(model)
    prunable, reasons = 0, Counter()
    prunable_units = pruner.channel_map.prunable
    members = {member.layer: member for member in pruner.channel_map.members if member.side == OUTPUT}
    for module, count in channels.items():
        member = members.get(module)
        if member is None:
            why = refusal(module) if not isinstance(module, PrunableLayer) else "it is not in the traced graph"
            reasons[general(why or "it is kept whole")] += count
            continue
        for unit in member.units.tolist():
            if prunable_units[unit]:
                prunable += 1
            else:
                reasons[general(pruner.channel_map.frozen.get(unit, "it is gone"))] += 1
    total = sum(channels.values())
    return prunable / total, [(reason, count / total) for reason, count in reasons.most_common(2)]


def classifier(model: nn.Module) -> list[nn.Module]:
    """The layer that makes the output, which Torch-Pruning must be told to leave alone."""
    linears = [module for module in model.modules() if isinstance(module, nn.Linear)]
    if linears:
        return [linears[-1]]
    convs = [module for module in model.modules() if isinstance(module, nn.modules.conv._ConvNd)]
    return convs[-1:]


@contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """Raise ``TimeoutError`` in the block after ``seconds`` (SIGALRM: the main thread only)."""

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"no result in {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def torch_pruning(name: str, seconds: int) -> tuple[float | str, str]:
    """Torch-Pruning's prunable share of the convolution output channels (or its error), and
    how one step of its pruner went, each within ``seconds``."""
    return within(seconds, lambda: torch_pruning_share(name)), within(seconds, lambda: torch_pruning_step(name))


def within(seconds: int, measure: Callable[[], float | str]) -> float | str:
    try:
        with time_limit(seconds):
            return measure()
    except TimeoutError as error:
        return str(error)


def torch_pruning_step(name: str) -> str:
    import torch_pruning as tp

    model, inputs = build(name)
    stage = "prune step"
    try:
        pruner = tp.pruner.MetaPruner(
            model, inputs, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=0.1,
            ignored_layers=classifier(model),
        )
        pruner.step()
        stage = "forward"
        with torch.no_grad():
            model.eval()(inputs)
    except TimeoutError:
        raise
    except Exception as error:  # what it raises is the finding
        return f"{type(error).__name__} in its {stage}"
    return "ok"


def torch_pruning_share(name: str) -> float | str:
    import torch_pruning as tp

    model, inputs = build(name)
    try:
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=inputs)
        groups = graph.get_all_groups(
            ignored_layers=classifier(model), root_module_types=[nn.modules.conv._ConvNd, nn.Linear]
        )
        removable = set()
        for group in groups:
            for dependency, indices in group:
                module = dependency.target.module
                if isinstance(module, nn.modules.conv._ConvNd) and "out_channels" in dependency.handler.__name__:
                    # (behind a split its indices can run past the convolution's own channels)
                    removable.update((id(module), index) for index in indices if index < module.out_channels)
    except TimeoutError:
        raise
    except Exception as error:  # its graph builder raises many kinds
        return type(error).__name__
    return len(removable) / sum(convolutions(model).values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    report.add_common_arguments(parser, "coverage.md")
    parser.add_argument("--models", nargs="+", default=None)
    parser.add_argument("--tp-seconds", type=int, default=60, help="time for each Torch-Pruning measurement")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads or 1)
    names = args.models or (QUICK_MODELS if args.quick else [*zoo.TIMM_MODELS, *zoo.TIMM_NOTHING_PRUNABLE, *zoo.OTHER_MODELS])
    if find_spec("torch_pruning") is not None:
        theirs, version = torch_pruning, metadata.version("torch-pruning")
    else:
        theirs, version = (lambda name, seconds: ("not installed", "-")), "not installed"
    rows = [
        "| model | ours | Torch-Pruning | its pruner | main frozen reasons of ours (share of the channels) |",
        "| --- | ---: | ---: | --- | --- |",
    ]
    numbers = {}
    for name in names:
        share, reasons = ours(name)
        other, step = theirs(name, args.tp_seconds)
        numbers[name] = {"ours": share, "torch_pruning": other, "torch_pruning_step": step, "reasons": reasons}
        shown = "; ".join(f"{reason} ({part:.0%})" for reason, part in reasons) or "-"
        other_text = f"{other:.1%}" if isinstance(other, float) else other
        rows.append(f"| {name} | {share:.1%} | {other_text} | {step} | {shown} |")
        report.say(f"{name}: ours {share:.1%}, Torch-Pruning {other_text} ({step})")
    header = (
        "Prunable share of the convolution output channels, ours and Torch-Pruning's "
        f"(Torch-Pruning {version}, {report.machine()})"
    )
    report.write(args, header, rows, {"models": numbers})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
