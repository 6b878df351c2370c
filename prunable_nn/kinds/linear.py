"""``nn.Linear``: output features, and input features that may come from a flattened map.

Fed by a flattened ``(C, H, W)`` map, input channel ``k`` owns the ``H * W`` consecutive
input features ``k * H * W`` to ``(k + 1) * H * W - 1`` (``features_per_channel = H * W``):
removing it removes those columns of the weight.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..channels import expand_to_blocks
from .base import LayerKind, Optimizer, meta_empty, shrink_tensor


class LinearKind(LayerKind):
    """``nn.Linear``; its channels are on the last dim."""

    sizes: ClassVar[tuple[str, ...]] = ("in_features", "out_features")
    out_size: ClassVar[str] = "out_features"

    def in_channels(self, module: nn.Module) -> int:
        return module.in_features

    def input_units(self, module: nn.Module, features_per_channel: int, owner: str) -> int:
        if features_per_channel < 1 or module.in_features % features_per_channel:
            raise ValueError(
                f"{owner}: {module.in_features} input features cannot be split into channels of "
                f"features_per_channel={features_per_channel}"
            )
        return module.in_features // features_per_channel

    def input_dim(self, module: nn.Module, ndim: int) -> int:
        return ndim - 1

    def record_dim(self, module: nn.Module) -> int:
        return -1

    def known_tensors(self, module: nn.Module) -> set[str]:
        return {"weight", "bias", *super().known_tensors(module)}

    def keep_outputs(self, module: nn.Module, keep: torch.Tensor, optimizer: Optimizer) -> None:
        shrink_tensor(module, "weight", 0, keep, optimizer)
        shrink_tensor(module, "bias", 0, keep, optimizer)
        module.out_features = len(keep)
        self._keep_output_tensors(module, keep, optimizer)

    def keep_inputs(
        self, module: nn.Module, keep: torch.Tensor, optimizer: Optimizer, features_per_channel: int = 1
    ) -> None:
        features = expand_to_blocks(keep, features_per_channel)
        shrink_tensor(module, "weight", 1, features, optimizer)
        module.in_features = len(features)

    def output_weights(self, module: nn.Module) -> torch.Tensor:
        return module.weight.detach()

    def tensor_shapes(self, record: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
        return {"weight": (record["out_features"], record["in_features"]), "bias": (record["out_features"],)}

    def meta_forward(self, module: nn.Module, value: torch.Tensor) -> torch.Tensor | None:
        if getattr(module, "torch_class", None) is not nn.Linear:
            return None
        return F.linear(value, meta_empty(module.weight))
