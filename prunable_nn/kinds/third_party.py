"""The layers of other libraries that prunable_nn knows, registered by their dotted names so
that neither library needs to be installed.

timm builds most CNNs from subclasses of torch's layers with a ``forward`` of their own:

- ``BatchNormAct2d``, ``GroupNormAct`` (and ``GroupNorm``): the torch normalisation, then a
  dropout and an activation module, all channel-wise when the activation is one of the
  element-wise modules of :mod:`prunable_nn.ops` (anything else keeps the layer whole);
- ``Conv2dSame``: pads like TensorFlow's "SAME", then a plain convolution;
- ``StdConv2d``, ``ScaledStdConv2d`` (and their "Same" versions): a convolution whose
  weight is standardised over each output channel's fan-in. Output channels are independent
  (``ScaledStdConv2d``'s ``gain`` follows them), but removing an input channel changes the
  statistics of every output's weight, so their inputs stay;
- ``FrozenBatchNormAct2d``: statistics and affine parameters in buffers, then an activation;
- ``LayerNorm2d`` and friends normalise across the channels: nothing of them can go.

torchvision's ``FrozenBatchNorm2d`` (the detection models' backbones) keeps its statistics
and affine parameters in buffers: a per-channel layer.
"""

from __future__ import annotations

from torch import nn

from ..ops import ELEMENTWISE_MODULES
from . import CONV, GROUP_NORM, LINEAR, NORM
from .per_channel import ChannelMixing, PerChannel
from .registry import register_layer

TIMM = "timm.layers."
_FROZEN_STATISTICS = ("weight", "bias", "running_mean", "running_var")


def channelwise_tail(module: nn.Module) -> str | None:
    """Why the ``drop`` and ``act`` modules of a timm norm-act layer may not keep channels
    apart (``None`` when both are element-wise modules)."""
    for name in ("drop", "act"):
        part = getattr(module, name, None)
        if part is not None and not isinstance(part, ELEMENTWISE_MODULES):
            return f"its {name} module ({type(part).__name__}) is not known to keep channels apart"
    return None


_STANDARDISED = "its weight is standardised over each output channel's whole fan-in, so its inputs cannot go"

for _name in ("norm_act.BatchNormAct2d", "norm_act.SyncBatchNormAct"):
    register_layer(TIMM + _name, NORM.variant(check=channelwise_tail))
register_layer(TIMM + "norm_act.GroupNormAct", GROUP_NORM.variant(check=channelwise_tail))
register_layer(TIMM + "norm_act.GroupNorm1Act", GROUP_NORM.variant(check=channelwise_tail))
register_layer(TIMM + "norm.GroupNorm", GROUP_NORM)
register_layer(TIMM + "norm.GroupNorm1", GROUP_NORM)
register_layer(
    TIMM + "norm_act.FrozenBatchNormAct2d", PerChannel(tensors=_FROZEN_STATISTICS, check=channelwise_tail)
)
register_layer(TIMM + "conv2d_same.Conv2dSame", CONV)
for _name in ("std_conv.StdConv2d", "std_conv.StdConv2dSame"):
    register_layer(TIMM + _name, CONV.variant(inputs_fixed=_STANDARDISED))
for _name in ("std_conv.ScaledStdConv2d", "std_conv.ScaledStdConv2dSame"):
    register_layer(TIMM + _name, CONV.variant(output_tensors=("gain",), inputs_fixed=_STANDARDISED))
_ACROSS_CHANNELS = ChannelMixing(reason="it normalises across its channels: removing one changes the others")
for _name in ("norm.LayerNorm2d", "norm.LayerNorm2dFp32", "norm_act.LayerNormAct2d", "norm.RmsNorm2d"):
    register_layer(TIMM + _name, _ACROSS_CHANNELS)
register_layer(nn.LayerNorm, _ACROSS_CHANNELS)
register_layer("torchvision.ops.misc.FrozenBatchNorm2d", PerChannel(tensors=_FROZEN_STATISTICS))
register_layer(TIMM + "linear.Linear", LINEAR)  # casts its weight to the input's dtype under TorchScript only
