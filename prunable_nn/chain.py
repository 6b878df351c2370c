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

import numpy
import torch
from torch import nn

from .channels import as_channel_list, keep_indices
from .copies import counterparts
from .graph import ChannelFlow
from .layers import PrunableLayer
from .surgery import Optimizers, as_optimizers, check_optimizers

OUTPUT, INPUT = "output", "input"


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
    """One side (``"output"`` or ``"input"``) of a layer and the unit of each of its positions."""

    layer: PrunableLayer
    role: str
    units: torch.Tensor

    def positions_of(self, units: torch.Tensor) -> torch.Tensor:
        """This member's positions whose unit is in ``units``."""
        return torch.isin(self.units, units).nonzero().flatten()

    def validate_drop(self, positions: torch.Tensor) -> torch.Tensor:
        """Check with the layer that ``positions`` can go; return the positions kept."""
        if self.role == OUTPUT:
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
            if self.role == OUTPUT:
                layer._keep_outputs(keep, optimizer)
            else:
                layer._keep_inputs(keep, optimizer, 1)
        elif self.role == OUTPUT:
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
    map: ChannelMap
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
            per_unit = self.map.per_unit(member, values)
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
        self.map.plan(units)
        return units

    def drop(self, indices: Iterable[int] | torch.Tensor, optimizer: Optimizers = None) -> None:
        """Remove channels ``indices`` from every layer of the chain, or nothing if any is bad."""
        self.map.remove(self.validate_drop(indices), optimizer)

    def _members(self, role: str) -> list[Member]:
        return [member for member in self.members if member.role == role]

    def _estimator_members(self) -> list[Member]:
        return [member for member in self.map.estimators if member in self.members]

    def _forget(self, units: torch.Tensor) -> None:
        alive = ~torch.isin(self.units, units)
        self.units = self.units[alive]
        self.original_channels = self.original_channels[alive]


