"""Model-level tests of TaylorPruner: chain discovery, global ranking, atomic removal,
optimizer surgery, and the "removal equals masking" (DESIGN.md rule 1) on random architectures."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from models import VGG, DigitsNet
from prunable_nn import (
    PBatchNorm2d,
    PConv2d,
    PLinear,
    PrunableLayer,
    TaylorPruner,
    count_parameters,
)
from nets import (
    accumulate_estimates,
    assert_matches_masked_reference,
    assert_same_snapshot,
    assert_shapes_follow_sizes,
    chain_readers,
    conv_nets,
    layer_parameter_count,
    random_batch,
    set_estimates,
    snapshot,
    train,
)

PROPERTY_SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: A chain as ``(name, producer names, ((consumer name, features per channel), ...))``.
ChainLayout = tuple[str, tuple[str, ...], tuple[tuple[str, int], ...]]


# -- helpers ----------------------------------------------------------------------------------
def expected_chains(model: nn.Sequential) -> list[ChainLayout]:
    """The chains of a ``conv_nets`` model found by reading the list of layers: every conv or
    Linear but the last Linear produces (with the batch norm right after it) for the next conv
    or Linear; a Linear after a flattened map reads ``in_features / channels`` per channel."""
    layers = list(model.named_children())
    weighted = [i for i, (_, layer) in enumerate(layers) if isinstance(layer, (PConv2d, PLinear))]
    chains = []
    for position, i in enumerate(weighted[:-1]):
        name, layer = layers[i]
        producers = (name,)
        if isinstance(layers[i + 1][1], PBatchNorm2d):
            producers += (layers[i + 1][0],)
        reader_name, reader = layers[weighted[position + 1]]
        block = 1
        if isinstance(reader, PLinear) and isinstance(layer, PConv2d):
            block = reader.in_features // layer.out_channels
        chains.append((name, producers, ((reader_name, block),)))
    return chains


def found_chains(pruner: TaylorPruner) -> list[ChainLayout]:
    readers = chain_readers(pruner)
    return [
        (chain.name, tuple(layer.name_in_model for layer in chain.producers), tuple(readers[chain.name]))
        for chain in pruner.chains
    ]


def assert_sizes_after_removal(pruner: TaylorPruner, alive: dict[str, list[int]]) -> None:
    """Every producer has the chain's surviving channels and every consumer reads them."""
    for chain in pruner.chains:
        survivors = len(alive[chain.name])
        assert survivors >= 1
        assert chain.num_channels == survivors
        assert chain.original_channels.tolist() == alive[chain.name]
        for layer in chain.producers:
            assert layer.num_output_channels == survivors, layer.name_in_model
        for consumer in chain.consumers:
            layer = consumer.layer
            reads = layer.in_features if isinstance(layer, PLinear) else layer.in_channels
            assert reads == survivors * consumer.features_per_channel, consumer.layer.name_in_model


def estimating_flags(model: nn.Module) -> dict[str, bool]:
    return {name: layer.estimating for name, layer in model.named_modules() if isinstance(layer, PrunableLayer)}


def assert_parameter_count_follows_sizes(model: nn.Module) -> None:
    assert_shapes_follow_sizes(model)
    layers = [layer for layer in model.modules() if isinstance(layer, PrunableLayer)]
    assert count_parameters(model) == sum(layer_parameter_count(layer) for layer in layers)


RANKING_INPUT = torch.zeros(1, 1, 8, 8)
SURGERY_INPUT = torch.zeros(1, 2, 6, 6)


def ranking_net() -> nn.Sequential:
    """Three chains for 8x8 input: '0' (4 cheap channels), '2' (4 channels read by a 5x5
    conv) and '4' (2 channels read by the final Linear, 64 features each)."""
    torch.manual_seed(0)
    return nn.Sequential(
        PConv2d(1, 4, 1), nn.ReLU(),
        PConv2d(4, 4, 1), nn.ReLU(),
        PConv2d(4, 2, 5, padding=2), nn.ReLU(),
        nn.Flatten(), PLinear(2 * 8 * 8, 3),
    )


def surgery_net() -> nn.Sequential:
    """conv-BN (6), conv (5) read by a hidden Linear through a flattened 3x3 map, hidden (7)."""
    torch.manual_seed(0)
    return nn.Sequential(
        PConv2d(2, 6, 3, padding=1), PBatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
        PConv2d(6, 5, 3, padding=1), nn.ReLU(),
        nn.Flatten(), PLinear(5 * 3 * 3, 7), nn.ReLU(), PLinear(7, 3),
    )


