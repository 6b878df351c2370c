"""Every place where prunable_nn relies on torch beyond its documented API, each with its
reason. ``tests/test_compat.py`` checks each against the installed torch, so that a torch
release that changes one fails there, by name, rather than somewhere downstream.

``setup.cfg`` declares torch 2.14 as the lowest release, the one ``make test`` installs and
CI tests (2.14.1); no older release is tested (the recording in a compiled graph relies on
``torch.library.custom_op`` with an ordered effect, a recent API). torchvision is needed by
the tests alone: the library knows its layers and functions by name.
"""

from __future__ import annotations

from typing import Any, TypeVar

import torch
from torch import fx, nn

Module = TypeVar("Module", bound=nn.Module)


def swap_tensor_identity(param: nn.Parameter, replacement: nn.Parameter) -> None:
    """Make ``param`` (the same Python object, with its attributes and hooks) hold
    ``replacement``'s tensor. A prune gives a parameter a smaller tensor, and every holder
    of the object (an optimizer's param groups, a user's list) must see the new one.
    ``torch.utils.swap_tensors`` also swaps the Python attributes (``__dict__``, the class)
    and poisons the parameter's gradient accumulator, so that a backward pass through a
    graph made before the prune raises; the tensors alone are swapped by
    ``torch._C._swap_tensor_impl``, which it calls at its end."""
    torch._C._swap_tensor_impl(param, replacement)


def set_version(tensor: torch.Tensor, version: int) -> None:
    """Set ``tensor``'s autograd version counter to ``version``. The recording marks a layer's
    output as changed in place (so that nothing is copied) although its values are not: an
    op that saved the output before (a ReLU inside timm's ``BatchNormAct2d``) must still find
    it valid. No public API sets a version counter."""
    torch._C._autograd._unsafe_set_version_counter((tensor,), (version,))


def loss_scale(scaler: torch.amp.GradScaler) -> torch.Tensor:
    """The scale ``scaler`` multiplies the loss by now, as a tensor on its device.
    ``GradScaler.get_scale()`` returns a number, which waits for the device at every
    backward pass; the tensor is kept in ``_scale`` (``None`` before the first ``scale()``,
    when ``get_scale()`` is the initial scale and costs nothing)."""
    scale = getattr(scaler, "_scale", None)
    return torch.tensor(scaler.get_scale()) if scale is None else scale


def forget_parameter_count(optimizer: torch.optim.LBFGS) -> None:
    """Make ``LBFGS`` count its parameters' elements again: it caches the total in
    ``_numel_cache`` for its flat views, which a prune makes wrong."""
    optimizer._numel_cache = None


def innermost_traced_module(tracer: fx.Tracer) -> str:
    """The qualified name of the innermost module ``tracer`` was inside when tracing failed
    ("" for the root): ``Tracer.call_module`` pushes onto ``module_stack`` and pops only on
    success, and no public API says where a trace stopped."""
    names = [name for name, _ in tracer.module_stack.values() if name]
    return names[-1] if names else ""


def module_without_init(cls: type[Module], attributes: dict[str, Any]) -> Module:
    """A ``cls`` made without running its ``__init__``, whose instance dict is
    ``attributes``: a layer's twin of another class shares its parameters, buffers and
    settings (a constructor would make new ones, and third-party classes take arguments
    that cannot be recovered from an instance). ``nn.Module`` keeps all of them in the
    instance dict."""
    module = cls.__new__(cls)
    module.__dict__.update(attributes)
    return module
