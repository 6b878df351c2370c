"""prunable_nn.training: subsets, loaders, training steps and accuracy, on the digits fixture."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from prunable_nn import PBatchNorm2d, PConv2d, PLinear, TaylorPruner
from prunable_nn.app import data
from prunable_nn.training import (
    endless,
    evaluate,
    make_loader,
    subset,
    train_epoch,
    train_steps,
)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one thread is fastest, and immune to other processes on the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_net() -> nn.Sequential:
    return nn.Sequential(
        PConv2d(1, 8, 3, padding=1), PBatchNorm2d(8), nn.ReLU(inplace=True),
        nn.Flatten(), PLinear(8 * 8 * 8, 10),
    )


def test_subset_is_seeded():
    dataset = TensorDataset(torch.arange(100))
    first, again, other = subset(dataset, 10, seed=3), subset(dataset, 10, seed=3), subset(dataset, 10, seed=4)
    assert len(first) == 10 and first.indices == again.indices != other.indices
    assert len(set(first.indices)) == 10
    assert subset(dataset, None) is dataset and subset(dataset, 100) is dataset and subset(dataset, 500) is dataset
    with pytest.raises(ValueError, match="positive"):
        subset(dataset, 0)


def test_shuffled_loader_is_seeded_and_batch_size_checked():
    dataset = TensorDataset(torch.arange(20))
    orders = [torch.cat([b for (b,) in make_loader(dataset, 4, shuffle=True, seed=seed)]).tolist() for seed in (1, 1, 2)]
    assert orders[0] == orders[1] != orders[2] and sorted(orders[0]) == list(range(20))
    assert torch.cat([b for (b,) in make_loader(dataset, 7)]).tolist() == list(range(20))
    with pytest.raises(ValueError, match="batch_size must be positive, got 0"):
        make_loader(dataset, 0)


def test_endless_goes_on_past_one_pass_and_rejects_empty_loaders():
    batches = endless(make_loader(TensorDataset(torch.arange(5)), 2))
    assert [len(next(batches)[0]) for _ in range(7)] == [2, 2, 1, 2, 2, 1, 2]
    with pytest.raises(ValueError, match="no batches"):
        next(endless(make_loader(TensorDataset(torch.arange(0)), 2)))


def test_training_on_digits_learns_and_accumulates_estimates():
    torch.manual_seed(0)
    model = small_net()
    pruner = TaylorPruner(model, torch.zeros(1, 1, 8, 8))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    train = make_loader(data.digits(train=True), 64, shuffle=True)
    test = make_loader(data.digits(train=False), 128)

    first = train_epoch(model, optimizer, train, progress=False)
    later = train_steps(model, optimizer, endless(train), 3 * len(train), progress=False)

    assert later < first
    assert all(chain.estimates() is not None for chain in pruner.chains)
    assert evaluate(model, test, progress=False) > 0.9


def test_evaluate_restores_modes_and_leaves_estimates_alone():
    torch.manual_seed(0)
    model = small_net()
    pruner = TaylorPruner(model, torch.zeros(1, 1, 8, 8))
    loader = make_loader(data.digits(train=False), 100)
    model.train()
    model[1].eval()  # a mixed state must come back as it was
    accuracy = evaluate(model, loader, progress=False)
    assert 0 <= accuracy <= 1
    assert [m.training for m in model] == [True, False, True, True, True]
    assert all(chain.estimates() is None for chain in pruner.chains)


def test_bad_arguments():
    model = small_net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="steps must be positive, got 0"):
        train_steps(model, optimizer, iter([]), 0)
    with pytest.raises(ValueError, match="empty"):
        evaluate(model, make_loader(TensorDataset(torch.zeros(0, 1, 8, 8), torch.zeros(0)), 4))
