"""The model-level pruner: global ranking of channels and their atomic removal.

``TaylorPruner(model)`` finds the model's chains (or takes them from the caller), switches
off the estimates that no chain reads, and on every ``prune()`` removes the channels with the
lowest scores across all chains (:mod:`prunable_nn.ranking`). Everything is validated before
any layer changes, so an error leaves the model exactly as it was.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .chain import Chain
from .flops import ExampleInputs, flops_per_module
from .graph import find_chains
from .layers import PrunableLayer
from .ranking import l2_normalise, relative_costs, select_lowest


@dataclass(frozen=True)
class Removal:
    """Channels removed from one chain by one ``prune()`` call.

    ``indices`` number the channels as they were just before the call, ``original_indices``
    as they were when the pruner was made.
    """

    chain: str
    layers: tuple[str, ...]
    indices: tuple[int, ...]
    original_indices: tuple[int, ...]


class TaylorPruner:
    """Prunes the globally least important channels of a model made of prunable layers.

    Args:
        model: the network; its ``PConv2d``, ``PBatchNorm2d`` and ``PLinear`` layers are pruned.
        example_inputs: inputs of one forward pass, needed for FLOPs regularisation.
        chains: the chains to prune, when they should not be found from the model's graph.
        normalize: divide each chain's estimates by their L2 norm before ranking.
        flops_regularization: ``lambda`` of the FLOPs penalty (0 switches it off; paper: 1e-3).
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: ExampleInputs | None = None,
        chains: Sequence[Chain] | None = None,
        *,
        normalize: bool = True,
        flops_regularization: float = 0.0,
    ) -> None:
        if flops_regularization < 0:
            raise ValueError(f"flops_regularization must be >= 0, got {flops_regularization}")
        if flops_regularization > 0 and example_inputs is None:
            raise ValueError("flops_regularization needs example_inputs to count FLOPs")
        self.model = model
        self.example_inputs = example_inputs
        self.normalize = normalize
        self.flops_regularization = flops_regularization
        layer_names = {module: name for name, module in model.named_modules() if isinstance(module, PrunableLayer)}
        for layer, name in layer_names.items():
            layer.name_in_model = name
        if chains is None:
            self.chains, self.frozen = find_chains(model)
        else:
            self.chains, self.frozen = list(chains), []
            _check_chain_layers(self.chains, layer_names)
        estimators = {chain.estimator for chain in self.chains}
        for layer in layer_names:
            layer.estimating = layer in estimators

    @property
    def num_prunables(self) -> int:
        """Channels that can still be removed (every chain keeps one)."""
        return sum(chain.num_channels - 1 for chain in self.chains)

    def reset_estimates(self) -> None:
        """Forget the estimates accumulated by every chain."""
        for chain in self.chains:
            chain.estimator.reset_estimates()

    def scores(self) -> list[torch.Tensor]:
        """Each chain's ranking scores: normalised estimates minus the FLOPs penalty."""
        estimates = [self._checked_estimates(chain) for chain in self.chains]
        if self.normalize:
            estimates = [l2_normalise(values) for values in estimates]
        if self.flops_regularization > 0:
            costs = relative_costs(self._flops_per_channel())
            estimates = [values - self.flops_regularization * cost for values, cost in zip(estimates, costs)]
        return estimates

    def prune(self, max_to_prune: int = 8, optimizer: torch.optim.Optimizer | None = None) -> list[Removal]:
        """Remove up to ``max_to_prune`` channels with the lowest scores across all chains.

        With ``optimizer``, its per-parameter state is sliced along with the parameters.
        Resets the estimates. Returns what was removed, one entry per chain touched.
        """
        if isinstance(max_to_prune, bool) or not isinstance(max_to_prune, int) or max_to_prune < 1:
            raise ValueError(f"max_to_prune must be a positive integer, got {max_to_prune!r}")
        chosen = select_lowest(self.scores(), max_to_prune)
        plan = [(chain, channels, chain.validate_drop(channels)) for chain, channels in zip(self.chains, chosen) if channels]
        removals = []
        for chain, channels, keep in plan:
            removals.append(
                Removal(
                    chain=chain.name,
                    layers=tuple(layer.name_in_model for layer in chain.layers),
                    indices=tuple(channels),
                    original_indices=tuple(chain.original_channels[channels].tolist()),
                )
            )
            chain.keep(keep, optimizer)
        self.reset_estimates()
        return removals

    def _checked_estimates(self, chain: Chain) -> torch.Tensor:
        estimates = chain.estimates()
        layer = chain.estimator.describe()
        if estimates is None:
            raise RuntimeError(
                f"chain '{chain.name}' has no Taylor estimates yet ({layer} has seen no backward "
                "pass in training mode since the last prune or reset): train before pruning"
            )
        bad = (~torch.isfinite(estimates)).nonzero().flatten().tolist()
        if bad:
            raise RuntimeError(
                f"chain '{chain.name}': the Taylor estimates of {layer} are not finite for channels "
                f"{bad} (values {estimates[bad].tolist()}); were the gradients NaN or infinite?"
            )
        return estimates

    def _flops_per_channel(self) -> list[float]:
        _, per_module = flops_per_module(self.model, self.example_inputs)
        costs = []
        for chain in self.chains:
            producer_flops = sum(per_module.get(layer.name_in_model, 0) for layer in chain.producers)
            consumer_flops = sum(per_module.get(c.layer.name_in_model, 0) for c in chain.consumers)
            costs.append((producer_flops + consumer_flops) / chain.num_channels)
        return costs

    def __repr__(self) -> str:
        lines = [f"TaylorPruner({type(self.model).__name__}: {len(self.chains)} chains, {self.num_prunables} prunable channels)"]
        for chain in self.chains:
            readers = ", ".join(c.layer.name_in_model for c in chain.consumers)
            producers = ", ".join(layer.name_in_model for layer in chain.producers)
            lines.append(f"  {chain.name}: {chain.num_channels} channels; producers {producers}; read by {readers}")
        for frozen in self.frozen:
            lines.append(f"  {frozen.name}: not prunable, {frozen.reason}")
        return "\n".join(lines)


def _check_chain_layers(chains: Sequence[Chain], layer_names: dict[PrunableLayer, str]) -> None:
    for chain in chains:
        for layer in chain.layers:
            if layer not in layer_names:
                raise ValueError(f"chain '{chain.name}': {layer.describe()} is not a prunable layer of the model")
