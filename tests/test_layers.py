"""The prunable layers one at a time: conversion to and from plain torch, removal of channels
(property tests against masking), bad indices, optimizer state surgery, and training on after
a removal while the last loss still holds the old graph.
"""

from __future__ import annotations

import copy
import functools
import re
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.testing import assert_close

from prunable_nn import PBatchNorm2d, PConv2d, PLinear, PrunableLayer

DOUBLE = torch.float64
SIZE_ATTRIBUTES = ("in_channels", "out_channels", "groups", "num_features", "in_features", "out_features")
assert_equal = functools.partial(assert_close, rtol=0, atol=0)

INDEX_FORMATS = st.sampled_from([list, tuple, torch.tensor, np.array])
CONV_CONFIGS = st.fixed_dictionaries(
    {
        "kernel_size": st.integers(1, 3),
        "stride": st.integers(1, 2),
        "padding": st.integers(0, 1),
        "dilation": st.integers(1, 2),
        "bias": st.booleans(),
    }
)


# -- helpers ----------------------------------------------------------------------------------------
def run_backward(layer: nn.Module, x: torch.Tensor) -> None:
    """One training backward pass: fills ``.grad`` and the layer's estimates (the input
    requires grad so that a layer without parameters records too)."""
    out = layer(x.detach().requires_grad_())
    (out * torch.randn_like(out)).sum().backward()


def no_grad_forward(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return layer(x)


def channels_to_drop(data: st.DataObject, size: int) -> list[int]:
    """Distinct channels of ``range(size)``, in any order, at least one and not all."""
    return data.draw(
        st.lists(st.integers(0, size - 1), min_size=1, max_size=size - 1, unique=True), label="drop"
    )


def kept(size: int, drop: list[int]) -> torch.Tensor:
    return torch.tensor([k for k in range(size) if k not in drop], dtype=torch.long)


class Before(NamedTuple):
    """A layer's parameters (the objects and clones of their values and gradients) and estimates."""

    objects: dict[str, nn.Parameter]
    values: dict[str, torch.Tensor]
    grads: dict[str, torch.Tensor]
    estimates: torch.Tensor

    @classmethod
    def of(cls, layer: PrunableLayer) -> Before:
        params = dict(layer.named_parameters())
        return cls(
            objects=params,
            values={name: p.detach().clone() for name, p in params.items()},
            grads={name: p.grad.clone() for name, p in params.items()},
            estimates=layer.taylor_estimates.clone(),
        )


def assert_parameters_follow(
    layer: PrunableLayer, before: Before, dims: dict[str, int], keep: torch.Tensor
) -> None:
    """Every parameter is the same object; its value and ``.grad`` are the old ones sliced at
    ``keep`` along ``dims[name]`` (unchanged when the name is not in ``dims``)."""
    params = dict(layer.named_parameters())
    assert params.keys() == before.objects.keys()
    for name, param in params.items():
        assert param is before.objects[name], f"{name} is a new Parameter object"
        dim = dims.get(name)
        pairs = {name: (param.detach(), before.values[name]), f"{name}.grad": (param.grad, before.grads[name])}
        for what, (now, old) in pairs.items():
            expected = old if dim is None else old.index_select(dim, keep)
            assert_equal(now, expected, msg=lambda m, what=what: f"{what}: {m}")


def snapshot(layer: PrunableLayer) -> dict:
    """Everything a failed drop must leave as it was."""
    return {
        "sizes": {name: getattr(layer, name) for name in SIZE_ATTRIBUTES if hasattr(layer, name)},
        "state": {key: value.clone() for key, value in layer.state_dict().items()},
        "grads": {name: p.grad.clone() for name, p in layer.named_parameters() if p.grad is not None},
        "estimates": layer.taylor_estimates.clone(),
        "examples": layer.examples_seen,
    }


# -- the three layers, with and without their options ---------------------------------------------
@dataclass(frozen=True)
class LayerCase:
    make: Callable[[type[nn.Module]], nn.Module]  # the constructor call, for either class
    torch_class: type[nn.Module]
    prunable_class: type[PrunableLayer]
    input: Callable[[nn.Module], torch.Tensor]  # a batch of the layer's current input size


def map_input(channels: int, size: int = 5) -> torch.Tensor:
    return torch.randn(3, channels, size, size, dtype=DOUBLE)


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


def randomized(module: nn.Module) -> nn.Module:
    """``module`` with every floating-point parameter and buffer drawn at random (positive,
    so that running variances stay valid)."""
    with torch.no_grad():
        for tensor in module.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand_like(tensor) + 0.5)
    return module


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


