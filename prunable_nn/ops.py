"""What the walk of :mod:`prunable_nn.graph` knows about the operations between layers: a
:class:`Rule` for each module class, function and tensor method it can follow.

- element-wise: every output value depends on the input value at the same place, so the
  channels are carried along (activations, dropout, ``.contiguous()``);
- spatial: they work on the last ``N`` dims of an ``N``-d map and keep the channels of dim
  ``-(N + 1)`` apart (pooling, padding, upsampling); :func:`spatial_dims` gives ``N``;
- combining: element-wise ops of several values (residual additions, gating products);
- reducing: reductions over some dims (``mean``, ``sum``), which keep the others;
- concatenating, chunking and splitting along a dim; flattening, reshaping, permuting.

An operation without a rule is not known to keep channels apart: the channels it reads and
makes stay. :func:`declare_channelwise` and :func:`declare_opaque` teach the walk about
operations of other code. :mod:`prunable_nn.rules` says what each rule does to the labels.

In-place activations that merely clamp (ReLU, ReLU6, Hardtanh) leave ``a * dL/da`` unchanged
when they overwrite ``a``, since the gradient before them is zero wherever they change a
value; the other in-place activations are made out of place (:mod:`prunable_nn.graph`), and
the other in-place writes into a layer's output are :mod:`prunable_nn.writes`' part.
"""

from __future__ import annotations

import enum
import operator
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


class Rule(enum.Enum):
    """What an operation does to the channels of the values it reads."""

    #: Reads sizes or types: it makes no value with channels.
    METADATA = "metadata"
    #: Each output value comes from the input value at the same place: the output has the
    #: input's shape and channels.
    ELEMENTWISE = "element-wise"
    #: Declared channel-wise: the output has its first input's channels, on the same dim.
    CHANNELWISE = "channel-wise"
    #: Works on the last ``N`` dims (:func:`spatial_dims`) and keeps dim ``-(N + 1)`` apart.
    SPATIAL = "spatial"
    #: Keeps the channels of dim 1 apart whatever the map's rank.
    CHANNEL_FIRST = "channel-first"
    COMBINING = "combining"
    CONCATENATING = "concatenating"
    PADDING = "padding"
    CHUNKING = "chunking"
    SPLITTING = "splitting"
    FLATTENING = "flattening"
    RESHAPING = "reshaping"
    PERMUTING = "permuting"
    TRANSPOSING = "transposing"
    REDUCING = "reducing"
    #: Declared opaque: not known to keep channels apart.
    OPAQUE = "opaque"


ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
    nn.Mish, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus,
    nn.Dropout, nn.AlphaDropout, nn.Identity,
)
#: Modules that work on the last ``N`` dims and keep the channels of dim ``-(N + 1)`` apart.
SPATIAL_MODULES: dict[type[nn.Module], int] = {
    **dict.fromkeys(
        (nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d, nn.ZeroPad1d,
         nn.ReflectionPad1d, nn.ReplicationPad1d, nn.ConstantPad1d, nn.Dropout1d), 1),
    **dict.fromkeys(
        (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Dropout2d,
         nn.ZeroPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d, nn.ConstantPad2d), 2),
    **dict.fromkeys(
        (nn.MaxPool3d, nn.AvgPool3d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool3d, nn.Dropout3d,
         nn.ZeroPad3d, nn.ReflectionPad3d, nn.ReplicationPad3d, nn.ConstantPad3d), 3),
}
INPLACE_SAFE_MODULES = (nn.ReLU, nn.ReLU6, nn.Hardtanh)
SPATIAL_FUNCTIONS: dict[object, int] = {
    **dict.fromkeys((F.max_pool1d, F.avg_pool1d, F.adaptive_avg_pool1d, F.adaptive_max_pool1d, F.dropout1d), 1),
    **dict.fromkeys((F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.dropout2d), 2),
    **dict.fromkeys((F.max_pool3d, F.avg_pool3d, F.adaptive_avg_pool3d, F.adaptive_max_pool3d, F.dropout3d), 3),
}
INPLACE_SAFE_FUNCTIONS = {F.relu, F.relu6, F.hardtanh}