class ChannelMap:
    """The members, units and chains of a model, from the walk of its graph."""

    def __init__(self, flow: ChannelFlow) -> None:
        unit_of = _connected_components(flow.num_labels, *_tie_pairs(flow))
        self.members = [Member(layer, role, unit_of[labels]) for (layer, role), labels in flow.members.items()]
        by_key = {(member.layer, member.role): member for member in self.members}
        self.estimators = [by_key[(layer, OUTPUT)] for layer in flow.estimators]
        self.num_units = int(unit_of.max()) + 1 if len(unit_of) else 0
        frozen: dict[int, str] = {}
        for labels, reason in flow.frozen:
            for unit in unit_of[labels].unique().tolist():
                frozen.setdefault(unit, reason)
        estimated = torch.zeros(self.num_units, dtype=torch.bool)
        for member in self.estimators:
            estimated[member.units] = True
        for unit in (~estimated).nonzero().flatten().tolist():
            frozen.setdefault(unit, "they are not read by any layer")
        self.frozen = frozen
        self._frozen_mask = torch.zeros(self.num_units, dtype=torch.bool)
        self._frozen_mask[list(frozen)] = True
        self.alive = torch.ones(self.num_units, dtype=torch.bool)
        self.chains, self.frozen_chains = self._make_chains(flow, unit_of)
        self.chain_of_unit = torch.full((self.num_units,), -1, dtype=torch.long)
        for index, chain in enumerate(self.chains):
            self.chain_of_unit[chain.units] = index
        for member_index, chain_index in self._member_chains(*self._index_usage()):
            self.chains[chain_index].members.append(self.members[member_index])

    def _make_chains(self, flow: ChannelFlow, unit_of: torch.Tensor) -> tuple[list[Chain], list[FrozenChain]]:
        """One chain per set of units connected through the layers that make them."""
        sizes = torch.tensor([space.size for space in flow.spaces], dtype=torch.long)
        space_of = torch.repeat_interleave(torch.arange(len(flow.spaces)), sizes)
        nodes = len(flow.spaces) + self.num_units
        component = _connected_components(nodes, space_of, len(flow.spaces) + unit_of)
        space_component = component[: len(flow.spaces)].tolist()
        units_of = _members_of_groups(component[len(flow.spaces):])
        unit_component = component[len(flow.spaces):].tolist()
        frozen_of: dict[int, dict[int, str]] = {}
        for unit in sorted(self.frozen):
            frozen_of.setdefault(unit_component[unit], {})[unit] = self.frozen[unit]
        by_space = {space.layer: index for index, space in enumerate(flow.spaces) if space.layer is not None}
        chains, frozen_chains, seen = [], [], set()
        for member in self.members:
            space = by_space.get(member.layer) if member.role == OUTPUT else None
            if space is None or space_component[space] in seen:
                continue
            group = space_component[space]
            seen.add(group)
            units, chain_frozen = units_of[group], frozen_of.get(group, {})
            name = flow.spaces[space].name
            if len(chain_frozen) == len(units):
                frozen_chains.append(FrozenChain(name, chain_frozen[int(units[0])]))
            else:
                chains.append(Chain(name, self, units, chain_frozen))
        return chains, frozen_chains

    def _index_usage(self) -> tuple[torch.Tensor, torch.Tensor]:
        """For each unit, the members it has positions in and how many: unit ``u`` has
        ``_usage_counts[i]`` positions in member ``_usage_members[i]`` for ``i`` from
        ``_usage_start[u]`` to ``_usage_start[u + 1] - 1``. Returns the unit of every
        position of every member, and that member."""
        units = torch.cat([member.units for member in self.members]) if self.members else torch.empty(0, dtype=torch.long)
        members = torch.repeat_interleave(
            torch.arange(len(self.members)), torch.tensor([len(member.units) for member in self.members], dtype=torch.long)
        )
        order = _stable_order(units)
        pairs, counts = torch.unique_consecutive(units[order] * max(1, len(self.members)) + members[order], return_counts=True)
        self._usage_members = (pairs % max(1, len(self.members))).tolist()
        self._usage_counts = counts.tolist()
        pairs_per_unit = torch.bincount(pairs // max(1, len(self.members)), minlength=self.num_units)
        self._usage_start = [0] + pairs_per_unit.cumsum(0).tolist()
        return units, members

    def _member_chains(self, units: torch.Tensor, members: torch.Tensor) -> list[tuple[int, int]]:
        """``(member, chain)`` pairs, in member order, for every chain with units in a member,
        from the unit and member of every position (:meth:`_index_usage`)."""
        chains = self.chain_of_unit[units]
        count = max(1, len(self.chains))
        in_chain = chains >= 0
        keys = torch.bincount(members[in_chain] * count + chains[in_chain], minlength=len(self.members) * count).nonzero().flatten()
        return list(zip((keys // count).tolist(), (keys % count).tolist()))

    def _usage(self, unit: int) -> zip:
        start, end = self._usage_start[unit], self._usage_start[unit + 1]
        return zip(self._usage_members[start:end], self._usage_counts[start:end])

    # -- estimates ----------------------------------------------------------------------------
    def per_unit(self, member: Member, values: torch.Tensor) -> torch.Tensor:
        """Per-position ``values`` of ``member`` summed into each unit."""
        total = torch.zeros(self.num_units, dtype=values.dtype, device=values.device)
        return total.scatter_add_(0, member.units.to(values.device), values)

    # -- removal ------------------------------------------------------------------------------
    @property
    def prunable(self) -> torch.Tensor:
        """Whether each unit is still there and may be removed."""
        return self.alive & ~self._frozen_mask

    def removable(self, blocks: Iterable[Sequence[int]], limit: int | None = None) -> list[Sequence[int]]:
        """The ``blocks`` that can go, taken whole and in order while every member keeps a
        position and at most ``limit`` units are chosen; a block that does not fit is passed
        over."""
        prunable = self.prunable.tolist()
        room = [len(member.units) - 1 for member in self.members]
        chosen: list[Sequence[int]] = []
        taken = 0
        for block in blocks:
            if limit is not None and taken == limit:
                break
            if (limit is not None and taken + len(block) > limit) or not all(prunable[unit] for unit in block):
                continue
            usage: dict[int, int] = {}
            for unit in block:
                for index, count in self._usage(unit):
                    usage[index] = usage.get(index, 0) + count
            if any(count > room[index] for index, count in usage.items()):
                continue
            for index, count in usage.items():
                room[index] -= count
            chosen.append(block)
            taken += len(block)
        return chosen

    def plan(self, units: torch.Tensor) -> list[tuple[Member, torch.Tensor]]:
        """Validate removing ``units`` from every member; return each member that changes
        with the positions it keeps. Changes nothing."""
        touched = sorted({index for unit in units.tolist() for index, _ in self._usage(unit)})
        return [
            (self.members[index], self.members[index].validate_drop(self.members[index].positions_of(units)))
            for index in touched
        ]

    def remove(self, units: torch.Tensor, optimizer: Optimizers = None) -> None:
        """Remove ``units`` from every member, all validated first."""
        self.apply(self.plan(units), units, optimizer)

    def apply(
        self,
        plan: list[tuple[Member, torch.Tensor]],
        units: torch.Tensor,
        optimizer: Optimizers = None,
        copies: Sequence[nn.Module] = (),
    ) -> None:
        """Carry out ``plan``, made by :meth:`plan` for ``units``, on the model and on
        ``copies`` of it; ``optimizer`` (one or several) is checked before anything changes."""
        optimizer = as_optimizers(optimizer)
        check_optimizers(optimizer, {param: None for member, _ in plan for param in member.layer.parameters()}, "prune()")
        for member, keep in plan:
            member.keep(keep, optimizer, copies)
        self.alive[units] = False
        for chain in self.chains:
            chain._forget(units)


def _tie_pairs(flow: ChannelFlow) -> tuple[torch.Tensor, torch.Tensor]:
    if not flow.ties:
        empty = torch.empty(0, dtype=torch.long)
        return empty, empty
    return torch.cat([first for first, _ in flow.ties]), torch.cat([second for _, second in flow.ties])


def _connected_components(num_nodes: int, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Component of each node, numbered ``0, 1, ...`` in the order of each component's
    smallest node: minimum-label propagation along the edges ``(first[i], second[i])`` with
    pointer jumping, until nothing changes. Every node then carries the smallest node of its
    component, and the components are numbered by counting those smallest nodes."""
    component = torch.arange(num_nodes)
    while len(first):
        low = torch.minimum(component[first], component[second])
        updated = component.scatter_reduce(0, first, low, "amin").scatter_reduce(0, second, low, "amin")
        updated = updated[updated]
        if torch.equal(updated, component):
            break
        component = updated
    smallest = component == torch.arange(num_nodes)
    return (smallest.cumsum(0) - 1)[component]


def _stable_order(values: torch.Tensor) -> torch.Tensor:
    """The permutation that sorts ``values``, equal values kept in their order. NumPy's
    stable sort merges sorted runs (the units of one member mostly are one): several times
    faster here than ``torch.sort`` on CPU."""
    return torch.from_numpy(numpy.argsort(values.numpy(), kind="stable"))


def _members_of_groups(group: torch.Tensor) -> list[torch.Tensor]:
    """For each group ``g`` up to ``group.max()``, the indices ``i`` with ``group[i] == g``,
    ascending."""
    return list(torch.split(_stable_order(group), torch.bincount(group).tolist()))