# -- removal: property tests against masking ----------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(
    data=st.data(),
    in_channels=st.integers(1, 4),
    out_channels=st.integers(2, 6),
    config=CONV_CONFIGS,
    as_indices=INDEX_FORMATS,
)
def test_conv_drop_output_is_the_output_without_those_channels(
    data, in_channels, out_channels, config, as_indices
):
    torch.manual_seed(0)
    conv = PConv2d(in_channels, out_channels, dtype=DOUBLE, **config)
    x = map_input(in_channels, size=7)
    run_backward(conv, x)
    before = Before.of(conv)
    expected = no_grad_forward(conv, x)

    drop = channels_to_drop(data, out_channels)
    keep = kept(out_channels, drop)
    conv.drop_output(as_indices(drop))

    assert (conv.in_channels, conv.out_channels, conv.groups) == (in_channels, len(keep), 1)
    assert_parameters_follow(conv, before, {"weight": 0, "bias": 0}, keep)
    assert_equal(conv.taylor_estimates, before.estimates[keep])
    assert_close(no_grad_forward(conv, x), expected[:, keep])


@settings(max_examples=40, deadline=None)
@given(
    data=st.data(),
    in_channels=st.integers(2, 6),
    out_channels=st.integers(1, 4),
    config=CONV_CONFIGS,
    as_indices=INDEX_FORMATS,
)
def test_conv_drop_input_equals_zeroing_those_input_channels(
    data, in_channels, out_channels, config, as_indices
):
    torch.manual_seed(0)
    conv = PConv2d(in_channels, out_channels, dtype=DOUBLE, **config)
    x = map_input(in_channels, size=7)
    run_backward(conv, x)
    before = Before.of(conv)

    drop = channels_to_drop(data, in_channels)
    keep = kept(in_channels, drop)
    masked = x.clone()
    masked[:, drop] = 0
    expected = no_grad_forward(conv, masked)
    conv.drop_input(as_indices(drop))

    assert (conv.in_channels, conv.out_channels, conv.groups) == (len(keep), out_channels, 1)
    assert_parameters_follow(conv, before, {"weight": 1}, keep)
    assert_equal(conv.taylor_estimates, before.estimates)  # output channels are untouched
    assert_close(no_grad_forward(conv, x[:, keep]), expected)


@settings(max_examples=40, deadline=None)
@given(
    data=st.data(),
    channels=st.integers(2, 6),
    affine=st.booleans(),
    track_running_stats=st.booleans(),
    method=st.sampled_from(["drop_output", "drop_input"]),
    as_indices=INDEX_FORMATS,
)
def test_batchnorm_drop_is_the_output_without_those_channels(
    data, channels, affine, track_running_stats, method, as_indices
):
    torch.manual_seed(0)
    bn = PBatchNorm2d(channels, affine=affine, track_running_stats=track_running_stats, dtype=DOUBLE)
    randomized(bn)
    scale, shift = torch.rand(channels, 1, 1, dtype=DOUBLE), torch.randn(channels, 1, 1, dtype=DOUBLE)
    x = map_input(channels, size=3) * scale + shift
    run_backward(bn, x)  # also moves the running statistics
    reference = copy.deepcopy(bn)
    before = Before.of(bn)

    drop = channels_to_drop(data, channels)
    keep = kept(channels, drop)
    getattr(bn, method)(as_indices(drop))

    assert bn.num_features == len(keep)
    assert_parameters_follow(bn, before, {"weight": 0, "bias": 0}, keep)
    assert_equal(bn.taylor_estimates, before.estimates[keep])
    for training in (True, False):  # a training forward updates the running stats of both
        bn.train(training)
        reference.train(training)
        assert_close(no_grad_forward(bn, x[:, keep]), no_grad_forward(reference, x)[:, keep])
        if track_running_stats:
            assert_close(bn.running_mean, reference.running_mean[keep])
            assert_close(bn.running_var, reference.running_var[keep])
            assert_equal(bn.num_batches_tracked, reference.num_batches_tracked)
        else:
            assert bn.running_mean is None and bn.running_var is None


