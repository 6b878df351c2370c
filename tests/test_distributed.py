"""Pruning under torch.distributed: two gloo ranks on the CPU, each a subprocess started
here (tests/distributed_worker.py) and bounded in time."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from distributed_worker import (
    MAX_TO_PRUNE,
    ROUNDS,
    STEPS,
    LR,
    global_batches,
    make_pruner,
    network,
    run_rounds,
    step,
)

from torch.nn.parallel import DistributedDataParallel

from prunable_nn import rewrap

pytestmark = [
    pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo"),
    pytest.mark.xdist_group("subprocesses"),  # conftest.py
]

WORKER = Path(__file__).resolve().parent / "distributed_worker.py"
ROOT = WORKER.parent.parent
WORLD = 2
BOUND = 90  # seconds for all ranks of one test


def run_ranks(mode: str, tmp_path: Path, timeout: float = 60.0, expect_exit: dict[int, int] | None = None) -> list[dict]:
    """Start WORLD ranks of ``mode``; wait for rank 0 (and the others unless they are meant to
    fail), kill whatever is left after BOUND seconds; return the ranks' results."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(WORKER.parent)])}
    env.pop("MASTER_ADDR", None)
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), mode, str(rank), str(WORLD), str(tmp_path / "init"), str(tmp_path), str(timeout)],
            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for rank in range(WORLD)
    ]
    deadline = time.monotonic() + BOUND
    logs = []
    try:
        for rank, proc in enumerate(procs):
            if expect_exit is not None and rank in expect_exit and expect_exit[rank] is None:
                continue  # a stalled rank: killed below
            out, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            logs.append(out)
            wanted = 0 if expect_exit is None else expect_exit.get(rank, 0)
            assert proc.returncode == wanted, f"rank {rank} exited with {proc.returncode}:\n{out}"
    except subprocess.TimeoutExpired:
        pytest.fail(f"the ranks of '{mode}' did not finish within {BOUND} s")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    results = []
    for rank in range(WORLD):
        path = tmp_path / f"rank{rank}.pt"
        results.append(torch.load(path, weights_only=False) if path.exists() else None)
    return results


