"""Drop-in prunable twins of ``nn.Conv2d``, ``nn.BatchNorm2d`` and ``nn.Linear``.

Each twin has the torch layer's constructor and ``state_dict``, estimates the importance of
its output channels during training (:mod:`prunable_nn.taylor`), and removes channels
physically: ``drop_output(indices)`` removes output channels, ``drop_input(indices)`` input
channels. Weights, bias, ``.grad``, running statistics, accumulated estimates, the size
attributes and (when given) the optimizer's state all follow, and every ``nn.Parameter``
stays the same object. A grouped convolution keeps its groups alike: every group keeps
the same number of outputs and the same positions among its inputs.

Every drop validates first and changes nothing when the indices are bad. The two halves are
also available separately (``_output_keep`` validates and returns the channels to keep,
``_keep_outputs`` applies them) so that a chain of layers can validate all before changing any.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

import torch
from torch import nn

from .channels import expand_to_blocks, keep_indices
from .surgery import check_resizable, shrink_buffer, shrink_parameter
from .taylor import TaylorEstimates

Indices = Iterable[int] | torch.Tensor
Layer = TypeVar("Layer", bound="PrunableLayer")


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


class PrunableLayer(TaylorEstimates):
    """Behaviour shared by the prunable layers; combine with the torch layer it extends."""

    #: The plain torch layer this class extends.
    torch_class: type[nn.Module]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._init_estimates()
        self.name_in_model = ""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        output = super().forward(input)
        self._record(output)
        return output

    # -- conversion -------------------------------------------------------------------------
    @classmethod
    def from_module(cls: type[Layer], module: nn.Module) -> Layer:
        """The prunable twin of a plain torch layer, sharing its parameters and buffers."""
        if type(module) is not cls.torch_class:
            raise TypeError(
                f"{cls.__name__}.from_module expects an {cls.torch_class.__module__}."
                f"{cls.torch_class.__name__}, got {type(module).__name__}"
            )
        twin = cls.__new__(cls)
        twin.__dict__.update(
            {key: value.copy() if isinstance(value, (dict, set)) else value for key, value in vars(module).items()}
        )
        twin._init_estimates()
        twin.name_in_model = ""
        return twin

    def to_torch(self) -> nn.Module:
        """A plain torch layer with the current shapes and a copy of the current weights."""
        with torch.device("meta"):
            plain = self._empty_torch_layer()
        state = {key: value.detach().clone() for key, value in self.state_dict().items()}
        plain.load_state_dict(state, assign=True)
        for name, param in plain.named_parameters():
            param.requires_grad_(self.get_parameter(name).requires_grad)
        return plain.train(self.training)

    def _empty_torch_layer(self) -> nn.Module:
        raise NotImplementedError

    # -- channel counts ----------------------------------------------------------------------
    @property
    def num_output_channels(self) -> int:
        raise NotImplementedError

    @property
    def num_input_channels(self) -> int:
        raise NotImplementedError

    def _num_estimated_channels(self) -> int:
        return self.num_output_channels

    # -- removal -----------------------------------------------------------------------------
    def drop_output(self, indices: Indices, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Remove output channels ``indices``; with ``optimizer``, slice its state too."""
        self._keep_outputs(self._output_keep(indices), optimizer)

    def drop_input(
        self,
        indices: Indices,
        optimizer: torch.optim.Optimizer | None = None,
        features_per_channel: int = 1,
    ) -> None:
        """Remove input channels ``indices``. A layer fed by a flattened ``(C, H, W)`` map
        owns ``features_per_channel = H * W`` consecutive inputs per channel."""
        keep = self._input_keep(indices, features_per_channel)
        self._keep_inputs(keep, optimizer, features_per_channel)

    def _output_keep(self, indices: Indices) -> torch.Tensor:
        self._check_resizable()
        return keep_indices(indices, self.num_output_channels, owner=f"{self.describe()} output")

    def _input_keep(self, indices: Indices, features_per_channel: int = 1) -> torch.Tensor:
        self._check_resizable()
        channels = self._input_channels_for(features_per_channel)
        return keep_indices(indices, channels, owner=f"{self.describe()} input")

    def _check_resizable(self) -> None:
        for name, param in self.named_parameters(recurse=False):
            check_resizable(param, owner=f"{self.describe()}.{name}")

    def _input_channels_for(self, features_per_channel: int) -> int:
        if features_per_channel != 1:
            raise ValueError(
                f"{self.describe()}: features_per_channel={features_per_channel} applies only "
                "to a Linear layer fed by a flattened map"
            )
        return self.num_input_channels

    def _keep_outputs(self, keep: torch.Tensor, optimizer: torch.optim.Optimizer | None) -> None:
        raise NotImplementedError

    def _keep_inputs(
        self, keep: torch.Tensor, optimizer: torch.optim.Optimizer | None, features_per_channel: int
    ) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        """The layer's name in its model when known, else its class and configuration."""
        if self.name_in_model:
            return f"{type(self).__name__} '{self.name_in_model}'"
        return f"{type(self).__name__}({self.extra_repr()})"


