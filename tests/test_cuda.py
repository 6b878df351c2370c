"""The training loops of :mod:`test_training_loops` and :mod:`test_compile` on a GPU: estimates, a prune with the
optimizer's state, float16 and bfloat16 autocast with a ``GradScaler``, ``torch.compile``
and DDP over NCCL. Skipped without CUDA."""

from __future__ import annotations

import copy
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from prunable_nn import TaylorPruner, rewrap
from loops import ESTIMATORS, batch, plain_model

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
CUDA = torch.device("cuda")


def on(device: torch.device, dtype: torch.dtype = torch.float32) -> tuple[torch.nn.Module, TaylorPruner]:
    model = plain_model().to(device, dtype)
    return model, TaylorPruner(model, batch()[0].to(device, dtype))


def step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, seed: int, dtype: torch.dtype = torch.float32) -> None:
    x, y = batch(seed=seed)
    device = next(model.parameters()).device
    optimizer.zero_grad()
    F.cross_entropy(model(x.to(device, dtype)), y.to(device)).backward()
    optimizer.step()


def test_estimates_on_the_gpu_equal_those_on_the_cpu():
    (gpu, _), (cpu, _) = on(CUDA, torch.float64), on(torch.device("cpu"), torch.float64)
    for model in (gpu, cpu):
        x, y = batch()
        F.cross_entropy(model(x.to(next(model.parameters()).device)), y.to(next(model.parameters()).device)).backward()
    for name in ESTIMATORS:
        torch.testing.assert_close(gpu.get_submodule(name).taylor_estimates.cpu(), cpu.get_submodule(name).taylor_estimates)


def test_a_prune_on_the_gpu_slices_the_optimizer_state_and_training_goes_on():
    model, pruner = on(CUDA)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    step(model, optimizer, 0)
    pruner.prune(4, optimizer)
    assert optimizer.state[model[0].weight]["exp_avg"].shape == model[0].weight.shape
    assert optimizer.state[model[0].weight]["exp_avg"].device.type == "cuda"
    step(model, optimizer, 1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_with_a_scaler_gives_estimates_free_of_the_scale(dtype):
    estimates = []
    for scale in (2.0**8, 2.0**14):
        model, pruner = on(CUDA)
        pruner.grad_scaler = torch.amp.GradScaler("cuda", init_scale=scale)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        x, y = batch()
        with torch.autocast("cuda", dtype=dtype):
            loss = F.cross_entropy(model(x.to(CUDA)), y.to(CUDA))
        pruner.grad_scaler.scale(loss).backward()
        pruner.grad_scaler.step(optimizer)
        pruner.grad_scaler.update()
        estimates.append(model[1].taylor_estimates)
    assert torch.isfinite(estimates[0]).all()
    torch.testing.assert_close(estimates[0], estimates[1], rtol=1e-2, atol=1e-6)


def test_a_compiled_model_trains_prunes_and_recompiles():
    torch._dynamo.reset()
    model, pruner = on(CUDA)
    eager = copy.deepcopy(model)
    compiled = torch.compile(model, fullgraph=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    step(compiled, optimizer, 0)
    F.cross_entropy(eager(batch()[0].to(CUDA)), batch()[1].to(CUDA)).backward()
    torch.testing.assert_close(model[1].taylor_estimates, eager[1].taylor_estimates, rtol=1e-3, atol=1e-7)
    pruner.prune(4, optimizer)
    step(compiled, optimizer, 1)
    torch._dynamo.reset()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_compiled_model_under_autocast_gives_estimates_free_of_the_scale(dtype):
    torch._dynamo.reset()
    estimates = []
    for scale in (2.0**8, 2.0**14):
        model, pruner = on(CUDA)
        pruner.grad_scaler = torch.amp.GradScaler("cuda", init_scale=scale)
        compiled = torch.compile(model, fullgraph=True)
        x, y = batch()
        with torch.autocast("cuda", dtype=dtype):
            loss = F.cross_entropy(compiled(x.to(CUDA)), y.to(CUDA))
        pruner.grad_scaler.scale(loss).backward()
        estimates.append(model[1].taylor_estimates)
    assert torch.isfinite(estimates[0]).all()
    torch.testing.assert_close(estimates[0], estimates[1], rtol=1e-2, atol=1e-6)
    torch._dynamo.reset()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_ddp_over_nccl_trains_prunes_and_rewraps():
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    dist.init_process_group("nccl", rank=0, world_size=1)
    try:
        model, pruner = on(CUDA)
        wrapped = DistributedDataParallel(model, device_ids=[0])
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        step(wrapped, optimizer, 0)
        pruner.prune(4, optimizer)
        wrapped = rewrap(wrapped, optimizer)
        step(wrapped, optimizer, 1)
        assert model[0].weight.shape[0] + model[3].weight.shape[0] == 14 - 4
    finally:
        dist.destroy_process_group()
