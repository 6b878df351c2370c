"""Chains: channels that are removed together, the layers that own them and those that read them.

The walk of :mod:`prunable_nn.graph` labels channels and ties labels together. Here the tied
labels become *units*, the smallest sets of channels that can be removed (one channel of a
plain conv chain; the channel of every member of a residual group; the channel at one
position of every group of a grouped convolution). A :class:`Chain` collects the units made
by the same layers: every unit of a ResNet stage's residual stream is in one chain.

Each layer side that owns or reads channels is a :class:`Member`, which knows the unit of
each of its positions (output channel, input channel, or input feature of a ``PLinear`` fed
by a flattened map). Removing units removes their positions from every member, wherever the
positions are (after a concatenation they sit at an offset that moves as other chains
shrink), so the index arithmetic is one mask per member. Everything is validated before any
layer changes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

import torch
from torch import nn

from .channels import as_channel_list, keep_indices
from .copies import counterparts
from .layers import PrunableLayer
from .surgery import Optimizers

if TYPE_CHECKING:
    from .channel_map import ChannelMap

class Side(str, Enum):
    """Which side of a layer a member is: the channels it makes or owns (``OUTPUT``), or those
    it reads (``INPUT``). Equal to the strings ``"output"`` and ``"input"`` that the walk's
    keys use (:class:`~prunable_nn.graph.ChannelFlow`)."""

    OUTPUT = "output"
    INPUT = "input"


OUTPUT, INPUT = Side.OUTPUT, Side.INPUT


@dataclass(frozen=True)
class Consumer:
    """A layer that reads a chain's channels, each as ``features_per_channel`` of its inputs
    (``H * W`` for a ``PLinear`` fed by a flattened map, the number of groups for a grouped
    convolution, else 1)."""

    layer: PrunableLayer
    features_per_channel: int = 1


@dataclass(frozen=True)
class FrozenChain:
    """A chain none of whose channels can be removed, and why."""

    name: str
    reason: str


@dataclass(eq=False)
class Member:
    """One side of a layer and the unit of each of its positions."""

    layer: PrunableLayer
    side: Side
    units: torch.Tensor

    def positions_of(self, units: torch.Tensor) -> torch.Tensor:
        """This member's positions whose unit is in ``units``."""
        return torch.isin(self.units, units).nonzero().flatten()

    def validate_drop(self, positions: torch.Tensor) -> torch.Tensor:
        """Check with the layer that ``positions`` can go; return the positions kept."""
        if self.side == OUTPUT:
            return self.layer._output_keep(positions)
        return self.layer._input_keep(positions)

    def keep(self, keep: torch.Tensor, optimizer: Optimizers, copies: Sequence[nn.Module] = ()) -> None:
        """Keep positions ``keep`` of the layer, and of its counterpart in each of ``copies``
        of the model (:mod:`prunable_nn.copies`), which no optimizer holds."""
        self._keep_on(self.layer, keep, optimizer)
        for layer in counterparts(copies, self.layer.name_in_model):
            self._keep_on(layer, keep, None)
        self.units = self.units[keep]

    def _keep_on(self, layer: nn.Module, keep: torch.Tensor, optimizer: Optimizers) -> None:
        """Keep positions ``keep`` of ``layer``: a prunable twin, or the plain layer of a copy
        made before the pruner, sliced by this member's kind."""
        if isinstance(layer, PrunableLayer):
            if self.side == OUTPUT:
                layer._keep_outputs(keep, optimizer)
            else:
                layer._keep_inputs(keep, optimizer, 1)
        elif self.side == OUTPUT:
            self.layer.kind.keep_outputs(layer, keep, optimizer)
        else:
            self.layer.kind.keep_inputs(layer, keep, optimizer, 1)


@dataclass(eq=False)
class Chain:
    """Units made by the same layers, named after the first of them. Its channels are its
    units in order (the order in which that layer makes them); ``original_channels[i]`` is
    the number, when the chain was made, of its channel ``i`` now. ``frozen`` gives the
    units that must stay, and why."""

    name: str
    channel_map: ChannelMap
    units: torch.Tensor
    frozen: dict[int, str]
    members: list[Member] = field(default_factory=list)
    original_channels: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.original_channels = torch.arange(len(self.units))

    @property
    def num_channels(self) -> int:
        return len(self.units)

    @property
    def producers(self) -> tuple[PrunableLayer, ...]:
        """Layers whose output channels (or own channels) include this chain's."""
        return tuple(member.layer for member in self._members(OUTPUT))

    @property
    def consumers(self) -> tuple[Consumer, ...]:
        """Layers that read this chain's channels as inputs."""
        consumers = []
        for member in self._members(INPUT):
            per_channel = int((member.units == self.units[0]).sum())
            consumers.append(Consumer(member.layer, per_channel))
        return tuple(consumers)

    @property
    def layers(self) -> tuple[PrunableLayer, ...]:
        return tuple(dict.fromkeys(member.layer for member in self.members))

    @property
    def estimators(self) -> tuple[PrunableLayer, ...]:
        """The layers whose estimates rank this chain's channels: those whose outputs the
        readers see (the last batch norm of a conv-BN-ReLU chain, every batch norm that adds
        into a residual stream)."""
        return tuple(member.layer for member in self._estimator_members())

    def estimates(self) -> torch.Tensor | None:
        """Each channel's Taylor estimate, summed over the estimators that see it (``None``
        until every estimator has seen a backward pass)."""
        total = None
        for member in self._estimator_members():
            values = member.layer.taylor_estimates
            if values is None:
                return None
            per_unit = self.channel_map.per_unit(member, values)
            total = per_unit if total is None else total + per_unit
        return None if total is None else total[self.units]

    def validate_drop(self, indices: Iterable[int] | torch.Tensor) -> torch.Tensor:
        """Check that channels ``indices`` can go from every layer; return the units to remove."""
        owner = f"chain '{self.name}'"
        indices = as_channel_list(indices, owner=owner)
        keep_indices(indices, self.num_channels, owner=owner)
        frozen = [index for index in indices if int(self.units[index]) in self.frozen]
        if frozen:
            reason = self.frozen[int(self.units[frozen[0]])]
            raise ValueError(f"{owner}: channels {frozen} cannot be removed: {reason}")
        units = self.units[indices]
        self.channel_map.plan(units)
        return units

    def drop(self, indices: Iterable[int] | torch.Tensor, optimizer: Optimizers = None) -> None:
        """Remove channels ``indices`` from every layer of the chain, or nothing if any is bad."""
        self.channel_map.remove(self.validate_drop(indices), optimizer)

    def _members(self, side: Side) -> list[Member]:
        return [member for member in self.members if member.side == side]

    def _estimator_members(self) -> list[Member]:
        return [member for member in self.channel_map.estimators if member in self.members]

    def _forget(self, units: torch.Tensor) -> None:
        alive = ~torch.isin(self.units, units)
        self.units = self.units[alive]
        self.original_channels = self.original_channels[alive]
