"""Which chains a ``prune()`` can rank by recorded estimates, and why the others cannot.

A chain is ranked when every layer whose estimates rank it (its estimators) has seen a
gradient since the last prune. Those that have not are skipped, with the plain reason:
a frozen backbone, or a frozen stem, upstream of everything trainable, gets no gradient; a
head left out of the loss gets none; a layer whose every batch had non-finite gradients (an
overflowed mixed-precision step) has nothing to average. A frozen layer *downstream* of a
trainable one does get gradients with respect to its outputs, so it is ranked like any other.
"""

from __future__ import annotations

from collections.abc import Iterable

from .chain import Member
from .channel_map import ChannelMap
from .layers import PrunableLayer


def chains_without_estimates(estimators: Iterable[Member], chain_map: ChannelMap) -> dict[int, str]:
    """The index of every chain that one of ``estimators`` ranks without having estimates,
    and the reason (for the first such estimator), in the order of the estimators."""
    missing: dict[int, str] = {}
    for member in estimators:
        if member.layer.taylor_estimates is not None:
            continue
        reason = why_no_estimates(member.layer)
        chains = chain_map.chain_of_unit[member.units]
        for index in chains[chains >= 0].unique().tolist():
            missing.setdefault(index, reason)
    return missing


def why_no_estimates(layer: PrunableLayer) -> str:
    """Why ``layer`` has no estimates since the last prune or reset."""
    name = layer.describe()
    skipped = layer.batches_skipped
    if skipped:
        batches = "batch" if skipped == 1 else "batches"
        return f"the {skipped} {batches} that reached {name} had gradients that are not finite (NaN or inf)"
    if not any(param.requires_grad for param in layer.parameters()):
        return (
            f"no gradient reached {name}: it is frozen (requires_grad=False) and nothing before it "
            "is trainable"
        )
    return (
        f"no gradient reached {name} since the last prune or reset: train before pruning; if other "
        "layers have estimates, does the loss depend on its output? (an auxiliary classifier left "
        "out of the loss, say)"
    )