class PConv2d(PrunableLayer, nn.Conv2d):
    """``nn.Conv2d`` whose output and input channels can be removed.

    A depthwise convolution (``groups == in_channels == out_channels``) removes input and
    output channels together.

    A grouped convolution with ``groups = g``, ``in_channels = g * cin`` and
    ``out_channels = g * cout`` (weight ``[g * cout, cin, kh, kw]``) computes output ``o``
    from the inputs of its group ``o // cout`` only: ``y[o] = b[o] + sum_p w[o, p] * x[(o //
    cout) * cin + p]``. Input ``i`` is position ``i % cin`` of group ``i // cin``. Since every
    group has the same shape, a drop must keep it so: ``drop_output`` may remove any outputs
    that leave every group the same number ``cout' >= 1`` (weight rows and bias follow,
    ``out_channels = g * cout'``); ``drop_input`` must remove the same positions ``D`` from
    every group (weight columns ``p`` not in ``D`` stay, ``in_channels = g * (cin - |D|)``).
    ``groups`` stays ``g``. A depthwise convolution with a channel multiplier ``m``
    (``groups == in_channels``, ``out_channels = m * in_channels``) is the case ``cin = 1``:
    its outputs can be removed evenly per group, its inputs cannot (that would remove groups).
    """

    torch_class = nn.Conv2d
    channel_dim = 1

    @property
    def is_depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.in_channels == self.out_channels

    @property
    def is_grouped(self) -> bool:
        """``groups > 1`` and not depthwise: drops must treat every group alike."""
        return self.groups > 1 and not self.is_depthwise

    @property
    def num_output_channels(self) -> int:
        return self.out_channels

    @property
    def num_input_channels(self) -> int:
        return self.in_channels

    def _output_keep(self, indices: Indices) -> torch.Tensor:
        keep = super()._output_keep(indices)
        if self.is_grouped:
            self._check_even_outputs(keep)
        return keep

    def _input_keep(self, indices: Indices, features_per_channel: int = 1) -> torch.Tensor:
        keep = super()._input_keep(indices, features_per_channel)
        if self.is_grouped:
            self._input_positions(keep)
        return keep

    def _check_even_outputs(self, keep: torch.Tensor) -> None:
        """Raise unless ``keep`` leaves every group the same number of outputs."""
        per_group = self.out_channels // self.groups
        counts = kept_per_group(keep, per_group, self.groups)
        if len(set(counts)) > 1:
            dropped = sorted(set(range(self.out_channels)) - set(keep.tolist()))
            leaves = ", ".join(f"group {k} with {n}" for k, n in enumerate(counts))
            raise ValueError(
                f"{self.describe()}: dropping output channels {dropped} would leave {leaves} "
                f"outputs; a grouped convolution (groups={self.groups}, {per_group} outputs per "
                "group) must keep the same number of outputs in every group"
            )

    def _input_positions(self, keep: torch.Tensor) -> torch.Tensor:
        """The positions within a group that the global inputs ``keep`` keep; raise unless
        they are the same in every group."""
        if not self.is_grouped:
            return keep
        per_group = self.in_channels // self.groups
        positions = shared_group_positions(keep, per_group, self.groups)
        if positions is None:
            kept = set(keep.tolist())
            dropped = sorted(set(range(self.in_channels)) - kept)
            by_group = ", ".join(
                f"{[p for p in range(per_group) if k * per_group + p not in kept]} in group {k}"
                for k in range(self.groups)
            )
            if per_group == 1:
                raise ValueError(
                    f"{self.describe()}: cannot drop input channels {dropped}: a grouped "
                    f"convolution with groups={self.groups} and one input per group (a channel "
                    "multiplier) cannot lose inputs without losing whole groups"
                )
            raise ValueError(
                f"{self.describe()}: cannot drop input channels {dropped}: a grouped convolution "
                f"(groups={self.groups}, {per_group} inputs per group) must drop the same "
                f"positions from every group, but these drop positions {by_group}"
            )
        return positions

    def _keep_outputs(self, keep: torch.Tensor, optimizer: torch.optim.Optimizer | None) -> None:
        shrink_parameter(self.weight, 0, keep, optimizer)
        if self.bias is not None:
            shrink_parameter(self.bias, 0, keep, optimizer)
        if self.is_depthwise:
            self.in_channels = self.groups = len(keep)
        self.out_channels = len(keep)
        self._shrink_estimates(keep)

    def _keep_inputs(
        self, keep: torch.Tensor, optimizer: torch.optim.Optimizer | None, features_per_channel: int
    ) -> None:
        """Keep the global input channels ``keep``; a grouped convolution keeps the weight
        columns of their positions within a group (the same in every group)."""
        if self.is_depthwise:
            self._keep_outputs(keep, optimizer)
            return
        positions = self._input_positions(keep.cpu())  # raises before any change
        shrink_parameter(self.weight, 1, positions, optimizer)
        self.in_channels = self.groups * len(positions)

    def _empty_torch_layer(self) -> nn.Conv2d:
        return nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            bias=self.bias is not None,
            padding_mode=self.padding_mode,
            dtype=self.weight.dtype,
        )