def single_process_reference() -> tuple[list, list[dict], list]:
    """The same rounds in one process on the concatenated batches of all ranks: removals,
    parameters after each round, estimates ranked in each round."""
    model = network()
    pruner = make_pruner(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    states: list[dict] = []
    seen: list = []
    removed = run_rounds(
        model, lambda: model, optimizer, pruner, global_batches(WORLD, ROUNDS * STEPS), lambda x, y: (x, y),
        lambda: states.append({k: v.clone() for k, v in model.state_dict().items()}), seen,
    )
    return removed, states, seen


@pytest.fixture(scope="module")
def rounds(tmp_path_factory) -> list[dict]:
    return run_ranks("rounds", tmp_path_factory.mktemp("rounds"))


@pytest.fixture(scope="module")
def disagreeing(tmp_path_factory) -> list[dict]:
    return run_ranks("disagree", tmp_path_factory.mktemp("disagree"))


def test_ranks_prune_the_channels_of_all_their_data(rounds):
    """Different data per rank, ROUNDS rounds of fine-tuning and pruning with DDP re-wrapped
    after each: both ranks hold identical parameters after every round, and remove the
    channels one process removes from the concatenated batches."""
    results = rounds
    removed, states, seen = single_process_reference()
    assert all(removed), "every round removes something"
    for rank, result in enumerate(results):  # the means over all examples, the gradient of the mean loss
        for round_, (ranked, reference) in enumerate(zip(result["estimates"], seen)):
            for layer, (value, expected) in enumerate(zip(ranked, reference)):
                torch.testing.assert_close(value, expected, rtol=1e-4, atol=1e-9, msg=f"rank {rank} round {round_} estimator {layer}")
    for rank, result in enumerate(results):
        assert result["removed"] == removed, f"rank {rank}"
    for round_, (first, second, reference) in enumerate(zip(results[0]["states"], results[1]["states"], states)):
        assert first.keys() == reference.keys()
        for name in first:
            assert torch.equal(first[name], second[name]), f"round {round_}: {name} differs between the ranks"
            torch.testing.assert_close(first[name], reference[name], rtol=1e-4, atol=1e-5, msg=f"round {round_}: {name}")
    assert sum(len(indices) for _, indices in removed[0]) == MAX_TO_PRUNE


def test_prune_loop_under_ddp(rounds):
    """prune_loop with the DDP wrapper and a DistributedSampler: every rank measures the same
    rows, ends with the same parameters, and trains on after rewrap()."""
    first, second = rounds
    assert first["loop_history"] == second["loop_history"]
    assert len(first["loop_history"]) >= 3  # row 0 and at least two rounds (ChannelsTarget(6), 3 a round)
    assert first["loop_history"][-1][1] < first["loop_history"][0][1]
    for name, value in first["loop_state"].items():
        assert torch.equal(value, second["loop_state"][name]), name


def test_disagreeing_ranks_raise_and_change_nothing(disagreeing):
    """Random scores seeded per rank choose different channels: every rank raises, names the
    problem, and its model is as it was."""
    for rank, result in enumerate(disagreeing):
        assert "chose different channels" in result["error"], f"rank {rank}"
        assert "rank 0:" in result["error"] and "rank 1:" in result["error"]
        assert result["unchanged"], f"rank {rank}"


def test_ranks_whose_networks_differ_get_an_error(disagreeing):
    for rank, result in enumerate(disagreeing):
        assert "the ranks' models differ" in result["mismatch_error"], f"rank {rank}"


@pytest.mark.parametrize("mode", ["die", "stall"])
def test_a_failed_rank_does_not_hang_the_others(tmp_path, mode):
    """Rank 1 crashes (or stalls) before prune(): rank 0 gets a clear error within the
    process group's timeout instead of waiting forever."""
    timeout = 3.0
    results = run_ranks(mode, tmp_path, timeout=timeout, expect_exit={1: 3 if mode == "die" else None})
    first = results[0]
    assert results[1] is None
    assert "rank 0 of 2" in first["error"] and "prune()" in first["error"], first["error"]
    assert "did another rank fail" in first["error"]
    assert first["waited"] < timeout + 20


def test_single_process_is_unchanged():
    """Without a process group prune() does not touch torch.distributed."""
    assert not dist.is_initialized()
    removed, _, _ = single_process_reference()
    assert len(removed) == ROUNDS


@pytest.fixture
def world_of_one():
    """A gloo process group of one rank, in this process."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_rewrap_keeps_the_optimizer_and_the_settings(world_of_one):
    model = network()
    pruner = make_pruner(model)
    ddp = DistributedDataParallel(model, find_unused_parameters=True, bucket_cap_mb=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    images, labels = global_batches(1, 1)[0]
    step(ddp, optimizer, images, labels)
    pruner.prune(MAX_TO_PRUNE, optimizer=optimizer)
    before = list(model.parameters())
    ddp = rewrap(ddp, optimizer)
    assert ddp.module is model and ddp.find_unused_parameters and ddp.bucket_bytes_cap == 1024 * 1024
    assert list(model.parameters()) == before  # the same objects, which the optimizer holds
    step(ddp, optimizer, images, labels)  # trains on, momentum in the new shapes
    for param in model.parameters():
        assert optimizer.state[param]["momentum_buffer"].shape == param.shape


def test_rewrap_refuses_an_optimizer_whose_state_was_not_sliced(world_of_one):
    model = network()
    pruner = make_pruner(model)
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    step(ddp, optimizer, *global_batches(1, 1)[0])
    pruner.prune(MAX_TO_PRUNE)  # without the optimizer
    with pytest.raises(ValueError, match=r"momentum_buffer.*pass the optimizer to prune"):
        rewrap(ddp, optimizer)
    with pytest.raises(ValueError, match="does not hold parameter"):
        rewrap(ddp, torch.optim.SGD(list(model.parameters())[:1], lr=LR))
    with pytest.raises(TypeError, match="DistributedDataParallel"):
        rewrap(model)


def test_the_demo_runs_data_parallel(tmp_path):
    """run_demo on two ranks: the same pruned network on both, only rank 0 reports and writes."""
    first, second = run_ranks("demo", tmp_path)
    assert first["returned"] is not None and second["returned"] is None
    assert second["lines"] == [] and any("FLOPs" in line for line in first["lines"])
    assert len(first["returned"]) >= 2  # row 0 and at least one round
    assert sorted(path.name for path in (tmp_path / "demo").iterdir()) == ["history.csv", "history.png", "pruned.pt"]
    for name, value in first["states"][0].items():
        assert torch.equal(value, second["states"][0][name]), name
    rows = first["returned"]
    assert rows[-1][3] < rows[0][3]  # fewer parameters: the rounds pruned


def test_torchrun_runs_the_demo_command(tmp_path):
    """`torchrun --nproc_per_node=2 -m prunable_nn demo`: one table, written once."""
    from idx_files import write_dataset

    write_dataset(tmp_path / "idx", train_size=160, test_size=40)
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("no torchrun next to the interpreter")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [
        str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "prunable_nn", "demo",
        "--data", str(tmp_path / "idx"), "--out", str(tmp_path / "out"), "--width", "0.125", "--hidden", "16",
        "--batch-size", "16", "--val-size", "40", "--steps-per-round", "2", "--max-to-prune", "8",
        "--finetune-steps", "2", "--target-flops", "0.9", "--latency-batches", "1", "--latency-time", "0.01",
        "--no-compile", "--no-progress",
    ]
    try:
        done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=BOUND)
    except subprocess.TimeoutExpired:
        pytest.fail(f"torchrun did not finish within {BOUND} s")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("round  units left") == 1  # rank 0 only
    assert "reached in round" in done.stdout
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["history.csv", "history.png", "pruned.pt"]
