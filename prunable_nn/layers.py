"""Drop-in prunable twins of torch's layers: convolutions (1-3 dims, plain and transposed),
batch, instance and group norms, and ``nn.Linear``.

Each twin subclasses the torch layer (same constructor, ``forward`` and ``state_dict``),
estimates the importance of its output channels during training (:mod:`prunable_nn.taylor`),
and removes channels physically: ``drop_output(indices)`` removes output channels,
``drop_input(indices)`` input channels. Weights, bias, ``.grad``, running statistics,
accumulated estimates, the size attributes and (when given) the optimizer's state all
follow, and every ``nn.Parameter`` stays the same object. What a layer's channels are and how
they are sliced is its kind's to say (:mod:`prunable_nn.kinds`); the twins of other classes
(timm's ``BatchNormAct2d``, a registered layer of your own) are made by
:func:`prunable_nn.kinds.twin_class` in the same way.

Every drop validates first and changes nothing when the indices are bad. The two halves are
also available separately (``_output_keep`` validates and returns the channels to keep,
``_keep_outputs`` applies them) so that a chain of layers can validate all before changing any.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import ClassVar, TypeVar

import torch
from torch import nn

from .channels import keep_indices
from .compat import module_without_init
from .kinds import CONV, CONV_TRANSPOSE, GROUP_NORM, LINEAR, NORM, LayerKind, register_layer
from .kinds.conv import is_depthwise
from .surgery import Optimizers, check_optimizers, check_resizable
from .estimator import TaylorEstimates

Indices = Iterable[int] | torch.Tensor
Layer = TypeVar("Layer", bound="PrunableLayer")

#: What a twin holds for pruning only; its plain copy (:meth:`PrunableLayer.to_torch`) drops it.
PRUNING_STATE = (
    "estimating", "statistic", "grad_scaler", "name_in_model", "_taylor_sum", "_taylor_count", "_batches_skipped",
    "_generation", "records_after_activation", "in_place_write", "_awaited",
)
#: Hooks that a plain copy does not take over (forward and backward hooks serve the twin).
_HOOKS = (
    "_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks",
)


class PrunableLayer(TaylorEstimates):
    """Behaviour shared by the prunable layers; combine with the torch layer it extends."""

    #: The plain class this class extends.
    torch_class: ClassVar[type[nn.Module]]
    #: What its channels are and how they are sliced.
    kind: ClassVar[LayerKind]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._init_estimates()
        self.name_in_model = ""

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return self._record(super().forward(*args, **kwargs))

    @property
    def channel_dim(self) -> int:
        """The channel dim of a batch of outputs, where the estimates are read."""
        return self.kind.record_dim(self)

    # -- conversion -------------------------------------------------------------------------
    @classmethod
    def from_module(cls: type[Layer], module: nn.Module) -> Layer:
        """The prunable twin of a plain layer, sharing its parameters and buffers."""
        if type(module) is not cls.torch_class:
            raise TypeError(
                f"{cls.__name__}.from_module expects an {cls.torch_class.__module__}."
                f"{cls.torch_class.__name__}, got {type(module).__name__}"
            )
        twin = module_without_init(
            cls, {key: value.copy() if isinstance(value, (dict, set)) else value for key, value in vars(module).items()}
        )
        twin._init_estimates()
        twin.name_in_model = ""
        return twin

    def to_torch(self) -> nn.Module:
        """A module of the plain class (``nn.Conv2d``, or timm's ``BatchNormAct2d``...) with
        the current shapes and a copy of everything else: weights, buffers, submodules,
        ``requires_grad`` and the training flag; not the estimates, ``.grad`` or hooks."""
        plain = module_without_init(self.torch_class, {})
        memo = {id(self): plain}
        for key, value in vars(self).items():
            if key not in PRUNING_STATE and key not in _HOOKS:
                plain.__dict__[key] = copy.deepcopy(value, memo)
        for key in _HOOKS:
            if key in vars(self):
                plain.__dict__[key] = type(vars(self)[key])()
        for param in plain._parameters.values():
            if param is not None:
                param.grad = None
        return plain

    # -- channel counts ----------------------------------------------------------------------
    @property
    def num_output_channels(self) -> int:
        return self.kind.out_channels(self)

    @property
    def num_input_channels(self) -> int:
        return self.kind.in_channels(self)

    def _num_estimated_channels(self) -> int:
        return self.num_output_channels

    # -- removal -----------------------------------------------------------------------------
    def drop_output(self, indices: Indices, optimizer: Optimizers = None) -> None:
        """Remove output channels ``indices``; with ``optimizer`` (one or several), slice
        their state too."""
        keep = self._output_keep(indices)
        check_optimizers(optimizer, self.parameters(), self.describe())
        self._keep_outputs(keep, optimizer)

    def drop_input(
        self,
        indices: Indices,
        optimizer: Optimizers = None,
        features_per_channel: int = 1,
    ) -> None:
        """Remove input channels ``indices``. A layer fed by a flattened ``(C, H, W)`` map
        owns ``features_per_channel = H * W`` consecutive inputs per channel."""
        keep = self._input_keep(indices, features_per_channel)
        check_optimizers(optimizer, self.parameters(), self.describe())
        self._keep_inputs(keep, optimizer, features_per_channel)

    def _output_keep(self, indices: Indices) -> torch.Tensor:
        self._check_resizable()
        owner = self.describe()
        keep = keep_indices(indices, self.num_output_channels, owner=f"{owner} output")
        self.kind.check_outputs(self, keep, owner)
        return keep

    def _input_keep(self, indices: Indices, features_per_channel: int = 1) -> torch.Tensor:
        self._check_resizable()
        owner = self.describe()
        channels = self.kind.input_units(self, features_per_channel, owner)
        keep = keep_indices(indices, channels, owner=f"{owner} input")
        self.kind.check_inputs(self, keep, owner)
        return keep

    def _check_resizable(self) -> None:
        for name, param in self.named_parameters(recurse=False):
            check_resizable(param, owner=f"{self.describe()}.{name}")

    def _keep_outputs(self, keep: torch.Tensor, optimizer: Optimizers) -> None:
        self.kind.check_outputs(self, keep, self.describe())  # the apply half refuses too, before any change
        self.kind.keep_outputs(self, keep, optimizer)
        self._shrink_estimates(keep)

    def _keep_inputs(
        self, keep: torch.Tensor, optimizer: Optimizers, features_per_channel: int
    ) -> None:
        self.kind.check_inputs(self, keep, self.describe())
        owned = self.kind.owns_channels(self)  # (a depthwise convolution left with one channel no longer is)
        self.kind.keep_inputs(self, keep, optimizer, features_per_channel)
        if owned:
            self._shrink_estimates(keep)

    def describe(self) -> str:
        """The layer's name in its model when known, else its class and configuration."""
        if self.name_in_model:
            return f"{type(self).__name__} '{self.name_in_model}'"
        return f"{type(self).__name__}({self.extra_repr()})"


class _Convolution(PrunableLayer):
    """What the prunable convolutions share (the kind's docstring states the group rules)."""

    @property
    def is_depthwise(self) -> bool:
        return is_depthwise(self)


class PConv1d(_Convolution, nn.Conv1d):
    """``nn.Conv1d`` whose output and input channels can be removed (:mod:`prunable_nn.kinds.conv`)."""

    torch_class = nn.Conv1d
    kind = CONV


class PConv2d(_Convolution, nn.Conv2d):
    """``nn.Conv2d`` whose output and input channels can be removed.

    A depthwise convolution (``groups == in_channels == out_channels``) removes input and
    output channels together; a grouped one keeps its groups alike, every group keeping the
    same number of outputs and the same positions among its inputs
    (:mod:`prunable_nn.kinds.conv`).
    """

    torch_class = nn.Conv2d
    kind = CONV


class PConv3d(_Convolution, nn.Conv3d):
    """``nn.Conv3d`` whose output and input channels can be removed (:mod:`prunable_nn.kinds.conv`)."""

    torch_class = nn.Conv3d
    kind = CONV


class PConvTranspose1d(_Convolution, nn.ConvTranspose1d):
    """``nn.ConvTranspose1d`` whose output and input channels can be removed."""

    torch_class = nn.ConvTranspose1d
    kind = CONV_TRANSPOSE


class PConvTranspose2d(_Convolution, nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` whose output and input channels can be removed."""

    torch_class = nn.ConvTranspose2d
    kind = CONV_TRANSPOSE


class PConvTranspose3d(_Convolution, nn.ConvTranspose3d):
    """``nn.ConvTranspose3d`` whose output and input channels can be removed."""

    torch_class = nn.ConvTranspose3d
    kind = CONV_TRANSPOSE


class PBatchNorm1d(PrunableLayer, nn.BatchNorm1d):
    """``nn.BatchNorm1d`` whose channels can be removed (input and output are the same)."""

    torch_class = nn.BatchNorm1d
    kind = NORM


class PBatchNorm2d(PrunableLayer, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose channels can be removed (input and output are the same)."""

    torch_class = nn.BatchNorm2d
    kind = NORM


class PBatchNorm3d(PrunableLayer, nn.BatchNorm3d):
    """``nn.BatchNorm3d`` whose channels can be removed (input and output are the same)."""

    torch_class = nn.BatchNorm3d
    kind = NORM


class PInstanceNorm1d(PrunableLayer, nn.InstanceNorm1d):
    """``nn.InstanceNorm1d`` whose channels can be removed."""

    torch_class = nn.InstanceNorm1d
    kind = NORM


class PInstanceNorm2d(PrunableLayer, nn.InstanceNorm2d):
    """``nn.InstanceNorm2d`` whose channels can be removed."""

    torch_class = nn.InstanceNorm2d
    kind = NORM


class PInstanceNorm3d(PrunableLayer, nn.InstanceNorm3d):
    """``nn.InstanceNorm3d`` whose channels can be removed."""

    torch_class = nn.InstanceNorm3d
    kind = NORM


class PGroupNorm(PrunableLayer, nn.GroupNorm):
    """``nn.GroupNorm`` whose channels can be removed, whole groups at a time."""

    torch_class = nn.GroupNorm
    kind = GROUP_NORM


class PLinear(PrunableLayer, nn.Linear):
    """``nn.Linear`` whose output features and input channels can be removed.

    Fed by a flattened ``(C, H, W)`` map, input channel ``k`` owns the ``H * W`` consecutive
    inputs ``k * H * W`` to ``(k + 1) * H * W - 1``: pass ``features_per_channel = H * W``.
    """

    torch_class = nn.Linear
    kind = LINEAR


TWINS: tuple[type[PrunableLayer], ...] = (
    PConv1d, PConv2d, PConv3d, PConvTranspose1d, PConvTranspose2d, PConvTranspose3d, PBatchNorm1d,
    PBatchNorm2d, PBatchNorm3d, PInstanceNorm1d, PInstanceNorm2d, PInstanceNorm3d, PGroupNorm, PLinear,
)
for _twin in TWINS:
    register_layer(_twin.torch_class, _twin.kind, twin=_twin)
register_layer(nn.SyncBatchNorm, NORM)
