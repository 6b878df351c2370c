"""The prunable layers one at a time: the layers with and without their options, conversion
to and from plain torch, and training on after a removal while the last loss still holds the
old graph."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from layer_cases import (
    DOUBLE,
    OPTIMIZERS,
    SIZE_ATTRIBUTES,
    assert_equal,
    channel_mask,
    map_input,
    no_grad_forward,
    randomized,
    run_backward,
)
from torch import nn
from torch.testing import assert_close

from prunable_nn import PBatchNorm2d, PConv2d, PLinear, PrunableLayer


# -- the three layers, with and without their options ---------------------------------------------
@dataclass(frozen=True)
class LayerCase:
    make: Callable[[type[nn.Module]], nn.Module]  # the constructor call, for either class
    torch_class: type[nn.Module]
    prunable_class: type[PrunableLayer]
    input: Callable[[nn.Module], torch.Tensor]  # a batch of the layer's current input size




CONV_INPUT = lambda layer: map_input(layer.in_channels)  # noqa: E731
BN_INPUT = lambda layer: map_input(layer.num_features, size=3)  # noqa: E731
LINEAR_INPUT = lambda layer: torch.randn(3, layer.in_features, dtype=DOUBLE)  # noqa: E731

LAYER_CASES = {
    "conv": LayerCase(lambda cls: cls(3, 4, 3, padding=1, dtype=DOUBLE), nn.Conv2d, PConv2d, CONV_INPUT),
    "conv, no bias, stride 2, reflect": LayerCase(
        lambda cls: cls(3, 4, 3, stride=2, padding=1, bias=False, padding_mode="reflect", dtype=DOUBLE),
        nn.Conv2d, PConv2d, CONV_INPUT,
    ),
    "batchnorm": LayerCase(lambda cls: cls(4, dtype=DOUBLE), nn.BatchNorm2d, PBatchNorm2d, BN_INPUT),
    "batchnorm, not affine": LayerCase(
        lambda cls: cls(4, affine=False, dtype=DOUBLE), nn.BatchNorm2d, PBatchNorm2d, BN_INPUT
    ),
    "batchnorm, no running stats": LayerCase(
        lambda cls: cls(4, track_running_stats=False, dtype=DOUBLE), nn.BatchNorm2d, PBatchNorm2d, BN_INPUT
    ),
    "linear": LayerCase(lambda cls: cls(6, 4, dtype=DOUBLE), nn.Linear, PLinear, LINEAR_INPUT),
    "linear, no bias": LayerCase(
        lambda cls: cls(6, 4, bias=False, dtype=DOUBLE), nn.Linear, PLinear, LINEAR_INPUT
    ),
}
layer_cases = pytest.mark.parametrize("case", LAYER_CASES.values(), ids=LAYER_CASES.keys())




def outputs_in_both_modes(layer: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Eval, then training mode (which moves a batchnorm's running statistics)."""
    outputs = []
    for training in (False, True):
        layer.train(training)
        outputs.append(no_grad_forward(layer, x))
    layer.train()
    return outputs


# -- conversion ---------------------------------------------------------------------------------------
@layer_cases
def test_plain_state_dict_loads_into_the_twin_and_back(case):
    torch.manual_seed(0)
    plain = randomized(case.make(case.torch_class))
    twin = case.make(case.prunable_class)
    twin.load_state_dict(plain.state_dict())  # strict
    assert_equal(twin.state_dict(), plain.state_dict())

    x = case.input(twin)
    run_backward(twin, x)
    assert twin.taylor_estimates is not None
    assert list(twin.state_dict()) == list(plain.state_dict())  # the estimates are not persistent

    back = case.make(case.torch_class)
    back.load_state_dict(twin.state_dict())  # strict
    assert_equal(back.state_dict(), twin.state_dict())
    assert_equal(outputs_in_both_modes(back, x), outputs_in_both_modes(twin, x))


@layer_cases
def test_from_module_shares_the_parameters_and_computes_the_same(case):
    torch.manual_seed(0)
    plain = randomized(case.make(case.torch_class))
    twin = case.prunable_class.from_module(plain)
    assert type(twin) is case.prunable_class
    for name, param in plain.named_parameters():
        assert twin.get_parameter(name) is param
    for name, buffer in plain.named_buffers():
        assert twin.get_buffer(name) is buffer
    assert twin.taylor_estimates is None

    x = case.input(plain)
    for training in (False, True):  # one mode at a time: the running statistics are shared
        assert_equal(no_grad_forward(twin.train(training), x), no_grad_forward(plain.train(training), x))
    run_backward(twin, x)
    assert twin.examples_seen == 3
    assert twin.taylor_estimates.shape == (twin.num_output_channels,)


