"""Which channels of a model go together: labels carried through its ``torch.fx`` graph.

Every channel that a layer creates gets a label: each output channel of a convolution or
``Linear``, and each channel of the model's inputs and of values that come out of operations
that are not understood. Walking the graph in order, every value with channels carries the
labels of its channel dimension, and each operation says what it does to them (its rule,
:mod:`prunable_nn.ops`; each layer's kind, :mod:`prunable_nn.kinds`, says what it does):

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

The walk runs after the trace (:mod:`prunable_nn.trace`) and ends by finding the
estimators (:mod:`prunable_nn.estimators`); the channel map (:mod:`prunable_nn.channel_map`)
groups what it found into chains. What each operation does is its rule's part
(:mod:`prunable_nn.rules`); this module follows the layers, the modules and the labels.

In-place activation modules other than the clamps (ReLU, ReLU6, Hardtanh) are made out of
place: an estimate reads its layer's output when its gradient arrives, and only a clamp leaves
``a * dL/da`` unchanged when it overwrites ``a`` (where it changes a value, the gradient
before it is zero). What other in-place writes into a layer's output mean for its estimate
is :mod:`prunable_nn.writes`' part (``out.mul_(gain)`` in timm's NFNets: a copy is recorded).
"""

from __future__ import annotations

import operator
from collections.abc import Iterator
from typing import Any

import torch
from torch import fx, nn

from .estimators import find_estimators
from .flow import ChannelFlow, Channels, Space
from .kinds import kind_of, refusal
from .layers import PrunableLayer
from .ops import INPLACE_SAFE_MODULES, METADATA_ATTRIBUTES, Rule, module_rule, operation_rule
from .rules import OPERAND_RULES, RULES, flatten_dims, keeps_channels_apart


def channel_flow(model: nn.Module, graph: fx.Graph) -> ChannelFlow:
    """Walk the ``graph`` of ``model`` (made by :func:`prunable_nn.trace.trace`, with shapes)."""
    return Walk(model, graph).run()


