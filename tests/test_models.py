"""The prunable model definitions: DigitsNet and the VGG layouts build, run, and prune."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from models import VGG, VGG_LAYOUTS, DigitsNet
from nets import (
    assert_matches_masked_reference,
    assert_shapes_follow_sizes,
    chain_readers,
    set_estimates,
)
from prunable_nn import TaylorPruner, count_flops, count_parameters


def train_step(model, optimizer, inputs, labels) -> float:
    model.train()
    optimizer.zero_grad()
    loss = F.cross_entropy(model(inputs), labels)
    loss.backward()
    optimizer.step()
    return loss.item()


def test_digits_net_output_shape_and_prunables():
    torch.manual_seed(0)
    model = DigitsNet()
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    assert model.num_prunables == 57  # three chains of 20 channels, one of each stays


def test_digits_net_prune_reduces_parameters_and_flops():
    torch.manual_seed(0)
    model = DigitsNet()
    inputs, labels = torch.randn(8, 1, 28, 28), torch.randint(10, (8,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    train_step(model, optimizer, inputs, labels)
    parameters, flops = count_parameters(model), count_flops(model, inputs[:1])

    removals = model.prune(max_to_prune=6, optimizer=optimizer)

    assert sum(len(r.indices) for r in removals) == 6
    assert model.num_prunables == 57 - 6
    assert count_parameters(model) < parameters
    assert count_flops(model, inputs[:1]) < flops
    assert model(inputs).shape == (8, 10)
    assert torch.isfinite(torch.tensor(train_step(model, optimizer, inputs, labels)))


def test_digits_net_prune_with_a_flops_budget_stops_at_the_first_unit_that_reaches_it():
    torch.manual_seed(0)
    model = DigitsNet()
    inputs, labels = torch.randn(8, 1, 28, 28), torch.randint(10, (8,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    train_step(model, optimizer, inputs, labels)
    removals = model.prune(None, optimizer, flops=1.0)  # any one unit takes more than one FLOP
    assert sum(len(r.indices) for r in removals) == 1 and model.num_prunables == 57 - 1


def test_prunable_module_refuses_a_pruner_of_another_model():
    model = DigitsNet(width=4)
    with pytest.raises(ValueError, match="another model"):
        model.pruner = TaylorPruner(DigitsNet(width=4))
    own = TaylorPruner(model, normalize=False)
    model.pruner = own
    assert model.pruner is own


VGG_CASES = [
    pytest.param(layout, in_channels, size, batch, id=f"{layout}-{in_channels}x{size}x{size}")
    for layout in ("vgg11", "vgg16")
    for in_channels, size, batch in ((1, 28, 4), (3, 32, 4), (3, 224, 1))
]


@pytest.mark.parametrize("layout, in_channels, size, batch", VGG_CASES)
def test_vgg_builds_runs_and_prunes_hidden_units(layout, in_channels, size, batch):
    torch.manual_seed(0)
    model = VGG(layout, num_classes=10, in_channels=in_channels, input_size=size, width=0.125, hidden=16)
    inputs, labels = torch.randn(batch, in_channels, size, size), torch.randint(10, (batch,))
    assert model(inputs).shape == (batch, 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    train_step(model, optimizer, inputs, labels)
    pruner = model.pruner
    names = [chain.name for chain in pruner.chains]
    assert names[-2:] == ["classifier.1", "classifier.4"]
    assert len(names) == sum(isinstance(item, int) for item in VGG_LAYOUTS[layout]) + 2
    for chain in pruner.chains:
        assert chain.estimates().shape == (chain.num_channels,), chain.name

    # every channel scores at least 0.5 before normalisation, but three hidden units score 0
    generator = torch.Generator().manual_seed(1)
    hidden_zeros = {"classifier.1": [2, 9], "classifier.4": [5]}
    for chain in pruner.chains:
        values = torch.rand(chain.num_channels, generator=generator) + 0.5
        values[hidden_zeros.get(chain.name, [])] = 0.0
        set_estimates(chain, values.tolist())
    reference, readers = copy.deepcopy(model), chain_readers(pruner)
    parameters, flops = count_parameters(model), count_flops(model, inputs[:1])

    removals = model.prune(max_to_prune=8, optimizer=optimizer)

    removed = {r.chain: set(r.original_indices) for r in removals}
    assert sum(len(channels) for channels in removed.values()) == 8
    for chain, zeros in hidden_zeros.items():
        assert set(zeros) <= removed[chain]
    assert model.classifier[1].out_features == 16 - len(removed["classifier.1"])
    assert model.classifier[4].in_features == 16 - len(removed["classifier.1"])
    assert model.classifier[4].out_features == 16 - len(removed["classifier.4"])
    assert model.classifier[7].in_features == 16 - len(removed["classifier.4"])
    assert_shapes_follow_sizes(model)
    assert count_parameters(model) < parameters
    assert count_flops(model, inputs[:1]) < flops
    assert_matches_masked_reference(model, reference, readers, removed, inputs)
    assert torch.isfinite(torch.tensor(train_step(model, optimizer, inputs, labels)))


def test_vgg_224_classifier_reads_7x7_blocks():
    model = VGG("vgg11", in_channels=3, input_size=224, width=0.125, hidden=16)
    last_conv = model.pruner.chains[-3]
    assert [(c.layer.name_in_model, c.features_per_channel) for c in last_conv.consumers] == [("classifier.1", 49)]
    assert model.classifier[1].in_features == 64 * 49


def test_vgg_unknown_layout_raises():
    with pytest.raises(ValueError, match="unknown VGG layout 'vgg19'"):
        VGG("vgg19")
