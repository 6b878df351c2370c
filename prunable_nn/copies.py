"""Copies of a model kept in step with it through its prunes: an EMA or SWA average
(``torch.optim.swa_utils.AveragedModel``, timm's ``ModelEmaV3``), a teacher, a shadow.

A copy is *in step* when it holds every parameter and buffer of the model under the same
name with the same shape; an average that wraps its copy in ``.module`` is read through it.
``pruner.prune(also=[ema])`` checks every copy before anything changes, then removes the
same channels from each: every layer of the copy named as a layer of the model that changes
is sliced by its kind (:mod:`prunable_nn.kinds`), whether the copy holds plain torch layers
(it was made before the pruner) or prunable twins. A copy that missed an earlier prune is
out of step, and :func:`check_in_step` says where, instead of torch's size mismatch at the
next ``update_parameters``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def copied_model(copy: nn.Module) -> nn.Module:
    """The model inside ``copy``: its ``.module`` when it wraps one (an EMA), else itself."""
    inner = getattr(copy, "module", None)
    return inner if isinstance(inner, nn.Module) else copy


def check_in_step(copy: nn.Module, model: nn.Module) -> None:
    """Raise ``ValueError`` naming the first tensor of ``model`` that ``copy`` lacks or holds
    in another shape."""
    ours = _tensors(copied_model(copy))
    for name, tensor in _tensors(model).items():
        theirs = ours.get(name)
        if theirs is None:
            raise ValueError(f"the copy {type(copy).__name__} has no {name!r}, which the model has: is it a copy of it?")
        if theirs.shape != tensor.shape:
            raise ValueError(
                f"the copy {type(copy).__name__} is out of step with the model: {name!r} has shape "
                f"{tuple(theirs.shape)} there and {tuple(tensor.shape)} in the model; was it left out of "
                "an earlier prune (pass it as prune(also=[copy]))?"
            )


def counterparts(copies: Iterable[nn.Module], name: str) -> list[nn.Module]:
    """The submodule ``name`` of every copy."""
    return [copied_model(copy).get_submodule(name) for copy in copies]


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}
