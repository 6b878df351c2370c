"""A layer kind: everything prunable_nn needs to know about one kind of layer, in one place.

A kind answers for a module of its kind (the module is passed in; a kind holds no state):

- **channels**: how many output and input channels it has, and which dim of a value with
  ``ndim`` dims holds them;
- **structure**: whether it *owns* its channels (a per-channel layer: output channel ``k``
  is input channel ``k``, as in batch norm or a depthwise convolution), which channels must
  go together (:meth:`LayerKind.ties`: the same position of every group of a grouped
  convolution, the channels of one group of a group norm), and why a module or its input
  channels cannot lose channels at all (:meth:`LayerKind.frozen`, :meth:`LayerKind.frozen_inputs`);
- **removal**: :meth:`LayerKind.check_outputs` / :meth:`LayerKind.check_inputs` validate the
  channels to keep and change nothing; :meth:`LayerKind.keep_outputs` /
  :meth:`LayerKind.keep_inputs` then slice every tensor indexed by those channels (keeping
  each ``nn.Parameter`` object, its ``.grad`` and the optimizer's state) and update the size
  attributes;
- **checkpoints**: the attributes that pruning changes (``sizes``) and those it never changes
  (``fixed``), and the tensor shapes that the sizes give (:meth:`LayerKind.tensor_shapes`),
  which :mod:`prunable_nn.checkpoint` reads.

A kind may also slice ``output_tensors``: tensors of a variant (``gain`` of timm's
``ScaledStdConv2d``) whose dim 0 indexes the output channels. Removing channel ``k`` of a
module must compute what the module computes with channel ``k`` of its input (or output)
set to zero; a kind that cannot promise that for some module says so through ``frozen``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from ..surgery import Optimizers, shrink_buffer, shrink_parameter

Ties = list[tuple[torch.Tensor, torch.Tensor]]
Optimizer = Optimizers


@dataclasses.dataclass(frozen=True)
class LayerKind:
    """Base class of the layer kinds; the options describe variants of a kind.

    Args:
        output_tensors: names of further tensors (parameters or buffers) whose dim 0 indexes
            the output channels, sliced with them.
        inputs_fixed: why the input channels of such a module cannot be removed (``None``:
            they can), e.g. a weight standardised over its whole fan-in.
        check: ``check(module)`` gives the reason why one module cannot be pruned (``None``:
            it can), e.g. an activation inside it that does not keep channels apart.
    """

    output_tensors: tuple[str, ...] = ()
    inputs_fixed: str | None = None
    check: Callable[[nn.Module], str | None] | None = None

    #: Attributes that pruning changes (checkpoints record and restore them).
    sizes: ClassVar[tuple[str, ...]] = ()
    #: Attributes that pruning never changes (a checkpoint's must equal the model's).
    fixed: ClassVar[tuple[str, ...]] = ()
    #: The entry of :attr:`sizes` that counts the output channels.
    out_size: ClassVar[str] = ""
    #: Whether modules of this kind can lose channels at all (a normalisation across the
    #: channels cannot: :class:`~prunable_nn.kinds.ChannelMixing`).
    prunable: ClassVar[bool] = True

    def variant(self, **options: Any) -> LayerKind:
        """This kind with other options (:class:`LayerKind`'s arguments)."""
        return dataclasses.replace(self, **options)

    # -- channels ------------------------------------------------------------------------------
    def out_channels(self, module: nn.Module) -> int:
        return getattr(module, self.out_size)

    def in_channels(self, module: nn.Module) -> int:
        """Input channels; those of a per-channel layer are its output channels."""
        return self.out_channels(module)

    def input_units(self, module: nn.Module, features_per_channel: int, owner: str) -> int:
        """Input channels when each owns ``features_per_channel`` consecutive inputs (a
        layer fed by a flattened map); only a ``Linear`` accepts more than 1."""
        if features_per_channel != 1:
            raise ValueError(
                f"{owner}: features_per_channel={features_per_channel} applies only to a Linear "
                "layer fed by a flattened map"
            )
        return self.in_channels(module)

    def input_dim(self, module: nn.Module, ndim: int) -> int:
        """The channel dim of an input of ``ndim`` dims."""
        return 1

    def output_dim(self, module: nn.Module, ndim: int) -> int:
        """The channel dim of an output of ``ndim`` dims."""
        return self.input_dim(module, ndim)

    def record_dim(self, module: nn.Module) -> int:
        """The channel dim of a batch of outputs, where the estimates are read."""
        return 1

    # -- structure -------------------------------------------------------------------------------
    def owns_channels(self, module: nn.Module) -> bool:
        """Whether output channel ``k`` is input channel ``k`` (a per-channel layer)."""
        return False

    def ties(self, module: nn.Module, labels: torch.Tensor, side: str) -> Ties:
        """Pairs of label tensors (of the output or input channels, ``side``) whose labels
        must go together."""
        return []

    def frozen(self, module: nn.Module) -> str | None:
        """Why none of ``module``'s channels can go, or ``None``."""
        return self.check(module) if self.check is not None else None

    def frozen_inputs(self, module: nn.Module) -> str | None:
        """Why ``module``'s input channels cannot go, or ``None``."""
        return self.inputs_fixed

    def known_tensors(self, module: nn.Module) -> set[str]:
        """The parameters and buffers of ``module`` that this kind slices or leaves alone
        knowingly; any other makes :func:`prunable_nn.kinds.refusal` freeze the module."""
        return set(self.output_tensors)

    # -- removal ---------------------------------------------------------------------------------
    def check_outputs(self, module: nn.Module, keep: torch.Tensor, owner: str) -> None:
        """Raise unless the output channels ``keep`` (sorted) can be what remains."""

    def check_inputs(self, module: nn.Module, keep: torch.Tensor, owner: str) -> None:
        """Raise unless the input channels ``keep`` (sorted) can be what remains."""

    def keep_outputs(self, module: nn.Module, keep: torch.Tensor, optimizer: Optimizer) -> None:
        raise NotImplementedError

    def keep_inputs(
        self, module: nn.Module, keep: torch.Tensor, optimizer: Optimizer, features_per_channel: int = 1
    ) -> None:
        """Keep the input channels ``keep``; those of a per-channel layer are its outputs."""
        self.keep_outputs(module, keep, optimizer)

    def output_weights(self, module: nn.Module) -> torch.Tensor | None:
        """The weights that make each output channel, as rows ``(C, -1)`` (for
        :class:`~prunable_nn.criteria.MinWeight`), or ``None`` for a layer without such."""
        return None

    # -- checkpoints -----------------------------------------------------------------------------
    def tensor_shapes(self, record: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
        """The shapes of a module's own tensors that the sizes of ``record`` give, by name."""
        return {}

    def channel_tensors(self) -> tuple[str, ...]:
        """Tensors whose dim 0 counts the output channels and whose other dims never change
        (:attr:`output_tensors`): a checkpoint's have the model's shape but for dim 0."""
        return self.output_tensors

    def check_record(self, record: Mapping[str, Any]) -> str | None:
        """What is wrong with a checkpoint's ``record`` of sizes and fixed attributes, or ``None``."""
        return None

    def read_sizes(self, module: nn.Module) -> dict[str, int]:
        """``module``'s values of :attr:`sizes`."""
        return {attr: getattr(module, attr) for attr in self.sizes}

    def set_sizes(self, module: nn.Module, record: Mapping[str, Any]) -> None:
        """Give ``module`` the sizes of ``record``."""
        for attr in self.sizes:
            setattr(module, attr, record[attr])

    def meta_forward(self, module: nn.Module, value: torch.Tensor) -> torch.Tensor | None:
        """The output of ``module`` on a ``meta`` tensor without running its Python code
        (faster), or ``None`` to run it."""
        return None

    # -- helpers of the kinds --------------------------------------------------------------------
    def _keep_output_tensors(self, module: nn.Module, keep: torch.Tensor, optimizer: Optimizer) -> None:
        for name in self.output_tensors:
            shrink_tensor(module, name, 0, keep, optimizer)


def meta_empty(like: torch.Tensor, shape: Sequence[int] | None = None) -> torch.Tensor:
    """An empty ``meta`` tensor of ``like``'s dtype and of ``shape`` (default: ``like``'s).
    Ten times faster than ``torch.empty_like`` on a meta tensor, which runs Python code to
    work out strides that only a shape pass would read."""
    return torch.empty(like.shape if shape is None else shape, dtype=like.dtype, device="meta")


def shrink_tensor(module: nn.Module, name: str, dim: int, keep: torch.Tensor, optimizer: Optimizer) -> None:
    """Keep the slices ``keep`` along ``dim`` of ``module``'s parameter or buffer ``name``
    (a parameter stays the same object; ``None`` stays ``None``)."""
    if name in module._parameters:
        param = module._parameters[name]
        if param is not None:
            shrink_parameter(param, dim, keep, optimizer)
    else:
        module._buffers[name] = shrink_buffer(module._buffers[name], dim, keep)


def group_positions(labels: torch.Tensor, groups: int) -> Ties:
    """Ties of the labels at the same position of each of ``groups`` equal groups."""
    if groups <= 1:
        return []
    by_group = labels.view(groups, -1)
    return [(by_group[0], by_group[group]) for group in range(1, groups)]
