"""Which channels of a model go together: labels carried through its ``torch.fx`` graph.

Every channel that a layer creates gets a label: each output channel of a convolution or
``Linear``, and each channel of the model's inputs and of values that come out of operations
that are not understood. Walking the graph in order, every value with channels carries the
labels of its channel dimension, and each operation says what it does to them
(:mod:`prunable_nn.ops`; each layer's kind, :mod:`prunable_nn.kinds`, says what it does):

- channel-wise operations (activations, pooling, padding, dropout, reductions over other
  dims, slices of other dims, flatten into channel-major blocks, permutes) carry the labels;
- per-channel layers (batch and instance norms, depthwise convolutions) own the labels they
  read; a group norm ties the channels of each group;
- element-wise operations of several values (residual additions, gating products) tie the
  labels at equal positions together: those channels can only be removed together;
- concatenation along the channel dimension concatenates the label lists, and ``chunk(n)``
  cuts them into ``n`` parts, tying position ``p`` of every part so that they stay equal;
- a grouped convolution ties the channels at the same position of every group;
- convolutions and ``Linear`` layers read labels as their input channels (features).

Labels that reach the model's output, feed an operation not understood (channel shuffles,
splits and slices whose sizes are written out, normalisation across channels, layers kept as
they are, modules that could not be traced), or are combined with a fixed per-channel tensor
are frozen, with the reason. Removing a set of tied labels
from every layer that owns or reads them computes what the unpruned model computes with
those channels zeroed at the readers' inputs (DESIGN.md rule 1).

The estimators are the prunable layers whose outputs the readers see: walking back from each
reader's input through the operations that carry labels, the first prunable layer met. When
the model adds into a layer's output in place (``out += identity`` in torchvision's ResNet),
the estimate reads the sum, the residual stream that the readers see, since ``a`` is
overwritten before its gradient arrives and ``dL/da`` is the same for both terms.

In-place activation modules other than the clamps (ReLU, ReLU6, Hardtanh) are made out of
place: an estimate reads its layer's output when its gradient arrives, and only a clamp leaves
``a * dL/da`` unchanged when it overwrites ``a`` (where it changes a value, the gradient
before it is zero). What other in-place writes into a layer's output mean for its estimate
is :mod:`prunable_nn.writes`' part (``out.mul_(gain)`` in timm's NFNets: a copy is recorded).
"""

from __future__ import annotations

import operator
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from .kinds import kind_of, refusal
from .layers import PrunableLayer
from .ops import (
    CHANNEL_FIRST_FUNCTIONS,
    CHANNEL_FIRST_MODULES,
    CHUNKING,
    COMBINING_FUNCTIONS,
    COMBINING_METHODS,
    CONCATENATING_FUNCTIONS,
    ELEMENTWISE_METHODS,
    ELEMENTWISE_MODULES,
    INPLACE_SAFE_FUNCTIONS,
    INPLACE_SAFE_MODULES,
    METADATA_METHODS,
    REDUCING_FUNCTIONS,
    REDUCING_METHODS,
    SPLITTING,
    is_elementwise_function,
    spatial_dims,
)
from .recording import HOMOGENEOUS_ACTIVATIONS
from .writes import InPlaceWrite, in_place_writes


@dataclass(frozen=True)
class Channels:
    """The labels of one value's channel dimension ``dim`` (of ``ndim`` dims)."""

    dim: int
    ndim: int
    labels: torch.Tensor


@dataclass
class Space:
    """Labels ``start`` to ``start + size - 1``, made by one layer or value ``name``."""

    name: str
    start: int
    size: int
    layer: PrunableLayer | None


