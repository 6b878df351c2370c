"""What each :class:`~prunable_nn.ops.Rule` does to the labels of the values an operation
reads (:mod:`prunable_nn.graph` walks the graph; :mod:`prunable_nn.ops` says which rule an
operation follows). Each rule is a function of the walk, the operation's node, the value
whose channels it follows (its first operand) and those channels; :data:`RULES` maps the
rules to them. An operation they cannot follow is left to the walk's ``unknown``, which
freezes what it reads and makes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import fx

from .flow import Channels
from .ops import INPLACE_SAFE_FUNCTIONS, Rule, spatial_dims

if TYPE_CHECKING:
    from .graph import Walk

Handler = Callable[["Walk", fx.Node, Any, "Channels | None", str], Any]


def keeps_channels_apart(module_or_function: object, channels: Channels, rule: Rule) -> bool:
    """Whether a spatial or channel-first module or function (pooling, padding, resizing)
    keeps the channels of this value apart: they are on the dim just before its spatial dims."""
    if rule is Rule.SPATIAL:
        return channels.dim == channels.ndim - spatial_dims(module_or_function) - 1
    return channels.dim == 1 and channels.ndim >= 3


def elementwise(walk: Walk, node: fx.Node, source: fx.Node, channels: Channels, what: str) -> Any:
    if node.kwargs.get("inplace", False) and node.target not in INPLACE_SAFE_FUNCTIONS:
        return walk.unknown(node, f"{what} in place")
    if any(shape_of(operand) is not None for operand in (*node.args[1:], *node.kwargs.values())):
        return combine(walk, node, source, channels, what)  # a clamp to a tensor: like a product with it
    return walk.carry(node, [source], channels)


def channelwise(walk: Walk, node: fx.Node, source: fx.Node, channels: Channels, what: str) -> Any:
    return walk.carry(node, [source], channels)


def kept_apart(walk: Walk, node: fx.Node, source: fx.Node, channels: Channels, what: str) -> Any:
    """A spatial or channel-first function carries the channels it keeps apart."""
    rule = Rule.SPATIAL if spatial_dims(node.target) is not None else Rule.CHANNEL_FIRST
    if keeps_channels_apart(node.target, channels, rule):
        return walk.carry(node, [source], channels)
    return walk.unknown(node, what)


def combine(walk: Walk, node: fx.Node, source: Any, channels: Channels | None, what: str) -> Any:
    """Element-wise ops of several values tie the labels at each position of the channel
    dim; a fixed tensor that varies along it freezes them."""
    shape = node.meta["shape"]
    ndim = len(shape)
    tracked: list[tuple[fx.Node, Channels]] = []
    dims = set()
    fixed = []
    for operand in (*node.args, *node.kwargs.values()):
        operand_shape = shape_of(operand)
        operand_channels = walk.channels_of(operand)
        if operand_channels is not None and operand_shape[operand_channels.dim] == shape[operand_channels.dim + ndim - operand_channels.ndim]:
            tracked.append((operand, operand_channels))
            dims.add(operand_channels.dim + ndim - operand_channels.ndim)
        elif operand_channels is not None:
            walk.freeze(operand_channels, f"'{node.name}' spreads them across the channels of another value")
        elif operand_shape is not None:
            fixed.append((operand, operand_shape))
    if not tracked:
        return walk.fresh(node, f"'{node.name}' has no known channels")
    if len(dims) > 1:
        return walk.unknown(node, "an element-wise op of values with channels in different dims")
    dim = dims.pop()
    for operand, operand_shape in fixed:
        offset = len(operand_shape) - ndim + dim
        if 0 <= offset < len(operand_shape) and operand_shape[offset] != 1:
            reason = f"'{node.name}' combines them with a fixed per-channel tensor '{operand.name}'"
            for _, operand_channels in tracked:
                walk.freeze(operand_channels, reason)
            return walk.fresh(node, reason)
    first = tracked[0][1]
    for _, operand_channels in tracked[1:]:
        walk.tie(first.labels, operand_channels.labels)
    return walk.carry(node, [operand for operand, _ in tracked], Channels(dim, ndim, first.labels))


def concatenate(walk: Walk, node: fx.Node, source: Any, channels: Channels | None, what: str) -> Any:
    values = argument(node, 0, "tensors", ())
    ndim = len(node.meta["shape"])
    dim = argument(node, 1, "dim", 0) % ndim
    parts = [walk.channels_of(value) for value in values]
    if any(part is None or part.dim != dim or part.ndim != ndim for part in parts):
        return walk.unknown(node, "a concatenation of values without channels along its dim")
    return walk.carry(node, list(values), Channels(dim, ndim, torch.cat([part.labels for part in parts])))


def pad(walk: Walk, node: fx.Node, source: fx.Node, channels: Channels, what: str) -> Any:
    """``F.pad`` with ``2 * k`` amounts pads the last ``k`` dims, each channel alike."""
    amounts = argument(node, 1, "pad", ())
    if channels.dim < channels.ndim - len(amounts) // 2:
        return walk.carry(node, [source], channels)
    return walk.unknown(node, f"{what} of the channels")


def chunk(walk: Walk, node: fx.Node, source: fx.Node, channels: Channels, what: str) -> Any:
    """``chunk(n)`` along the channels makes ``n`` equal parts, whose sizes follow the
    channels: position ``p`` of every part is tied, so that the parts stay equal. Along
    another dim, every part carries the channels."""
    parts = node.meta.get("shape")
    dim = argument(node, 2, "dim", 0) % channels.ndim
    if not isinstance(parts, tuple):
        return walk.unknown(node, what)
    if dim != channels.dim:
        return walk.carry_to_parts(node, source, [channels.labels] * len(parts), channels)
    count = argument(node, 1, "chunks", None)
    size = len(channels.labels)
    if not isinstance(count, int) or count != len(parts) or size % count:
        return walk.unknown(node, f"{what} of {size} channels into unequal parts")
    by_part = channels.labels.view(count, -1)
    for part in range(1, count):
        walk.tie(by_part[0], by_part[part])
    return walk.carry_to_parts(node, source, list(by_part), channels)


def split(walk: Walk, node: fx.Node, source: fx.Node, channels: Channels, what: str) -> Any:
    """``split`` along another dim carries the channels to every part; along the channels
    its sizes are written out and would not follow pruning."""
    parts = node.meta.get("shape")
    dim = argument(node, 2, "dim", 0) % channels.ndim
    if not isinstance(parts, tuple) or dim == channels.dim:
        return walk.unknown(node, f"{what} of the channels into sizes written out")
    return walk.carry_to_parts(node, source, [channels.labels] * len(parts), channels)


def flatten(walk: Walk, node: fx.Node, source: fx.Node, channels: Channels, what: str) -> Any:
    return flatten_dims(walk, node, source, channels, argument(node, 1, "start_dim", 0), argument(node, 2, "end_dim", -1))


def flatten_dims(walk: Walk, node: fx.Node, source: fx.Node, channels: Channels, start: int, end: int) -> Any:
    """Flattening dims ``start..end`` keeps channel ``k`` as the block of ``prod(shape of
    the later dims flattened)`` consecutive features ``k * block ..`` when the channel dim
    is the first one flattened."""
    shape = shape_of(source)
    start %= channels.ndim
    end %= channels.ndim
    if end < start:
        return walk.unknown(node, "flatten")
    ndim = channels.ndim - (end - start)
    if channels.dim < start:
        return walk.carry(node, [source], Channels(channels.dim, ndim, channels.labels))
    if channels.dim > end:
        return walk.carry(node, [source], Channels(channels.dim - (end - start), ndim, channels.labels))
    if channels.dim != start:
        return walk.unknown(node, "flatten into the channels")
    block = 1
    for size in shape[start + 1 : end + 1]:
        block *= size
    return walk.carry(node, [source], Channels(start, ndim, channels.labels.repeat_interleave(block)))


def reshape(walk: Walk, node: fx.Node, source: fx.Node, channels: Channels, what: str) -> Any:
    """A reshape that keeps the dims before the channels and flattens the channels with
    every later dim, written with ``-1`` (``x.view(x.size(0), -1)``), is a flatten; a
    reshape with the sizes written out would not follow the pruned channels."""
    sizes = node.args[1:] if node.op == "call_method" else node.args[1]
    if len(sizes) == 1 and isinstance(sizes[0], (list, tuple)):
        sizes = sizes[0]
    shape = shape_of(source)
    out_shape = node.meta["shape"]
    keeps_leading = tuple(out_shape[: channels.dim]) == tuple(shape[: channels.dim])
    if keeps_leading and len(sizes) == channels.dim + 1 and sizes[-1] == -1:
        return flatten_dims(walk, node, source, channels, channels.dim, -1)
    return walk.unknown(node, what)


def permute(walk: Walk, node: fx.Node, source: fx.Node, channels: Channels, what: str) -> Any:
    dims = node.args[1:] if node.op == "call_method" else node.args[1]
    if len(dims) == 1 and isinstance(dims[0], (list, tuple)):
        dims = dims[0]
    dims = [dim % channels.ndim for dim in dims]
    return walk.carry(node, [source], Channels(dims.index(channels.dim), channels.ndim, channels.labels))


def transpose(walk: Walk, node: fx.Node, source: fx.Node, channels: Channels, what: str) -> Any:
    first, second = (dim % channels.ndim for dim in node.args[1:3])
    dim = {first: second, second: first}.get(channels.dim, channels.dim)
    return walk.carry(node, [source], Channels(dim, channels.ndim, channels.labels))


def reduce(walk: Walk, node: fx.Node, source: fx.Node, channels: Channels, what: str) -> Any:
    dims = argument(node, 1, "dim", None)
    keepdim = argument(node, 2, "keepdim", False)
    if dims is None:
        return walk.unknown(node, what)
    dims = {dim % channels.ndim for dim in (dims if isinstance(dims, (list, tuple)) else [dims])}
    if channels.dim in dims:
        return walk.unknown(node, what)
    if keepdim:
        return walk.carry(node, [source], channels)
    dim = channels.dim - sum(1 for reduced in dims if reduced < channels.dim)
    return walk.carry(node, [source], Channels(dim, channels.ndim - len(dims), channels.labels))


def opaque(walk: Walk, node: fx.Node, source: fx.Node, channels: Channels, what: str) -> Any:
    return walk.unknown(node, what)


#: The rules of the operations whose first operand must have channels for them to follow.
RULES: dict[Rule, Handler] = {
    Rule.ELEMENTWISE: elementwise,
    Rule.CHANNELWISE: channelwise,
    Rule.SPATIAL: kept_apart,
    Rule.CHANNEL_FIRST: kept_apart,
    Rule.PADDING: pad,
    Rule.CHUNKING: chunk,
    Rule.SPLITTING: split,
    Rule.FLATTENING: flatten,
    Rule.RESHAPING: reshape,
    Rule.PERMUTING: permute,
    Rule.TRANSPOSING: transpose,
    Rule.REDUCING: reduce,
    Rule.OPAQUE: opaque,
}
#: The rules that follow the channels of every operand themselves.
OPERAND_RULES: dict[Rule, Handler] = {Rule.COMBINING: combine, Rule.CONCATENATING: concatenate}


def argument(node: fx.Node, position: int, name: str, default: Any) -> Any:
    """Argument ``position`` (or keyword ``name``) of ``node``, else ``default``."""
    if len(node.args) > position:
        return node.args[position]
    return node.kwargs.get(name, default)


def shape_of(value: Any) -> torch.Size | None:
    """The shape of the tensor ``value`` stands for, if it is a node that made one."""
    if not isinstance(value, fx.Node):
        return None
    shape = value.meta.get("shape")
    return shape if isinstance(shape, torch.Size) else None