def trained_surgery_net(optimizer_class=torch.optim.SGD, **options):
    model = surgery_net()
    inputs, labels = random_batch(model, (2, 6, 6), batch=8)
    pruner = TaylorPruner(model, inputs)
    optimizer = optimizer_class(model.parameters(), **(options or {"lr": 0.1}))
    loss = train(model, optimizer, inputs, labels, steps=3)
    return model, pruner, optimizer, inputs, labels, loss


def scores_by_hand(estimates: list[list[float]]) -> list[torch.Tensor]:
    values = [torch.tensor(chain, dtype=torch.float64) for chain in estimates]
    return [v / v.norm().clamp_min(1e-12) for v in values]


def lowest_by_hand(scores: list[torch.Tensor], count: int) -> dict[int, list[int]]:
    """The ``count`` lowest (chain, channel) pairs, ties to the earlier chain and channel,
    never a chain's last: that is each chain's highest in the same order."""

    def order(pair: tuple[int, int]) -> tuple[float, int, int]:
        return float(scores[pair[0]][pair[1]]), pair[0], pair[1]

    pool = []
    for chain, values in enumerate(scores):
        pairs = sorted(((chain, k) for k in range(len(values))), key=order)
        pool += pairs[:-1]
    chosen: dict[int, list[int]] = {}
    for chain, channel in sorted(pool, key=order)[:count]:
        chosen.setdefault(chain, []).append(channel)
    return {chain: sorted(channels) for chain, channels in chosen.items()}


# -- DESIGN.md rule 1 on random architectures --------------------------------------------------
@PROPERTY_SETTINGS
@given(net=conv_nets(), data=st.data())
def test_prune_equals_masking_on_random_architectures(net, data):
    model, example_shape = net
    inputs, labels = random_batch(model, example_shape)
    pruner = TaylorPruner(model, inputs)
    expected = expected_chains(model)
    assert found_chains(pruner) == expected
    assert [frozen.name for frozen in pruner.frozen] == [str(len(model) - 1)]
    estimators = {producers[-1] for _, producers, _ in expected}
    assert estimating_flags(model) == {name: name in estimators for name in estimating_flags(model)}
    train(model, torch.optim.SGD(model.parameters(), lr=0.1), inputs, labels)
    reference = copy.deepcopy(model)
    readers = chain_readers(pruner)
    chain_layers = {chain.name: tuple(layer.name_in_model for layer in chain.layers) for chain in pruner.chains}
    alive = {chain.name: list(range(chain.num_channels)) for chain in pruner.chains}
    removed: dict[str, set[int]] = {name: set() for name in alive}

    for round_number in range(data.draw(st.integers(1, 3), label="rounds")):
        if round_number:
            accumulate_estimates(model, inputs, labels)
        before = pruner.num_prunables
        max_to_prune = data.draw(st.integers(1, 12), label="max_to_prune")
        removals = pruner.prune(max_to_prune)

        taken = sum(len(removal.indices) for removal in removals)
        assert taken == min(max_to_prune, before)
        assert pruner.num_prunables == before - taken
        assert len({removal.chain for removal in removals}) == len(removals)
        for removal in removals:
            channels = alive[removal.chain]
            assert removal.layers == chain_layers[removal.chain]
            assert len(removal.indices) > 0
            assert list(removal.indices) == sorted(set(removal.indices))
            assert all(0 <= index < len(channels) for index in removal.indices)
            assert removal.original_indices == tuple(channels[index] for index in removal.indices)
            removed[removal.chain] |= set(removal.original_indices)
            alive[removal.chain] = [c for c in channels if c not in removal.original_indices]
        assert_sizes_after_removal(pruner, alive)

    assert_parameter_count_follows_sizes(model)
    assert_matches_masked_reference(model, reference, readers, removed, inputs)