@settings(max_examples=40, deadline=None)
@given(
    data=st.data(),
    in_features=st.integers(1, 5),
    out_features=st.integers(2, 6),
    bias=st.booleans(),
    sequence=st.booleans(),
    as_indices=INDEX_FORMATS,
)
def test_linear_drop_output_is_the_output_without_those_features(
    data, in_features, out_features, bias, sequence, as_indices
):
    torch.manual_seed(0)
    linear = PLinear(in_features, out_features, bias=bias, dtype=DOUBLE)
    x = torch.randn((2, 3, in_features) if sequence else (2, in_features), dtype=DOUBLE)
    run_backward(linear, x)
    before = Before.of(linear)
    expected = no_grad_forward(linear, x)

    drop = channels_to_drop(data, out_features)
    keep = kept(out_features, drop)
    linear.drop_output(as_indices(drop))

    assert (linear.in_features, linear.out_features) == (in_features, len(keep))
    assert_parameters_follow(linear, before, {"weight": 0, "bias": 0}, keep)
    assert_equal(linear.taylor_estimates, before.estimates[keep])
    assert_close(no_grad_forward(linear, x), expected[..., keep])


@settings(max_examples=40, deadline=None)
@given(
    data=st.data(),
    channels=st.integers(2, 5),
    features_per_channel=st.integers(1, 4),
    out_features=st.integers(1, 3),
    bias=st.booleans(),
    as_indices=INDEX_FORMATS,
)
def test_linear_drop_input_equals_zeroing_those_channels_of_a_flattened_map(
    data, channels, features_per_channel, out_features, bias, as_indices
):
    torch.manual_seed(0)
    linear = PLinear(channels * features_per_channel, out_features, bias=bias, dtype=DOUBLE)
    feature_map = torch.randn(2, channels, features_per_channel, dtype=DOUBLE)  # (N, C, H * W)
    run_backward(linear, feature_map.flatten(1))
    before = Before.of(linear)

    drop = channels_to_drop(data, channels)
    keep = kept(channels, drop)
    masked = feature_map.clone()
    masked[:, drop] = 0
    expected = no_grad_forward(linear, masked.flatten(1))
    linear.drop_input(as_indices(drop), features_per_channel=features_per_channel)

    kept_features = torch.tensor(
        [k * features_per_channel + j for k in keep.tolist() for j in range(features_per_channel)]
    )
    assert (linear.in_features, linear.out_features) == (len(kept_features), out_features)
    assert_parameters_follow(linear, before, {"weight": 1}, kept_features)
    assert_equal(linear.taylor_estimates, before.estimates)
    assert_close(no_grad_forward(linear, feature_map[:, keep].flatten(1)), expected)


@settings(max_examples=40, deadline=None)
@given(
    data=st.data(),
    channels=st.integers(2, 6),
    config=CONV_CONFIGS,
    method=st.sampled_from(["drop_output", "drop_input"]),
    as_indices=INDEX_FORMATS,
)
def test_depthwise_conv_drops_its_inputs_and_outputs_together(data, channels, config, method, as_indices):
    torch.manual_seed(0)
    conv = PConv2d(channels, channels, groups=channels, dtype=DOUBLE, **config)
    x = map_input(channels, size=7)
    run_backward(conv, x)
    before = Before.of(conv)
    expected = no_grad_forward(conv, x)

    drop = channels_to_drop(data, channels)
    keep = kept(channels, drop)
    getattr(conv, method)(as_indices(drop))

    assert (conv.in_channels, conv.out_channels, conv.groups) == (len(keep),) * 3
    assert_parameters_follow(conv, before, {"weight": 0, "bias": 0}, keep)
    assert_equal(conv.taylor_estimates, before.estimates[keep])
    assert_close(no_grad_forward(conv, x[:, keep]), expected[:, keep])


# -- bad indices --------------------------------------------------------------------------------------
FOUR_IN_FOUR_OUT = {
    "PConv2d": lambda: PConv2d(4, 4, 3),
    "PBatchNorm2d": lambda: PBatchNorm2d(4),
    "PLinear": lambda: PLinear(4, 4),
}
BAD_INDICES = {  # id: (indices, error, text that must name the bad value)
    "out of range": ([0, 7], IndexError, r"\[7\]"),
    "negative": ([-1], IndexError, r"\[-1\]"),
    "duplicates": ([2, 0, 2], ValueError, r"\[2\]"),
    "float": ([1.0], TypeError, r"1\.0"),
    "float among ints": ([1, 2.5], TypeError, r"2\.5"),
    "float tensor": (torch.tensor([1.0]), TypeError, "float32"),
    "bool": ([True], TypeError, "True"),
    "string": ("12", TypeError, "'12'"),
    "list of strings": (["1"], TypeError, "'1'"),
    "empty": ([], ValueError, r"empty|\[\]"),
    "all channels": ([3, 2, 1, 0], ValueError, "all 4"),
    "all channels as a tensor": (torch.arange(4), ValueError, "all 4"),
}


