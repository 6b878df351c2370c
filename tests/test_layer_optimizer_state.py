"""A layer's removal slices the optimizer state of its parameters."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from layer_cases import (
    DOUBLE,
    OPTIMIZERS,
    PER_ELEMENT_STATE,
    assert_equal,
    channel_mask,
    train_step,
)
from torch.testing import assert_close

from prunable_nn import PBatchNorm2d, PConv2d, PLinear, PrunableLayer

# -- optimizer state ----------------------------------------------------------------------------------
optimizers = pytest.mark.parametrize("make_optimizer", OPTIMIZERS.values(), ids=OPTIMIZERS.keys())

KEEP = torch.tensor([0, 2, 4])  # of 5 channels: the surgeries drop [3, 1]
KEEP_FEATURES = torch.tensor([0, 1, 2, 6, 7, 8, 12, 13, 14])  # the same channels, 3 features each




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
