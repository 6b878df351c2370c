"""The model-level pruner: global ranking of channels and their atomic removal.

``TaylorPruner(model, example_inputs)`` turns the model's torch layers into prunable twins
(:mod:`prunable_nn.convert`), traces it (:mod:`prunable_nn.trace`), finds which channels go
together (:mod:`prunable_nn.graph`, :mod:`prunable_nn.chain`), switches off the estimates
that nothing reads, and on every ``prune()`` removes the units with the lowest scores across
the whole model (:mod:`prunable_nn.ranking`). Everything is validated before any layer
changes, so an error leaves the model exactly as it was.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from .chain import INPUT, Chain, FrozenChain, Member
from .channel_map import ChannelMap
from .convert import swap_in_twins, undo
from .copies import check_in_step
from .criteria import Criterion, Taylor
from .distributed import ProcessGroup, check_agreement, is_distributed, reduced_estimates
from .estimates import chains_without_estimates
from .flops import ExampleInputs, flops_per_module
from .graph import channel_flow
from .layers import PrunableLayer
from .ranking import l2_normalise, lowest_blocks, reaching, relative_costs
from .surgery import Optimizers
from .recording import record_after
from .report import check_budget, pruner_report
from .trace import trace


@dataclass(frozen=True)
class Removal:
    """Channels removed from one chain by one ``prune()`` call.

    ``indices`` number the chain's channels as they were just before the call,
    ``original_indices`` as they were when the pruner was made. ``inputs`` gives, for every
    layer that read them, the input channels (input features of a ``PLinear``) that went,
    numbered as just before the call.
    """

    chain: str
    layers: tuple[str, ...]
    indices: tuple[int, ...]
    original_indices: tuple[int, ...]
    inputs: dict[str, tuple[int, ...]]


class TaylorPruner:
    """Prunes the globally least important channels of any model.

    Args:
        model: the network. Its layers of known kinds (torch's convolutions, normalisations
            and ``nn.Linear``, timm's variants of them, layers registered with
            :func:`~prunable_nn.kinds.register_layer`) are replaced in place by their prunable
            twins, which share their weights (:mod:`prunable_nn.convert`).
        example_inputs: inputs of one forward pass (a tensor or a tuple), used to find the
            shapes in the graph and to count FLOPs. A ``PrunableModule`` gives its own.
        normalize: divide each member's values by their L2 norm before ranking.
        flops_regularization: ``lambda`` of the FLOPs penalty (0 switches it off; paper: 1e-3).
        criterion: what is ranked (:mod:`prunable_nn.criteria`); default :class:`Taylor`.
        round_to: every chain keeps a multiple of this many channels (units), removed in
            blocks (:mod:`prunable_nn.ranking`); 8 suits AVX2 CPUs, 16 AVX-512. A chain with
            fewer channels than ``round_to`` is left as it is. Default 1: no rounding.
        process_group: under ``torch.distributed``, the ranks that prune together (default:
            the whole world). When a group of more than one rank is initialised, ``prune()``
            ranks the estimates all-reduced over it and checks that every rank chose the same
            channels (:mod:`prunable_nn.distributed`); every rank must call it.
        strict: make ``prune()`` raise when a chain has no estimates, instead of skipping it.
        grad_scaler: the ``torch.amp.GradScaler`` that scales the loss; the estimates are
            divided by its scale at every backward pass, so they do not depend on it.
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: ExampleInputs | None = None,
        *,
        normalize: bool = True,
        flops_regularization: float = 0.0,
        criterion: Criterion | None = None,
        round_to: int = 1,
        process_group: ProcessGroup | None = None,
        strict: bool = False,
        grad_scaler: torch.amp.GradScaler | None = None,
    ) -> None:
        if flops_regularization < 0:
            raise ValueError(f"flops_regularization must be >= 0, got {flops_regularization}")
        if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
            raise ValueError(f"round_to must be a positive integer, got {round_to!r}")
        if example_inputs is None:
            example_inputs = _own_example_inputs(model)
        self.model = model
        self.example_inputs = example_inputs
        self.normalize = normalize
        self.flops_regularization = flops_regularization
        self.round_to = round_to
        self.process_group = process_group
        self.strict = strict
        #: The chains the last ``prune()`` left alone for want of estimates, with the reason.
        self.skipped: dict[str, str] = {}
        self.criterion = Taylor() if criterion is None else criterion
        swaps = swap_in_twins(model)
        try:
            graph, self.opaque = trace(model, example_inputs)
            flow = channel_flow(model, graph)
            self.channel_map = ChannelMap(flow)
        except Exception:
            undo(swaps)  # leave the model as it was
            raise
        for module in flow.out_of_place:
            module.inplace = False
        layers = {module: name for name, module in model.named_modules() if isinstance(module, PrunableLayer)}
        for layer, name in layers.items():
            layer.name_in_model = name
        self._estimators = [member for member in self.channel_map.estimators if self.has_prunable(member)]
        statistic = self.criterion.statistic
        estimating = {member.layer for member in self._estimators} if statistic is not None else set()
        for layer in layers:
            layer.estimating = layer in estimating
            layer.records_after_activation = False
            layer.in_place_write = flow.in_place_writes.get(layer)
            if layer in estimating:
                layer.statistic = statistic
        readers: dict[nn.Module, list[PrunableLayer]] = {}
        for layer, activation in flow.records_after.items():
            if layer in estimating:
                readers.setdefault(activation, []).append(layer)
        for activation, feeding in readers.items():
            record_after(activation, feeding)  # costs no memory (prunable_nn.recording)
        self.grad_scaler = grad_scaler

    @property
    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """The ``GradScaler`` whose scale the recorded gradients carry (``None``: none)."""
        return self._grad_scaler

    @grad_scaler.setter
    def grad_scaler(self, scaler: torch.amp.GradScaler | None) -> None:
        if scaler is not None and not isinstance(scaler, torch.amp.GradScaler):
            raise TypeError(f"grad_scaler must be a torch.amp.GradScaler or None, got {type(scaler).__name__}")
        self._grad_scaler = scaler
        for member in self._estimators:
            member.layer.grad_scaler = scaler

    @property
    def chains(self) -> list[Chain]:
        """The chains with channels that can be removed, in the order of the model's graph."""
        return self.channel_map.chains

    @property
    def frozen(self) -> list[FrozenChain]:
        """The chains none of whose channels can be removed, and why."""
        return self.channel_map.frozen_chains

    @property
    def num_prunables(self) -> int:
        """Units of channels that can still be removed (every layer keeps one, every chain
        a multiple of ``round_to``)."""
        return sum(map(len, self.channel_map.removable(self._blocks(torch.zeros(self.channel_map.num_units)))))

    @property
    def estimator_members(self) -> list[Member]:
        """The members whose layers record the estimates that rank the prunable units."""
        return self._estimators

    def has_prunable(self, member: Member) -> bool:
        """Whether any of ``member``'s positions belongs to a unit that can still go."""
        return bool(self.channel_map.prunable[member.units].any())

    def reset_estimates(self) -> None:
        """Forget the estimates accumulated by every estimator."""
        for member in self.channel_map.estimators:
            member.layer.reset_estimates()

    def scores(self) -> list[torch.Tensor]:
        """Each chain's ranking scores: the criterion's normalised values minus the FLOPs penalty.

        Under ``torch.distributed`` these are this rank's own; ``prune()`` ranks the estimates
        of all ranks."""
        scores = self._unit_scores()
        return [scores[chain.units] for chain in self.chains]

    def prune(
        self,
        max_to_prune: int | None = 8,
        optimizer: Optimizers = None,
        *,
        flops: float | None = None,
        also: Sequence[nn.Module] = (),
    ) -> list[Removal]:
        """Remove up to ``max_to_prune`` units of channels with the lowest scores in the model
        (in whole blocks, with ``round_to`` > 1: :mod:`prunable_nn.ranking`).

        With ``flops``, stop sooner: once the units chosen take at least ``flops`` FLOPs of a
        forward pass of ``example_inputs`` (each layer's FLOPs shared equally among its
        channels: :mod:`prunable_nn.ranking`), so that every call shrinks the model by about
        the same FLOPs whichever layers its channels come from. ``max_to_prune=None`` sets
        no limit on the units then.

        A chain whose estimates are missing (no gradient reached one of its estimators since
        the last prune: a frozen backbone, a head outside the loss) is left as it is and named
        in :attr:`skipped` and :meth:`report`; with ``strict``, or when no chain has
        estimates, it raises instead (:mod:`prunable_nn.estimates`).

        With ``optimizer`` (one, or a sequence of them), their per-parameter state is sliced
        along with the parameters (:mod:`prunable_nn.surgery`). ``also`` takes copies of the
        model kept in step with it (an EMA: :mod:`prunable_nn.copies`): the same channels go
        from them; one out of step raises ``ValueError`` before anything changes.
        Resets the estimates. Returns what was removed, one entry per chain touched.

        Under an initialised process group of more than one rank (``process_group``), every
        rank must call it: the recorded sums and counts are all-reduced first, so that all
        ranks rank the mean over all their examples, and the chosen channels are compared
        across the ranks before anything changes (:mod:`prunable_nn.distributed`). A
        disagreement, or a rank that fails or stalls (the group's timeout), raises
        :class:`~prunable_nn.distributed.DistributedPruningError` and leaves the model as it was.
        """
        check_budget(max_to_prune, flops, self.round_to)
        for copy in also:
            check_in_step(copy, self.model)
        distributed = is_distributed(self.process_group)
        reduced = nullcontext()
        if distributed and self.criterion.statistic is not None:
            layers = list(dict.fromkeys(member.layer for member in self._estimators))
            reduced = reduced_estimates(layers, self.criterion.statistic.gradient_power, self.process_group)
        with reduced:
            blocks = self._blocks(self._unit_scores(), self._rankable())
        chosen = self.channel_map.removable(blocks, limit=max_to_prune)
        if flops is not None:
            chosen = reaching(chosen, self._unit_costs(), flops)
        units = torch.tensor([unit for block in chosen for unit in block], dtype=torch.long)
        if distributed:
            check_agreement(units.tolist(), self.channel_map.num_units, self.process_group)
        plan = self.channel_map.plan(units)
        touched = self.channel_map.chain_of_unit[units].unique().tolist()
        removals = [self._removal(self.chains[index], units) for index in touched]
        self.channel_map.apply(plan, units, optimizer, also)
        self.reset_estimates()
        return removals

    def report(self) -> str:
        """The chains, their sizes and layers, and what cannot be removed and why."""
        return pruner_report(self)

    __repr__ = report

    # -- internals ------------------------------------------------------------------------------
    def _unit_scores(self) -> torch.Tensor:
        scores = torch.zeros(self.channel_map.num_units, dtype=torch.float64)
        for member, values in self.criterion.member_values(self):
            values = values.detach().double().cpu()
            if not bool(torch.isfinite(values).all()):
                bad = (~torch.isfinite(values)).nonzero().flatten().tolist()
                raise RuntimeError(
                    f"chain '{self._chain_of(member)}': the {self.criterion.name} values of {member.layer.describe()} "
                    f"are not finite for channels {bad} (values {values[bad].tolist()})"
                )
            if self.normalize:
                values = l2_normalise(values)
            scores += self.channel_map.per_unit(member, values)
        if self.flops_regularization > 0:
            scores -= self.flops_regularization * relative_costs(self._unit_costs(), self.channel_map.prunable)
        return scores

    def _blocks(self, scores: torch.Tensor, rankable: torch.Tensor | None = None) -> list[list[int]]:
        prunable = self.channel_map.prunable if rankable is None else self.channel_map.prunable & rankable
        return lowest_blocks(scores, prunable, [chain.units for chain in self.chains], self.round_to)

    def _rankable(self) -> torch.Tensor:
        """Whether each unit's chain can be ranked now: with a recorded statistic, the chains
        whose estimators have no estimates are skipped (:mod:`prunable_nn.estimates`) and
        named in :attr:`skipped`; they make ``prune()`` raise when ``strict`` is set or when
        no chain is left."""
        rankable = torch.ones(self.channel_map.num_units, dtype=torch.bool)
        missing = chains_without_estimates(self._estimators, self.channel_map) if self.criterion.statistic else {}
        if missing and (self.strict or len(missing) == len(self.chains)):
            index, reason = next(iter(missing.items()))
            raise RuntimeError(f"chain '{self.chains[index].name}' has no {self.criterion.name} estimates yet: {reason}")
        for index in missing:
            rankable[self.chains[index].units] = False
        self.skipped = {self.chains[index].name: reason for index, reason in missing.items()}
        return rankable

    def _chain_of(self, member: Member) -> str:
        """The name of the first chain with channels in ``member`` (for error messages)."""
        indices = self.channel_map.chain_of_unit[member.units]
        return self.chains[int(indices[indices >= 0][0])].name

    def _unit_costs(self) -> torch.Tensor:
        """FLOPs of each unit: every member's FLOPs shared equally among its positions."""
        _, per_module = flops_per_module(self.model, self.example_inputs)
        costs = torch.zeros(self.channel_map.num_units, dtype=torch.float64)
        for member in self.channel_map.members:
            flops = per_module.get(member.layer.name_in_model, 0)
            if flops and len(member.units):
                costs.scatter_add_(0, member.units, torch.full((len(member.units),), flops / len(member.units), dtype=torch.float64))
        return costs

    def _removal(self, chain: Chain, units: torch.Tensor) -> Removal:
        going = torch.isin(chain.units, units)
        chain_units = chain.units[going]
        inputs = {
            member.layer.name_in_model: tuple(member.positions_of(chain_units).tolist())
            for member in chain.members
            if member.side == INPUT
        }
        return Removal(
            chain=chain.name,
            layers=tuple(layer.name_in_model for layer in chain.layers),
            indices=tuple(going.nonzero().flatten().tolist()),
            original_indices=tuple(chain.original_channels[going].tolist()),
            inputs=inputs,
        )


def _own_example_inputs(model: nn.Module) -> ExampleInputs:
    make = getattr(model, "example_inputs", None)
    if not callable(make):
        raise TypeError(
            f"TaylorPruner needs example_inputs for {type(model).__name__}: a tensor (or tuple) "
            "that the model's forward accepts, e.g. torch.zeros(1, 3, 224, 224)"
        )
    return make()