@dataclass
class ChannelFlow:
    """What the walk found: the labels each layer owns or reads, the ties between labels, the
    frozen labels and the estimators.

    ``members[(layer, "output")]`` are the labels of a layer's output channels (for per-channel
    layers, the channels they own); ``members[(layer, "input")]`` the labels of each input
    channel (input feature of a ``PLinear``). ``ties`` pairs label tensors whose labels are
    tied position by position. ``out_of_place`` lists the in-place activation modules to
    make out of place (see the module docstring). ``records_after`` maps an estimator called
    once whose output only a ReLU module reads to that ReLU, which records for it
    (:class:`~prunable_nn.recording.RecordAfter`). ``in_place_writes`` says how the model
    writes into an estimator's output in place, where it does (:mod:`prunable_nn.writes`).
    """

    spaces: list[Space] = field(default_factory=list)
    members: dict[tuple[PrunableLayer, str], torch.Tensor] = field(default_factory=dict)
    ties: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    frozen: list[tuple[torch.Tensor, str]] = field(default_factory=list)
    estimators: list[PrunableLayer] = field(default_factory=list)
    out_of_place: list[nn.Module] = field(default_factory=list)
    records_after: dict[PrunableLayer, nn.Module] = field(default_factory=dict)
    in_place_writes: dict[PrunableLayer, InPlaceWrite] = field(default_factory=dict)

    @property
    def num_labels(self) -> int:
        return self.spaces[-1].start + self.spaces[-1].size if self.spaces else 0


def channel_flow(model: nn.Module, graph: fx.Graph) -> ChannelFlow:
    """Walk the ``graph`` of ``model`` (made by :func:`prunable_nn.trace.trace`, with shapes)."""
    return _Walk(model, graph).run()


