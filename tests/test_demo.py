"""run_demo called directly: what it times, trains and returns (the CLI tests read its text)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from idx_files import class_images
from torch.utils.data import TensorDataset

from prunable_nn import count_flops, count_parameters, load_pruned, training
from prunable_nn.app import demo
from prunable_nn.app.demo import DemoConfig, run_demo
from prunable_nn.latency import compare_latency


def band_images(count: int, seed: int) -> TensorDataset:
    """28x28 images of ``idx_files.class_images``: class k lights up the k-th band of rows."""
    labels = np.random.default_rng(seed).integers(0, 10, size=count)
    images = torch.from_numpy(class_images(labels, seed=seed)).float().div(255).unsqueeze(1)
    return TensorDataset(images, torch.from_numpy(labels))


@pytest.fixture
def spied_run(monkeypatch, tmp_path):
    """A tiny run with spies on the latency comparisons and the final fine-tuning."""
    timed, finetuned = [], []

    def spy_compare(first, second, inputs, **options):
        timed.append((count_parameters(first), count_parameters(second), tuple(inputs.shape), torch.get_num_threads()))
        return compare_latency(first, second, inputs, **options)

    def spy_train_steps(model, optimizer, batches, steps, **options):
        finetuned.append(steps)
        return training.train_steps(model, optimizer, batches, steps, **options)

    monkeypatch.setattr(demo, "compare_latency", spy_compare)
    monkeypatch.setattr(demo, "train_steps", spy_train_steps)
    config = DemoConfig(
        out_dir=tmp_path, width=0.125, hidden=16, batch_size=16, steps_per_round=2, max_to_prune=8,
        target_flops=0.9, finetune_steps=7, latency_batches=(1, 3), latency_time=0.01, latency_threads=2,
        compile=False, progress=False,
    )
    splits = band_images(96, 0), band_images(32, 1), band_images(32, 2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = run_demo(config, splits, say=lambda line: None)
        assert torch.get_num_threads() == 1  # the latency threads were only for the timing
    finally:
        torch.set_num_threads(threads)
    return config, result, timed, finetuned


def test_the_unpruned_and_the_pruned_copies_are_timed_for_each_batch_size(spied_run):
    config, result, timed, _ = spied_run
    history = result.history
    assert timed == [(history[0].parameters, history[-1].parameters, (batch, 1, 28, 28), 2) for batch in (1, 3)]
    assert set(result.speedups) == set(result.unpruned.latency) == set(result.pruned.latency) == {1, 3}


def test_the_pruned_network_is_fine_tuned_measured_and_saved(spied_run):
    config, result, _, finetuned = spied_run
    assert finetuned == [7]
    history = result.history
    assert history[-1].reached and history[-1].flops <= 0.9 * history[0].flops
    assert (result.unpruned.flops, result.unpruned.parameters) == (history[0].flops, history[0].parameters)
    model = load_pruned(demo.build_network(config), result.files[0])
    assert count_parameters(model) == result.pruned.parameters == history[-1].parameters
    assert count_flops(model, model.example_inputs()) == result.pruned.flops
    widths = [layer.out_channels for layer in model.features if isinstance(layer, torch.nn.Conv2d)]
    widths += [model.classifier[1].out_features, model.classifier[4].out_features]
    assert widths != [8, 16, 32, 32, 64, 64, 64, 64, 16, 16]  # pruned, in blocks of round_to
    assert all(width % config.round_to == 0 for width in widths), widths
    assert 0 <= result.finetuned_val_accuracy <= 1 and 0 <= result.pruned.test_accuracy <= 1
    assert all(path.is_file() for path in result.files)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None, reason="torch.compile's inductor needs a C++ compiler")
def test_by_default_the_compiled_copies_are_timed(monkeypatch, tmp_path):
    timed = []

    def spy_compare(first, second, inputs, **options):
        timed.append((first, second))
        return compare_latency(first, second, inputs, **options)

    def spy_compiled_copy(copy, name, config):
        compiled_on.append(torch.get_num_threads())
        return compiled_copy(copy, name, config)

    compiled_on, compiled_copy = [], demo.compiled_copy
    monkeypatch.setattr(demo, "compare_latency", spy_compare)
    monkeypatch.setattr(demo, "compiled_copy", spy_compiled_copy)
    config = DemoConfig(
        out_dir=tmp_path, width=0.125, hidden=16, batch_size=16, steps_per_round=2, max_to_prune=8,
        max_rounds=1, latency_threads=1, finetune_steps=1, latency_batches=(2,), latency_time=0.01, progress=False,
    )
    splits = band_images(48, 0), band_images(16, 1), band_images(16, 2)
    result = run_demo(config, splits, say=lambda line: None)
    ((unpruned, pruned),) = timed
    assert result.compiled
    assert compiled_on == [1, 1]  # inductor's kernels are made for the threads they run on
    assert all(isinstance(module, torch._dynamo.eval_frame.OptimizedModule) for module in (unpruned, pruned))
    images = torch.randn(2, 1, 28, 28)
    with torch.inference_mode():
        reference = demo.to_torch(load_pruned(demo.build_network(config), result.files[0])).eval()(images)
        torch.testing.assert_close(pruned(images), reference, rtol=1e-4, atol=1e-4)
    assert count_parameters(unpruned._orig_mod) == result.unpruned.parameters
