"""Layer kinds and the registry of layer classes (:mod:`prunable_nn.kinds.registry`).

``CONV``, ``CONV_TRANSPOSE``, ``NORM``, ``GROUP_NORM`` and ``LINEAR`` are the kinds of
torch's layers; :class:`PerChannel` and :class:`ChannelMixing` describe layers of your own,
and :func:`register_layer` registers them. Adding a kind is one module with a
:class:`LayerKind` subclass, and one :func:`register_layer` call per class it covers.
"""

from .base import LayerKind
from .conv import ConvKind, ConvTransposeKind
from .linear import LinearKind
from .norm import GroupNormKind, NormKind
from .per_channel import ChannelMixing, PerChannel
from .registry import kind_of, record_kinds, refusal, register_layer, registered_class, twin_class

CONV = ConvKind()
CONV_TRANSPOSE = ConvTransposeKind()
NORM = NormKind()
GROUP_NORM = GroupNormKind()
LINEAR = LinearKind()

from . import third_party  # noqa: E402,F401 (registers timm's and torchvision's layers)

__all__ = [
    "CONV",
    "CONV_TRANSPOSE",
    "GROUP_NORM",
    "LINEAR",
    "NORM",
    "ChannelMixing",
    "ConvKind",
    "ConvTransposeKind",
    "GroupNormKind",
    "LayerKind",
    "LinearKind",
    "NormKind",
    "PerChannel",
    "kind_of",
    "record_kinds",
    "refusal",
    "register_layer",
    "registered_class",
    "twin_class",
]