class _Walk:
    def __init__(self, model: nn.Module, graph: fx.Graph) -> None:
        self.graph = graph
        self.modules = dict(model.named_modules())
        self.flow = ChannelFlow()
        self.values: dict[fx.Node, Any] = {}
        #: For the nodes that carry labels from their inputs, the input nodes they come from.
        self.sources: dict[fx.Node, list[fx.Node]] = {}
        self.readers: list[fx.Node] = []

    def run(self) -> ChannelFlow:
        for node in self.graph.nodes:
            self.values[node] = self._visit(node)
        self._find_estimators()
        return self.flow

    # -- labels ---------------------------------------------------------------------------------
    def _new_space(self, name: str, size: int, layer: PrunableLayer | None = None) -> torch.Tensor:
        start = self.flow.num_labels
        self.flow.spaces.append(Space(name, start, size, layer))
        return torch.arange(start, start + size)

    def _freeze(self, channels: Channels | None, reason: str) -> None:
        if channels is not None:
            self.flow.frozen.append((channels.labels, reason))

    def _tie(self, first: torch.Tensor, second: torch.Tensor) -> None:
        self.flow.ties.append((first, second))

    def _fresh(self, node: fx.Node, reason: str) -> Any:
        """Frozen labels for every value with channels in ``node``'s output."""

        def make(shape: Any) -> Any:
            if isinstance(shape, torch.Size):
                if len(shape) < 2:
                    return None
                labels = self._new_space(node.name, shape[1])
                self.flow.frozen.append((labels, reason))
                return Channels(1, len(shape), labels)
            if isinstance(shape, tuple):
                return tuple(make(item) for item in shape)
            if isinstance(shape, dict):
                return {key: make(item) for key, item in shape.items()}
            return None

        return make(node.meta.get("shape"))

    def _channels(self, argument: Any) -> Channels | None:
        return self.values.get(argument) if isinstance(argument, fx.Node) else None

    def _all_channels(self, argument: Any) -> Iterator[Channels]:
        """Every ``Channels`` in ``argument`` (nested in lists, tuples and dicts)."""
        if isinstance(argument, fx.Node):
            yield from _flatten_values(self.values.get(argument))
        elif isinstance(argument, (list, tuple)):
            for item in argument:
                yield from self._all_channels(item)
        elif isinstance(argument, dict):
            for item in argument.values():
                yield from self._all_channels(item)

    def _carry(self, node: fx.Node, sources: list[fx.Node], channels: Channels) -> Channels:
        self.sources[node] = sources
        return channels

    # -- the walk -------------------------------------------------------------------------------
    def _visit(self, node: fx.Node) -> Any:
        if node.op == "placeholder":
            return self._fresh(node, "they are the model's input")
        if node.op == "get_attr":
            return None
        if node.op == "output":
            for channels in self._all_channels(node.args):
                self._freeze(channels, "they reach the model's output")
            return None
        if node.op == "call_module":
            module = self.modules[node.target]
            if isinstance(module, PrunableLayer):
                return self._layer(node, module)
            return self._module(node, module)
        return self._operation(node)

    def _unknown(self, node: fx.Node, what: str) -> Any:
        reason = f"'{node.name}' ({what}) is not known to keep channels apart"
        inputs = list(self._all_channels((node.args, node.kwargs)))
        for channels in inputs:
            self._freeze(channels, reason)
        return self._fresh(node, reason)

    def _frozen_layer(self, node: fx.Node, module: nn.Module, reason: str) -> Any:
        """A layer whose channels all stay: what it reads and what it makes are frozen."""
        reason = f"'{node.target}' ({type(module).__name__}): {reason}"
        for channels in self._all_channels((node.args, node.kwargs)):
            self._freeze(channels, reason)
        return self._fresh(node, reason)

    def _module(self, node: fx.Node, module: nn.Module) -> Any:
        what = type(module).__name__
        if kind_of(module) is not None:  # a layer of a known kind that is not prunable
            return self._frozen_layer(node, module, refusal(module) or "it is kept whole")
        source = node.args[0] if node.args else None
        channels = self._channels(source)
        if channels is None:
            if list(self._all_channels(node.args)):
                return self._unknown(node, what)
            return self._fresh(node, f"'{node.name}' ({what}) reads no known channels")
        if isinstance(module, ELEMENTWISE_MODULES):
            if getattr(module, "inplace", False) and not isinstance(module, INPLACE_SAFE_MODULES):
                self.flow.out_of_place.append(module)
            return self._carry(node, [source], channels)
        if self._keeps_channels_apart(module, channels):
            return self._carry(node, [source], channels)
        if isinstance(module, nn.Flatten):
            return self._flatten(node, source, channels, module.start_dim, module.end_dim)
        return self._unknown(node, what)

    @staticmethod
    def _keeps_channels_apart(module_or_function: object, channels: Channels) -> bool:
        """Whether a spatial module or function (pooling, padding, resizing) keeps the
        channels of this value apart: they are on the dim just before its spatial dims."""
        dims = spatial_dims(module_or_function)
        if dims is not None:
            return channels.dim == channels.ndim - dims - 1
        channel_first = isinstance(module_or_function, CHANNEL_FIRST_MODULES) or (
            not isinstance(module_or_function, nn.Module) and module_or_function in CHANNEL_FIRST_FUNCTIONS
        )
        return channel_first and channels.dim == 1 and channels.ndim >= 3

    def _operation(self, node: fx.Node) -> Any:
        target = node.target
        method = target if node.op == "call_method" else None
        function = target if node.op == "call_function" else None
        what = f".{method}()" if method else getattr(function, "__name__", str(function))
        if method in METADATA_METHODS or (function is getattr and node.args[1] in ("shape", "ndim", "dtype", "device")):
            return None
        if function is operator.getitem:
            return self._getitem(node)
        if not list(self._all_channels((node.args, node.kwargs))):
            return None  # a value made without any channels: constants, shapes
        source = node.args[0] if node.args else None
        channels = self._channels(source)
        if function in COMBINING_FUNCTIONS or method in COMBINING_METHODS:
            return self._combine(node)
        if function in CONCATENATING_FUNCTIONS:
            return self._concatenate(node)
        if channels is None:
            return self._unknown(node, what)
        if is_elementwise_function(function) or method in ELEMENTWISE_METHODS:
            if node.kwargs.get("inplace", False) and function not in INPLACE_SAFE_FUNCTIONS:
                return self._unknown(node, f"{what} in place")
            if any(_shape(operand) is not None for operand in (*node.args[1:], *node.kwargs.values())):
                return self._combine(node)  # a clamp to a tensor: like a product with it
            return self._carry(node, [source], channels)
        if function is not None and self._keeps_channels_apart(function, channels):
            return self._carry(node, [source], channels)
        if function is F.pad:
            return self._pad(node, source, channels, what)
        if function in CHUNKING or method in CHUNKING:
            return self._chunk(node, source, channels, what)
        if function in SPLITTING or method in SPLITTING:
            return self._split(node, source, channels, what)
        if function is torch.flatten or method == "flatten":
            start = _argument(node, 1, "start_dim", 0)
            end = _argument(node, 2, "end_dim", -1)
            return self._flatten(node, source, channels, start, end)
        if method in ("view", "reshape") or function is torch.reshape:
            return self._reshape(node, source, channels, what)
        if function is torch.permute or method == "permute":
            return self._permute(node, source, channels, what)
        if function is torch.transpose or method == "transpose":
            return self._transpose(node, source, channels)
        if function in REDUCING_FUNCTIONS or method in REDUCING_METHODS:
            return self._reduce(node, source, channels, what)
        return self._unknown(node, what)

    # -- layers ---------------------------------------------------------------------------------
    def _layer(self, node: fx.Node, layer: PrunableLayer) -> Any:
        name = node.target
        kind = layer.kind
        frozen = kind.frozen(layer)
        if frozen is not None:
            return self._frozen_layer(node, layer, frozen)
        source = node.args[0]
        channels = self._channels(source)
        if channels is not None and channels.dim != kind.input_dim(layer, channels.ndim):
            self._freeze(channels, f"'{name}' ({type(layer).__name__}) does not read them as its channels")
            channels = None
        if kind.owns_channels(layer):
            if channels is None:
                return self._fresh(node, f"'{name}' reads no known channels")
            return self._carry(node, [source], self._own(layer, channels))
        return self._reader(node, layer, source, channels)

    def _own(self, layer: PrunableLayer, channels: Channels) -> Channels:
        """A per-channel layer owns the labels it reads (the same labels at every call)."""
        key = (layer, "output")
        if key in self.flow.members:
            self._tie(self.flow.members[key], channels.labels)
        else:
            self.flow.members[key] = channels.labels
            self.flow.ties += layer.kind.ties(layer, channels.labels, "output")
        return channels

    def _reader(self, node: fx.Node, layer: PrunableLayer, source: fx.Node, channels: Channels | None) -> Channels:
        kind = layer.kind
        if channels is not None:
            fixed = kind.frozen_inputs(layer)
            if fixed is not None:
                self._freeze(channels, f"'{node.target}' ({type(layer).__name__}): {fixed}")
            key = (layer, "input")
            if key in self.flow.members:
                self._tie(self.flow.members[key], channels.labels)
            else:
                self.flow.members[key] = channels.labels
                self.flow.ties += kind.ties(layer, channels.labels, "input")
            self.readers.append(node)
        key = (layer, "output")
        if key not in self.flow.members:
            self.flow.members[key] = self._new_space(node.target, kind.out_channels(layer), layer)
            self.flow.ties += kind.ties(layer, self.flow.members[key], "output")
        shape = node.meta["shape"]
        return Channels(kind.output_dim(layer, len(shape)), len(shape), self.flow.members[key])

    # -- operations that carry labels ---------------------------------------------------------
    def _combine(self, node: fx.Node) -> Any:
        """Element-wise ops of several values tie the labels at each position of the channel
        dim; a fixed tensor that varies along it freezes them."""
        shape = node.meta["shape"]
        ndim = len(shape)
        operands = [argument for argument in (*node.args, *node.kwargs.values())]
        tracked: list[tuple[fx.Node, Channels]] = []
        dims = set()
        fixed = []
        for operand in operands:
            operand_shape = _shape(operand)
            channels = self._channels(operand)
            if channels is not None and operand_shape[channels.dim] == shape[channels.dim + ndim - channels.ndim]:
                tracked.append((operand, channels))
                dims.add(channels.dim + ndim - channels.ndim)
            elif channels is not None:
                self._freeze(channels, f"'{node.name}' spreads them across the channels of another value")
            elif operand_shape is not None:
                fixed.append((operand, operand_shape))
        if not tracked:
            return self._fresh(node, f"'{node.name}' has no known channels")
        if len(dims) > 1:
            return self._unknown(node, "an element-wise op of values with channels in different dims")
        dim = dims.pop()
        for operand, operand_shape in fixed:
            offset = len(operand_shape) - ndim + dim
            if 0 <= offset < len(operand_shape) and operand_shape[offset] != 1:
                reason = f"'{node.name}' combines them with a fixed per-channel tensor '{operand.name}'"
                for _, channels in tracked:
                    self._freeze(channels, reason)
                return self._fresh(node, reason)
        first = tracked[0][1]
        for _, channels in tracked[1:]:
            self._tie(first.labels, channels.labels)
        return self._carry(node, [operand for operand, _ in tracked], Channels(dim, ndim, first.labels))

    def _concatenate(self, node: fx.Node) -> Any:
        values = _argument(node, 0, "tensors", ())
        dim = _argument(node, 1, "dim", 0)
        ndim = len(node.meta["shape"])
        dim %= ndim
        parts = [self._channels(value) for value in values]
        if any(part is None or part.dim != dim or part.ndim != ndim for part in parts):
            return self._unknown(node, "a concatenation of values without channels along its dim")
        return self._carry(node, list(values), Channels(dim, ndim, torch.cat([part.labels for part in parts])))

    def _pad(self, node: fx.Node, source: fx.Node, channels: Channels, what: str) -> Any:
        """``F.pad`` with ``2 * k`` amounts pads the last ``k`` dims, each channel alike."""
        amounts = _argument(node, 1, "pad", ())
        if channels.dim < channels.ndim - len(amounts) // 2:
            return self._carry(node, [source], channels)
        return self._unknown(node, f"{what} of the channels")

    def _chunk(self, node: fx.Node, source: fx.Node, channels: Channels, what: str) -> Any:
        """``chunk(n)`` along the channels makes ``n`` equal parts, whose sizes follow the
        channels: position ``p`` of every part is tied, so that the parts stay equal. Along
        another dim, every part carries the channels."""
        parts = node.meta.get("shape")
        dim = _argument(node, 2, "dim", 0) % channels.ndim
        if not isinstance(parts, tuple):
            return self._unknown(node, what)
        if dim != channels.dim:
            return self._carry_to_parts(node, source, [channels.labels] * len(parts), channels)
        count = _argument(node, 1, "chunks", None)
        size = len(channels.labels)
        if not isinstance(count, int) or count != len(parts) or size % count:
            return self._unknown(node, f"{what} of {size} channels into unequal parts")
        by_part = channels.labels.view(count, -1)
        for part in range(1, count):
            self._tie(by_part[0], by_part[part])
        return self._carry_to_parts(node, source, list(by_part), channels)

    def _split(self, node: fx.Node, source: fx.Node, channels: Channels, what: str) -> Any:
        """``split`` along another dim carries the channels to every part; along the channels
        its sizes are written out and would not follow pruning."""
        parts = node.meta.get("shape")
        dim = _argument(node, 2, "dim", 0) % channels.ndim
        if not isinstance(parts, tuple) or dim == channels.dim:
            return self._unknown(node, f"{what} of the channels into sizes written out")
        return self._carry_to_parts(node, source, [channels.labels] * len(parts), channels)

    def _carry_to_parts(self, node: fx.Node, source: fx.Node, labels: list[torch.Tensor], channels: Channels) -> tuple:
        self.sources[node] = [source]
        return tuple(Channels(channels.dim, channels.ndim, part) for part in labels)

    def _flatten(self, node: fx.Node, source: fx.Node, channels: Channels, start: int, end: int) -> Any:
        """Flattening dims ``start..end`` keeps channel ``k`` as the block of ``prod(shape of
        the later dims flattened)`` consecutive features ``k * block ..`` when the channel dim
        is the first one flattened."""
        shape = _shape(source)
        start %= channels.ndim
        end %= channels.ndim
        if end < start:
            return self._unknown(node, "flatten")
        ndim = channels.ndim - (end - start)
        if channels.dim < start:
            return self._carry(node, [source], Channels(channels.dim, ndim, channels.labels))
        if channels.dim > end:
            return self._carry(node, [source], Channels(channels.dim - (end - start), ndim, channels.labels))
        if channels.dim != start:
            return self._unknown(node, "flatten into the channels")
        block = 1
        for size in shape[start + 1 : end + 1]:
            block *= size
        return self._carry(node, [source], Channels(start, ndim, channels.labels.repeat_interleave(block)))

    def _reshape(self, node: fx.Node, source: fx.Node, channels: Channels, what: str) -> Any:
        """A reshape that keeps the dims before the channels and flattens the channels with
        every later dim, written with ``-1`` (``x.view(x.size(0), -1)``), is a flatten; a
        reshape with the sizes written out would not follow the pruned channels."""
        sizes = node.args[1:] if node.op == "call_method" else node.args[1]
        if len(sizes) == 1 and isinstance(sizes[0], (list, tuple)):
            sizes = sizes[0]
        shape = _shape(source)
        out_shape = node.meta["shape"]
        keeps_leading = tuple(out_shape[: channels.dim]) == tuple(shape[: channels.dim])
        if keeps_leading and len(sizes) == channels.dim + 1 and sizes[-1] == -1:
            return self._flatten(node, source, channels, channels.dim, -1)
        return self._unknown(node, what)

    def _permute(self, node: fx.Node, source: fx.Node, channels: Channels, what: str) -> Any:
        dims = node.args[1:] if node.op == "call_method" else node.args[1]
        if len(dims) == 1 and isinstance(dims[0], (list, tuple)):
            dims = dims[0]
        dims = [dim % channels.ndim for dim in dims]
        return self._carry(node, [source], Channels(dims.index(channels.dim), channels.ndim, channels.labels))

    def _transpose(self, node: fx.Node, source: fx.Node, channels: Channels) -> Any:
        first, second = (dim % channels.ndim for dim in node.args[1:3])
        dim = {first: second, second: first}.get(channels.dim, channels.dim)
        return self._carry(node, [source], Channels(dim, channels.ndim, channels.labels))

    def _reduce(self, node: fx.Node, source: fx.Node, channels: Channels, what: str) -> Any:
        dims = _argument(node, 1, "dim", None)
        keepdim = _argument(node, 2, "keepdim", False)
        if dims is None:
            return self._unknown(node, what)
        dims = {dim % channels.ndim for dim in (dims if isinstance(dims, (list, tuple)) else [dims])}
        if channels.dim in dims:
            return self._unknown(node, what)
        if keepdim:
            return self._carry(node, [source], channels)
        dim = channels.dim - sum(1 for reduced in dims if reduced < channels.dim)
        return self._carry(node, [source], Channels(dim, channels.ndim - len(dims), channels.labels))

    def _getitem(self, node: fx.Node) -> Any:
        container, index = node.args
        value = self.values.get(container) if isinstance(container, fx.Node) else None
        if isinstance(value, (list, tuple)):
            if not (isinstance(index, int) and -len(value) <= index < len(value)):
                return None
            self.sources[node] = [container]
            return value[index]
        if isinstance(value, dict):
            return value.get(index)
        if not isinstance(value, Channels):
            return None
        dim = _dim_after_indexing(value, index)
        if dim is None:
            return self._unknown(node, "indexing of the channels")
        ndim = len(node.meta["shape"])
        return self._carry(node, [container], Channels(dim, ndim, value.labels))

    # -- estimators ---------------------------------------------------------------------------
    def _find_estimators(self) -> None:
        """For every reader that the outputs depend on, the prunable layers met first walking
        back from its input. (A reader whose output is dead still runs and follows the
        channels it reads, but it sends no gradient back.)"""
        found: dict[PrunableLayer, None] = {}
        live = _live_nodes(self.graph)
        for reader in self.readers:
            if reader not in live:
                continue
            pending, seen = [reader.args[0]], set()
            while pending:
                node = pending.pop()
                if node in seen:
                    continue
                seen.add(node)
                module = self.modules.get(node.target) if node.op == "call_module" else None
                if isinstance(module, PrunableLayer):
                    if (module, "output") in self.flow.members:
                        found[module] = None
                else:
                    pending += self.sources.get(node, [])
        calls: dict[nn.Module, list[fx.Node]] = {}
        for node in self.graph.nodes:
            if node.op == "call_module":
                calls.setdefault(self.modules[node.target], []).append(node)
        order = {module: position for position, module in enumerate(calls)}
        self.flow.estimators = sorted(found, key=order.__getitem__)
        writes = in_place_writes(self.graph, self.modules, self.flow.out_of_place)
        for layer in self.flow.estimators:
            written = {writes[node] for node in calls[layer] if node in writes}
            if written:  # an overwrite of one call's output outweighs an addition into another's
                self.flow.in_place_writes[layer] = min(written, key=lambda write: write is not InPlaceWrite.OVERWRITE)
            (node, *others), users = calls[layer], list(calls[layer][0].users)
            if others or len(users) != 1 or users[0].op != "call_module" or users[0].args[:1] != (node,):
                continue
            if users[0] in writes:  # the activation's output is changed after it: not what autograd keeps
                continue
            activation = self.modules[users[0].target]
            if type(activation) in HOMOGENEOUS_ACTIVATIONS:
                self.flow.records_after[layer] = activation


