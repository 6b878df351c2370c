"""Conversion of plain torch layers to their prunable twins, in place."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune as torch_prune

from prunable_nn import PBatchNorm2d, PConv2d, PLinear, PrunableLayer, TaylorPruner, convert


class ScaledConv(nn.Conv2d):
    """A convolution subclass with a forward of its own."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * super().forward(x)


class Shared(nn.Module):
    """A conv registered under two names, a batch norm, two Linear and Conv2d subclasses and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.alias = self.conv
        self.norm = nn.BatchNorm2d(4)
        self.special = nn.modules.linear.NonDynamicallyQuantizableLinear(4, 4)
        self.scaled = ScaledConv(3, 4, 1)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 5 * 5, 3))


def test_convert_swaps_exact_torch_layers_in_place_sharing_their_tensors_and_hooks():
    model = Shared()
    conv_weight, linear_weight, running_mean = model.conv.weight, model.head[1].weight, model.norm.running_mean
    calls = []
    model.norm.register_forward_hook(lambda module, args, output: calls.append(module))
    assert convert(model) is model

    assert type(model.conv) is PConv2d and model.alias is model.conv
    assert type(model.norm) is PBatchNorm2d and type(model.head[1]) is PLinear
    # A subclass with no method of its own computes what its base does: it gets a twin of its class.
    assert isinstance(model.special, PrunableLayer)
    assert type(model.special).torch_class is nn.modules.linear.NonDynamicallyQuantizableLinear
    assert type(model.scaled) is ScaledConv  # one with its own forward stays as it is
    assert model.conv.weight is conv_weight and model.head[1].weight is linear_weight
    assert model.norm.running_mean is running_mean
    model.norm(torch.randn(2, 4, 5, 5))
    assert calls == [model.norm]


def test_converting_twice_changes_nothing_more():
    model = convert(nn.Sequential(nn.Conv2d(1, 2, 1), nn.ReLU()))
    layer = model[0]
    convert(model)
    assert model[0] is layer


def test_an_optimizer_made_before_the_pruner_keeps_training_after_a_prune():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(inplace=True),
        nn.Conv2d(6, 5, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    inputs, labels = torch.randn(8, 2, 6, 6), torch.randint(0, 3, (8,))
    pruner = TaylorPruner(model, inputs)
    for _ in range(2):
        optimizer.zero_grad()
        F.cross_entropy(model(inputs), labels).backward()
        optimizer.step()
    pruner.prune(3, optimizer=optimizer)
    assert model[0].weight.shape[0] + model[3].weight.shape[0] == 11 - 3
    for param in model.parameters():
        assert optimizer.state[param]["momentum_buffer"].shape == param.shape
    optimizer.zero_grad()
    F.cross_entropy(model(inputs), labels).backward()
    optimizer.step()


def test_a_pruner_that_cannot_run_the_model_leaves_it_as_it_was():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.SiLU(inplace=True), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(1, 3, 5, 5))
    layers = list(model)
    state = {name: value.clone() for name, value in model.state_dict().items()}
    with pytest.raises(RuntimeError, match=r"running Sequential on example_inputs failed: .*channels"):
        TaylorPruner(model, torch.randn(1, 2, 5, 5))  # 2 channels, the conv takes 3
    assert list(model) == layers
    assert [type(layer) for layer in model] == [nn.Conv2d, nn.BatchNorm2d, nn.SiLU, nn.Flatten, nn.Linear]
    assert model[2].inplace
    assert all(torch.equal(model.state_dict()[name], value) for name, value in state.items())


def test_the_report_names_every_layer_kept_as_it_is_with_its_reason():
    """A subclass with its own forward, a layer holding a tensor its kind does not slice
    (``torch.nn.utils.prune``'s mask) and a layer norm across the channels all stay."""
    torch.manual_seed(0)
    masked = nn.Conv2d(4, 4, 1)
    torch_prune.l1_unstructured(masked, "weight", amount=0.5)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), ScaledConv(4, 4, 1), nn.ReLU(), masked, nn.ReLU(),
        nn.Conv2d(4, 4, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.LayerNorm(4), nn.Linear(4, 3),
    )
    pruner = TaylorPruner(model, torch.randn(2, 3, 5, 5))
    lines = {line.split(":")[0].strip(): line for line in pruner.report().splitlines()}
    assert "ScaledConv kept as it is" in lines["1"] and "overrides forward" in lines["1"]
    assert "Conv2d kept as it is" in lines["3"] and "'weight_mask', 'weight_orig'" in lines["3"]
    assert "LayerNorm kept as it is" in lines["8"] and "normalises across its channels" in lines["8"]
    assert type(model[1]) is ScaledConv and type(model[3]) is nn.Conv2d and type(model[8]) is nn.LayerNorm
    reasons = {frozen.name: frozen.reason for frozen in pruner.frozen}  # the chains into them stay, saying why
    assert "overrides forward" in reasons["0"] and "LayerNorm" in reasons["5"]


def test_a_group_norm_of_one_group_freezes_its_chain_and_says_why():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(1, 4), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    pruner = TaylorPruner(model, torch.randn(2, 3, 5, 5))
    assert [chain.name for chain in pruner.chains] == ["3"]
    assert "of one group normalises all its channels together" in {f.name: f.reason for f in pruner.frozen}["0"]
