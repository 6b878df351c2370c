"""Kinds for layers of your own: any per-channel layer, and normalisations across channels.

:class:`PerChannel` describes a layer whose output channel ``k`` depends on input channel
``k`` alone, through tensors whose dim 0 indexes the channels: a learnable per-channel scale
(``x * gamma.view(1, -1, 1, 1)``), a frozen batch norm that keeps its statistics in buffers
(torchvision's ``FrozenBatchNorm2d``). Removing channel ``k`` removes row ``k`` of each.

:class:`ChannelMixing` describes a layer that mixes channels in a way removal cannot follow
(a layer norm over the channels divides every channel by statistics of all of them): its
channels stay, with its reason in the pruner's report.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from .base import LayerKind, Optimizer, meta_empty, shrink_tensor


@dataclasses.dataclass(frozen=True)
class PerChannel(LayerKind):
    """A layer that owns its channels.

    Args:
        tensors: its parameters and buffers whose dim 0 indexes the channels (at least one;
            the first gives the number of channels).
        dim: the channel dim of its input (and output), counted from the front when >= 0,
            from the end when < 0.
        size: the attribute that holds its number of channels, if it has one.
    """

    tensors: tuple[str, ...] = ("weight",)
    dim: int = 1
    size: str | None = None

    sizes: ClassVar[tuple[str, ...]] = ("channels",)
    out_size: ClassVar[str] = "channels"

    def __post_init__(self) -> None:
        if not self.tensors:
            raise ValueError("PerChannel needs at least one tensor whose dim 0 indexes the channels")

    def out_channels(self, module: nn.Module) -> int:
        return getattr(module, self.tensors[0]).shape[0]

    def input_dim(self, module: nn.Module, ndim: int) -> int:
        return self.dim if self.dim >= 0 else ndim + self.dim

    def record_dim(self, module: nn.Module) -> int:
        return self.dim

    def owns_channels(self, module: nn.Module) -> bool:
        return True

    def known_tensors(self, module: nn.Module) -> set[str]:
        return {*self.tensors, *super().known_tensors(module)}

    def keep_outputs(self, module: nn.Module, keep: torch.Tensor, optimizer: Optimizer) -> None:
        for name in self.tensors:
            shrink_tensor(module, name, 0, keep, optimizer)
        if self.size is not None:
            setattr(module, self.size, len(keep))
        self._keep_output_tensors(module, keep, optimizer)

    def read_sizes(self, module: nn.Module) -> dict[str, int]:
        return {"channels": self.out_channels(module)}

    def set_sizes(self, module: nn.Module, record: Mapping[str, Any]) -> None:
        if self.size is not None:
            setattr(module, self.size, record["channels"])

    def channel_tensors(self) -> tuple[str, ...]:
        return (*self.tensors, *self.output_tensors)

    def meta_forward(self, module: nn.Module, value: torch.Tensor) -> torch.Tensor | None:
        return meta_empty(value)


@dataclasses.dataclass(frozen=True)
class ChannelMixing(LayerKind):
    """A layer whose channels cannot go, for ``reason`` ("normalises across its channels")."""

    reason: str = "mixes its channels"
    prunable: ClassVar[bool] = False

    def frozen(self, module: nn.Module) -> str | None:
        return self.reason
