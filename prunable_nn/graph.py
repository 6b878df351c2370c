"""Finding the chains of a model written with prunable layers, from its ``torch.fx`` graph.

From every ``PConv2d`` (``groups=1``) and ``PLinear`` the walk follows the activation:

1. the trunk: while the activation has a single user that is a per-channel layer
   (``PBatchNorm2d``, a depthwise ``PConv2d``) or a channel-wise operation (activation,
   pooling, dropout), the per-channel layers join the producers;
2. the readers: every path onward through channel-wise operations and flattening must end in
   a consumer, a ``PConv2d`` reading the map or a ``PLinear`` reading its features (a
   flattened ``(C, H, W)`` map gives ``H * W`` features per channel).

A path that reaches the model's output, a per-channel layer after a fork, or an operation
not known to keep channels apart leaves the chain unprunable, with the reason recorded.

In-place activation modules on these paths are made out of place, except the clamps (ReLU,
ReLU6, Hardtanh): the estimate reads the chain end's output when its gradient arrives, and
only a clamp leaves ``a * dL/da`` unchanged when it overwrites ``a`` (where it changes a
value, the gradient before it is zero).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from .chain import Chain, Consumer
from .layers import PBatchNorm2d, PConv2d, PLinear, PrunableLayer

CHANNELWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus,
    nn.Dropout, nn.Dropout2d, nn.AlphaDropout, nn.Identity,
    nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
)
CHANNELWISE_FUNCTIONS = {
    F.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.gelu, F.silu, F.mish, F.hardswish,
    F.hardsigmoid, F.hardtanh, F.softplus, F.dropout, F.dropout2d,
    F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d,
    torch.relu, torch.sigmoid, torch.tanh,
}
INPLACE_SAFE_MODULES = (nn.ReLU, nn.ReLU6, nn.Hardtanh)
CHANNELWISE_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "contiguous"}


class UnprunableChain(Exception):
    """Raised inside the walk when a producer's channels cannot be removed."""


@dataclass(frozen=True)
class FrozenLayer:
    """A producer whose output channels stay, and why."""

    name: str
    reason: str


class PrunableTracer(fx.Tracer):
    """``torch.fx`` tracer that keeps prunable layers whole."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, PrunableLayer) or super().is_leaf_module(module, qualified_name)


def find_chains(model: nn.Module) -> tuple[list[Chain], list[FrozenLayer]]:
    """The chains of ``model`` and the producers whose channels cannot be removed."""
    try:
        graph = PrunableTracer().trace(model)
    except Exception as error:  # fx raises many kinds for untraceable code
        raise RuntimeError(
            f"cannot trace {type(model).__name__} with torch.fx ({error}); "
            "pass chains=[...] to TaylorPruner instead"
        ) from error
    modules = dict(model.named_modules())
    chains, frozen = [], []
    for node in graph.nodes:
        layer = _module(node, modules)
        if not _starts_chain(layer):
            continue
        try:
            chains.append(_walk(node, layer, modules))
        except UnprunableChain as reason:
            frozen.append(FrozenLayer(node.target, str(reason)))
    return chains, frozen


def _starts_chain(layer: nn.Module | None) -> bool:
    return isinstance(layer, PLinear) or (isinstance(layer, PConv2d) and layer.groups == 1)


def _walk(start: fx.Node, first: PrunableLayer, modules: dict[str, nn.Module]) -> Chain:
    producers = [first]
    node = start
    while len(node.users) == 1:
        user = next(iter(node.users))
        layer = _module(user, modules)
        if _is_per_channel_layer(layer):
            producers.append(layer)
        elif not _is_channelwise(user, modules):
            break
        node = user
    channels = first.num_output_channels
    layout = "features" if isinstance(first, PLinear) else "map"
    consumers = _readers(node, layout, channels, modules)
    if not consumers:
        raise UnprunableChain("its output is not read by any layer")
    return Chain(str(start.target), tuple(producers), tuple(consumers))


def _readers(node: fx.Node, layout: str, channels: int, modules: dict[str, nn.Module]) -> list[Consumer]:
    """Consumers reached from ``node`` whose channel layout is ``layout``: ``"map"`` for
    ``(N, C, H, W)``, ``"features"`` for ``(N, C)``, ``"flat"`` for a flattened map."""
    consumers = []
    for user in node.users:
        layer = _module(user, modules)
        if user.op == "output":
            raise UnprunableChain("its channels reach the model's output")
        if isinstance(layer, PConv2d) and layer.groups == 1 and layout == "map":
            consumers.append(Consumer(layer))
        elif isinstance(layer, PLinear) and layout in ("features", "flat"):
            consumers.append(Consumer(layer, _features_per_channel(layer, channels, layout)))
        elif _is_per_channel_layer(layer):
            raise UnprunableChain(f"'{user.target}' follows it on one branch of several")
        elif _is_flatten(user, modules):
            consumers += _readers(user, "flat" if layout == "map" else layout, channels, modules)
        elif _is_channelwise(user, modules):
            consumers += _readers(user, layout, channels, modules)
        else:
            raise UnprunableChain(f"'{user.name}' ({_describe(user, modules)}) is not understood")
    return consumers


def _features_per_channel(layer: PLinear, channels: int, layout: str) -> int:
    if layout == "features":
        return 1
    if layer.in_features % channels:
        raise UnprunableChain(
            f"{layer.describe()} reads {layer.in_features} features, not a multiple of {channels} channels"
        )
    return layer.in_features // channels


def _module(node: fx.Node, modules: dict[str, nn.Module]) -> nn.Module | None:
    return modules.get(node.target) if node.op == "call_module" else None


def _is_per_channel_layer(layer: nn.Module | None) -> bool:
    return isinstance(layer, PBatchNorm2d) or (isinstance(layer, PConv2d) and layer.is_depthwise)


def _is_channelwise(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether ``node`` keeps channels apart; in-place modules other than clamps are made out
    of place on the way (see the module docstring)."""
    if node.op == "call_module":
        module = modules[node.target]
        if not isinstance(module, CHANNELWISE_MODULES):
            return False
        if getattr(module, "inplace", False) and not isinstance(module, INPLACE_SAFE_MODULES):
            module.inplace = False
        return True
    if node.op == "call_function":
        return node.target in CHANNELWISE_FUNCTIONS and not node.kwargs.get("inplace", False)
    if node.op == "call_method":
        return node.target in CHANNELWISE_METHODS
    return False


def _is_flatten(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        layer = modules[node.target]
        return isinstance(layer, nn.Flatten) and layer.start_dim == 1 and layer.end_dim == -1
    if (node.op, node.target) in (("call_function", torch.flatten), ("call_method", "flatten")):
        start_dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        end_dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
        return start_dim == 1 and end_dim == -1
    return False


def _describe(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        return type(modules[node.target]).__name__
    target = node.target
    return getattr(target, "__name__", str(target)) if node.op == "call_function" else f".{target}()"