def prepared(layer: PrunableLayer) -> PrunableLayer:
    """``layer`` with gradients and estimates, as in the middle of training."""
    x = torch.randn(2, 4, 5, 5) if not isinstance(layer, PLinear) else torch.randn(2, 4)
    run_backward(layer, x)
    return layer


@pytest.mark.parametrize("method", ["drop_output", "drop_input"])
@pytest.mark.parametrize("make", FOUR_IN_FOUR_OUT.values(), ids=FOUR_IN_FOUR_OUT.keys())
@pytest.mark.parametrize(("indices", "error", "named"), BAD_INDICES.values(), ids=BAD_INDICES.keys())
def test_bad_indices_raise_naming_layer_and_value_and_change_nothing(make, method, indices, error, named):
    torch.manual_seed(0)
    layer = prepared(make())
    layer.name_in_model = "block.3"
    before = snapshot(layer)
    with pytest.raises(error) as raised:
        getattr(layer, method)(indices)
    message = str(raised.value)
    assert f"{type(layer).__name__} 'block.3'" in message
    assert re.search(named, message), message
    assert_equal(snapshot(layer), before)


def test_an_unnamed_layer_is_described_by_its_configuration():
    layer = prepared(PConv2d(4, 4, 3, stride=2))
    with pytest.raises(IndexError, match=r"PConv2d\(4, 4, kernel_size=\(3, 3\), stride=\(2, 2\).*\[9\]"):
        layer.drop_output([9])


@pytest.mark.parametrize(
    ("make", "features_per_channel"),
    [(lambda: PLinear(12, 3), 5), (lambda: PLinear(12, 3), 0), (lambda: PConv2d(4, 4, 3), 4)],
    ids=["PLinear 12 features in blocks of 5", "PLinear blocks of 0", "PConv2d"],
)
def test_features_per_channel_that_does_not_fit_raises_and_changes_nothing(make, features_per_channel):
    torch.manual_seed(0)
    layer = make()
    layer.name_in_model = "head"
    x = torch.randn(2, 12) if isinstance(layer, PLinear) else torch.randn(2, 4, 5, 5)
    run_backward(layer, x)
    before = snapshot(layer)
    with pytest.raises(ValueError, match=rf"'head'.*features_per_channel={features_per_channel}"):
        layer.drop_input([0], features_per_channel=features_per_channel)
    assert_equal(snapshot(layer), before)


def test_a_drop_that_fails_part_way_leaves_the_layer_unchanged():
    """The resize refuses a parameter that has weak references (surgery.py), which is only
    found out after the weight was resized and the gradients were taken off."""
    torch.manual_seed(0)
    conv = prepared(PConv2d(4, 4, 3))
    before = snapshot(conv)
    observer = weakref.ref(conv.bias)
    try:
        conv.drop_output([1])
    except RuntimeError:
        assert conv.weight.shape[0] == conv.bias.shape[0] == conv.out_channels == 4
        assert_equal(snapshot(conv), before)
    else:
        assert conv.weight.shape[0] == conv.bias.shape[0] == conv.out_channels == 3
    assert observer() is conv.bias