@pytest.mark.parametrize(
    ("prunable_class", "module"),
    [(PConv2d, nn.Conv1d(3, 3, 1)), (PBatchNorm2d, nn.BatchNorm1d(3)), (PLinear, nn.Conv2d(3, 3, 1))],
    ids=["Conv1d into PConv2d", "BatchNorm1d into PBatchNorm2d", "Conv2d into PLinear"],
)
def test_from_module_rejects_another_class(prunable_class, module):
    with pytest.raises(TypeError, match=f"{prunable_class.__name__}.*{type(module).__name__}"):
        prunable_class.from_module(module)


def test_from_module_does_not_tie_the_twins_buffer_bookkeeping_to_the_original():
    """The twin copies the original's dicts but shares its set of non-persistent buffer
    names, so registering a buffer on one changes what the other saves."""
    plain = nn.Conv2d(2, 3, 1)
    twin = PConv2d.from_module(plain)
    twin.register_buffer("mask", torch.ones(3), persistent=False)
    plain.register_buffer("mask", torch.ones(3))
    assert "mask" in list(plain.state_dict())
    assert "mask" not in list(twin.state_dict())


@layer_cases
def test_to_torch_returns_the_exact_torch_class_with_the_current_shapes(case):
    torch.manual_seed(0)
    twin = randomized(case.make(case.prunable_class))
    run_backward(twin, case.input(twin))
    twin.drop_output([1])
    twin.drop_input([0])
    first = next(twin.parameters(), None)
    if first is not None:
        first.requires_grad_(False)

    plain = twin.to_torch()
    assert type(plain) is case.torch_class
    assert plain.training
    assert {name: getattr(plain, name) for name in SIZE_ATTRIBUTES if hasattr(plain, name)} == {
        name: getattr(twin, name) for name in SIZE_ATTRIBUTES if hasattr(twin, name)
    }
    assert_equal(plain.state_dict(), twin.state_dict())
    assert {n: p.requires_grad for n, p in plain.named_parameters()} == {
        n: p.requires_grad for n, p in twin.named_parameters()
    }
    x = case.input(twin)
    assert_equal(outputs_in_both_modes(plain, x), outputs_in_both_modes(twin, x))

    # independent tensors: changing the copy leaves the twin as it was
    saved = {key: value.clone() for key, value in twin.state_dict().items()}
    with torch.no_grad():
        for tensor in plain.state_dict().values():
            tensor.zero_()
    assert_equal(twin.state_dict(), saved)
    assert not twin.eval().to_torch().training


# -- the user's loop: the last loss still holds the old graph -----------------------------------------
def small_convnet() -> nn.Sequential:
    return nn.Sequential(
        PConv2d(3, 6, 3, padding=1, dtype=DOUBLE),
        PBatchNorm2d(6, dtype=DOUBLE),
        nn.ReLU(inplace=True),
        nn.Flatten(),
        PLinear(6 * 4 * 4, 5, dtype=DOUBLE),
    )


def classification_step(model: Callable, optimizer: torch.optim.Optimizer, x, target) -> torch.Tensor:
    optimizer.zero_grad()
    loss = F.cross_entropy(model(x), target)
    loss.backward()
    optimizer.step()
    return loss


@pytest.mark.parametrize(
    "make_optimizer", [OPTIMIZERS["SGD momentum"], OPTIMIZERS["Adam"]], ids=["SGD momentum", "Adam"]
)
def test_training_goes_on_after_a_drop_while_the_last_loss_is_alive(make_optimizer):
    torch.manual_seed(0)
    model = small_convnet()
    reference = copy.deepcopy(model)
    optimizer = make_optimizer(model.parameters())
    reference_optimizer = make_optimizer(reference.parameters())
    x = torch.randn(8, 3, 4, 4, dtype=DOUBLE)
    target = torch.randint(0, 5, (8,))
    for _ in range(2):
        loss = classification_step(model, optimizer, x, target)
        classification_step(reference, reference_optimizer, x, target)
    assert loss.grad_fn is not None  # the old graph is alive while channels go

    conv, bn, linear = model[0], model[1], model[4]
    conv.drop_output([4, 1], optimizer)
    bn.drop_output([4, 1], optimizer)
    linear.drop_input([4, 1], optimizer, features_per_channel=16)

    keep = torch.tensor([0, 2, 3, 5])
    features = (keep[:, None] * 16 + torch.arange(16)).flatten()
    mask = channel_mask(6, keep)[:, None, None]
    masked = lambda x: reference[3:](reference[:3](x) * mask)  # noqa: E731
    for _ in range(3):
        loss = classification_step(model, optimizer, x, target)
        assert_close(loss, classification_step(masked, reference_optimizer, x, target))

    assert_close(conv.weight, reference[0].weight[keep])
    assert_close(conv.bias, reference[0].bias[keep])
    for name in ("weight", "bias", "running_mean", "running_var"):
        assert_close(getattr(bn, name), getattr(reference[1], name)[keep], msg=name)
    assert_close(linear.weight, reference[4].weight[:, features])
    assert_close(linear.bias, reference[4].bias)
    assert bn.taylor_estimates.shape == (4,)
    model.eval()
    reference.eval()
    assert_close(no_grad_forward(model, x), no_grad_forward(masked, x))