@PROPERTY_SETTINGS
@given(net=conv_nets(), data=st.data())
def test_chain_drop_equals_masking_on_random_architectures(net, data):
    model, example_shape = net
    inputs, labels = random_batch(model, example_shape)
    pruner = TaylorPruner(model, inputs)
    train(model, torch.optim.SGD(model.parameters(), lr=0.1), inputs, labels)
    reference = copy.deepcopy(model)
    readers = chain_readers(pruner)
    alive = {chain.name: list(range(chain.num_channels)) for chain in pruner.chains}
    removed: dict[str, set[int]] = {name: set() for name in alive}

    for _ in range(data.draw(st.integers(1, 4), label="drops")):
        candidates = [chain for chain in pruner.chains if chain.num_channels > 1]
        if not candidates:
            break
        chain = data.draw(st.sampled_from(candidates), label="chain")
        count = chain.num_channels
        indices = data.draw(
            st.lists(st.integers(0, count - 1), min_size=1, max_size=count - 1, unique=True), label="indices"
        )
        before = pruner.num_prunables
        chain.drop(indices)
        assert pruner.num_prunables == before - len(indices)
        originals = {alive[chain.name][index] for index in indices}
        removed[chain.name] |= originals
        alive[chain.name] = [c for c in alive[chain.name] if c not in originals]
        assert_sizes_after_removal(pruner, alive)

    assert_parameter_count_follows_sizes(model)
    assert_matches_masked_reference(model, reference, readers, removed, inputs)


# -- chain discovery on the models ------------------------------------------------------------
def test_digits_net_chains_and_estimating_layers():
    model = DigitsNet()
    pruner = model.pruner
    assert found_chains(pruner) == [
        ("features.0", ("features.0", "features.1"), (("features.3", 1),)),
        ("features.3", ("features.3", "features.4"), (("features.6", 1),)),
        ("features.6", ("features.6", "features.7"), (("classifier.1", 24 * 24),)),
    ]
    assert [frozen.name for frozen in pruner.frozen] == ["classifier.1"]
    assert "output" in pruner.frozen[0].reason
    assert estimating_flags(model) == {
        "features.0": False, "features.1": True,
        "features.3": False, "features.4": True,
        "features.6": False, "features.7": True,
        "classifier.1": False,
    }


VGG11_CONVS = [f"features.{i}" for i in (0, 4, 8, 11, 15, 18, 22, 25)]


@pytest.mark.parametrize("in_channels, input_size", [(1, 28), (3, 32)])
def test_vgg11_chains_and_estimating_layers(in_channels, input_size):
    model = VGG("vgg11", in_channels=in_channels, input_size=input_size, width=0.125, hidden=16)
    pruner = model.pruner
    norms = [f"features.{int(conv.split('.')[1]) + 1}" for conv in VGG11_CONVS]
    readers = VGG11_CONVS[1:] + ["classifier.1"]
    expected = [(conv, (conv, norm), ((reader, 1),)) for conv, norm, reader in zip(VGG11_CONVS, norms, readers)]
    expected += [
        ("classifier.1", ("classifier.1",), (("classifier.4", 1),)),
        ("classifier.4", ("classifier.4",), (("classifier.7", 1),)),
    ]
    assert found_chains(pruner) == expected
    assert [frozen.name for frozen in pruner.frozen] == ["classifier.7"]
    assert "output" in pruner.frozen[0].reason
    widths = [8, 16, 32, 32, 64, 64, 64, 64, 16, 16]
    assert [chain.num_channels for chain in pruner.chains] == widths
    assert pruner.num_prunables == sum(widths) - len(widths)

    estimators = set(norms) | {"classifier.1", "classifier.4"}
    assert estimating_flags(model) == {name: name in estimators for name in estimating_flags(model)}
    assert len(estimating_flags(model)) == 2 * len(VGG11_CONVS) + 3


# -- global ranking ---------------------------------------------------------------------------
RANKING_SIZES = (4, 4, 2)


@settings(max_examples=40, deadline=None)
@given(
    estimates=st.tuples(
        *(st.lists(st.floats(0.0, 10.0, allow_subnormal=False), min_size=n, max_size=n) for n in RANKING_SIZES)
    ),
    max_to_prune=st.integers(1, sum(RANKING_SIZES) + 2),
)
def test_prune_removes_the_lowest_normalised_estimates(estimates, max_to_prune):
    model = ranking_net()
    pruner = TaylorPruner(model, RANKING_INPUT)
    for chain, values in zip(pruner.chains, estimates):
        set_estimates(chain, values)
    expected = lowest_by_hand(scores_by_hand(list(estimates)), max_to_prune)
    removals = pruner.prune(max_to_prune)
    names = [chain.name for chain in pruner.chains]
    assert {names.index(r.chain): list(r.indices) for r in removals} == expected


