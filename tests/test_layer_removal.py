"""Removing channels from one layer: property tests against masking, and bad indices refused
with the layer left as it was."""

from __future__ import annotations

import copy
import re
import weakref

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from layer_cases import (
    CONV_CONFIGS,
    DOUBLE,
    INDEX_FORMATS,
    Before,
    assert_equal,
    assert_parameters_follow,
    channels_to_drop,
    kept,
    map_input,
    no_grad_forward,
    randomized,
    run_backward,
    snapshot,
)
from torch.testing import assert_close

from prunable_nn import PBatchNorm2d, PConv2d, PLinear, PrunableLayer


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
