"""Measured latency: a sane number, modes restored, bad arguments refused. (Speed itself is
compared in benchmarks/, never asserted here.)"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from prunable_nn.latency import compare_latency, measure_latency, torch_threads


def test_latency_is_a_positive_time_measured_in_eval_mode_and_modes_come_back():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.BatchNorm2d(4))
    model.train()
    model[1].eval()
    running_means = [model[1].running_mean.clone(), model[3].running_mean.clone()]
    seconds = measure_latency(model, torch.randn(2, 1, 8, 8), min_run_time=0.05, threads=1)
    assert 0 < seconds < 1
    assert [module.training for module in model.modules()] == [True, True, False, True, True]
    # the batch norm left in training mode did not update its statistics: it ran in eval mode
    assert torch.equal(model[1].running_mean, running_means[0])
    assert torch.equal(model[3].running_mean, running_means[1])


@pytest.mark.parametrize("options, message", [({"min_run_time": 0}, "min_run_time"), ({"threads": 0}, "threads")])
def test_bad_arguments_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        measure_latency(nn.Linear(2, 2), torch.randn(1, 2), **options)


def test_compare_latency_times_both_models_alternately():
    calls = []

    class Recording(nn.Module):
        def __init__(self, name: str, width: int) -> None:
            super().__init__()
            self.name, self.layer = name, nn.Linear(width, width)

        def forward(self, x):
            calls.append(self.name)
            return self.layer(x.expand(-1, self.layer.in_features))

    small, large = Recording("small", 4), Recording("large", 512)
    inputs = torch.randn(64, 1)
    result = compare_latency(small, large, inputs, repeats=3, min_run_time=0.05, threads=1)
    assert 0 < result.first < result.second < 1  # a 512x512 layer takes longer than a 4x4 one
    assert result.speedup < 1 and result.speedup == pytest.approx(result.first / result.second, rel=0.5)
    runs = [name for name, _ in itertools.groupby(calls)]
    # small, large | large, small | small, large: each model twice in a row at the turns
    assert runs == ["small", "large", "small", "large"]


def test_compare_latency_refuses_no_repeats():
    with pytest.raises(ValueError, match="repeats must be at least 1, got 0"):
        compare_latency(nn.Linear(2, 2), nn.Linear(2, 2), torch.randn(1, 2), repeats=0)


def test_the_module_of_an_exported_program_is_timed_as_exported():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)).eval()
    inputs = torch.randn(2, 1, 8, 8)
    exported = torch.export.export(model, (inputs,)).module()
    with pytest.raises(NotImplementedError):
        exported.eval()  # what measure_latency must live with
    assert 0 < measure_latency(exported, inputs, min_run_time=0.05, threads=1) < 1
    result = compare_latency(model, exported, inputs, repeats=2, min_run_time=0.02, threads=1)
    assert result.first > 0 and result.second > 0


def test_torch_threads_sets_the_number_for_the_block_and_restores_it():
    before = torch.get_num_threads()
    with torch_threads(2):
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError, match="inside"):
        with torch_threads(2):
            raise RuntimeError("inside")
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads must be at least 1, got 0"):
        with torch_threads(0):
            pass
    assert torch.get_num_threads() == before
