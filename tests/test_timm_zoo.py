"""timm's CNN zoo, each family at its smallest variant (``benchmarks/zoo.py``: random weights,
constant-initialised ones drawn at random so that no residual branch starts at zero; 64x64
inputs, double precision): the pruned network computes exactly what the network before computes with the
removed channels zeroed at their readers' inputs, at least 10% of the prunable units go in
three steps, and the output keeps its shape. Where nothing can go, the report says why.

Channels made dead (zero scale and shift at every batch norm, timm's ``BatchNormAct2d``
included) have zero estimates: they are the first to go, and the function does not change.
"""

from __future__ import annotations

import copy

import pytest
import torch

from nets import (
    prune_and_check_masking,
    prune_rounds_and_check_masking,
    training_loss,
)
from prunable_nn import TaylorPruner, count_flops, load_pruned, save_pruned
from prunable_nn.kinds import NormKind, kind_of
from zoo import TIMM_MODELS, TIMM_NOTHING_PRUNABLE, tensors_of, timm_model

timm = pytest.importorskip("timm")
slow = pytest.mark.slow


@pytest.mark.parametrize("name", [pytest.param(name, marks=slow) if heavy else name for name, heavy in TIMM_MODELS.items()])
def test_timm_model_prunes_as_masking_says(name):
    model, inputs = timm_model(name)
    with torch.no_grad():
        shape = model.eval()(inputs).shape
    pruner = TaylorPruner(model, inputs)
    flops = count_flops(model, inputs[:1])
    prune_rounds_and_check_masking(model, pruner, inputs)
    with torch.no_grad():
        assert model.eval()(inputs).shape == shape
    assert count_flops(model, inputs[:1]) < flops


@pytest.mark.parametrize("name", list(TIMM_NOTHING_PRUNABLE))
def test_a_timm_model_that_cannot_lose_a_channel_says_why(name):
    model, inputs = timm_model(name)
    pruner = TaylorPruner(model, inputs)
    conv_chains = [chain for chain in pruner.chains if any(type(layer).__name__.endswith("Conv2d") for layer in chain.producers)]
    assert not conv_chains, [chain.name for chain in conv_chains]
    assert TIMM_NOTHING_PRUNABLE[name] in pruner.report()


def kill_channels(model: torch.nn.Module) -> None:
    """Zero the scale and shift of the first quarter of the channels of every batch norm."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(kind_of(module), NormKind) and module.affine:
                dead = max(1, module.num_features // 4)
                module.weight[:dead] = 0
                module.bias[:dead] = 0


@pytest.mark.parametrize("name", ["efficientnet_b0", "tf_efficientnet_b0", "efficientnetv2_rw_t", "tinynet_a", "resnet18d"])
def test_dead_channels_go_first_and_the_function_stays(name):
    model, inputs = timm_model(name)
    kill_channels(model)
    pruner = TaylorPruner(model, inputs)
    state = copy.deepcopy(model.state_dict())
    training_loss(model, inputs, torch.arange(len(inputs)) % 3).backward()
    model.load_state_dict(state)  # the batch norms' running statistics as they were
    with torch.no_grad():
        expected = tensors_of(model.eval()(inputs))
    removals = pruner.prune(max_to_prune=16)
    assert sum(len(removal.indices) for removal in removals) == 16
    with torch.no_grad():
        for got, want in zip(tensors_of(model.eval()(inputs)), expected):
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_a_weight_standardised_convolution_loses_outputs_with_its_gain_and_keeps_its_inputs(tmp_path):
    from timm.layers import ScaledStdConv2d

    def network() -> torch.nn.Module:
        torch.manual_seed(0)
        return torch.nn.Sequential(
            ScaledStdConv2d(3, 8, 3), torch.nn.ReLU(), ScaledStdConv2d(8, 6, 3), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(6, 3),
        ).double()

    net, inputs = network(), torch.randn(4, 3, 9, 9, dtype=torch.float64)
    with torch.no_grad():
        net[2].gain.uniform_(0.5, 1.5)
    pruner = TaylorPruner(net, inputs)
    assert [chain.name for chain in pruner.chains] == ["2"]  # conv 0's outputs are conv 2's inputs
    assert "standardised over each output channel's whole fan-in" in pruner.report()
    prune_and_check_masking(net, pruner, inputs, max_to_prune=2)
    assert net[2].gain.shape == (4, 1, 1, 1) and net[6].in_features == 4
    save_pruned(net, tmp_path / "net.pt")
    fresh = load_pruned(network(), tmp_path / "net.pt").eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(inputs), net.eval()(inputs))


def test_a_pruned_timm_model_saves_and_loads_into_a_fresh_one(tmp_path):
    model, inputs = timm_model("tf_efficientnet_b0")  # BatchNormAct2d, Conv2dSame
    pruner = TaylorPruner(model, inputs)
    prune_and_check_masking(model, pruner, inputs, max_to_prune=200)
    save_pruned(model, tmp_path / "model.pt")
    fresh = load_pruned(timm_model("tf_efficientnet_b0")[0], tmp_path / "model.pt").eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(inputs), model.eval()(inputs))