class PBatchNorm2d(PrunableLayer, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose channels can be removed (input and output are the same)."""

    torch_class = nn.BatchNorm2d
    channel_dim = 1

    @property
    def num_output_channels(self) -> int:
        return self.num_features

    @property
    def num_input_channels(self) -> int:
        return self.num_features

    def _keep_outputs(self, keep: torch.Tensor, optimizer: torch.optim.Optimizer | None) -> None:
        if self.affine:
            shrink_parameter(self.weight, 0, keep, optimizer)
            shrink_parameter(self.bias, 0, keep, optimizer)
        if self.track_running_stats:
            self.running_mean = shrink_buffer(self.running_mean, 0, keep)
            self.running_var = shrink_buffer(self.running_var, 0, keep)
        self.num_features = len(keep)
        self._shrink_estimates(keep)

    def _keep_inputs(
        self, keep: torch.Tensor, optimizer: torch.optim.Optimizer | None, features_per_channel: int
    ) -> None:
        self._keep_outputs(keep, optimizer)

    def _empty_torch_layer(self) -> nn.BatchNorm2d:
        return nn.BatchNorm2d(
            self.num_features,
            eps=self.eps,
            momentum=self.momentum,
            affine=self.affine,
            track_running_stats=self.track_running_stats,
            dtype=self._dtype(),
        )

    def _dtype(self) -> torch.dtype | None:
        reference = self.weight if self.affine else self.running_mean
        return None if reference is None else reference.dtype


class PLinear(PrunableLayer, nn.Linear):
    """``nn.Linear`` whose output features and input channels can be removed.

    Fed by a flattened ``(C, H, W)`` map, input channel ``k`` owns the ``H * W`` consecutive
    inputs ``k * H * W`` to ``(k + 1) * H * W - 1``: pass ``features_per_channel = H * W``.
    """

    torch_class = nn.Linear
    channel_dim = -1

    @property
    def num_output_channels(self) -> int:
        return self.out_features

    @property
    def num_input_channels(self) -> int:
        return self.in_features

    def _input_channels_for(self, features_per_channel: int) -> int:
        if features_per_channel < 1 or self.in_features % features_per_channel:
            raise ValueError(
                f"{self.describe()}: {self.in_features} input features cannot be split into "
                f"channels of features_per_channel={features_per_channel}"
            )
        return self.in_features // features_per_channel

    def _keep_outputs(self, keep: torch.Tensor, optimizer: torch.optim.Optimizer | None) -> None:
        shrink_parameter(self.weight, 0, keep, optimizer)
        if self.bias is not None:
            shrink_parameter(self.bias, 0, keep, optimizer)
        self.out_features = len(keep)
        self._shrink_estimates(keep)

    def _keep_inputs(
        self, keep: torch.Tensor, optimizer: torch.optim.Optimizer | None, features_per_channel: int
    ) -> None:
        features = expand_to_blocks(keep, features_per_channel)
        shrink_parameter(self.weight, 1, features, optimizer)
        self.in_features = len(features)

    def _empty_torch_layer(self) -> nn.Linear:
        return nn.Linear(
            self.in_features, self.out_features, bias=self.bias is not None, dtype=self.weight.dtype
        )
