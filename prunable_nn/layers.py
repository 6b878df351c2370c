"""Drop-in prunable twins of ``nn.Conv2d``, ``nn.BatchNorm2d`` and ``nn.Linear``.

Each twin has the torch layer's constructor and ``state_dict``, estimates the importance of
its output channels during training (:mod:`prunable_nn.taylor`), and removes channels
physically: ``drop_output(indices)`` removes output channels, ``drop_input(indices)`` input
channels. Weights, bias, ``.grad``, running statistics, accumulated estimates, the size
attributes and (when given) the optimizer's state all follow, and every ``nn.Parameter``
stays the same object.

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
    output channels together. Other grouped convolutions cannot be pruned and say so.
    """

    torch_class = nn.Conv2d
    channel_dim = 1

    @property
    def is_depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.in_channels == self.out_channels

    @property
    def num_output_channels(self) -> int:
        return self.out_channels

    @property
    def num_input_channels(self) -> int:
        return self.in_channels

    def _output_keep(self, indices: Indices) -> torch.Tensor:
        self._check_groups()
        return super()._output_keep(indices)

    def _input_keep(self, indices: Indices, features_per_channel: int = 1) -> torch.Tensor:
        self._check_groups()
        return super()._input_keep(indices, features_per_channel)

    def _check_groups(self) -> None:
        if self.groups > 1 and not self.is_depthwise:
            raise ValueError(
                f"{self.describe()}: a grouped convolution with groups={self.groups}, "
                f"{self.in_channels} inputs and {self.out_channels} outputs cannot be pruned "
                "(only groups=1 and depthwise convolutions can)"
            )

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
        if self.is_depthwise:
            self._keep_outputs(keep, optimizer)
            return
        shrink_parameter(self.weight, 1, keep, optimizer)
        self.in_channels = len(keep)

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