MODULE_RULES: dict[type[nn.Module], Rule] = {
    **dict.fromkeys(ELEMENTWISE_MODULES, Rule.ELEMENTWISE),
    **dict.fromkeys(SPATIAL_MODULES, Rule.SPATIAL),
    nn.Upsample: Rule.CHANNEL_FIRST,
    nn.Flatten: Rule.FLATTENING,
}
FUNCTION_RULES: dict[object, Rule] = {
    **dict.fromkeys(
        (F.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish, F.hardswish,
         F.hardsigmoid, F.hardtanh, F.softplus, F.sigmoid, F.tanh, F.dropout, torch.relu, torch.sigmoid,
         torch.tanh, torch.exp, torch.abs, torch.neg, torch.clamp, operator.neg),
        Rule.ELEMENTWISE,
    ),
    **dict.fromkeys(SPATIAL_FUNCTIONS, Rule.SPATIAL),
    F.interpolate: Rule.CHANNEL_FIRST,
    **dict.fromkeys(
        (operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.isub,
         operator.imul, operator.itruediv, torch.add, torch.sub, torch.mul, torch.div),
        Rule.COMBINING,
    ),
    **dict.fromkeys((torch.cat, torch.concat, torch.concatenate), Rule.CONCATENATING),
    F.pad: Rule.PADDING,
    torch.chunk: Rule.CHUNKING,
    torch.split: Rule.SPLITTING,
    torch.flatten: Rule.FLATTENING,
    torch.reshape: Rule.RESHAPING,
    torch.permute: Rule.PERMUTING,
    torch.transpose: Rule.TRANSPOSING,
    **dict.fromkeys((torch.mean, torch.sum, torch.amax, torch.amin), Rule.REDUCING),
}
#: Functions of other libraries, by dotted name: neither library is imported.
FUNCTION_RULES_BY_NAME: dict[str, Rule] = {"torchvision.ops.stochastic_depth.stochastic_depth": Rule.ELEMENTWISE}
#: Tensor methods that change the type but not the shape.
TYPE_METHODS = {"float", "double", "half", "to", "type_as"}
METHOD_RULES: dict[str, Rule] = {
    **dict.fromkeys(
        ("relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "clamp", "clamp_", "exp", "abs",
         "neg", "contiguous", "clone", *TYPE_METHODS),
        Rule.ELEMENTWISE,
    ),
    **dict.fromkeys(("size", "dim", "numel", "element_size", "is_contiguous"), Rule.METADATA),
    **dict.fromkeys(("add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_"), Rule.COMBINING),
    **dict.fromkeys(("mean", "sum", "amax", "amin"), Rule.REDUCING),
    "chunk": Rule.CHUNKING,
    "split": Rule.SPLITTING,
    "flatten": Rule.FLATTENING,
    "view": Rule.RESHAPING,
    "reshape": Rule.RESHAPING,
    "permute": Rule.PERMUTING,
    "transpose": Rule.TRANSPOSING,
}
#: Attributes whose reading makes no value with channels.
METADATA_ATTRIBUTES = {"shape", "ndim", "dtype", "device"}

#: Ops that change their first operand in place and return it.
INPLACE_FUNCTIONS = {operator.iadd, operator.isub, operator.imul, operator.itruediv}
INPLACE_METHODS = {name for name in METHOD_RULES if name.endswith("_")}
#: In-place additions, and the in-place ops after which ``v * dL/da`` (``v`` the value they
#: leave, ``a`` the one they overwrite) is no longer ``a * dL/da`` (:mod:`prunable_nn.writes`).
INPLACE_ADDING_FUNCTIONS = {operator.iadd, operator.isub}
INPLACE_ADDING_METHODS = {"add_", "sub_"}
OVERWRITING_FUNCTIONS = INPLACE_FUNCTIONS - INPLACE_ADDING_FUNCTIONS
OVERWRITING_METHODS = INPLACE_METHODS - INPLACE_ADDING_METHODS - {"relu_", "clamp_"}


def module_rule(module: nn.Module) -> Rule | None:
    """The rule of ``module``'s class or of the nearest class it derives from."""
    for cls in type(module).__mro__:
        if cls in MODULE_RULES:
            return MODULE_RULES[cls]
    return None


def function_rule(function: object) -> Rule | None:
    """The rule of ``function``, found by itself or by its dotted name."""
    try:
        rule = FUNCTION_RULES.get(function)
    except TypeError:  # not hashable
        return None
    if rule is None:
        rule = FUNCTION_RULES_BY_NAME.get(f"{getattr(function, '__module__', None)}.{getattr(function, '__qualname__', None)}")
    return rule


def operation_rule(op: str, target: object) -> Rule | None:
    """The rule of a graph node's operation: ``op`` is ``"call_function"`` or
    ``"call_method"``, ``target`` the function or the method's name."""
    if op == "call_method":
        return METHOD_RULES.get(target)
    return function_rule(target) if op == "call_function" else None


def spatial_dims(module_or_function: object) -> int | None:
    """``N`` for a spatial module or function of ``N``-d maps, else ``None``."""
    if isinstance(module_or_function, nn.Module):
        for cls in type(module_or_function).__mro__:
            if cls in SPATIAL_MODULES:
                return SPATIAL_MODULES[cls]
        return None
    return SPATIAL_FUNCTIONS.get(module_or_function)


Operation = Callable[..., object] | str | type[nn.Module]


def declare_channelwise(operation: Operation) -> None:
    """Teach the walk that ``operation`` keeps channels apart: its output has its first
    input's channels, on the same dim, channel ``k`` computed from input channel ``k`` alone
    (a custom activation, a per-channel filter, a constant scale). ``operation`` is a
    function, a tensor method's name, or a module class, which the tracer then keeps whole.
    Removal equals masking (DESIGN.md rule 1) only where this is true of it."""
    _declare(operation, Rule.CHANNELWISE)


def declare_opaque(operation: Operation) -> None:
    """Teach the walk that ``operation`` is not known to keep channels apart: the channels it
    reads and makes stay. ``operation`` is a function, a tensor method's name, or a module
    class, which the tracer then keeps whole (fx does not trace inside it)."""
    _declare(operation, Rule.OPAQUE)


def _declare(operation: Operation, rule: Rule) -> None:
    if isinstance(operation, type) and issubclass(operation, nn.Module):
        MODULE_RULES[operation] = rule
    elif isinstance(operation, str):
        METHOD_RULES[operation] = rule
    elif callable(operation):
        FUNCTION_RULES[operation] = rule
    else:
        raise TypeError(f"a function, a tensor method's name or a module class, got {operation!r}")