class Walk:
    """One walk of a graph: the labels of every value so far (``values``), the nodes each
    node carries its labels from (``sources``), the layers' calls that read labels
    (``readers``), and what the walk found (``flow``). The rules
    (:mod:`prunable_nn.rules`) work through its public methods."""

    def __init__(self, model: nn.Module, graph: fx.Graph) -> None:
        self.graph = graph
        self.modules = dict(model.named_modules())
        self.flow = ChannelFlow()
        self.values: dict[fx.Node, Any] = {}
        self.sources: dict[fx.Node, list[fx.Node]] = {}
        self.readers: list[fx.Node] = []

    def run(self) -> ChannelFlow:
        for node in self.graph.nodes:
            self.values[node] = self._visit(node)
        find_estimators(self.graph, self.modules, self.flow, self.readers, self.sources)
        return self.flow

    # -- labels ---------------------------------------------------------------------------------
    def new_space(self, name: str, size: int, layer: PrunableLayer | None = None) -> torch.Tensor:
        """``size`` new labels, made by ``name``."""
        start = self.flow.num_labels
        self.flow.spaces.append(Space(name, start, size, layer))
        return torch.arange(start, start + size)

    def freeze(self, channels: Channels | None, reason: str) -> None:
        if channels is not None:
            self.flow.frozen.append((channels.labels, reason))

    def tie(self, first: torch.Tensor, second: torch.Tensor) -> None:
        """Tie the labels of ``first`` and ``second`` position by position."""
        self.flow.ties.append((first, second))

    def fresh(self, node: fx.Node, reason: str) -> Any:
        """Frozen labels for every value with channels in ``node``'s output."""

        def make(shape: Any) -> Any:
            if isinstance(shape, torch.Size):
                if len(shape) < 2:
                    return None
                labels = self.new_space(node.name, shape[1])
                self.flow.frozen.append((labels, reason))
                return Channels(1, len(shape), labels)
            if isinstance(shape, tuple):
                return tuple(make(item) for item in shape)
            if isinstance(shape, dict):
                return {key: make(item) for key, item in shape.items()}
            return None

        return make(node.meta.get("shape"))

    def channels_of(self, argument: Any) -> Channels | None:
        """The labels of the value ``argument`` stands for, if it is a node with channels."""
        return self.values.get(argument) if isinstance(argument, fx.Node) else None

    def all_channels(self, argument: Any) -> Iterator[Channels]:
        """Every ``Channels`` in ``argument`` (nested in lists, tuples and dicts)."""
        if isinstance(argument, fx.Node):
            yield from _flatten_values(self.values.get(argument))
        elif isinstance(argument, (list, tuple)):
            for item in argument:
                yield from self.all_channels(item)
        elif isinstance(argument, dict):
            for item in argument.values():
                yield from self.all_channels(item)

    def carry(self, node: fx.Node, sources: list[fx.Node], channels: Channels) -> Channels:
        """``channels``, carried by ``node`` from ``sources``."""
        self.sources[node] = sources
        return channels

    def carry_to_parts(self, node: fx.Node, source: fx.Node, labels: list[torch.Tensor], channels: Channels) -> tuple:
        """The parts of ``node``'s output, each with its ``labels`` on the dim of ``channels``."""
        self.sources[node] = [source]
        return tuple(Channels(channels.dim, channels.ndim, part) for part in labels)

    def unknown(self, node: fx.Node, what: str) -> Any:
        """An operation not known to keep channels apart: what it reads and makes is frozen."""
        reason = f"'{node.name}' ({what}) is not known to keep channels apart"
        for channels in list(self.all_channels((node.args, node.kwargs))):
            self.freeze(channels, reason)
        return self.fresh(node, reason)

    # -- the walk -------------------------------------------------------------------------------
    def _visit(self, node: fx.Node) -> Any:
        if node.op == "placeholder":
            return self.fresh(node, "they are the model's input")
        if node.op == "get_attr":
            return None
        if node.op == "output":
            for channels in self.all_channels(node.args):
                self.freeze(channels, "they reach the model's output")
            return None
        if node.op == "call_module":
            module = self.modules[node.target]
            if isinstance(module, PrunableLayer):
                return self._layer(node, module)
            return self._module(node, module)
        return self._operation(node)

    def _frozen_layer(self, node: fx.Node, module: nn.Module, reason: str) -> Any:
        """A layer whose channels all stay: what it reads and what it makes are frozen."""
        reason = f"'{node.target}' ({type(module).__name__}): {reason}"
        for channels in self.all_channels((node.args, node.kwargs)):
            self.freeze(channels, reason)
        return self.fresh(node, reason)

    def _module(self, node: fx.Node, module: nn.Module) -> Any:
        what = type(module).__name__
        if kind_of(module) is not None:  # a layer of a known kind that is not prunable
            return self._frozen_layer(node, module, refusal(module) or "it is kept whole")
        source = node.args[0] if node.args else None
        channels = self.channels_of(source)
        if channels is None:
            if list(self.all_channels(node.args)):
                return self.unknown(node, what)
            return self.fresh(node, f"'{node.name}' ({what}) reads no known channels")
        rule = module_rule(module)
        if rule is Rule.ELEMENTWISE and getattr(module, "inplace", False) and not isinstance(module, INPLACE_SAFE_MODULES):
            self.flow.out_of_place.append(module)
        if rule in (Rule.ELEMENTWISE, Rule.CHANNELWISE):
            return self.carry(node, [source], channels)
        if rule in (Rule.SPATIAL, Rule.CHANNEL_FIRST) and keeps_channels_apart(module, channels, rule):
            return self.carry(node, [source], channels)
        if rule is Rule.FLATTENING:
            return flatten_dims(self, node, source, channels, module.start_dim, module.end_dim)
        return self.unknown(node, what)

    def _operation(self, node: fx.Node) -> Any:
        """A function or tensor method, by its rule (:mod:`prunable_nn.rules`)."""
        target = node.target
        rule = operation_rule(node.op, target)
        what = f".{target}()" if node.op == "call_method" else getattr(target, "__name__", str(target))
        if rule is Rule.METADATA or (target is getattr and node.args[1] in METADATA_ATTRIBUTES):
            return None
        if target is operator.getitem:
            return self._getitem(node)
        if not list(self.all_channels((node.args, node.kwargs))):
            return None  # a value made without any channels: constants, shapes
        source = node.args[0] if node.args else None
        channels = self.channels_of(source)
        if rule in OPERAND_RULES:
            return OPERAND_RULES[rule](self, node, source, channels, what)
        if channels is None or rule not in RULES:
            return self.unknown(node, what)
        return RULES[rule](self, node, source, channels, what)

    # -- layers ---------------------------------------------------------------------------------
    def _layer(self, node: fx.Node, layer: PrunableLayer) -> Any:
        name = node.target
        kind = layer.kind
        frozen = kind.frozen(layer)
        if frozen is not None:
            return self._frozen_layer(node, layer, frozen)
        source = node.args[0]
        channels = self.channels_of(source)
        if channels is not None and channels.dim != kind.input_dim(layer, channels.ndim):
            self.freeze(channels, f"'{name}' ({type(layer).__name__}) does not read them as its channels")
            channels = None
        if kind.owns_channels(layer):
            if channels is None:
                return self.fresh(node, f"'{name}' reads no known channels")
            return self.carry(node, [source], self._own(layer, channels))
        return self._reader(node, layer, source, channels)

    def _own(self, layer: PrunableLayer, channels: Channels) -> Channels:
        """A per-channel layer owns the labels it reads (the same labels at every call)."""
        key = (layer, "output")
        if key in self.flow.members:
            self.tie(self.flow.members[key], channels.labels)
        else:
            self.flow.members[key] = channels.labels
            self.flow.ties += layer.kind.ties(layer, channels.labels, "output")
        return channels

    def _reader(self, node: fx.Node, layer: PrunableLayer, source: fx.Node, channels: Channels | None) -> Channels:
        kind = layer.kind
        if channels is not None:
            fixed = kind.frozen_inputs(layer)
            if fixed is not None:
                self.freeze(channels, f"'{node.target}' ({type(layer).__name__}): {fixed}")
            key = (layer, "input")
            if key in self.flow.members:
                self.tie(self.flow.members[key], channels.labels)
            else:
                self.flow.members[key] = channels.labels
                self.flow.ties += kind.ties(layer, channels.labels, "input")
            self.readers.append(node)
        key = (layer, "output")
        if key not in self.flow.members:
            self.flow.members[key] = self.new_space(node.target, kind.out_channels(layer), layer)
            self.flow.ties += kind.ties(layer, self.flow.members[key], "output")
        shape = node.meta["shape"]
        return Channels(kind.output_dim(layer, len(shape)), len(shape), self.flow.members[key])

    # -- indexing -------------------------------------------------------------------------------
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
            return self.unknown(node, "indexing of the channels")
        ndim = len(node.meta["shape"])
        return self.carry(node, [container], Channels(dim, ndim, value.labels))


def _flatten_values(value: Any) -> Iterator[Channels]:
    if isinstance(value, Channels):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _flatten_values(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _flatten_values(item)


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
