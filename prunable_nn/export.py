"""A pruned model as plain torch layers, for deployment without prunable_nn."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from .layers import PrunableLayer
from .pruner import TaylorPruner
from .recording import strip_record_hooks


def to_torch(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in which every prunable layer is its plain torch twin.

    What the copy holds, and why:

    * every :class:`PrunableLayer` at any depth, ``model`` itself included, becomes the
      module of its plain class (``nn.Conv2d``, ``nn.GroupNorm``, timm's ``BatchNormAct2d``)
      that ``PrunableLayer.to_torch()`` makes: the current (pruned) sizes, a copy of the
      weights, bias, running statistics and submodules, each parameter's ``requires_grad``
      and the layer's training flag. Its Taylor estimates, ``.grad`` and hooks stay behind:
      they serve pruning, not inference, and the plain layer runs, scripts and exports
      without prunable_nn;
    * everything else is copied by ``copy.deepcopy``, so training flags, ``requires_grad``
      and the model's own classes (a ``DigitsNet`` stays a ``DigitsNet``) are kept;
    * sharing is kept: a layer registered under several names becomes one plain layer, and a
      tensor shared by several layers (tied weights) is one tensor in the copy;
    * a :class:`TaylorPruner` found in a module's ``__dict__`` (``PrunableModule`` keeps its
      own there, as ``_pruner``) is not copied: the attribute is absent from the copy. The
      pruner belongs to the original model, whose layers it would go on pruning, and it
      holds chains of prunable layers that the copy no longer has. Asking a
      ``PrunableModule`` copy for its pruner raises ``AttributeError``.

    ``model`` is left exactly as it was: nothing is written to it, and it shares no tensor
    with the copy.
    """
    memo: dict[int, Any] = {}
    for module in model.modules():
        if isinstance(module, PrunableLayer):
            plain = module.to_torch()
            _map_tensors(module, plain, memo)
            memo[id(module)] = plain
    left_out: list[tuple[nn.Module, str]] = []
    for module in model.modules():
        for name, value in vars(module).items():
            if isinstance(value, TaylorPruner):
                memo[id(value)] = None
                left_out.append((module, name))
    result = copy.deepcopy(model, memo)
    strip_record_hooks(result)
    for module, name in left_out:
        twin = memo.get(id(module))
        if twin is not None and not isinstance(module, PrunableLayer):
            twin.__dict__.pop(name, None)
    return result


def _map_tensors(layer: PrunableLayer, plain: nn.Module, memo: dict[int, Any]) -> None:
    """Make ``deepcopy`` map ``layer``'s parameters and buffers to ``plain``'s, and give
    ``plain`` those of an earlier twin where ``layer`` shares a tensor with its layer."""
    for slots, plain_slots in ((layer._parameters, plain._parameters), (layer._buffers, plain._buffers)):
        for name, tensor in slots.items():
            if tensor is None:
                continue
            copied: torch.Tensor | None = memo.get(id(tensor))
            if copied is None:
                memo[id(tensor)] = plain_slots[name]
            else:
                plain_slots[name] = copied