# -- optimizer state ----------------------------------------------------------------------------------
OPTIMIZERS = {
    "SGD momentum": lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9),
    "Adam": lambda params: torch.optim.Adam(params, lr=0.05),
    "Adam amsgrad": lambda params: torch.optim.Adam(params, lr=0.05, amsgrad=True),
}
PER_ELEMENT_STATE = {"momentum_buffer", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
optimizers = pytest.mark.parametrize("make_optimizer", OPTIMIZERS.values(), ids=OPTIMIZERS.keys())

KEEP = torch.tensor([0, 2, 4])  # of 5 channels: the surgeries drop [3, 1]
KEEP_FEATURES = torch.tensor([0, 1, 2, 6, 7, 8, 12, 13, 14])  # the same channels, 3 features each


def channel_mask(size: int, keep: torch.Tensor) -> torch.Tensor:
    mask = torch.zeros(size, dtype=DOUBLE)
    mask[keep] = 1
    return mask


@dataclass(frozen=True)
class Surgery:
    """One drop on one layer, and two ways to compute the same function afterwards."""

    make: Callable[[], PrunableLayer]
    input_shape: tuple[int, ...]
    drop: Callable[[PrunableLayer, torch.optim.Optimizer], None]
    dims: dict[str, int]  # parameter -> the dim its slices KEEP (or KEEP_FEATURES) are taken along
    keep: torch.Tensor
    pruned_forward: Callable[[PrunableLayer, torch.Tensor], torch.Tensor]
    masked_forward: Callable[[PrunableLayer, torch.Tensor], torch.Tensor]  # the unpruned layer


SURGERIES = {
    "conv outputs": Surgery(
        lambda: PConv2d(3, 5, 3, padding=1, dtype=DOUBLE), (4, 3, 5, 5),
        lambda layer, opt: layer.drop_output([3, 1], opt), {"weight": 0, "bias": 0}, KEEP,
        lambda layer, x: layer(x), lambda layer, x: layer(x)[:, KEEP],
    ),
    "conv inputs": Surgery(
        lambda: PConv2d(5, 4, 3, dtype=DOUBLE), (4, 5, 5, 5),
        lambda layer, opt: layer.drop_input([3, 1], opt), {"weight": 1}, KEEP,
        lambda layer, x: layer(x[:, KEEP]),
        lambda layer, x: layer(x * channel_mask(5, KEEP)[:, None, None]),
    ),
    "batchnorm": Surgery(
        lambda: PBatchNorm2d(5, dtype=DOUBLE), (4, 5, 3, 3),
        lambda layer, opt: layer.drop_output([3, 1], opt), {"weight": 0, "bias": 0}, KEEP,
        lambda layer, x: layer(x[:, KEEP]), lambda layer, x: layer(x)[:, KEEP],
    ),
    "linear outputs": Surgery(
        lambda: PLinear(6, 5, dtype=DOUBLE), (4, 6),
        lambda layer, opt: layer.drop_output([3, 1], opt), {"weight": 0, "bias": 0}, KEEP,
        lambda layer, x: layer(x), lambda layer, x: layer(x)[:, KEEP],
    ),
    "linear inputs, 3 features per channel": Surgery(
        lambda: PLinear(15, 4, dtype=DOUBLE), (4, 15),
        lambda layer, opt: layer.drop_input([3, 1], opt, features_per_channel=3),
        {"weight": 1},
        KEEP_FEATURES,
        lambda layer, x: layer(x[:, KEEP_FEATURES]),
        lambda layer, x: layer(x * channel_mask(15, KEEP_FEATURES)),
    ),
}
surgeries = pytest.mark.parametrize("surgery", SURGERIES.values(), ids=SURGERIES.keys())


def train_step(optimizer: torch.optim.Optimizer, output: torch.Tensor) -> torch.Tensor:
    optimizer.zero_grad()
    loss = (output - 0.3).square().sum()
    loss.backward()
    optimizer.step()
    return loss


@surgeries
@optimizers
def test_optimizer_state_is_sliced_like_its_parameter(surgery, make_optimizer):
    torch.manual_seed(0)
    layer = surgery.make()
    optimizer = make_optimizer(layer.parameters())
    x = torch.randn(surgery.input_shape, dtype=DOUBLE)
    for _ in range(2):
        train_step(optimizer, layer(x))
    params = dict(layer.named_parameters())
    old_state = {name: {k: v.clone() for k, v in optimizer.state[p].items()} for name, p in params.items()}

    surgery.drop(layer, optimizer)

    for name, param in params.items():
        state = optimizer.state[param]
        assert state.keys() == old_state[name].keys()
        assert PER_ELEMENT_STATE & state.keys(), "the optimizer holds per-element state"
        dim = surgery.dims.get(name)
        for key, old in old_state[name].items():
            sliced = key in PER_ELEMENT_STATE and dim is not None
            expected = old.index_select(dim, surgery.keep) if sliced else old
            assert_equal(state[key], expected, msg=lambda m, what=f"{name} {key}": f"{what}: {m}")
    train_step(optimizer, surgery.pruned_forward(layer, x))  # and the optimizer goes on


@surgeries
@optimizers
def test_training_after_a_drop_equals_training_the_masked_layer(surgery, make_optimizer):
    torch.manual_seed(0)
    pruned = surgery.make()
    reference = copy.deepcopy(pruned)
    optimizer = make_optimizer(pruned.parameters())
    reference_optimizer = make_optimizer(reference.parameters())
    x = torch.randn(surgery.input_shape, dtype=DOUBLE)
    for _ in range(2):
        train_step(optimizer, pruned(x))
        train_step(reference_optimizer, reference(x))

    surgery.drop(pruned, optimizer)
    for _ in range(3):
        loss = train_step(optimizer, surgery.pruned_forward(pruned, x))
        assert_close(loss, train_step(reference_optimizer, surgery.masked_forward(reference, x)))

    for name, param in pruned.named_parameters():
        old = reference.get_parameter(name).detach()
        dim = surgery.dims.get(name)
        assert_close(param.detach(), old if dim is None else old.index_select(dim, surgery.keep), msg=name)


# -- grouped convolutions: every group keeps the same outputs count and input positions -------------
# groups = g, in_channels = g * cin, out_channels = g * cout; channel c of a side with n per group
# is position c % n of group c // n. A depthwise conv (cin = cout = 1) is left out: it has its own
# rule above. cin = 1 with cout > 1 is a depthwise conv with a channel multiplier.
GROUPS = st.integers(2, 3)
PER_GROUP = st.integers(1, 3)
BATCH = st.integers(1, 3)


def in_every_group(groups: int, per_group: int, positions: list[int]) -> list[int]:
    """The channels at ``positions`` of each of ``groups`` groups of ``per_group`` channels."""
    return [k * per_group + p for k in range(groups) for p in positions]


def even_drop(data: st.DataObject, groups: int, per_group: int) -> list[int]:
    """The same number of channels from every group (at least one, not all), each group
    choosing its own positions, in any order."""
    count = data.draw(st.integers(1, per_group - 1), label="dropped per group")
    positions = st.lists(st.integers(0, per_group - 1), min_size=count, max_size=count, unique=True)
    drop = [k * per_group + p for k in range(groups) for p in data.draw(positions, label=f"group {k}")]
    return data.draw(st.permutations(drop), label="drop")


def shared_positions_drop(data: st.DataObject, groups: int, per_group: int) -> tuple[list[int], torch.Tensor]:
    """The same positions from every group, in any order; and the positions kept."""
    positions = channels_to_drop(data, per_group)
    drop = data.draw(st.permutations(in_every_group(groups, per_group, positions)), label="drop")
    return drop, kept(per_group, positions)


def groups_of(drop: list[int], groups: int, per_group: int) -> list[set[int]]:
    """The positions ``drop`` takes from each group."""
    return [{c % per_group for c in drop if c // per_group == k} for k in range(groups)]


def grouped_conv(groups: int, cin: int, cout: int, config: dict) -> PConv2d:
    assert cin > 1 or cout > 1, "not depthwise"
    return PConv2d(groups * cin, groups * cout, groups=groups, dtype=DOUBLE, **config)


def grouped_input(batch: int, conv: PConv2d) -> torch.Tensor:
    return torch.randn(batch, conv.in_channels, 7, 7, dtype=DOUBLE)


@settings(max_examples=40, deadline=None)
@given(
    data=st.data(),
    groups=GROUPS,
    cin=PER_GROUP,
    cout=st.integers(2, 3),
    config=CONV_CONFIGS,
    batch=BATCH,
    as_indices=INDEX_FORMATS,
)
def test_grouped_conv_drop_output_is_the_output_without_those_channels(
    data, groups, cin, cout, config, batch, as_indices
):
    torch.manual_seed(0)
    conv = grouped_conv(groups, cin, cout, config)
    x = grouped_input(batch, conv)
    run_backward(conv, x)
    before = Before.of(conv)
    expected = no_grad_forward(conv, x)

    drop = even_drop(data, groups, cout)
    keep = kept(groups * cout, drop)
    conv.drop_output(as_indices(drop))

    assert (conv.in_channels, conv.out_channels, conv.groups) == (groups * cin, len(keep), groups)
    assert conv.weight.shape == (len(keep), cin, *conv.kernel_size)
    assert_parameters_follow(conv, before, {"weight": 0, "bias": 0}, keep)
    assert_equal(conv.taylor_estimates, before.estimates[keep])
    assert_close(no_grad_forward(conv, x), expected[:, keep])


@settings(max_examples=40, deadline=None)
@given(
    data=st.data(),
    groups=GROUPS,
    cin=st.integers(2, 4),
    cout=PER_GROUP,
    config=CONV_CONFIGS,
    batch=BATCH,
    as_indices=INDEX_FORMATS,
    split=st.booleans(),
)
def test_grouped_conv_drop_input_equals_zeroing_the_same_positions_in_every_group(
    data, groups, cin, cout, config, batch, as_indices, split
):
    torch.manual_seed(0)
    conv = grouped_conv(groups, cin, cout, config)
    x = grouped_input(batch, conv)
    run_backward(conv, x)
    before = Before.of(conv)

    drop, kept_positions = shared_positions_drop(data, groups, cin)
    keep = kept(groups * cin, drop)
    masked = x.clone()
    masked[:, drop] = 0
    expected = no_grad_forward(conv, masked)
    if split:  # as a chain does: validate, then apply the global channels to keep
        returned = conv._input_keep(as_indices(drop))
        assert_equal(returned, keep)
        conv._keep_inputs(returned, None, 1)
    else:
        conv.drop_input(as_indices(drop))

    assert (conv.in_channels, conv.out_channels, conv.groups) == (len(keep), groups * cout, groups)
    assert conv.weight.shape == (groups * cout, len(kept_positions), *conv.kernel_size)
    assert_parameters_follow(conv, before, {"weight": 1}, kept_positions)
    assert_equal(conv.taylor_estimates, before.estimates)  # output channels are untouched
    assert_close(no_grad_forward(conv, x[:, keep]), expected)


def uneven_outputs(groups: int, cout: int) -> st.SearchStrategy[list[int]]:
    size = groups * cout
    drops = st.lists(st.integers(0, size - 1), min_size=1, max_size=size - 1, unique=True)
    return drops.filter(lambda drop: len({len(taken) for taken in groups_of(drop, groups, cout)}) > 1)


def uneven_inputs(groups: int, cin: int) -> st.SearchStrategy[list[int]]:
    size = groups * cin
    drops = st.lists(st.integers(0, size - 1), min_size=1, max_size=size - 1, unique=True)
    return drops.filter(lambda drop: len({frozenset(taken) for taken in groups_of(drop, groups, cin)}) > 1)


@settings(max_examples=40, deadline=None)
@given(
    data=st.data(),
    groups=GROUPS,
    shape=st.tuples(PER_GROUP, PER_GROUP).filter(lambda shape: shape != (1, 1)),
    method=st.sampled_from(["drop_output", "drop_input"]),
    as_indices=INDEX_FORMATS,
)
def test_grouped_conv_uneven_drop_raises_naming_layer_and_channels_and_changes_nothing(
    data, groups, shape, method, as_indices
):
    cin, cout = shape
    torch.manual_seed(0)
    conv = grouped_conv(groups, cin, cout, {"kernel_size": 3})
    conv.name_in_model = "features.2"
    run_backward(conv, grouped_input(2, conv))
    before = snapshot(conv)
    uneven = uneven_outputs(groups, cout) if method == "drop_output" else uneven_inputs(groups, cin)
    drop = data.draw(uneven, label="drop")

    with pytest.raises(ValueError) as raised:
        getattr(conv, method)(as_indices(drop))
    message = str(raised.value)
    assert "PConv2d 'features.2'" in message
    assert str(sorted(drop)) in message, message
    assert f"groups={groups}" in message, message
    if method == "drop_output":  # says how many each group would keep
        counts = [cout - len(taken) for taken in groups_of(drop, groups, cout)]
        assert ", ".join(f"group {k} with {n}" for k, n in enumerate(counts)) in message, message
    else:  # the pruner's apply half refuses the same global channels as well
        with pytest.raises(ValueError, match=r"PConv2d 'features\.2'"):
            conv._keep_inputs(kept(groups * cin, drop), None, 1)
    assert_equal(snapshot(conv), before)


def test_channel_multiplier_conv_drops_outputs_evenly_but_no_inputs():
    """groups == in_channels, out_channels = 2 * in_channels: the grouped rule with cin = 1."""
    torch.manual_seed(0)
    conv = PConv2d(3, 6, 3, groups=3, dtype=DOUBLE)
    conv.name_in_model = "dw"
    x = torch.randn(2, 3, 5, 5, dtype=DOUBLE)
    run_backward(conv, x)
    before = snapshot(conv)
    for drop, named in (([1], "one input per group"), ([0, 1, 2], "all 3")):
        with pytest.raises(ValueError, match=rf"PConv2d 'dw'.*{named}"):
            conv.drop_input(drop)
        assert_equal(snapshot(conv), before)

    expected = no_grad_forward(conv, x)
    conv.drop_output([5, 0, 3])  # keeps 1, 2, 4: one output of each group, a plain depthwise conv
    assert (conv.in_channels, conv.out_channels, conv.groups) == (3, 3, 3)
    assert conv.is_depthwise
    assert_close(no_grad_forward(conv, x), expected[:, [1, 2, 4]])


@settings(max_examples=20, deadline=None)
@given(
    data=st.data(),
    groups=GROUPS,
    cin=st.integers(2, 3),
    cout=st.integers(2, 3),
    config=CONV_CONFIGS,
    batch=BATCH,
    method=st.sampled_from(["drop_output", "drop_input"]),
)
def test_grouped_conv_drop_slices_grad_and_adam_state_and_training_goes_on(
    data, groups, cin, cout, config, batch, method
):
    torch.manual_seed(0)
    pruned = grouped_conv(groups, cin, cout, config)
    reference = copy.deepcopy(pruned)
    optimizer = torch.optim.Adam(pruned.parameters(), lr=0.05)
    reference_optimizer = torch.optim.Adam(reference.parameters(), lr=0.05)
    x = grouped_input(batch, pruned)
    for _ in range(2):
        train_step(optimizer, pruned(x))
        train_step(reference_optimizer, reference(x))
    before = Before.of(pruned)
    params = dict(pruned.named_parameters())
    old_state = {name: {k: v.clone() for k, v in optimizer.state[p].items()} for name, p in params.items()}

    if method == "drop_output":
        drop = even_drop(data, groups, cout)
        keep = kept(groups * cout, drop)
        dims, sliced_at = {"weight": 0, "bias": 0}, keep
        pruned.drop_output(drop, optimizer)
        pruned_forward = pruned
        masked_forward = lambda x: reference(x)[:, keep]  # noqa: E731
    else:
        drop, sliced_at = shared_positions_drop(data, groups, cin)
        keep = kept(groups * cin, drop)
        dims = {"weight": 1}
        pruned.drop_input(drop, optimizer)
        pruned_forward = lambda x: pruned(x[:, keep])  # noqa: E731
        mask = channel_mask(groups * cin, keep)[:, None, None]
        masked_forward = lambda x: reference(x * mask)  # noqa: E731

    assert_parameters_follow(pruned, before, dims, sliced_at)  # values and .grad
    for name, param in params.items():
        state = optimizer.state[param]
        assert state.keys() == old_state[name].keys()
        for key, old in old_state[name].items():
            dim = dims.get(name) if key in PER_ELEMENT_STATE else None
            expected = old if dim is None else old.index_select(dim, sliced_at)
            assert_equal(state[key], expected, msg=lambda m, what=f"{name} {key}": f"{what}: {m}")
    for _ in range(2):
        loss = train_step(optimizer, pruned_forward(x))
        assert_close(loss, train_step(reference_optimizer, masked_forward(x)))
    for name, param in pruned.named_parameters():
        old = reference.get_parameter(name).detach()
        dim = dims.get(name)
        assert_close(param.detach(), old if dim is None else old.index_select(dim, sliced_at), msg=name)


@settings(max_examples=20, deadline=None)
@given(
    data=st.data(),
    groups=GROUPS,
    cin=st.integers(2, 3),
    cout=st.integers(2, 3),
    config=CONV_CONFIGS,
    batch=BATCH,
)
def test_grouped_conv_to_torch_after_drops_computes_the_same(data, groups, cin, cout, config, batch):
    torch.manual_seed(0)
    conv = grouped_conv(groups, cin, cout, config)
    x = grouped_input(batch, conv)
    run_backward(conv, x)
    original = copy.deepcopy(conv)

    drop_out = even_drop(data, groups, cout)
    keep_out = kept(groups * cout, drop_out)
    drop_in, _ = shared_positions_drop(data, groups, cin)
    keep_in = kept(groups * cin, drop_in)
    conv.drop_output(drop_out)
    conv.drop_input(drop_in)

    plain = conv.to_torch()
    assert type(plain) is nn.Conv2d
    assert (plain.in_channels, plain.out_channels, plain.groups) == (len(keep_in), len(keep_out), groups)
    assert plain.weight.shape == (len(keep_out), len(keep_in) // groups, *conv.kernel_size)
    assert_equal(plain.state_dict(), conv.state_dict())
    assert_equal(no_grad_forward(plain, x[:, keep_in]), no_grad_forward(conv, x[:, keep_in]))
    masked = x.clone()
    masked[:, drop_in] = 0
    assert_close(no_grad_forward(plain, x[:, keep_in]), no_grad_forward(original, masked)[:, keep_out])


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
