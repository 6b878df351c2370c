"""Helpers of the model-level tests: random small networks, estimate passes that leave the
model's weights and statistics alone, snapshots for "nothing changed" checks, and the masked
reference of DESIGN.md rule 1 (removing a channel = zeroing it at the consumers'
inputs)."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import nn

from prunable_nn import Chain, EstimateTotals, PBatchNorm2d, PConv2d, PLinear, PrunableLayer, TaylorPruner
from zoo import tensors_of

SIZE_ATTRIBUTES = ("in_channels", "out_channels", "groups", "num_features", "in_features", "out_features")


# -- random architectures ---------------------------------------------------------------------
@st.composite
def conv_nets(draw: st.DrawFn) -> tuple[nn.Sequential, tuple[int, int, int]]:
    """A small ``nn.Sequential`` of 1-4 conv blocks (conv, maybe batch norm, ReLU, maybe
    pooling, maybe dropout) then 1-2 ``PLinear`` layers, and the shape ``(C, H, W)`` of one
    input example. The weights come from a drawn seed."""
    torch.manual_seed(draw(st.integers(0, 2**16), label="seed"))
    in_channels = draw(st.integers(1, 3))
    input_size = size = draw(st.integers(4, 9))
    layers: list[nn.Module] = []
    channels = in_channels
    for _ in range(draw(st.integers(1, 4))):
        width = draw(st.integers(2, 8))
        kernel = draw(st.sampled_from([1, 3, 5]))
        stride = draw(st.sampled_from([1, 1, 2]))
        bias = draw(st.booleans())
        layers.append(PConv2d(channels, width, kernel, stride=stride, padding=kernel // 2, bias=bias))
        size = (size - 1) // stride + 1
        if draw(st.booleans()):
            affine, running_stats = draw(st.booleans()), draw(st.booleans())
            layers.append(PBatchNorm2d(width, affine=affine, track_running_stats=running_stats))
        layers.append(nn.ReLU(inplace=draw(st.booleans())))
        pooling = draw(st.sampled_from([None, nn.MaxPool2d, nn.AvgPool2d]))
        if pooling is not None and size >= 2:
            layers.append(pooling(2))
            size //= 2
        dropout = draw(st.sampled_from([None, nn.Dropout, nn.Dropout2d]))
        if dropout is not None:
            layers.append(dropout(0.25))
        channels = width
    if draw(st.booleans()):
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        features = channels
    else:
        layers.append(nn.Flatten())
        features = channels * size * size
    if draw(st.booleans()):
        hidden = draw(st.integers(2, 8))
        layers += [PLinear(features, hidden), nn.ReLU(inplace=draw(st.booleans()))]
        features = hidden
    layers.append(PLinear(features, draw(st.integers(1, 4))))
    return nn.Sequential(*layers), (in_channels, input_size, input_size)


def random_batch(model: nn.Module, example_shape: tuple[int, ...], batch: int = 6):
    """Random inputs and class labels that fit ``model`` (its last layer gives the classes)."""
    generator = torch.Generator().manual_seed(0)
    classes = [m for m in model.modules() if isinstance(m, PLinear)][-1].out_features
    inputs = torch.randn(batch, *example_shape, generator=generator)
    labels = torch.randint(classes, (batch,), generator=generator)
    return inputs, labels


def train(model: nn.Module, optimizer: torch.optim.Optimizer, inputs, labels, steps: int = 2) -> torch.Tensor:
    """A few ordinary training steps; returns the last loss (its graph is still referenced)."""
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(inputs), labels)
        loss.backward()
        optimizer.step()
    return loss


def accumulate_estimates(model: nn.Module, inputs, labels) -> None:
    """A forward and backward pass in training mode that leaves the model's function alone:
    Taylor estimates accumulate, but batch-norm statistics are restored and gradients dropped."""
    saved = {name: value.clone() for name, value in model.state_dict().items()}
    model.train()
    F.cross_entropy(model(inputs), labels).backward()
    model.load_state_dict(saved)
    model.zero_grad(set_to_none=True)


def set_estimates(chain: Chain, values: Iterable[float]) -> None:
    """Make ``values`` the Taylor estimates of ``chain`` (as if one example had given them)."""
    (estimator,) = chain.estimators
    estimator.set_estimate_totals(EstimateTotals(torch.as_tensor(list(values), dtype=torch.float64), examples=1))


# -- "nothing changed" ------------------------------------------------------------------------
def snapshot(model: nn.Module, pruner: TaylorPruner | None = None) -> dict:
    """Everything an error must leave alone: tensors, sizes, chain bookkeeping, estimates."""
    layers = {
        name: {attr: getattr(layer, attr) for attr in SIZE_ATTRIBUTES if hasattr(layer, attr)}
        for name, layer in model.named_modules()
        if isinstance(layer, PrunableLayer)
    }
    estimates = {
        name: None if layer.taylor_estimates is None else layer.taylor_estimates.clone()
        for name, layer in model.named_modules()
        if isinstance(layer, PrunableLayer)
    }
    chains = [] if pruner is None else [chain.original_channels.clone() for chain in pruner.chains]
    state = {name: value.clone() for name, value in model.state_dict().items()}
    return {"state": state, "layers": layers, "estimates": estimates, "chains": chains}


def assert_same_snapshot(before: dict, after: dict) -> None:
    assert after["layers"] == before["layers"]
    assert after["state"].keys() == before["state"].keys()
    for name, value in before["state"].items():
        assert torch.equal(after["state"][name], value), name
    for name, value in before["estimates"].items():
        if value is None:
            assert after["estimates"][name] is None, name
        else:
            torch.testing.assert_close(after["estimates"][name], value, equal_nan=True, msg=name)
    assert len(after["chains"]) == len(before["chains"])
    for old, new in zip(before["chains"], after["chains"]):
        assert torch.equal(new, old)


# -- DESIGN.md rule 1 --------------------------------------------------------------------------
def chain_readers(pruner: TaylorPruner) -> dict[str, list[tuple[str, int]]]:
    """For each chain name, its consumers as ``(layer name, features per channel)``."""
    return {
        chain.name: [(consumer.layer.name_in_model, consumer.features_per_channel) for consumer in chain.consumers]
        for chain in pruner.chains
    }


def zero_inputs(
    reference: nn.Module,
    readers: dict[str, list[tuple[str, int]]],
    removed: dict[str, set[int]],
) -> list[torch.utils.hooks.RemovableHandle]:
    """Forward pre-hooks on ``reference`` that zero, at every consumer's input, the channels
    ``removed[chain]`` (original numbering); a Linear fed by a flattened map loses the whole
    block of ``H * W`` features of each channel. Returns the hook handles."""
    modules = dict(reference.named_modules())
    handles = []
    for chain, channels in removed.items():
        if not channels:
            continue
        index = torch.tensor(sorted(channels))
        for layer_name, block in readers[chain]:

            def zero(module, args, index=index, block=block):
                (x,) = args
                x = x.clone()
                if block == 1:
                    x[:, index] = 0
                else:
                    x.view(x.shape[0], -1, block)[:, index] = 0
                return (x,)

            handles.append(modules[layer_name].register_forward_pre_hook(zero))
    return handles


def assert_matches_masked_reference(
    pruned: nn.Module,
    reference: nn.Module,
    readers: dict[str, list[tuple[str, int]]],
    removed: dict[str, set[int]],
    inputs: torch.Tensor,
) -> None:
    """In eval mode, ``pruned`` computes what ``reference`` computes with ``removed`` zeroed."""
    reference = copy.deepcopy(reference).eval()
    handles = zero_inputs(reference, readers, removed)
    try:
        with torch.no_grad():
            expected = reference(inputs)
            actual = pruned.eval()(inputs)
    finally:
        for handle in handles:
            handle.remove()
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


# -- sizes and parameter counts ---------------------------------------------------------------
def layer_parameter_count(layer: nn.Module) -> int:
    """Parameters of a prunable layer from its size attributes alone."""
    if isinstance(layer, PConv2d):
        kh, kw = layer.kernel_size
        return layer.out_channels * (layer.in_channels // layer.groups) * kh * kw + (
            layer.out_channels if layer.bias is not None else 0
        )
    if isinstance(layer, PBatchNorm2d):
        return 2 * layer.num_features if layer.affine else 0
    if isinstance(layer, PLinear):
        return layer.out_features * layer.in_features + (layer.out_features if layer.bias is not None else 0)
    raise TypeError(type(layer).__name__)


def assert_shapes_follow_sizes(model: nn.Module) -> None:
    """Every prunable layer's tensors have the shapes its size attributes say."""
    for name, layer in model.named_modules():
        if isinstance(layer, PConv2d):
            expected = (layer.out_channels, layer.in_channels // layer.groups, *layer.kernel_size)
            assert tuple(layer.weight.shape) == expected, name
            if layer.bias is not None:
                assert tuple(layer.bias.shape) == (layer.out_channels,), name
        elif isinstance(layer, PBatchNorm2d):
            for tensor in (layer.weight, layer.bias, layer.running_mean, layer.running_var):
                if tensor is not None:
                    assert tuple(tensor.shape) == (layer.num_features,), name
        elif isinstance(layer, PLinear):
            assert tuple(layer.weight.shape) == (layer.out_features, layer.in_features), name
            if layer.bias is not None:
                assert tuple(layer.bias.shape) == (layer.out_features,), name


# -- DESIGN.md rule 1 from what prune() reports -------------------------------------------------
def zero_removed_inputs(reference: nn.Module, removals) -> list[torch.utils.hooks.RemovableHandle]:
    """Forward pre-hooks on ``reference`` (a copy of the model just before ``prune()``) that
    zero, at every reader's input, the channels (``PLinear``: features) that the removals
    took from it: ``Removal.inputs`` numbers them as just before the call."""
    handles = []
    for removal in removals:
        for name, positions in removal.inputs.items():
            layer = reference.get_submodule(name)
            index = torch.tensor(positions, dtype=torch.long)

            def zero(module, args, index=index):
                x = args[0].clone()
                x.index_fill_(module.kind.input_dim(module, x.dim()), index, 0.0)
                return (x, *args[1:])

            handles.append(layer.register_forward_pre_hook(zero))
    return handles


def logits(output) -> torch.Tensor:
    """The main output of a classifier that may also return auxiliary ones (in training)."""
    return output[0] if isinstance(output, tuple) else output


def training_loss(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every output the model gives in training (auxiliary classifiers too)."""
    model.train()
    outputs = model(inputs)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    return sum(F.cross_entropy(output, labels) for output in outputs if output is not None)


def prune_rounds_and_check_masking(model: nn.Module, pruner: TaylorPruner, inputs: torch.Tensor, loss=None) -> None:
    """Three prunes of 4% of the prunable units each, every one checked against masking
    (:func:`prune_and_check_masking`); at least 10% of the units go, and the count follows."""
    total = pruner.num_prunables
    assert total > 0, pruner.report()
    removed = 0
    for _ in range(3):
        removals = prune_and_check_masking(model, pruner, inputs, math.ceil(0.04 * total), loss=loss)
        removed += sum(len(removal.indices) for removal in removals)
    assert removed >= 0.1 * total
    assert pruner.num_prunables == total - removed


def prune_and_check_masking(
    model: nn.Module, pruner: TaylorPruner, inputs: torch.Tensor, max_to_prune: int, loss=None
):
    """``pruner.prune(max_to_prune)`` after fresh estimates (from ``loss(model(inputs))`` in
    training mode; by default the cross-entropy of every output); assert that in eval mode
    the pruned model computes what the model before computes with the removed channels
    zeroed at its readers' inputs, every tensor of its output. Returns the removals."""
    labels = torch.arange(len(inputs)) % 3
    model.zero_grad(set_to_none=True)
    if loss is None:
        training_loss(model, inputs, labels).backward()
    else:
        loss(model.train()(inputs)).backward()
    reference = copy.deepcopy(model)
    removals = pruner.prune(max_to_prune)
    handles = zero_removed_inputs(reference, removals)
    with torch.no_grad():
        expected = tensors_of(reference.eval()(inputs))
        actual = tensors_of(model.eval()(inputs))
    for handle in handles:
        handle.remove()
    assert len(actual) == len(expected) > 0
    for got, want in zip(actual, expected):
        scale = max(1.0, float(want.abs().max())) if want.numel() else 1.0
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9 * scale)
    return removals