def test_normalize_false_ranks_raw_estimates():
    estimates = [[1.0, 2.0, 3.0, 4.0], [10.0, 100.0, 1000.0, 2000.0], [5000.0, 6000.0]]
    by_chain = {}
    for normalize in (True, False):
        model = ranking_net()
        pruner = TaylorPruner(model, RANKING_INPUT, normalize=normalize)
        for chain, values in zip(pruner.chains, estimates):
            set_estimates(chain, values)
        by_chain[normalize] = {r.chain: r.indices for r in pruner.prune(3)}
    # normalised: chain '2' becomes [0.0045, 0.045, 0.45, 0.89], below chain '0' [0.18, ...]
    assert by_chain[True] == {"0": (0,), "2": (0, 1)}
    assert by_chain[False] == {"0": (0, 1, 2)}


def test_flops_regularization_prefers_expensive_channels():
    example = torch.randn(1, 1, 8, 8)
    estimates = [[1.0, 1.0, 1.0, 0.99], [1.0, 1.0, 1.0, 1.0], [1.0, 1.0]]
    # A channel's cost is its share of its producers' and consumers' FLOPs (a multiply-add is
    # 2): chain '0' (1x1 convs) 640, chain '2' (read by the 5x5 conv) 6912, chain '4' 13184,
    # divided by their mean over the 10 channels, 5657.6. Its lowest estimate makes chain '0'
    # channel 3 the choice without the FLOPs penalty (score 0.496 against 0.5); with
    # lambda = 0.1, chain '2' pays 0.122 (score 0.378), chain '0' 0.011 and chain '4' 0.233
    # (0.707 - 0.233 = 0.474).
    conv0, conv2, conv4, linear = 2 * 1 * 4 * 64, 2 * 4 * 4 * 64, 2 * 4 * 2 * 25 * 64, 2 * 128 * 3
    per_channel = [(conv0 + conv2) / 4, (conv2 + conv4) / 4, (conv4 + linear) / 2]
    mean = (4 * per_channel[0] + 4 * per_channel[1] + 2 * per_channel[2]) / 10
    removed = {}
    for strength in (0.0, 0.1):
        model = ranking_net()
        pruner = TaylorPruner(model, example, flops_regularization=strength)
        for chain, values in zip(pruner.chains, estimates):
            set_estimates(chain, values)
        expected_scores = [s - strength * cost / mean for s, cost in zip(scores_by_hand(estimates), per_channel)]
        for actual, expected in zip(pruner.scores(), expected_scores):
            torch.testing.assert_close(actual, expected)
        removed[strength] = [(r.chain, r.indices) for r in pruner.prune(1)]
    assert removed[0.0] == [("0", (3,))]
    assert removed[0.1] == [("2", (0,))]


def test_pruner_needs_example_inputs_and_a_valid_strength():
    with pytest.raises(TypeError, match="TaylorPruner needs example_inputs for Sequential"):
        TaylorPruner(ranking_net())
    with pytest.raises(ValueError, match="flops_regularization must be >= 0"):
        TaylorPruner(ranking_net(), torch.randn(1, 1, 8, 8), flops_regularization=-1e-3)


def test_max_to_prune_beyond_num_prunables_leaves_one_channel_per_chain():
    model = ranking_net()
    inputs, labels = random_batch(model, (1, 8, 8))
    pruner = TaylorPruner(model, inputs)
    train(model, torch.optim.SGD(model.parameters(), lr=0.1), inputs, labels)
    removals = pruner.prune(100)
    assert sum(len(r.indices) for r in removals) == 3 + 3 + 1
    assert [chain.num_channels for chain in pruner.chains] == [1, 1, 1]
    assert pruner.num_prunables == 0
    assert model(inputs).shape == (len(inputs), 3)
    accumulate_estimates(model, inputs, labels)
    assert pruner.prune(5) == []


@pytest.mark.parametrize("max_to_prune", [0, -1, 2.5, True, "3"])
def test_invalid_max_to_prune_raises_and_changes_nothing(max_to_prune):
    model, pruner, *_ = trained_surgery_net()
    before = snapshot(model, pruner)
    with pytest.raises(ValueError, match=f"max_to_prune must be a positive integer or None, got {max_to_prune!r}"):
        pruner.prune(max_to_prune)
    assert_same_snapshot(before, snapshot(model, pruner))


