"""The command line: ``prunable-nn demo`` (or ``python -m prunable_nn demo``).

``demo`` runs :func:`prunable_nn.app.demo.run_demo`: a VGG-11 trained on Fashion-MNIST, pruned
with fine-tuning to a FLOPs target, measured before and after, and written to a folder. The
table and the summary go to stdout, progress bars to stderr.

Under ``torchrun --nproc_per_node=N -m prunable_nn demo ...`` (``WORLD_SIZE`` > 1 in the
environment) the demo joins a gloo process group of the N ranks and runs data parallel
(:mod:`prunable_nn.app.demo`); only rank 0 prints and writes.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

import torch
import torch.distributed as dist

from . import data
from .demo import (
    CSV_FILE,
    PLOT_FILE,
    PRUNED_FILE,
    CompileError,
    DemoConfig,
    load_splits,
    run_demo,
)

PROG = "prunable-nn"
DEFAULTS = {field.name: field.default for field in fields(DemoConfig)}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the exit code.

    Bad options exit through ``argparse`` (status 2, usage and message on stderr); data that
    cannot be loaded or settings that do not fit it give a one-line message on stderr and
    status 1; Ctrl-C gives 130.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


DEMO_DESCRIPTION = (
    "Train a VGG-11 on Fashion-MNIST, then prune it with fine-tuning until its FLOPs are at "
    "most --target-flops of the trained network's: each round runs --steps-per-round training "
    "steps, which accumulate the Taylor estimates, then removes the --max-to-prune channels "
    "with the lowest ones across the whole network. One table row per round. After a final "
    "fine-tuning, both networks are measured side by side (test accuracy, FLOPs, parameters, "
    "CPU latency of their plain-torch copies), and the output folder gets the pruned model "
    f"({PRUNED_FILE}, data only, for load_pruned), the history ({CSV_FILE}) and a plot "
    f"({PLOT_FILE}). The validation images, on which the rounds are measured, are held out "
    "from the training file; the test file only judges the two networks."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Drop-in prunable PyTorch layers, pruned by Taylor estimates."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="train a VGG on Fashion-MNIST, prune it to half its FLOPs, write it to a folder",
        description=DEMO_DESCRIPTION,
    )
    _add_demo_options(demo)
    demo.set_defaults(run=run_demo_command)
    return parser


def _add_demo_options(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--data", type=_existing_dir, default=None, metavar="DIR",
        help="folder with the Fashion-MNIST IDX files, directly or in torchvision's "
        f"FashionMNIST/raw (default: {data.DEFAULT_FASHION_MNIST_ROOT}, "
        "from `apt-get install dataset-fashion-mnist`)")
    add("--out", dest="out_dir", type=Path, default=DEFAULTS["out_dir"], metavar="DIR",
        help="folder for the pruned model, the CSV history and the plot; made if missing "
        "(default: %(default)s)")
    add("--train-size", type=_nonnegative_int, default=DEFAULTS["train_size"], metavar="N",
        help="training images drawn at random from those the validation set leaves, 0 for all "
        "(default: %(default)s)")
    add("--val-size", type=_positive_int, default=DEFAULTS["val_size"], metavar="N",
        help="validation images held out from the training file; the rounds' accuracy is "
        "measured on them (default: %(default)s)")
    add("--test-size", type=_nonnegative_int, default=DEFAULTS["test_size"], metavar="N",
        help="test images drawn at random from the 10000, 0 for all (default: %(default)s)")
    add("--width", type=_positive_float, default=DEFAULTS["width"], metavar="W",
        help="width of the VGG-11 relative to the original's 64..512 channels (default: %(default)s)")
    add("--hidden", type=_positive_int, default=DEFAULTS["hidden"], metavar="N",
        help="units of each of the classifier's two hidden layers (default: %(default)s)")
    add("--epochs", type=_positive_int, default=DEFAULTS["epochs"], metavar="N",
        help="epochs of training before pruning (default: %(default)s)")
    add("--batch-size", type=_positive_int, default=DEFAULTS["batch_size"], metavar="N",
        help="images per training step (default: %(default)s)")
    add("--lr", type=_positive_float, default=DEFAULTS["lr"],
        help="learning rate of Adam, for training and fine-tuning (default: %(default)s)")
    add("--target-flops", type=_fraction, default=DEFAULTS["target_flops"], metavar="F",
        help="stop pruning once the FLOPs are at most this fraction of the trained network's, "
        "in (0, 1] (default: %(default)s)")
    add("--max-to-prune", type=_positive_int, default=DEFAULTS["max_to_prune"], metavar="K",
        help="channels removed per round, at most (default: %(default)s)")
    add("--flops-per-round", type=_fraction, default=DEFAULTS["flops_per_round"], metavar="F",
        help="instead of --max-to-prune: every round removes the lowest-ranked channels until "
        "they take this fraction of the trained network's FLOPs, in (0, 1], so that the rounds "
        "shrink the network evenly")
    add("--steps-per-round", type=_positive_int, default=DEFAULTS["steps_per_round"], metavar="S",
        help="training steps before each prune; they accumulate its estimates (default: %(default)s)")
    add("--max-rounds", type=_positive_int, default=DEFAULTS["max_rounds"], metavar="N",
        help="stop after this many rounds even if the target is not reached (default: no limit)")
    add("--flops-regularization", type=_nonnegative_float, default=DEFAULTS["flops_regularization"],
        metavar="LAMBDA", help="weight of the FLOPs penalty in the ranking: higher removes "
        "costly channels first, 0 ranks by the estimates alone (default: %(default)s)")
    add("--round-to", type=_positive_int, default=DEFAULTS["round_to"], metavar="R",
        help="every layer keeps a multiple of R channels, removed in blocks of R, as a CPU's "
        "vector units want them (8 floats on AVX2, 16 on AVX-512); 1 removes channels one "
        "by one; at most --max-to-prune (default: %(default)s)")
    add("--finetune-steps", type=_positive_int, default=DEFAULTS["finetune_steps"], metavar="S",
        help="training steps after the last prune (default: %(default)s)")
    add("--latency-batches", type=_positive_int, nargs="+", default=list(DEFAULTS["latency_batches"]),
        metavar="N", help="images per forward pass when timing the CPU latency, one measurement "
        f"per number (default: {' '.join(map(str, DEFAULTS['latency_batches']))})")
    add("--latency-time", type=_positive_float, default=DEFAULTS["latency_time"], metavar="SECONDS",
        help="seconds of timing per network and batch size, in 20 measurements that "
        "alternate between the two networks (default: %(default)s)")
    add("--latency-threads", type=_positive_int, default=DEFAULTS["latency_threads"], metavar="N",
        help="torch threads while compiling and timing the two networks; 1, as "
        "torch.utils.benchmark times by default, gives the steadiest numbers on a small "
        "shared machine (default: %(default)s)")
    add("--compile", action=argparse.BooleanOptionalAction, default=DEFAULTS["compile"],
        help="time both networks compiled by torch.compile (inductor, needs a C++ compiler), as a "
        "deployment runs them: no Python between operations, batch norm, ReLU and pooling fused; "
        "compiling takes about a minute. --no-compile times them eagerly. Default: compiled "
        "when they compile, else eagerly, with a line that says so")
    add("--seed", type=int, default=DEFAULTS["seed"],
        help="seed of the weights, the data splits and the shuffling (default: %(default)s)")
    add("--threads", type=_positive_int, default=None, metavar="N",
        help="CPU threads for torch while training and pruning (default: torch's own choice)")
    add("--no-progress", action="store_true",
        help="no progress bars (they are off anyway when stderr is not a terminal)")


def run_demo_command(args: argparse.Namespace) -> int:
    """Run the demo with the options of ``args``; torch's thread count is restored after."""
    if args.flops_per_round is None and args.round_to > args.max_to_prune:
        print(
            f"{PROG} demo: error: --round-to {args.round_to} is more than --max-to-prune {args.max_to_prune}: "
            "channels go in blocks of --round-to",
            file=sys.stderr,
        )
        return 2
    options = {name: getattr(args, name) for name in DEFAULTS if hasattr(args, name)}
    options["latency_batches"] = tuple(options["latency_batches"])
    config = DemoConfig(**options, progress=False if args.no_progress else None)
    try:
        splits = load_splits(config)
    except (FileNotFoundError, ValueError) as error:
        print(f"{PROG} demo: error: {error}", file=sys.stderr)
        return 1
    threads = torch.get_num_threads()
    joined = _join_torchrun_group()
    try:
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        run_demo(config, splits, say=lambda line: print(line, flush=True))
    except CompileError as error:
        print(f"{PROG} demo: error: {error}", file=sys.stderr)
        return 1
    finally:
        torch.set_num_threads(threads)
        if joined:
            dist.destroy_process_group()
    return 0


def _join_torchrun_group() -> bool:
    """Under torchrun (``WORLD_SIZE`` > 1), join its process group (gloo: the demo runs on the
    CPU); whether this call joined it."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available() or dist.is_initialized():
        return False
    dist.init_process_group("gloo")
    return True


def _positive_int(text: str) -> int:
    return _checked_int(text, 1, "a positive integer")


def _nonnegative_int(text: str) -> int:
    return _checked_int(text, 0, "an integer >= 0")


def _checked_int(text: str, minimum: int, expected: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
    return value


def _number(text: str, expected: str, accept) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not (math.isfinite(value) and accept(value)):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
    return value


def _positive_float(text: str) -> float:
    return _number(text, "a positive number", lambda value: value > 0)


def _nonnegative_float(text: str) -> float:
    return _number(text, "a number >= 0", lambda value: value >= 0)


def _fraction(text: str) -> float:
    return _number(text, "a fraction in (0, 1]", lambda value: 0 < value <= 1)


def _existing_dir(text: str) -> Path:
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is not a folder (it should hold the Fashion-MNIST IDX files)")
    return path
