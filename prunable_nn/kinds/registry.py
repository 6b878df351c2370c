"""The one table of layer classes: which kind each is, and whether it can be made prunable.

Every module that reads layer facts (conversion, the graph walk, checkpoints, export,
criteria) asks here. A class is registered with its :class:`~prunable_nn.kinds.LayerKind`,
by the class itself or, for a library that need not be installed, by its dotted name
(``"timm.layers.norm_act.BatchNormAct2d"``).

The policy for subclasses, which is what keeps a pruned model exact:

- a registered class (torch's own or a listed variant such as timm's ``BatchNormAct2d``) is
  handled by its kind, which was written for what its ``forward`` does;
- an unregistered subclass of a registered class is handled like that class when it
  overrides none of its methods but ``__init__``, ``__repr__``, ``extra_repr`` and
  ``reset_parameters``: the base class's ``forward`` runs, and it can call only methods the
  base class has, so methods the subclass adds (torchvision's ``Conv3DSimple`` adds
  ``get_downsample_stride``) change nothing. A subclass that overrides ``forward`` (or any
  method ``forward`` may call) could do anything to its channels: it is kept whole and its
  channels stay, with the reason in the report, until :func:`register_layer` teaches
  prunable_nn its kind;
- a module holding a parameter or buffer that its kind does not know (``weight_orig`` of
  ``torch.nn.utils.prune``, say) is kept whole too: removal would leave that tensor as it
  was.

A prunable module is replaced by its *twin*, a subclass of its own class and of
:class:`~prunable_nn.PrunableLayer` that runs the class's own ``forward`` and records the
estimates of its output: ``PConv2d`` for ``nn.Conv2d``, a class made here for any other.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

from torch import nn

from .base import LayerKind

#: Methods a subclass may define and still compute what its registered base computes.
HARMLESS_METHODS = frozenset(
    {"__init__", "__repr__", "__str__", "extra_repr", "reset_parameters", "_load_from_state_dict"}
)


@dataclass(frozen=True)
class Registration:
    kind: LayerKind
    #: The prunable class of modules of exactly this class (made on first use when None).
    twin: type[nn.Module] | None = None


_BY_CLASS: dict[type[nn.Module], Registration] = {}
_BY_NAME: dict[str, Registration] = {}
_TWINS: dict[type[nn.Module], type[nn.Module]] = {}
#: :func:`_registered_base` of every class asked about since the last registration.
_BASES: dict[type, tuple[type, Registration] | None] = {}


def register_layer(layer_class: type[nn.Module] | str, kind: LayerKind, *, twin: type[nn.Module] | None = None) -> None:
    """Teach prunable_nn the layer class ``layer_class`` (a class, or a dotted name
    ``"package.module.Class"`` for a class of a library that may not be installed): its
    modules are of ``kind``, whose methods must describe what the class's ``forward`` does
    to channels. A class registered again takes the new kind (a twin already made for it
    is made anew). ``twin`` is the prunable class of its modules (``PConv2d`` for
    ``nn.Conv2d``); by default one is made.
    """
    if not isinstance(kind, LayerKind):
        raise TypeError(f"register_layer needs a LayerKind for {layer_class!r}, got {kind!r}")
    registration = Registration(kind, twin)
    _BASES.clear()
    if isinstance(layer_class, str):
        _BY_NAME[layer_class] = registration
    elif isinstance(layer_class, type) and issubclass(layer_class, nn.Module):
        _BY_CLASS[layer_class] = registration
        _TWINS.pop(layer_class, None)
    else:
        raise TypeError(f"register_layer needs an nn.Module class or a dotted class name, got {layer_class!r}")


def _registration(cls: type) -> Registration | None:
    found = _BY_CLASS.get(cls)
    if found is None and _BY_NAME:
        found = _BY_NAME.get(f"{cls.__module__}.{cls.__qualname__}")
    return found


def _registered_base(cls: type) -> tuple[type, Registration] | None:
    """The nearest class of ``cls.__mro__`` that is registered, with its registration."""
    if cls not in _BASES:
        found = None
        for base in cls.__mro__:
            registration = _registration(base)
            if registration is not None:
                found = base, registration
                break
        _BASES[cls] = found
    return _BASES[cls]


def kind_of(module: nn.Module) -> LayerKind | None:
    """The kind of ``module``'s class (of its nearest registered base class), or ``None``
    for a module that is no layer prunable_nn knows."""
    kind = getattr(type(module), "kind", None)
    if isinstance(kind, LayerKind):  # a twin
        return kind
    found = _registered_base(type(module))
    return None if found is None else found[1].kind


def registered_class(module: nn.Module) -> type[nn.Module] | None:
    """The nearest registered class among ``module``'s classes (``nn.Conv2d`` for a ``PConv2d``)."""
    found = _registered_base(getattr(type(module), "torch_class", type(module)))
    return None if found is None else found[0]


def refusal(module: nn.Module) -> str | None:
    """Why ``module``, of a known kind, is not made prunable (``None``: it is, or it has no
    kind): a subclass with methods of its own, tensors its kind does not know, or a kind
    that never loses channels."""
    cls = getattr(type(module), "torch_class", type(module))
    found = _registered_base(cls)
    if found is None:
        return None
    base, registration = found
    kind = registration.kind
    if not kind.prunable:
        return kind.frozen(module)
    if base is not cls:
        overridden = _overridden_methods(cls, base)
        if overridden:
            return (
                f"{cls.__name__} subclasses {base.__module__}.{base.__name__} and overrides "
                f"{', '.join(overridden)}, so what it does to channels is unknown; register_layer teaches it"
            )
    unknown = sorted({*module._parameters, *module._buffers} - kind.known_tensors(module))
    if unknown:
        return f"it holds {', '.join(map(repr, unknown))}, which its kind ({type(kind).__name__}) does not slice"
    return None


def _overridden_methods(cls: type, base: type) -> list[str]:
    """The methods of ``base`` that the classes between ``cls`` and ``base`` define anew."""
    names = {
        name
        for klass in cls.__mro__[: cls.__mro__.index(base)]
        for name, value in vars(klass).items()
        if name not in HARMLESS_METHODS
        and hasattr(base, name)
        and (inspect.isfunction(value) or isinstance(value, (property, staticmethod, classmethod)))
    }
    return sorted(names)


def record_kinds() -> dict[str, LayerKind]:
    """The kinds of the registered classes that can lose channels, by class name (as a
    checkpoint names them)."""
    kinds = {name.rpartition(".")[2]: registration.kind for name, registration in _BY_NAME.items()}
    kinds.update({cls.__name__: registration.kind for cls, registration in _BY_CLASS.items()})
    return {name: kind for name, kind in kinds.items() if kind.prunable}


def twin_class(module: nn.Module) -> type[nn.Module] | None:
    """The prunable class for ``module`` (``None`` when it is not made prunable)."""
    cls = type(module)
    if getattr(cls, "kind", None) is not None or refusal(module) is not None:
        return None
    found = _registered_base(cls)
    if found is None:
        return None
    base, registration = found
    if base is cls and registration.twin is not None:
        return registration.twin
    twin = _TWINS.get(cls)
    if twin is None:
        from ..layers import PrunableLayer

        twin = type(
            f"P{cls.__name__}",
            (PrunableLayer, cls),
            {"kind": registration.kind, "torch_class": cls, "__module__": cls.__module__,
             "__doc__": f"{cls.__name__} whose channels can be removed (a {type(registration.kind).__name__})."},
        )
        _TWINS[cls] = twin
    return twin
