"""One rank of the distributed tests (tests/test_distributed.py starts it as a subprocess).

    python distributed_worker.py MODE RANK WORLD INIT_FILE OUT_DIR [TIMEOUT_SECONDS]

Every rank builds the same network (seed 0) and takes its own slice of every global batch
(:func:`global_batches`); it writes what it saw to ``OUT_DIR/rank{RANK}.pt``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from prunable_nn import ChannelsTarget, RandomScores, TaylorPruner, prune_loop, rewrap
from prunable_nn.distributed import DistributedPruningError, reduced_estimates

EXAMPLE_SHAPE = (2, 8, 8)
PER_RANK = 6  # examples of each rank in one step
ROUNDS, STEPS, MAX_TO_PRUNE, LR = 3, 2, 3, 0.05


def network(width: int = 6) -> nn.Sequential:
    """A small network without batch norm: per-example gradients do not depend on the batch."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(8, 10), nn.ReLU(), nn.Linear(10, 3),
    )


def global_batches(world: int, steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``steps`` batches of ``world * PER_RANK`` examples; rank r's part is rows r*PER_RANK..."""
    generator = torch.Generator().manual_seed(1)
    return [
        (torch.randn(world * PER_RANK, *EXAMPLE_SHAPE, generator=generator),
         torch.randint(0, 3, (world * PER_RANK,), generator=generator))
        for _ in range(steps)
    ]


def make_pruner(model: nn.Module, **options) -> TaylorPruner:
    return TaylorPruner(model, torch.zeros(1, *EXAMPLE_SHAPE), **options)


def step(model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(model(images), labels).backward()
    optimizer.step()


def estimates(pruner: TaylorPruner) -> list[torch.Tensor]:
    """The estimates that prune() ranks: under a process group, those of all ranks."""
    layers = list(dict.fromkeys(member.layer for member in pruner.estimator_members))
    context = reduced_estimates(layers, pruner.criterion.statistic.gradient_power) if dist.is_initialized() else contextlib.nullcontext()
    local = [(layer.examples_seen, layer.estimate_totals.sums.clone()) for layer in layers]
    with context:
        ranked = [layer.taylor_estimates.clone() for layer in layers]
    for layer, (count, sums) in zip(layers, local):  # each layer holds its own sums and counts again
        assert layer.examples_seen == count and torch.equal(layer.estimate_totals.sums, sums), layer.name_in_model
    return ranked


def run_rounds(model, train, optimizer, pruner, batches, take, after_prune=lambda: None, seen=None):
    """ROUNDS rounds of STEPS steps then prune(MAX_TO_PRUNE); ``take`` picks this process's
    part of a global batch. Returns each round's removals (chain, original indices); the
    estimates ranked in each round are appended to ``seen``."""
    removed = []
    for round_ in range(ROUNDS):
        for images, labels in batches[round_ * STEPS : (round_ + 1) * STEPS]:
            step(train(), optimizer, *take(images, labels))
        if seen is not None:
            seen.append(estimates(pruner))
        removals = pruner.prune(MAX_TO_PRUNE, optimizer=optimizer)
        removed.append(sorted((r.chain, r.original_indices) for r in removals))
        after_prune()
    return removed


def main() -> None:
    mode, rank, world, init_file, out_dir = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], Path(sys.argv[5])
    timeout = float(sys.argv[6]) if len(sys.argv) > 6 else 60.0
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
        timeout=datetime.timedelta(seconds=timeout),
    )
    batches = global_batches(world, ROUNDS * STEPS)
    mine = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    result: dict = {"rank": rank}

    def setup(width: int = 6, wrap: bool = True, **options):
        model = network(width)
        pruner = make_pruner(model, **options)
        optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
        return model, pruner, optimizer, {"ddp": DistributedDataParallel(model) if wrap else model}

    if mode == "rounds":  # then the same rounds through prune_loop, in the same processes
        model, pruner, optimizer, holder = setup()

        def after_prune() -> None:
            holder["ddp"] = rewrap(holder["ddp"], optimizer)
            result.setdefault("states", []).append({k: v.clone() for k, v in model.state_dict().items()})

        result["estimates"] = []
        result["removed"] = run_rounds(
            model, lambda: holder["ddp"], optimizer, pruner, batches, lambda x, y: (x[mine], y[mine]), after_prune,
            result["estimates"],
        )

        model, pruner, optimizer, holder = setup()
        dataset = TensorDataset(torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches]))
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=0)
        train_loader = DataLoader(dataset, batch_size=PER_RANK, sampler=sampler)
        val_loader = DataLoader(dataset, batch_size=12)
        history = prune_loop(
            holder["ddp"], pruner, train_loader, val_loader, optimizer,
            target=ChannelsTarget(6), steps_per_round=STEPS, max_to_prune=MAX_TO_PRUNE, progress=False,
        )
        ddp = rewrap(holder["ddp"], optimizer)  # and train on with DDP
        step(ddp, optimizer, batches[0][0][mine], batches[0][1][mine])
        result["loop_history"] = [(r.round, r.units_left, r.parameters, r.flops, r.accuracy, r.train_loss) for r in history]
        result["loop_state"] = {k: v.clone() for k, v in model.state_dict().items()}
    elif mode == "disagree":  # then networks that differ, in the same processes
        model, pruner, optimizer, holder = setup(criterion=RandomScores(seed=rank))
        step(holder["ddp"], optimizer, batches[0][0][mine], batches[0][1][mine])
        before = {k: v.clone() for k, v in model.state_dict().items()}
        try:
            pruner.prune(MAX_TO_PRUNE, optimizer=optimizer)
        except DistributedPruningError as error:
            result["error"] = str(error)
        result["unchanged"] = all(torch.equal(before[k], v) for k, v in model.state_dict().items())

        model, pruner, optimizer, _ = setup(7 if rank == 1 else 6, wrap=False)  # rank 1: 7 channels in the first layer
        step(model, optimizer, batches[0][0][mine], batches[0][1][mine])
        try:
            pruner.prune(MAX_TO_PRUNE, optimizer=optimizer)
        except DistributedPruningError as error:
            result["mismatch_error"] = str(error)
    elif mode in ("die", "stall"):
        model, pruner, optimizer, holder = setup()
        step(holder["ddp"], optimizer, batches[0][0][mine], batches[0][1][mine])
        if rank == 1:
            if mode == "die":
                os._exit(3)  # a crash: no clean-up, no goodbye
            time.sleep(600)  # stalled (the test kills it)
        started = time.monotonic()
        try:
            pruner.prune(MAX_TO_PRUNE, optimizer=optimizer)
        except DistributedPruningError as error:
            result["error"] = str(error)
        result["waited"] = time.monotonic() - started
    elif mode == "demo":
        from test_demo import band_images

        from prunable_nn.app import demo as demo_module
        from prunable_nn.app.demo import DemoConfig, run_demo

        built: list[nn.Module] = []  # the demo's network, to compare the ranks' parameters
        build = demo_module.build_network
        demo_module.build_network = lambda config: built.append(build(config)) or built[-1]
        config = DemoConfig(
            out_dir=out_dir / "demo", width=0.125, hidden=16, batch_size=8, steps_per_round=2, max_to_prune=8,
            target_flops=0.8, finetune_steps=3, latency_batches=(1,), latency_time=0.01, compile=False, progress=False,
        )
        lines: list[str] = []
        demo = run_demo(config, (band_images(64, 0), band_images(32, 1), band_images(32, 2)), say=lines.append)
        result["lines"] = lines
        result["returned"] = None if demo is None else [tuple(row) for row in map(dataclasses.astuple, demo.history)]
        # parameters only: DDP broadcasts rank 0's buffers at the start of the next forward
        result["states"] = [{k: v.detach().clone() for k, v in built[0].named_parameters()}]
    else:
        raise SystemExit(f"unknown mode {mode}")
    torch.save(result, out_dir / f"rank{rank}.pt")
    if mode in ("die", "stall"):
        os._exit(0)  # the group is broken: tearing it down at exit may abort
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