@pytest.mark.parametrize(
    "max_to_prune, flops, message",
    [
        (None, None, "max_to_prune=None needs flops"),
        (4, 0, "flops must be a positive number of FLOPs or None, got 0"),
        (None, -5.0, "got -5.0"),
        (None, math.nan, "got nan"),
        (None, math.inf, "got inf"),
        (None, True, "got True"),
        (None, "1e6", "got '1e6'"),
    ],
)
def test_invalid_flops_budget_raises_and_changes_nothing(max_to_prune, flops, message):
    model, pruner, *_ = trained_surgery_net()
    before = snapshot(model, pruner)
    with pytest.raises(ValueError, match=message):
        pruner.prune(max_to_prune, flops=flops)
    assert_same_snapshot(before, snapshot(model, pruner))


# -- errors leave the model as it was ---------------------------------------------------------
def test_prune_without_estimates_raises_and_changes_nothing():
    model = surgery_net()
    pruner = TaylorPruner(model, SURGERY_INPUT)
    before = snapshot(model, pruner)
    with pytest.raises(RuntimeError, match="chain '0' has no Taylor estimates.*PBatchNorm2d '1'"):
        pruner.prune(2)
    assert_same_snapshot(before, snapshot(model, pruner))


def test_prune_twice_without_training_raises_and_changes_nothing():
    model, pruner, *_ = trained_surgery_net()
    pruner.prune(2)
    before = snapshot(model, pruner)
    with pytest.raises(RuntimeError, match="no Taylor estimates"):
        pruner.prune(2)
    assert_same_snapshot(before, snapshot(model, pruner))


def test_a_chain_lacking_estimates_is_skipped_and_named():
    model, pruner, *_ = trained_surgery_net()
    last = pruner.chains[-1]
    last.estimators[0].reset_estimates()
    sizes = [chain.num_channels for chain in pruner.chains]
    removals = pruner.prune(3)
    assert sum(len(removal.indices) for removal in removals) == 3
    assert last.name not in {removal.chain for removal in removals}
    assert last.num_channels == sizes[-1]
    assert list(pruner.skipped) == [last.name]
    assert "PLinear '7'" in pruner.skipped[last.name] and "no gradient reached" in pruner.skipped[last.name]
    assert f"  {last.name}: skipped by the last prune, no gradient reached PLinear '7'" in pruner.report()


def test_a_chain_lacking_estimates_makes_a_strict_prune_raise_and_change_nothing():
    model, pruner, *_ = trained_surgery_net()
    pruner.strict = True
    pruner.chains[-1].estimators[0].reset_estimates()
    before = snapshot(model, pruner)
    with pytest.raises(RuntimeError, match="chain '7' has no Taylor estimates yet: no gradient reached PLinear '7'"):
        pruner.prune(2)
    assert_same_snapshot(before, snapshot(model, pruner))


def test_a_nan_loss_is_skipped_and_prune_raises_naming_the_layer():
    model = surgery_net()
    inputs, labels = random_batch(model, (2, 6, 6))
    pruner = TaylorPruner(model, inputs)
    (F.cross_entropy(model(inputs), labels) * float("nan")).backward()
    assert pruner.chains[0].estimates() is None
    assert pruner.chains[0].estimators[0].batches_skipped == 1
    before = snapshot(model, pruner)
    message = r"chain '0' has no Taylor estimates yet: the 1 batch that reached PBatchNorm2d '1' had gradients that are not finite"
    with pytest.raises(RuntimeError, match=message):
        pruner.prune(2)
    assert_same_snapshot(before, snapshot(model, pruner))


def test_nan_estimate_in_the_last_chain_changes_no_earlier_chain():
    model, pruner, *_ = trained_surgery_net()
    values = pruner.chains[-1].estimates().tolist()
    values[4] = float("inf")
    set_estimates(pruner.chains[-1], values)
    before = snapshot(model, pruner)
    with pytest.raises(RuntimeError, match=r"PLinear '7' are not finite for channels \[4\]"):
        pruner.prune(3)
    assert_same_snapshot(before, snapshot(model, pruner))


