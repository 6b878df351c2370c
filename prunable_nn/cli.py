"""The command line: ``prunable-nn demo`` (or ``python -m prunable_nn demo``).

The demo trains ``models.DigitsNet`` on (a random subset of) Fashion-MNIST with Adam, then
runs rounds of "prune, fine-tune": each ``model.prune()`` removes the channels whose Taylor
estimates, accumulated by the training steps just before it, are the lowest, and the
fine-tuning steps after it let the network recover while they accumulate the estimates of
the next round. It prints one table row per round: the channels left in each chain, the
parameters, the FLOPs of one 28x28 image, and the test accuracy right after pruning and
after fine-tuning. Progress bars go to stderr, the table to stdout.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from . import data
from .flops import count_flops, count_parameters
from .training import endless, evaluate, make_loader, subset, train_epoch, train_steps

PROG = "prunable-nn"
IMAGE_SHAPE = (1, 28, 28)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the exit code.

    Bad options exit through ``argparse`` (status 2, usage and message on stderr); data that
    cannot be loaded gives a one-line message on stderr and status 1; Ctrl-C gives 130.
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
    "Train DigitsNet on (a random subset of) Fashion-MNIST with Adam, then run rounds of "
    "'prune, fine-tune': each prune removes the channels with the lowest Taylor estimates, "
    "accumulated by the training steps just before it, and the fine-tuning steps after it let "
    "the network recover while they accumulate the estimates of the next round. One table row "
    "per round: channels left in each chain, parameters, FLOPs of one 28x28 image, test "
    "accuracy right after pruning and after fine-tuning. Progress bars go to stderr."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Drop-in prunable PyTorch layers, pruned by Taylor estimates."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="train DigitsNet on Fashion-MNIST, then prune it round by round and print a table",
        description=DEMO_DESCRIPTION,
    )
    _add_demo_options(demo)
    demo.set_defaults(run=run_demo)
    return parser


def _add_demo_options(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--data", type=_existing_dir, default=None, metavar="DIR",
        help="folder with the Fashion-MNIST IDX files, directly or in torchvision's "
        f"FashionMNIST/raw (default: {data.DEFAULT_FASHION_MNIST_ROOT}, "
        "from `apt-get install dataset-fashion-mnist`)")
    add("--train-size", type=_nonnegative_int, default=30000, metavar="N",
        help="training images drawn at random from the 60000, 0 for all (default: %(default)s)")
    add("--test-size", type=_nonnegative_int, default=0, metavar="N",
        help="test images drawn at random from the 10000, 0 for all (default: %(default)s)")
    add("--epochs", type=_positive_int, default=2, metavar="N",
        help="epochs of training before pruning (default: %(default)s)")
    add("--rounds", type=_nonnegative_int, default=6, metavar="N",
        help="rounds of pruning and fine-tuning (default: %(default)s)")
    add("--max-to-prune", type=_positive_int, default=8, metavar="K",
        help="channels removed per round, at most (default: %(default)s)")
    add("--finetune-steps", type=_positive_int, default=200, metavar="S",
        help="training steps after each pruning; they also accumulate the next round's "
        "estimates (default: %(default)s)")
    add("--batch-size", type=_positive_int, default=64, metavar="N",
        help="images per training step (default: %(default)s)")
    add("--lr", type=_positive_float, default=1e-3, help="learning rate of Adam (default: %(default)s)")
    add("--seed", type=int, default=0, help="seed of the weights, the subsets and the shuffling (default: %(default)s)")
    add("--threads", type=_positive_int, default=None, metavar="N",
        help="CPU threads for torch (default: torch's own choice)")
    add("--no-progress", action="store_true",
        help="no progress bars (they are off anyway when stderr is not a terminal)")


@dataclass
class Row:
    """One line of the demo's table."""

    round: int
    channels: str
    parameters: int
    flops: int
    pruned_accuracy: float | None
    accuracy: float


HEADER = f"{'round':>5}  {'channels':<14} {'params':>9} {'MFLOPs':>7}  {'acc pruned':>10}  {'acc tuned':>9}"


def format_row(row: Row) -> str:
    pruned = "-" if row.pruned_accuracy is None else f"{100 * row.pruned_accuracy:.2f}%"
    return (
        f"{row.round:>5}  {row.channels:<14} {row.parameters:>9,} {row.flops / 1e6:>7.2f}  "
        f"{pruned:>10}  {100 * row.accuracy:>8.2f}%"
    )


