"""The channel map of a model: the walk's tied labels become units, the layers' sides
members, and the units made by the same layers chains (:mod:`prunable_nn.chain` says what
those are). Connected components and groupings are computed with one sort each (NumPy's
stable argsort) and ``bincount``, so that a model of 70,000 labels maps in milliseconds.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy
import torch
from torch import nn

from .chain import OUTPUT, Chain, FrozenChain, Member, Side
from .graph import ChannelFlow
from .surgery import Optimizers, as_optimizers, check_optimizers


class ChannelMap:
    """The members, units and chains of a model, from the walk of its graph."""

    def __init__(self, flow: ChannelFlow) -> None:
        unit_of = _connected_components(flow.num_labels, *_tie_pairs(flow))
        self.members = [Member(layer, Side(side), unit_of[labels]) for (layer, side), labels in flow.members.items()]
        by_key = {(member.layer, member.side): member for member in self.members}
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
            space = by_space.get(member.layer) if member.side == OUTPUT else None
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
