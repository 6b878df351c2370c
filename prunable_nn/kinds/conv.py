"""Convolutions of 1, 2 and 3 dims, plain and transposed, grouped and depthwise.

A convolution with ``groups = g``, ``in_channels = g * cin`` and ``out_channels = g * cout``
computes output ``o`` (in group ``o // cout``) from the inputs of its group only. Input ``i``
is position ``i % cin`` of group ``i // cin``. The weight of a plain convolution is
``[g * cout, cin, *kernel]``: row ``o`` makes output ``o`` and column ``p`` reads position
``p`` of every group, so ``drop_output`` may remove any outputs that leave every group the
same number ``cout' >= 1``, and ``drop_input`` must remove the same positions from every
group. A transposed convolution's weight is ``[g * cin, cout, *kernel]``, the other way
round: its inputs may go unevenly placed, its outputs only at the same positions of every
group. ``groups`` stays ``g``; the graph ties the channels at one position of every group, so
that a chain removes them together.

A depthwise convolution (``groups == in_channels == out_channels``) owns its channels: it
removes input and output channel ``k`` together. One with a channel multiplier (``groups ==
in_channels`` and more outputs, or the transposed mirror image) cannot lose a channel without
losing whole groups, and stays as it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from .base import LayerKind, Optimizer, Ties, group_positions, meta_empty, shrink_tensor


def kept_per_group(keep: torch.Tensor, group_size: int, groups: int) -> list[int]:
    """How many channels of ``keep`` each of ``groups`` groups holds, channel ``c`` being in
    group ``c // group_size``."""
    return torch.bincount(keep // group_size, minlength=groups).tolist()


def shared_group_positions(keep: torch.Tensor, group_size: int, groups: int) -> torch.Tensor | None:
    """The positions ``P`` with ``keep == {k * group_size + p : 0 <= k < groups, p in P}``
    (every group keeps the same positions), or ``None`` when the groups differ.

    ``keep`` is sorted ascending; so is ``P``, the channels of ``keep`` in group 0.
    """
    positions = keep[keep < group_size]
    expected = (torch.arange(groups)[:, None] * group_size + positions).flatten()
    return positions if torch.equal(expected, keep) else None


def is_depthwise(conv: nn.Module) -> bool:
    return conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels


class ConvKind(LayerKind):
    """``nn.Conv1d``, ``nn.Conv2d``, ``nn.Conv3d`` and their variants."""

    sizes: ClassVar[tuple[str, ...]] = ("in_channels", "out_channels", "groups")
    fixed: ClassVar[tuple[str, ...]] = ("kernel_size", "stride", "padding", "dilation", "padding_mode")
    out_size: ClassVar[str] = "out_channels"
    #: Whether the weight is ``[in, out / groups, ...]`` (a transposed convolution).
    transposed: ClassVar[bool] = False

    def in_channels(self, module: nn.Module) -> int:
        return module.in_channels

    def input_dim(self, module: nn.Module, ndim: int) -> int:
        return ndim - len(module.kernel_size) - 1

    def owns_channels(self, module: nn.Module) -> bool:
        return is_depthwise(module)

    def ties(self, module: nn.Module, labels: torch.Tensor, side: str) -> Ties:
        return [] if is_depthwise(module) else group_positions(labels, module.groups)

    def frozen(self, module: nn.Module) -> str | None:
        groups = module.groups
        narrow = module.out_channels if self.transposed else module.in_channels
        if groups > 1 and narrow == groups and not is_depthwise(module):
            return (
                f"a depthwise {type(module).__name__} with a channel multiplier (groups={groups}, "
                f"in_channels={module.in_channels}, out_channels={module.out_channels}) cannot lose a "
                "channel without losing whole groups"
            )
        return super().frozen(module)

    def known_tensors(self, module: nn.Module) -> set[str]:
        return {"weight", "bias", *super().known_tensors(module)}

    # -- removal -------------------------------------------------------------------------------
    def check_outputs(self, module: nn.Module, keep: torch.Tensor, owner: str) -> None:
        if is_depthwise(module) or module.groups == 1:
            return
        if self.transposed:
            self._shared_positions(keep, module.out_channels, module.groups, owner, "output")
        else:
            self._even_counts(keep, module.out_channels, module.groups, owner, "output")

    def check_inputs(self, module: nn.Module, keep: torch.Tensor, owner: str) -> None:
        if is_depthwise(module) or module.groups == 1:
            return
        if self.transposed:
            self._even_counts(keep, module.in_channels, module.groups, owner, "input")
        else:
            self._shared_positions(keep, module.in_channels, module.groups, owner, "input")

    def keep_outputs(self, module: nn.Module, keep: torch.Tensor, optimizer: Optimizer) -> None:
        if is_depthwise(module):
            self._keep_rows(module, keep, optimizer)
            module.in_channels = module.groups = len(keep)
        elif self.transposed:
            positions = self._shared_positions(keep, module.out_channels, module.groups, "", "output")
            shrink_tensor(module, "weight", 1, positions, optimizer)
            shrink_tensor(module, "bias", 0, keep, optimizer)
        else:
            self._keep_rows(module, keep, optimizer)
        module.out_channels = len(keep)
        self._keep_output_tensors(module, keep, optimizer)

    def keep_inputs(
        self, module: nn.Module, keep: torch.Tensor, optimizer: Optimizer, features_per_channel: int = 1
    ) -> None:
        if is_depthwise(module):
            self.keep_outputs(module, keep, optimizer)
        elif self.transposed:
            shrink_tensor(module, "weight", 0, keep, optimizer)
            module.in_channels = len(keep)
        else:
            positions = self._shared_positions(keep.cpu(), module.in_channels, module.groups, "", "input")
            shrink_tensor(module, "weight", 1, positions, optimizer)
            module.in_channels = module.groups * len(positions)

    def output_weights(self, module: nn.Module) -> torch.Tensor:
        weight = module.weight.detach()
        if not self.transposed or is_depthwise(module):
            return weight.flatten(1)
        groups = module.groups
        by_group = weight.reshape(groups, weight.shape[0] // groups, weight.shape[1], -1)
        return by_group.permute(0, 2, 1, 3).reshape(groups * weight.shape[1], -1)

    def _keep_rows(self, module: nn.Module, keep: torch.Tensor, optimizer: Optimizer) -> None:
        shrink_tensor(module, "weight", 0, keep, optimizer)
        shrink_tensor(module, "bias", 0, keep, optimizer)

    @staticmethod
    def _even_counts(keep: torch.Tensor, channels: int, groups: int, owner: str, side: str) -> None:
        """Raise unless ``keep`` leaves every group the same number of channels."""
        per_group = channels // groups
        counts = kept_per_group(keep, per_group, groups)
        if len(set(counts)) > 1:
            dropped = sorted(set(range(channels)) - set(keep.tolist()))
            leaves = ", ".join(f"group {k} with {n}" for k, n in enumerate(counts))
            raise ValueError(
                f"{owner}: dropping {side} channels {dropped} would leave {leaves} {side}s; a grouped "
                f"convolution (groups={groups}, {per_group} {side}s per group) must keep the same number "
                f"of {side}s in every group"
            )

    @staticmethod
    def _shared_positions(keep: torch.Tensor, channels: int, groups: int, owner: str, side: str) -> torch.Tensor:
        """The positions within a group that the channels ``keep`` keep; raise unless they
        are the same in every group."""
        if groups == 1:
            return keep
        per_group = channels // groups
        positions = shared_group_positions(keep, per_group, groups)
        if positions is None:
            kept = set(keep.tolist())
            dropped = sorted(set(range(channels)) - kept)
            if per_group == 1:
                raise ValueError(
                    f"{owner}: cannot drop {side} channels {dropped}: a grouped convolution with "
                    f"groups={groups} and one {side} per group (a channel multiplier) cannot lose "
                    f"{side}s without losing whole groups"
                )
            by_group = ", ".join(
                f"{[p for p in range(per_group) if k * per_group + p not in kept]} in group {k}"
                for k in range(groups)
            )
            raise ValueError(
                f"{owner}: cannot drop {side} channels {dropped}: a grouped convolution (groups={groups}, "
                f"{per_group} {side}s per group) must drop the same positions from every group, but "
                f"these drop positions {by_group}"
            )
        return positions

    # -- checkpoints ---------------------------------------------------------------------------
    def tensor_shapes(self, record: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
        out, inputs, groups = record["out_channels"], record["in_channels"], record["groups"]
        kernel = tuple(record["kernel_size"])
        weight = (inputs, out // groups, *kernel) if self.transposed else (out, inputs // groups, *kernel)
        return {"weight": weight, "bias": (out,)}

    def check_record(self, record: Mapping[str, Any]) -> str | None:
        dims = len(record["kernel_size"]) if isinstance(record["kernel_size"], list) else 0
        if dims not in (1, 2, 3):
            return f"kernel_size={record['kernel_size']!r} is not a list of 1 to 3 ints"
        for attr in ("kernel_size", "stride", "dilation", *(("output_padding",) if self.transposed else ())):
            if not _ints(record[attr], dims):
                return f"{attr}={record[attr]!r} is not a list of {dims} ints"
        if not (isinstance(record["padding"], str) or _ints(record["padding"], dims)):
            return f"padding={record['padding']!r} is neither a string nor {dims} ints"
        if not isinstance(record["padding_mode"], str):
            return f"padding_mode={record['padding_mode']!r} is not a string"
        for attr in ("in_channels", "out_channels"):
            if record[attr] % record["groups"]:
                return f"{attr}={record[attr]} is not divisible by groups={record['groups']}"
        return None

    def meta_forward(self, module: nn.Module, value: torch.Tensor) -> torch.Tensor | None:
        if getattr(module, "torch_class", None) not in _PLAIN_CONVS or isinstance(module.padding, str):
            return None  # a variant's forward may differ
        dims = len(module.kernel_size)
        if value.dim() not in (dims + 1, dims + 2) or value.shape[-dims - 1] != module.in_channels:
            return None  # the convolution itself says what is wrong
        spatial = [
            (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1
            for size, pad, dilation, kernel, stride in zip(
                value.shape[-dims:], module.padding, module.dilation, module.kernel_size, module.stride
            )
        ]
        return meta_empty(value, (*value.shape[: -dims - 1], module.out_channels, *spatial))


class ConvTransposeKind(ConvKind):
    """``nn.ConvTranspose1d``, ``nn.ConvTranspose2d``, ``nn.ConvTranspose3d``."""

    fixed: ClassVar[tuple[str, ...]] = (*ConvKind.fixed, "output_padding")
    transposed: ClassVar[bool] = True


def _ints(value: Any, count: int) -> bool:
    return isinstance(value, list) and len(value) == count and all(type(item) is int for item in value)


_PLAIN_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