def run_demo(args: argparse.Namespace) -> int:
    """The demo's workflow; see the module docstring."""
    threads = torch.get_num_threads()
    try:
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        return _demo(args)
    finally:
        torch.set_num_threads(threads)


def _demo(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    try:
        train_set, test_set = load_demo_data(args)
    except (FileNotFoundError, ValueError) as error:
        print(f"{PROG} demo: error: {error}", file=sys.stderr)
        return 1
    print(f"DigitsNet on Fashion-MNIST: {len(train_set)} training and {len(test_set)} test images; "
          f"{_count(args.epochs, 'epoch')}, then {_count(args.rounds, 'round')} of pruning up to "
          f"{_count(args.max_to_prune, 'channel')} and {_count(args.finetune_steps, 'fine-tuning step')}",
          flush=True)
    torch.manual_seed(args.seed)
    from models import DigitsNet  # models imports prunable_nn: import it late

    model = DigitsNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    train_loader = make_loader(train_set, args.batch_size, shuffle=True, seed=args.seed)
    test_loader = make_loader(test_set, 500)
    progress = False if args.no_progress else None
    pretrain(model, optimizer, train_loader, args.epochs, progress)
    first, last = prune_rounds(model, optimizer, train_loader, test_loader, args, progress)
    print(summary(first, last, time.perf_counter() - started), flush=True)
    return 0


def pretrain(
    model: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader, epochs: int, progress: bool | None
) -> None:
    """Train for ``epochs``; the estimates of the first pruning are those of the last epoch."""
    for epoch in range(epochs):
        if epoch == epochs - 1:
            model.pruner.reset_estimates()  # rank channels by the trained network's gradients
        loss = train_epoch(model, optimizer, loader, desc=f"epoch {epoch + 1}/{epochs}", progress=progress)
        print(f"epoch {epoch + 1}: mean training loss {loss:.4f}", flush=True)


def prune_rounds(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_loader: DataLoader,
    test_loader: DataLoader,
    args: argparse.Namespace,
    progress: bool | None,
) -> tuple[Row, Row]:
    """Print the table: the trained network, then one row per round of prune + fine-tune.

    Returns the first and the last row.
    """
    example = torch.zeros(1, *IMAGE_SHAPE)
    first = last = measure(model, example, 0, None, evaluate(model, test_loader, progress=progress))
    print(HEADER, format_row(first), sep="\n", flush=True)
    batches = endless(train_loader)
    for round_ in range(1, args.rounds + 1):
        if model.num_prunables == 0:
            print("nothing left to prune: every chain is down to one channel", flush=True)
            break
        model.prune(args.max_to_prune, optimizer)
        pruned_accuracy = evaluate(model, test_loader, progress=progress)
        desc = f"round {round_} fine-tune"
        train_steps(model, optimizer, batches, args.finetune_steps, desc=desc, progress=progress)
        last = measure(model, example, round_, pruned_accuracy, evaluate(model, test_loader, progress=progress))
        print(format_row(last), flush=True)
    return first, last


def load_demo_data(args: argparse.Namespace) -> tuple[Dataset, Dataset]:
    """The training and test subsets that ``args`` asks for; checks the image size."""
    train_set = data.fashion_mnist(train=True, root=args.data)
    test_set = data.fashion_mnist(train=False, root=args.data)
    for name, dataset in (("training", train_set), ("test", test_set)):
        shape = tuple(dataset.tensors[0].shape[1:])
        if shape != IMAGE_SHAPE:
            raise ValueError(f"the {name} images are {shape[1]}x{shape[2]}, DigitsNet needs 28x28")
    return (
        subset(train_set, args.train_size or None, seed=args.seed),
        subset(test_set, args.test_size or None, seed=args.seed + 1),
    )


def measure(
    model: nn.Module, example: torch.Tensor, round_: int, pruned_accuracy: float | None, accuracy: float
) -> Row:
    """The table row of ``model`` as it is now."""
    channels = "/".join(str(chain.num_channels) for chain in model.pruner.chains)
    return Row(round_, channels, count_parameters(model), count_flops(model, example), pruned_accuracy, accuracy)


def summary(first: Row, last: Row, seconds: float) -> str:
    return (
        f"parameters {100 * last.parameters / first.parameters:.1f}% and FLOPs "
        f"{100 * last.flops / first.flops:.1f}% of the unpruned network; test accuracy "
        f"{100 * first.accuracy:.2f}% -> {100 * last.accuracy:.2f}%; {seconds:.0f} s"
    )


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


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


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def _existing_dir(text: str) -> Path:
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is not a folder (it should hold the Fashion-MNIST IDX files)")
    return path
