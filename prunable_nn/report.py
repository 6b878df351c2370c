"""What a pruner says of itself and checks of what it is asked: its report, and the
budget of a prune (how many channel units, or FLOPs, may go)."""

from __future__ import annotations

import math
from numbers import Real
from typing import TYPE_CHECKING

from .kinds import kind_of, refusal
from .layers import PrunableLayer

if TYPE_CHECKING:
    from .pruner import TaylorPruner


def pruner_report(pruner: TaylorPruner) -> str:
    """What :meth:`TaylorPruner.report` prints: the chains, their sizes and layers, the chains
    the last prune skipped, the batches left out, and what cannot be removed and why."""
    lines = [
        f"TaylorPruner({type(pruner.model).__name__}: {len(pruner.chains)} chains, "
        f"{pruner.num_prunables} prunable units"
        + (f", removed in blocks of {pruner.round_to} per chain)" if pruner.round_to > 1 else ")")
    ]
    for chain in pruner.chains:
        producers = ", ".join(layer.name_in_model for layer in chain.producers)
        readers = ", ".join(consumer.layer.name_in_model for consumer in chain.consumers)
        frozen = len(chain.frozen)
        lines.append(
            f"  {chain.name}: {chain.num_channels} channels; producers {producers}; read by {readers}"
            + (f"; {frozen} frozen: {next(iter(chain.frozen.values()))}" if frozen else "")
        )
    for name, reason in pruner.skipped.items():
        lines.append(f"  {name}: skipped by the last prune, {reason}")
    for member in pruner.estimator_members:
        skipped = member.layer.batches_skipped
        if skipped:
            batches = "batch" if skipped == 1 else "batches"
            lines.append(f"  {member.layer.name_in_model}: {skipped} {batches} left out since the last prune, gradients not finite")
    for frozen in pruner.frozen:
        lines.append(f"  {frozen.name}: not prunable, {frozen.reason}")
    for module in pruner.opaque:
        lines.append(f"  {module.name}: kept whole, torch.fx cannot trace it ({module.error})")
    for name, module in pruner.model.named_modules():
        if kind_of(module) is not None and not isinstance(module, PrunableLayer):
            lines.append(f"  {name}: {type(module).__name__} kept as it is, {refusal(module)}")
    return "\n".join(lines)


def check_budget(max_to_prune: int | None, flops: float | None, round_to: int = 1, *, flops_name: str = "flops") -> None:
    """Raise ``ValueError`` naming the value unless ``max_to_prune`` is ``None`` or a positive
    integer of at least ``round_to``, ``flops`` (called ``flops_name``) is ``None`` or
    positive and finite, and one of them limits the removal."""
    if max_to_prune is not None:
        if isinstance(max_to_prune, bool) or not isinstance(max_to_prune, int) or max_to_prune < 1:
            raise ValueError(f"max_to_prune must be a positive integer or None, got {max_to_prune!r}")
        if max_to_prune < round_to:
            raise ValueError(
                f"max_to_prune ({max_to_prune}) must be at least round_to ({round_to}): channels go in blocks of round_to"
            )
    if flops is not None and (isinstance(flops, bool) or not isinstance(flops, Real) or not 0 < flops < math.inf):
        raise ValueError(f"{flops_name} must be a positive number of FLOPs or None, got {flops!r}")
    if max_to_prune is None and flops is None:
        raise ValueError(f"max_to_prune=None needs {flops_name}: without either limit every prunable channel would go")
