"""The main job, end to end: a VGG trained on Fashion-MNIST, pruned to half its FLOPs, on disk.

:func:`run_demo` does what a user of the package does with their own network:

1. **data**: Fashion-MNIST's 60000 training images are split at random (by the seed) into a
   validation set of ``val_size`` images, on which the pruning loop measures accuracy, and a
   training set of the others (``train_size`` of them, when given). The 10000 test images
   (``test_size`` of them, when given) judge the network before and after pruning, and take
   no part in any decision.
2. **train** ``models.VGG("vgg11", width=width)`` (1 input channel, 28x28) for ``epochs``
   epochs with Adam.
3. **prune** with :func:`prunable_nn.prune_loop` to ``FlopsTarget(target_flops)``: rounds of
   ``steps_per_round`` fine-tuning steps (which accumulate the Taylor estimates), then
   ``prune(max_to_prune)`` (or, with ``flops_per_round``, ``prune(flops=...)``: that
   fraction of the trained network's FLOPs each round); one table row per round. Every
   layer keeps a multiple of ``round_to`` channels (``TaylorPruner(round_to=...)``): a
   CPU's convolution kernels work on blocks of channels (8 floats on AVX2), and a layer of
   15 or 29 channels can run slower than one of 16 or 32.
4. **fine-tune** the pruned network for ``finetune_steps`` more steps: the loop stops right
   after its last prune, the network's worst moment.
5. **measure** both networks: test accuracy, FLOPs, parameters, and the CPU latency of their
   plain-torch copies (:func:`prunable_nn.to_torch`) for each batch size of
   ``latency_batches``, timed side by side (:func:`prunable_nn.latency.compare_latency`).
   The copies are timed as a deployment runs them, compiled by ``torch.compile`` (inductor:
   no Python between operations; batch norm, ReLU and pooling fused into fewer kernels).
   By default (``compile=None``) a copy that does not compile (inductor needs a C++
   compiler) is timed as it is, eagerly, and the output says so; ``compile=True`` makes that
   an error, ``compile=False`` times the eager copies. They are compiled and timed on
   ``latency_threads`` torch threads (default 1, as ``torch.utils.benchmark`` times): on a
   small shared machine a second thread's wake-ups make single-image timings wander.
6. **write** into ``out_dir``: ``pruned.pt`` (:func:`prunable_nn.save_pruned`: data only,
   loads with ``torch.load(weights_only=True)``), ``history.csv`` (one line per round) and
   ``history.png`` (accuracy and parameters against FLOPs).

Under ``torchrun --nproc_per_node=N`` (an initialised process group of N ranks, see
:mod:`prunable_nn.app.cli`) the same job runs data parallel: every rank trains the same network
wrapped in ``DistributedDataParallel`` on its own shard of the training set (a
``DistributedSampler``: ``batch_size`` images per rank and step), the rounds prune the
channels ranked by all ranks' estimates (:mod:`prunable_nn.distributed`), and the wrapper is
rebuilt after every prune. Every rank measures on the whole validation and test sets; only
rank 0 reports, writes the files and times the copies (the other ranks return ``None``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Subset
from torch.utils.data.distributed import DistributedSampler

from . import data
from ..checkpoint import save_pruned
from ..distributed import is_distributed, rewrap
from ..export import to_torch
from ..flops import count_flops, count_parameters
from ..latency import compare_latency, torch_threads
from ..loop import prune_loop
from ..targets import FlopsTarget, History, Round
from ..module import PrunableModule
from .plot import plot_history
from ..pruner import TaylorPruner
from ..training import endless, evaluate, make_loader, subset, train_epoch, train_steps

IMAGE_SHAPE = (1, 28, 28)
NUM_CLASSES = 10
PRUNED_FILE, CSV_FILE, PLOT_FILE = "pruned.pt", "history.csv", "history.png"
#: Alternating measurements per network and batch size (see ``compare_latency``).
LATENCY_REPEATS = 20
#: Training, validation and test sets.
Splits = tuple[Dataset, Dataset, Dataset]


@dataclass(frozen=True)
class DemoConfig:
    """Every setting of the demo; the command line's options have the same names and defaults."""

    data: Path | None = None  #: folder of the Fashion-MNIST IDX files (default: Debian's)
    out_dir: Path = Path("demo-output")
    train_size: int = 0  #: training images (0: all that the validation set leaves)
    val_size: int = 5000
    test_size: int = 0  #: test images (0: all 10000)
    width: float = 0.25  #: VGG-11 width multiplier (1.0: 64..512 channels)
    hidden: int = 128  #: units of each of the classifier's two hidden layers
    epochs: int = 1
    batch_size: int = 128
    lr: float = 1e-3
    target_flops: float = 0.5
    max_to_prune: int = 32
    flops_per_round: float | None = None  #: instead of max_to_prune: the trained network's FLOPs each prune removes
    steps_per_round: int = 30
    max_rounds: int | None = None
    flops_regularization: float = 0.01
    round_to: int = 8  #: every chain keeps a multiple of this many channels (AVX2: 8 floats)
    finetune_steps: int = 400
    latency_batches: tuple[int, ...] = (1, 64)  #: images per timed forward pass, one column each
    latency_time: float = 2.0  #: seconds of timing per network and batch size
    latency_threads: int = 1  #: torch threads of the timed copies (1: torch.utils.benchmark's default)
    compile: bool | None = None  #: time the copies compiled (None: when they compile, see step 5)
    seed: int = 0
    progress: bool | None = None  #: tqdm bars on stderr (None: when it is a terminal)