def _live_nodes(graph: fx.Graph) -> set[fx.Node]:
    """The nodes that the outputs depend on: the others get no gradient."""
    pending = [node for node in graph.nodes if node.op == "output"]
    live: set[fx.Node] = set()
    while pending:
        node = pending.pop()
        if node not in live:
            live.add(node)
            pending += node.all_input_nodes
    return live


def _flatten_values(value: Any) -> Iterator[Channels]:
    if isinstance(value, Channels):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _flatten_values(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _flatten_values(item)


def _argument(node: fx.Node, position: int, name: str, default: Any) -> Any:
    if len(node.args) > position:
        return node.args[position]
    return node.kwargs.get(name, default)


def _shape(argument: Any) -> torch.Size | None:
    if not isinstance(argument, fx.Node):
        return None
    shape = argument.meta.get("shape")
    return shape if isinstance(shape, torch.Size) else None


def _dim_after_indexing(channels: Channels, index: Any) -> int | None:
    """Where the channel dim is after ``value[index]``, or ``None`` if the index touches it."""
    items = list(index) if isinstance(index, tuple) else [index]
    if sum(item is Ellipsis for item in items) > 1:
        return None
    if Ellipsis in items:
        position = items.index(Ellipsis)
        used = sum(item is not None for item in items) - 1
        items[position : position + 1] = [slice(None)] * (channels.ndim - used)
    dim_in, dim_out = 0, 0
    for item in items:
        if item is None:
            dim_out += 1
            continue
        if dim_in == channels.dim:
            return dim_out if item == slice(None) else None
        if isinstance(item, slice):
            dim_out += 1
        elif not isinstance(item, int):
            return None
        dim_in += 1
    return dim_out + (channels.dim - dim_in)
