"""Turning the torch layers of any model into their prunable twins, in place."""

from __future__ import annotations

from torch import nn

from .layers import PBatchNorm2d, PConv2d, PLinear, PrunableLayer

#: The plain torch layer classes that have prunable twins (exact classes, not subclasses,
#: whose own code may expect more than the plain layer offers).
TWINS: dict[type[nn.Module], type[PrunableLayer]] = {
    nn.Conv2d: PConv2d,
    nn.BatchNorm2d: PBatchNorm2d,
    nn.Linear: PLinear,
}

#: What :func:`swap_in_twins` replaced: ``(parent, name, layer)``.
Swaps = list[tuple[nn.Module, str, nn.Module]]


def convert(model: nn.Module) -> nn.Module:
    """Replace every ``nn.Conv2d``, ``nn.BatchNorm2d`` and ``nn.Linear`` inside ``model`` by its
    prunable twin, in place, and return ``model``.

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
            twin_class = TWINS.get(type(child))
            if twin_class is None:
                continue
            if child not in twins:
                twins[child] = twin_class.from_module(child)
            parent._modules[name] = twins[child]
            swaps.append((parent, name, child))
    return swaps


def undo(swaps: Swaps) -> None:
    """Put back the layers that :func:`swap_in_twins` replaced."""
    for parent, name, layer in swaps:
        parent._modules[name] = layer