@dataclass(frozen=True)
class Measurement:
    """One network as the demo measures it."""

    test_accuracy: float
    flops: int
    parameters: int
    latency: dict[int, float]  #: seconds per forward pass of its timed copy, by batch size


@dataclass(frozen=True)
class DemoResult:
    unpruned: Measurement
    pruned: Measurement
    speedups: dict[int, float]  #: by batch size: median ratio of the latencies, timed side by side
    compiled: bool  #: whether the timed copies were compiled by ``torch.compile``
    history: History
    finetuned_val_accuracy: float
    files: tuple[Path, Path, Path]  #: pruned model, CSV history, PNG plot
    seconds: float


def run_demo(
    config: DemoConfig, splits: Splits | None = None, say: Callable[[str], None] = print
) -> DemoResult | None:
    """Run the demo (see the module docstring) on ``splits`` (default:
    :func:`load_splits`), reporting progress through ``say``, one line per call.

    Under an initialised process group of more than one rank, it runs data parallel; ranks
    other than 0 say nothing, write nothing and return ``None``."""
    started = time.perf_counter()
    distributed = is_distributed()
    main_rank = not distributed or torch.distributed.get_rank() == 0
    if not main_rank:
        say = _silent
    train_set, val_set, test_set = load_splits(config) if splits is None else splits
    say(
        f"{network_name(config)}: {len(train_set)} training, {len(val_set)} validation and "
        f"{len(test_set)} test images; target {config.target_flops:.0%} of the FLOPs"
    )
    torch.manual_seed(config.seed)
    model = build_network(config)
    model.pruner = TaylorPruner(
        model, model.example_inputs(), flops_regularization=config.flops_regularization, round_to=config.round_to
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    trained: nn.Module = model
    if distributed:
        sampler = DistributedSampler(train_set, shuffle=True, seed=config.seed)
        train_loader = DataLoader(train_set, batch_size=config.batch_size, sampler=sampler)
        trained = DistributedDataParallel(model)
    else:
        train_loader = make_loader(train_set, config.batch_size, shuffle=True, seed=config.seed)
    val_loader, test_loader = make_loader(val_set, 1000), make_loader(test_set, 1000)
    out_dir = Path(config.out_dir)
    if main_rank:
        out_dir.mkdir(parents=True, exist_ok=True)
    files = (out_dir / PRUNED_FILE, out_dir / CSV_FILE, out_dir / PLOT_FILE)

    for epoch in range(1, config.epochs + 1):
        if distributed:
            sampler.set_epoch(epoch)
        loss = train_epoch(trained, optimizer, train_loader, desc=f"epoch {epoch}", progress=config.progress)
        say(f"epoch {epoch}/{config.epochs}: mean training loss {loss:.4f}" + (" (rank 0)" if distributed else ""))
    unpruned_test = evaluate(model, test_loader, progress=config.progress)
    unpruned_copy = to_torch(model)

    csv_path = files[1] if main_rank else None
    history = prune_with_table(trained, optimizer, train_loader, val_loader, config, csv_path, say)
    if isinstance(trained, DistributedDataParallel):
        trained = rewrap(trained, optimizer)  # the loop's prunes changed the shapes
    loss = train_steps(
        trained, optimizer, endless(train_loader), config.finetune_steps, desc="fine-tune", progress=config.progress
    )
    finetuned_val = evaluate(model, val_loader, progress=config.progress)
    say(
        f"fine-tuned for {config.finetune_steps} steps: mean loss {loss:.4f}"
        + (" (rank 0)" if distributed else "") + f", validation accuracy {finetuned_val:.2%}"
    )
    if not main_rank:
        return None

    save_pruned(model, files[0])  # before the timing, which may fail to compile
    plot_history(history, files[2], title=network_name(config), finetuned_accuracy=finetuned_val)
    with torch_threads(config.latency_threads):
        timed_unpruned, timed_pruned, compiled = timed_copies(unpruned_copy, to_torch(model), config, say)
        latency = {
            batch: compare_latency(
                timed_unpruned, timed_pruned, torch.zeros(batch, *IMAGE_SHAPE),
                repeats=LATENCY_REPEATS, min_run_time=config.latency_time / LATENCY_REPEATS,
            )
            for batch in config.latency_batches
        }
    start = history[0]
    unpruned = Measurement(
        unpruned_test, start.flops, start.parameters, {batch: timing.first for batch, timing in latency.items()}
    )
    pruned = Measurement(
        evaluate(model, test_loader, progress=config.progress), count_flops(model, model.example_inputs()),
        count_parameters(model), {batch: timing.second for batch, timing in latency.items()},
    )
    speedups = {batch: timing.speedup for batch, timing in latency.items()}
    result = DemoResult(
        unpruned, pruned, speedups, compiled, history, finetuned_val, files, time.perf_counter() - started
    )
    for line in summary(result, config):
        say(line)
    return result


class CompileError(RuntimeError):
    """``torch.compile`` could not compile a network to be timed."""


def timed_copies(
    unpruned: nn.Module, pruned: nn.Module, config: DemoConfig, say: Callable[[str], None]
) -> tuple[nn.Module, nn.Module, bool]:
    """The two plain-torch copies as they are timed, and whether they are compiled (step 5 of
    the module docstring). Each copy is compiled for fixed shapes, as a deployment exports
    it, once for every batch size, here, so that no compilation is timed."""
    if config.compile is False:
        return unpruned, pruned, False
    try:
        return compiled_copy(unpruned, "unpruned", config), compiled_copy(pruned, "pruned", config), True
    except CompileError as error:
        if config.compile:
            raise
        say(f"{error}; timing both networks eagerly instead")
        return unpruned, pruned, False


def compiled_copy(copy: nn.Module, name: str, config: DemoConfig) -> nn.Module:
    """``torch.compile(copy)`` (static shapes), compiled for every batch size of
    ``config.latency_batches``; :class:`CompileError` names the ``name`` network if it fails."""
    module = torch.compile(copy.eval(), dynamic=False)
    try:
        with torch.inference_mode():
            for batch in config.latency_batches:
                module(torch.zeros(batch, *IMAGE_SHAPE))
    except Exception as error:  # inductor raises many kinds: a missing compiler among them
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CompileError(
            f"torch.compile could not compile the {name} network (inductor needs a C++ compiler "
            f"such as g++): {first_line}"
        ) from error
    return module


def prune_with_table(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_loader: DataLoader,
    val_loader: DataLoader,
    config: DemoConfig,
    csv_path: Path | None,
    say: Callable[[str], None],
) -> History:
    """:func:`prune_loop` to ``FlopsTarget(config.target_flops)``, one table row per round.
    ``model`` may be the ``DistributedDataParallel`` wrapper of the network."""
    say(HEADER)
    shown: list[Round] = []

    def show(row: Round) -> None:
        shown.append(row)
        say(format_row(row, shown[0]))

    network = model.module if isinstance(model, DistributedDataParallel) else model
    history = prune_loop(
        model, network.pruner, train_loader, val_loader, optimizer,
        target=FlopsTarget(config.target_flops), steps_per_round=config.steps_per_round,
        max_to_prune=None if config.flops_per_round else config.max_to_prune, flops_per_round=config.flops_per_round,
        max_rounds=config.max_rounds, progress=config.progress,
        csv_path=csv_path, on_round=show,
    )
    say(history.stop_reason)
    return history


def _silent(line: str) -> None:
    """``say`` on ranks other than 0."""


def build_network(config: DemoConfig) -> PrunableModule:
    """The unpruned VGG-11 of ``config``, freshly initialised; :func:`vgg_call` writes it out."""
    from models import VGG  # models imports prunable_nn: import it late

    return VGG("vgg11", NUM_CLASSES, IMAGE_SHAPE[0], IMAGE_SHAPE[1], width=config.width, hidden=config.hidden)


def network_name(config: DemoConfig) -> str:
    return f"VGG-11 (width {config.width:g}) on Fashion-MNIST"


def load_splits(config: DemoConfig) -> Splits:
    """Training, validation and test sets (see the module docstring); checks the image size."""
    full_train = data.fashion_mnist(train=True, root=config.data)
    test_set = data.fashion_mnist(train=False, root=config.data)
    for name, dataset in (("training", full_train), ("test", test_set)):
        shape = tuple(dataset.tensors[0].shape[1:])
        if shape != IMAGE_SHAPE:
            raise ValueError(f"the {name} images are {shape[1]}x{shape[2]}, the demo needs 28x28")
    if config.val_size >= len(full_train):
        raise ValueError(
            f"val_size {config.val_size} leaves no training images (the training file has {len(full_train)})"
        )
    order = torch.randperm(len(full_train), generator=torch.Generator().manual_seed(config.seed)).tolist()
    val_set = Subset(full_train, order[: config.val_size])
    train_set = subset(Subset(full_train, order[config.val_size :]), config.train_size or None, config.seed)
    return train_set, val_set, subset(test_set, config.test_size or None, config.seed + 1)


HEADER = f"{'round':>5}  {'units left':>10}  {'params':>9}  {'MFLOPs':>7}  {'FLOPs':>6}  {'val acc':>7}  {'loss':>6}  {'time':>6}"


def format_row(row: Round, start: Round) -> str:
    """One line of the table, FLOPs also in % of ``start`` (row 0)."""
    loss = "-" if row.train_loss is None else f"{row.train_loss:.4f}"
    return (
        f"{row.round:>5}  {row.units_left:>10}  {row.parameters:>9,}  {row.flops / 1e6:>7.2f}  "
        f"{row.flops / start.flops:>6.1%}  {row.accuracy:>7.2%}  {loss:>6}  {row.seconds:>5.0f}s"
    )


def summary(result: DemoResult, config: DemoConfig) -> list[str]:
    """The closing lines: both networks side by side, the files, how to load the model."""
    before, after = result.unpruned, result.pruned
    batches = config.latency_batches
    latency_titles = "".join(f"  {f'latency, {batch} image' + ('s' if batch > 1 else ''):>19}" for batch in batches)
    lines = [
        f"{'':<10}  {'test acc':>8}  {'MFLOPs':>7}  {'params':>9}{latency_titles}",
        *(
            f"{name:<10}  {m.test_accuracy:>8.2%}  {m.flops / 1e6:>7.2f}  {m.parameters:>9,}"
            + "".join(f"  {1e3 * m.latency[batch]:>16.2f} ms" for batch in batches)
            for name, m in (("unpruned", before), ("pruned", after))
        ),
        f"{'change':<10}  {100 * (after.test_accuracy - before.test_accuracy):>+5.2f} pt  "
        f"{after.flops / before.flops:>7.1%}  {after.parameters / before.parameters:>9.1%}"
        + "".join(f"  {result.speedups[batch]:>9.2f}x speed-up" for batch in batches),
        f"latency: median of {LATENCY_REPEATS} alternating measurements of the plain-torch copies on "
        f"{config.latency_threads} thread{'s' if config.latency_threads > 1 else ''}, "
        + ("compiled by torch.compile (inductor)" if result.compiled else "run eagerly (not compiled)"),
        f"wrote {', '.join(str(path) for path in result.files)} in {result.seconds:.0f} s",
        f"load it with: load_pruned({vgg_call(config)}, {str(result.files[0])!r})",
    ]
    return lines


def vgg_call(config: DemoConfig) -> str:
    """The Python expression that builds the demo's unpruned network."""
    return f"VGG('vgg11', {NUM_CLASSES}, {IMAGE_SHAPE[0]}, {IMAGE_SHAPE[1]}, width={config.width!r}, hidden={config.hidden})"
