"""Per-channel normalisations: batch norm and instance norm of 1 to 3 dims, group norm.

Batch norm and instance norm normalise every channel by statistics of that channel alone
and scale and shift it by its own ``weight[k]`` and ``bias[k]``: channel ``k`` of the output
depends on channel ``k`` of the input only, so removing it from input and output at once
computes what the layer computes with it zeroed, for the other channels. The layer owns its
channels; ``weight``, ``bias``, ``running_mean`` and ``running_var`` follow them.

Group norm normalises each group of ``C / G`` consecutive channels by the statistics of the
whole group, so only whole groups can go: the graph ties the channels of a group into one
unit, ``num_groups`` falls with them and the group size stays. A group norm of one group
normalises all channels together and stays as it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from .base import LayerKind, Optimizer, Ties, meta_empty, shrink_tensor
from .conv import kept_per_group

_STATISTICS = ("weight", "bias", "running_mean", "running_var")
#: The spatial dims of the instance norms, whose inputs may come without a batch dim.
_INSTANCE_DIMS = {nn.InstanceNorm1d: 1, nn.InstanceNorm2d: 2, nn.InstanceNorm3d: 3}


class NormKind(LayerKind):
    """``nn.BatchNorm1d/2d/3d``, ``nn.SyncBatchNorm`` and ``nn.InstanceNorm1d/2d/3d``."""

    sizes: ClassVar[tuple[str, ...]] = ("num_features",)
    fixed: ClassVar[tuple[str, ...]] = ("eps",)
    out_size: ClassVar[str] = "num_features"

    def input_dim(self, module: nn.Module, ndim: int) -> int:
        for cls, dims in _INSTANCE_DIMS.items():
            if isinstance(module, cls):
                return ndim - dims - 1
        return 1

    def owns_channels(self, module: nn.Module) -> bool:
        return True

    def known_tensors(self, module: nn.Module) -> set[str]:
        return {*_STATISTICS, "num_batches_tracked", *super().known_tensors(module)}

    def keep_outputs(self, module: nn.Module, keep: torch.Tensor, optimizer: Optimizer) -> None:
        for name in _STATISTICS:
            shrink_tensor(module, name, 0, keep, optimizer)
        module.num_features = len(keep)
        self._keep_output_tensors(module, keep, optimizer)

    def tensor_shapes(self, record: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
        features = (record["num_features"],)
        return {**dict.fromkeys(_STATISTICS, features), "num_batches_tracked": ()}

    def check_record(self, record: Mapping[str, Any]) -> str | None:
        return None if type(record["eps"]) is float else f"eps={record['eps']!r} is not a float"

    def meta_forward(self, module: nn.Module, value: torch.Tensor) -> torch.Tensor | None:
        return meta_empty(value)  # torch's meta kernel for batch norm runs slow Python


class GroupNormKind(LayerKind):
    """``nn.GroupNorm``: whole groups go."""

    sizes: ClassVar[tuple[str, ...]] = ("num_groups", "num_channels")
    fixed: ClassVar[tuple[str, ...]] = ("eps",)
    out_size: ClassVar[str] = "num_channels"

    def owns_channels(self, module: nn.Module) -> bool:
        return True

    def ties(self, module: nn.Module, labels: torch.Tensor, side: str) -> Ties:
        """The channels of each group go together."""
        by_group = labels.view(module.num_groups, -1)
        return [(by_group[:, 0], by_group[:, position]) for position in range(1, by_group.shape[1])]

    def frozen(self, module: nn.Module) -> str | None:
        if module.num_groups == 1:
            return (
                f"a {type(module).__name__} of one group normalises all its channels together: removing "
                "one changes the others"
            )
        return super().frozen(module)

    def known_tensors(self, module: nn.Module) -> set[str]:
        return {"weight", "bias", *super().known_tensors(module)}

    def check_outputs(self, module: nn.Module, keep: torch.Tensor, owner: str) -> None:
        size = module.num_channels // module.num_groups
        counts = kept_per_group(keep, size, module.num_groups)
        partial = [group for group, count in enumerate(counts) if count not in (0, size)]
        if partial:
            raise ValueError(
                f"{owner}: groups {partial} would lose some of their {size} channels but not all; a "
                f"GroupNorm (num_groups={module.num_groups}) removes whole groups only"
            )

    def check_inputs(self, module: nn.Module, keep: torch.Tensor, owner: str) -> None:
        self.check_outputs(module, keep, owner)

    def keep_outputs(self, module: nn.Module, keep: torch.Tensor, optimizer: Optimizer) -> None:
        size = module.num_channels // module.num_groups
        for name in ("weight", "bias"):
            shrink_tensor(module, name, 0, keep, optimizer)
        module.num_channels = len(keep)
        module.num_groups = len(keep) // size
        self._keep_output_tensors(module, keep, optimizer)

    def tensor_shapes(self, record: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
        return dict.fromkeys(("weight", "bias"), (record["num_channels"],))

    def check_record(self, record: Mapping[str, Any]) -> str | None:
        if record["num_channels"] % record["num_groups"]:
            return f"num_channels={record['num_channels']} is not divisible by num_groups={record['num_groups']}"
        return None if type(record["eps"]) is float else f"eps={record['eps']!r} is not a float"

    def meta_forward(self, module: nn.Module, value: torch.Tensor) -> torch.Tensor | None:
        return meta_empty(value)
