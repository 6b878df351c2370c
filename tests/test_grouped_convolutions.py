"""Grouped convolutions: every group keeps the same number of outputs, and input positions
follow."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from layer_cases import (
    CONV_CONFIGS,
    DOUBLE,
    INDEX_FORMATS,
    PER_ELEMENT_STATE,
    Before,
    assert_equal,
    assert_parameters_follow,
    channel_mask,
    channels_to_drop,
    kept,
    no_grad_forward,
    run_backward,
    snapshot,
    train_step,
)
from torch import nn
from torch.testing import assert_close

from prunable_nn import PConv2d

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
