"""What the walk of :mod:`prunable_nn.graph` knows about the operations between layers.

Each table names modules, functions or tensor methods by what they do to channels:

- element-wise: every output value depends on the input value at the same place, so the
  channels are carried along (activations, dropout, ``.contiguous()``);
- spatial: they work on the last ``N`` dims of an ``N``-d map and keep the channels of dim
  ``-(N + 1)`` apart (pooling, padding, upsampling); :data:`SPATIAL_MODULES` gives ``N``;
- combining: element-wise ops of several values (residual additions, gating products);
- reducing: reductions over some dims (``mean``, ``sum``), which keep the others;
- concatenating and splitting along a dim.

In-place activations that merely clamp (ReLU, ReLU6, Hardtanh) leave ``a * dL/da`` unchanged
when they overwrite ``a``, since the gradient before them is zero wherever they change a
value; the other in-place activations are made out of place (:mod:`prunable_nn.graph`), and
a layer whose output an in-place product or quotient overwrites records a copy of it.
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import nn

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
#: Modules and functions that keep the channels of dim 1 apart whatever the map's rank.
CHANNEL_FIRST_MODULES = (nn.Upsample,)
INPLACE_SAFE_MODULES = (nn.ReLU, nn.ReLU6, nn.Hardtanh)
ELEMENTWISE_FUNCTIONS = {
    F.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish, F.hardswish,
    F.hardsigmoid, F.hardtanh, F.softplus, F.sigmoid, F.tanh, F.dropout,
    torch.relu, torch.sigmoid, torch.tanh, torch.exp, torch.abs, torch.neg, torch.clamp,
    operator.neg,
}
#: Element-wise functions of other libraries, by dotted name: neither library is imported.
ELEMENTWISE_FUNCTION_NAMES = {"torchvision.ops.stochastic_depth.stochastic_depth"}
INPLACE_SAFE_FUNCTIONS = {F.relu, F.relu6, F.hardtanh}
SPATIAL_FUNCTIONS: dict[object, int] = {
    **dict.fromkeys((F.max_pool1d, F.avg_pool1d, F.adaptive_avg_pool1d, F.adaptive_max_pool1d, F.dropout1d), 1),
    **dict.fromkeys((F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.dropout2d), 2),
    **dict.fromkeys((F.max_pool3d, F.avg_pool3d, F.adaptive_avg_pool3d, F.adaptive_max_pool3d, F.dropout3d), 3),
}
CHANNEL_FIRST_FUNCTIONS = {F.interpolate}
ELEMENTWISE_METHODS = {
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "clamp", "clamp_", "exp", "abs",
    "neg", "contiguous", "clone", "float", "double", "half", "to", "type_as",
}
METADATA_METHODS = {"size", "dim", "numel", "element_size", "is_contiguous"}
COMBINING_FUNCTIONS = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.isub,
    operator.imul, operator.itruediv, torch.add, torch.sub, torch.mul, torch.div,
}
COMBINING_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_"}
#: Ops that change their first operand in place and return it.
INPLACE_FUNCTIONS = {operator.iadd, operator.isub, operator.imul, operator.itruediv}
INPLACE_METHODS = {name for name in COMBINING_METHODS | ELEMENTWISE_METHODS if name.endswith("_")}
#: In-place additions, and the in-place ops after which ``v * dL/da`` (``v`` the value they
#: leave, ``a`` the one they overwrite) is no longer ``a * dL/da`` (:mod:`prunable_nn.writes`).
INPLACE_ADDING_FUNCTIONS = {operator.iadd, operator.isub}
INPLACE_ADDING_METHODS = {"add_", "sub_"}
OVERWRITING_FUNCTIONS = INPLACE_FUNCTIONS - INPLACE_ADDING_FUNCTIONS
OVERWRITING_METHODS = INPLACE_METHODS - INPLACE_ADDING_METHODS - {"relu_", "clamp_"}
REDUCING_FUNCTIONS = {torch.mean, torch.sum, torch.amax, torch.amin}
REDUCING_METHODS = {"mean", "sum", "amax", "amin"}
CONCATENATING_FUNCTIONS = {torch.cat, torch.concat, torch.concatenate}
#: ``chunk(x, n, dim)``: ``n`` equal parts along ``dim`` (the function and the method).
CHUNKING = {torch.chunk, "chunk"}
#: ``split(x, sizes, dim)``: parts of the sizes given (the function and the method).
SPLITTING = {torch.split, "split"}


def spatial_dims(module_or_function: object) -> int | None:
    """``N`` for a spatial module or function of ``N``-d maps, else ``None``."""
    if isinstance(module_or_function, nn.Module):
        for cls in type(module_or_function).__mro__:
            if cls in SPATIAL_MODULES:
                return SPATIAL_MODULES[cls]
        return None
    return SPATIAL_FUNCTIONS.get(module_or_function)


def is_elementwise_function(function: object) -> bool:
    """Whether ``function`` is one of :data:`ELEMENTWISE_FUNCTIONS` or
    :data:`ELEMENTWISE_FUNCTION_NAMES`."""
    try:
        if function in ELEMENTWISE_FUNCTIONS:
            return True
    except TypeError:  # not hashable
        return False
    name = f"{getattr(function, '__module__', None)}.{getattr(function, '__qualname__', None)}"
    return name in ELEMENTWISE_FUNCTION_NAMES
