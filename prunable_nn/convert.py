"""Turning the layers of any model into their prunable twins, in place."""

from __future__ import annotations

from torch import nn

from .kinds import twin_class
from .layers import PrunableLayer

#: What :func:`swap_in_twins` replaced: ``(parent, name, layer)``.
Swaps = list[tuple[nn.Module, str, nn.Module]]


def convert(model: nn.Module) -> nn.Module:
    """Replace every layer inside ``model`` that has a prunable twin (torch's convolutions,
    normalisations and ``nn.Linear``, the variants that :mod:`prunable_nn.kinds` knows, and
    layers registered with :func:`~prunable_nn.kinds.register_layer`) by its twin, in place,
    and return ``model``.

    The twins share the layers' parameters, buffers and hooks (an optimizer made before keeps
    working), and a layer registered under several names stays one layer. The root module
    itself cannot be replaced in place; convert it with ``PConv2d.from_module`` and friends.
    """
    swap_in_twins(model)
    return model


def swap_in_twins(model: nn.Module) -> Swaps:
    """:func:`convert`, returning what it replaced so that :func:`undo` can put it back."""
    twins: dict[nn.Module, PrunableLayer] = {}
    swaps: Swaps = []
    for parent in list(model.modules()):
        for name, child in parent._modules.items():
            if child is None or isinstance(child, PrunableLayer):
                continue
            if child not in twins:
                twin = twin_class(child)
                if twin is None:
                    continue
                twins[child] = twin.from_module(child)
            parent._modules[name] = twins[child]
            swaps.append((parent, name, child))
    return swaps


def undo(swaps: Swaps) -> None:
    """Put back the layers that :func:`swap_in_twins` replaced."""
    for parent, name, layer in swaps:
        parent._modules[name] = layer