@pytest.mark.parametrize(
    "indices, error",
    [
        ([], ValueError),
        ([6], IndexError),
        ([-1], IndexError),
        ([1, 1], ValueError),
        (list(range(6)), ValueError),
        ([1.0], TypeError),
        (torch.tensor([True, False]), TypeError),
        ("0", TypeError),
    ],
)
def test_chain_drop_with_bad_indices_changes_nothing(indices, error):
    model, pruner, *_ = trained_surgery_net()
    before = snapshot(model, pruner)
    with pytest.raises(error, match="chain '0'"):
        pruner.chains[0].drop(indices)
    assert_same_snapshot(before, snapshot(model, pruner))


# -- optimizer surgery ------------------------------------------------------------------------
Slices = dict[str, list[tuple[int, torch.Tensor]]]


def kept_slices(chains: list[ChainLayout], sizes: dict[str, int], removals) -> Slices:
    """For each parameter name, the ``(dim, original indices kept)`` that pruning applied."""
    removed = {r.chain: set(r.original_indices) for r in removals}
    slices: Slices = {}
    for name, producers, readers in chains:
        keep = torch.tensor([c for c in range(sizes[name]) if c not in removed.get(name, set())])
        for producer in producers:
            for param in ("weight", "bias"):
                slices.setdefault(f"{producer}.{param}", []).append((0, keep))
        for reader, block in readers:
            features = (keep[:, None] * block + torch.arange(block)).flatten()
            slices.setdefault(f"{reader}.weight", []).append((1, features))
    return slices


def sliced(tensor: torch.Tensor, slices: list[tuple[int, torch.Tensor]]) -> torch.Tensor:
    for dim, keep in slices:
        tensor = tensor.index_select(dim, keep)
    return tensor


@pytest.mark.parametrize(
    "optimizer_class, options",
    [
        (torch.optim.SGD, {"lr": 0.05, "momentum": 0.9}),
        (torch.optim.SGD, {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-4}),
        (torch.optim.Adam, {"lr": 1e-2}),
        (torch.optim.AdamW, {"lr": 1e-2, "amsgrad": True}),
    ],
)
def test_prune_slices_optimizer_state_and_training_goes_on(optimizer_class, options):
    model, pruner, optimizer, inputs, labels, loss = trained_surgery_net(optimizer_class, **options)
    chains = found_chains(pruner)
    sizes = {chain.name: chain.num_channels for chain in pruner.chains}
    params = dict(model.named_parameters())
    old_values = {name: p.detach().clone() for name, p in params.items()}
    old_grads = {name: p.grad.clone() for name, p in params.items()}
    old_state = {
        name: {key: value.clone() for key, value in optimizer.state[p].items()} for name, p in params.items()
    }

    removals = pruner.prune(6, optimizer=optimizer)  # `loss` and its graph are still alive

    assert sum(len(r.indices) for r in removals) == 6
    slices = kept_slices(chains, sizes, removals)
    assert slices.keys() <= params.keys()
    for name, param in model.named_parameters():
        assert param is params[name]
        assert optimizer.state[param].keys() == old_state[name].keys()
        torch.testing.assert_close(param.detach(), sliced(old_values[name], slices.get(name, [])), rtol=0, atol=0)
        torch.testing.assert_close(param.grad, sliced(old_grads[name], slices.get(name, [])), rtol=0, atol=0)
        for key, old in old_state[name].items():
            new = optimizer.state[param][key]
            expected = sliced(old, slices.get(name, [])) if old.shape == old_values[name].shape else old
            torch.testing.assert_close(new, expected, rtol=0, atol=0, msg=f"{name} {key}")

    losses = []
    for _ in range(3):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(inputs), labels)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(value) for value in losses)
    for param in model.parameters():
        for value in optimizer.state[param].values():
            if value.dim() > 0:
                assert value.shape == param.shape


def test_prune_resets_estimates_and_they_come_back_with_the_new_sizes():
    model, pruner, optimizer, inputs, labels, _ = trained_surgery_net()
    assert all(chain.estimates() is not None for chain in pruner.chains)
    pruner.prune(4, optimizer=optimizer)
    for chain in pruner.chains:
        assert chain.estimates() is None
        assert chain.estimators[0].examples_seen == 0
    train(model, optimizer, inputs, labels, steps=1)
    for chain in pruner.chains:
        assert chain.estimates().shape == (chain.num_channels,)
        assert chain.estimators[0].examples_seen == len(inputs)
