"""Rounding (``TaylorPruner(..., round_to=r)``): every chain keeps a multiple of ``r`` channels,
removed in blocks whose score is their most important unit's; removal still equals masking."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from models import VGG
from prunable_nn import PConv2d, PLinear, TaylorPruner, count_flops
from nets import (
    accumulate_estimates,
    assert_matches_masked_reference,
    assert_same_snapshot,
    chain_readers,
    conv_nets,
    random_batch,
    set_estimates,
    snapshot,
    train,
)

PROPERTY_SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def pointwise_net(widths: list[int]) -> nn.Sequential:
    """1x1 convs of ``widths`` on 4x4 single-channel input, then a Linear: one chain per conv,
    each read by the next layer, so only the estimates rank them."""
    layers: list[nn.Module] = []
    channels = 1
    for width in widths:
        layers += [PConv2d(channels, width, 1), nn.ReLU()]
        channels = width
    return nn.Sequential(*layers, nn.Flatten(), PLinear(channels * 16, 3))


def rounded_lowest_by_hand(
    scores: list[list[float]], round_to: int, limit: int | None, costs: list[float] | None = None, flops: float | None = None
) -> dict[int, list[int]]:
    """The channels a rounded prune removes, found unit by unit: walk all channels by
    increasing (score, chain, channel); each chain gathers its channels until they fill its
    next block (``n mod r`` channels for a chain of ``n``, ``r`` when that is 0); a full block
    goes if it fits in ``limit`` and leaves the chain at least ``r`` channels, otherwise the
    chain gives no more. With ``flops``, the walk stops once the channels gone cost that
    much (``costs``: FLOPs of one channel of each chain)."""
    order = sorted((value, chain, channel) for chain, values in enumerate(scores) for channel, value in enumerate(values))
    left = [len(values) for values in scores]
    gathered: dict[int, list[int]] = {chain: [] for chain in range(len(scores))}
    removed: dict[int, list[int]] = {}
    closed: set[int] = set()
    total, spent = 0, 0.0
    for _, chain, channel in order:
        if chain in closed:
            continue
        gathered[chain].append(channel)
        block = left[chain] % round_to or round_to
        if len(gathered[chain]) < block:
            continue
        if (limit is not None and total + block > limit) or left[chain] - block < round_to:
            closed.add(chain)
            continue
        removed.setdefault(chain, []).extend(gathered[chain])
        total += block
        left[chain] -= block
        gathered[chain] = []
        if flops is not None:
            spent += block * costs[chain]
            if spent >= flops:
                break
    return {chain: sorted(channels) for chain, channels in removed.items()}


def normalised(values: list[float]) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64)
    return (tensor / tensor.norm().clamp_min(1e-12)).tolist()


@settings(max_examples=80, deadline=None)
@given(
    widths=st.lists(st.integers(1, 12), min_size=1, max_size=4),
    round_to=st.integers(1, 5),
    data=st.data(),
)
def test_rounded_prune_removes_the_blocks_found_unit_by_unit(widths, round_to, data):
    torch.manual_seed(0)
    model = pointwise_net(widths)
    pruner = TaylorPruner(model, torch.zeros(1, 1, 4, 4), round_to=round_to)
    estimates = [
        data.draw(st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.0, 7.5]), min_size=n, max_size=n), label="estimates")
        for n in widths
    ]
    for chain, values in zip(pruner.chains, estimates):
        set_estimates(chain, values)
    max_to_prune = data.draw(st.integers(round_to, round_to + sum(widths)), label="max_to_prune")
    expected = rounded_lowest_by_hand([normalised(values) for values in estimates], round_to, max_to_prune)

    removals = pruner.prune(max_to_prune)

    names = [chain.name for chain in pruner.chains]
    assert {names.index(removal.chain): list(removal.indices) for removal in removals} == expected
    for chain, width in zip(pruner.chains, widths):
        assert chain.num_channels == width or (chain.num_channels % round_to == 0 and chain.num_channels >= round_to)


def pointwise_channel_flops(widths: list[int]) -> list[float]:
    """FLOPs of one channel of each chain of ``pointwise_net(widths)`` on one 4x4 image: its
    share of the conv that makes it and of the layer that reads it (a multiply-add is 2)."""
    inputs = [1] + widths[:-1]
    convs = [2 * 16 * c_in * width for c_in, width in zip(inputs, widths)]
    readers = convs[1:] + [2 * 16 * widths[-1] * 3]
    return [(conv + reader) / width for conv, reader, width in zip(convs, readers, widths)]


@settings(max_examples=80, deadline=None)
@given(
    widths=st.lists(st.integers(1, 12), min_size=1, max_size=4),
    round_to=st.integers(1, 4),
    share=st.floats(0.001, 1.5),
    data=st.data(),
)
def test_a_flops_budget_takes_the_lowest_blocks_until_their_flops_reach_it(widths, round_to, share, data):
    torch.manual_seed(0)
    model = pointwise_net(widths)
    example = torch.zeros(1, 1, 4, 4)
    pruner = TaylorPruner(model, example, round_to=round_to)
    estimates = [
        data.draw(st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.0, 7.5]), min_size=n, max_size=n), label="estimates")
        for n in widths
    ]
    for chain, values in zip(pruner.chains, estimates):
        set_estimates(chain, values)
    max_to_prune = data.draw(st.none() | st.integers(round_to, round_to + sum(widths)), label="max_to_prune")
    flops = share * count_flops(model, example)
    costs = pointwise_channel_flops(widths)
    expected = rounded_lowest_by_hand([normalised(values) for values in estimates], round_to, max_to_prune, costs, flops)

    removals = pruner.prune(max_to_prune, flops=flops)

    names = [chain.name for chain in pruner.chains]
    assert {names.index(removal.chain): list(removal.indices) for removal in removals} == expected


@PROPERTY_SETTINGS
@given(net=conv_nets(), round_to=st.integers(2, 4), data=st.data())
def test_rounded_prune_equals_masking_and_keeps_multiples(net, round_to, data):
    model, example_shape = net
    inputs, labels = random_batch(model, example_shape)
    pruner = TaylorPruner(model, inputs, round_to=round_to)
    train(model, torch.optim.SGD(model.parameters(), lr=0.1), inputs, labels)
    reference = copy.deepcopy(model)
    readers = chain_readers(pruner)
    start = {chain.name: chain.num_channels for chain in pruner.chains}
    alive = {name: list(range(count)) for name, count in start.items()}
    removed: dict[str, set[int]] = {name: set() for name in alive}

    for round_number in range(data.draw(st.integers(1, 4), label="rounds")):
        if round_number:
            accumulate_estimates(model, inputs, labels)
        before = pruner.num_prunables
        max_to_prune = data.draw(st.integers(round_to, 12), label="max_to_prune")
        removals = pruner.prune(max_to_prune)

        taken = sum(len(removal.indices) for removal in removals)
        assert taken <= max_to_prune
        assert pruner.num_prunables == before - taken
        assert (taken == 0) == (before == 0)
        for removal in removals:
            channels = alive[removal.chain]
            removed[removal.chain] |= set(removal.original_indices)
            alive[removal.chain] = [c for c in channels if c not in removal.original_indices]
        for chain in pruner.chains:
            count = chain.num_channels
            assert count == len(alive[chain.name])
            assert count == start[chain.name] or (count % round_to == 0 and count >= round_to), chain.name

    assert_matches_masked_reference(model, reference, readers, removed, inputs)


def test_pruning_to_the_end_leaves_every_chain_below_two_blocks():
    model = VGG("vgg11", in_channels=1, input_size=28, width=0.25, hidden=40)
    pruner = TaylorPruner(model, model.example_inputs(), round_to=8)
    inputs, labels = random_batch(model, (1, 28, 28), batch=4)
    train(model, torch.optim.SGD(model.parameters(), lr=0.01), inputs, labels, steps=1)
    while pruner.num_prunables:
        assert pruner.prune(64)
        accumulate_estimates(model, inputs, labels)
    assert [chain.num_channels for chain in pruner.chains] == [8] * 8 + [8, 8]
    assert model.eval()(inputs).shape == (4, 10)


def test_a_chain_narrower_than_round_to_stays_and_is_not_counted():
    model = pointwise_net([3, 10])
    pruner = TaylorPruner(model, torch.zeros(1, 1, 4, 4), round_to=4)
    # chain '0' (3 channels) cannot keep a multiple of 4; chain '2' (10) gives 2, then 4
    assert pruner.num_prunables == 6
    for chain in pruner.chains:
        set_estimates(chain, [0.0] * chain.num_channels)
    removals = pruner.prune(100)
    assert [(removal.chain, removal.indices) for removal in removals] == [("2", (0, 1, 2, 3, 4, 5))]
    assert [chain.num_channels for chain in pruner.chains] == [3, 4]
    assert pruner.report().splitlines()[0] == (
        "TaylorPruner(Sequential: 2 chains, 0 prunable units, removed in blocks of 4 per chain)"
    )


@pytest.mark.parametrize("round_to", [0, -8, 2.0, True, "8", None])
def test_invalid_round_to_is_refused(round_to):
    model = pointwise_net([4])
    with pytest.raises(ValueError, match=f"round_to must be a positive integer, got {round_to!r}"):
        TaylorPruner(model, torch.zeros(1, 1, 4, 4), round_to=round_to)


def test_max_to_prune_below_round_to_raises_and_changes_nothing():
    model = pointwise_net([8, 8])
    pruner = TaylorPruner(model, torch.zeros(1, 1, 4, 4), round_to=4)
    for chain in pruner.chains:
        set_estimates(chain, [1.0] * 8)
    before = snapshot(model, pruner)
    with pytest.raises(ValueError, match=r"max_to_prune \(3\) must be at least round_to \(4\)"):
        pruner.prune(3)
    assert_same_snapshot(before, snapshot(model, pruner))


def test_a_block_scores_its_most_important_unit():
    model = pointwise_net([8, 8])
    pruner = TaylorPruner(model, torch.zeros(1, 1, 4, 4), normalize=False, round_to=4)
    # chain '0' has the lowest channels (0.01) but its lowest block holds a 0.5; every
    # channel of chain '2''s lowest block is 0.1, so that block goes
    set_estimates(pruner.chains[0], [0.01, 0.01, 0.01, 0.5, 0.9, 0.9, 0.9, 0.9])
    set_estimates(pruner.chains[1], [0.1, 0.1, 0.1, 0.1, 0.9, 0.9, 0.9, 0.9])
    assert [(removal.chain, removal.indices) for removal in pruner.prune(4)] == [("2", (0, 1, 2, 3))]
