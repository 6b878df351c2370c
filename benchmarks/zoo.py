"""The models of other libraries that the tests and the coverage benchmark prune.

timm's CNN families at their smallest variant, torchvision's segmentation models, the dense
part of its detectors and its video ``r3d_18``, and Ultralytics' YOLOv8n, each with random
weights and a small input. Constant-initialised parameters (batch norms' scales and shifts,
zero-initialised gains of residual branches, layer scales of 1e-6) are drawn from
[0.5, 1.5): a residual branch that starts at zero (timm's ``zero_init_last``) would hide
from the output whatever pruning does inside it.
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn

#: One model per timm family, the smallest; ``True`` marks those slower than a second or two.
TIMM_MODELS = {
    "resnet10t": False, "resnet18d": False, "seresnext26t_32x4d": False, "ecaresnet26t": False,
    "resnet50_gn": False, "efficientnet_b0": False, "tf_efficientnet_b0": False, "efficientnetv2_rw_t": True,
    "tinynet_e": False, "mobilenetv2_050": False, "mobilenetv3_small_050": False, "mobilenetv4_conv_small": False,
    "mnasnet_050": False, "fbnetc_100": False, "spnasnet_100": False, "lcnet_050": False, "mixnet_s": False,
    "ghostnet_050": False, "ghostnetv2_100": False, "repghostnet_050": False, "regnetx_002": False,
    "regnety_002": False, "regnetz_b16": False, "densenet121": False, "inception_v3": True, "dpn68": False,
    "cspresnet50": False, "cspdarknet53": True, "darknet17": False, "cs3darknet_s": False, "vovnet39a": True,
    "ese_vovnet19b_dw": False, "repvgg_a0": False, "mobileone_s0": True, "gernet_s": False, "convnext_atto": False,
    "dla34": False, "hrnet_w18_small": False, "res2net50_14w_8s": True, "resnest14d": False, "selecsls42b": True,
    "rexnet_100": False, "hardcorenas_a": False, "legacy_xception": True, "xception41": True, "skresnet18": False,
    "hgnetv2_b0": False, "inception_next_atto": False, "vgg11": True, "resnetv2_50": True, "tresnet_m": True,
    "gcresnext26ts": False, "mobilenetv1_100": False, "fbnetv3_b": False, "starnet_s050": False, "rdnet_tiny": True,
    "edgenext_xx_small": False, "mobilevit_xxs": False, "efficientvit_b0": False, "fastvit_t8": False,
}
#: timm models whose convolutions cannot lose a channel, with what the report says.
TIMM_NOTHING_PRUNABLE = {
    "nf_resnet26": "standardised over each output channel's whole fan-in",
    "convnextv2_atto": "normalises across its channels",
}
_TIMM_INPUT_SIZE = {"inception_v3": 96}


def randomize_constant_parameters(model: nn.Module) -> nn.Module:
    """Draw every parameter that its initialisation made constant from [0.5, 1.5)."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.numel() and bool((param == param.flatten()[0]).all()):
                param.copy_(torch.rand(param.shape, generator=generator, dtype=param.dtype) + 0.5)
    return model


def tensors_of(output: object) -> list[torch.Tensor]:
    """Every tensor in a model's output (nested in tuples, lists and dicts)."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        return [tensor for value in output.values() for tensor in tensors_of(value)]
    if isinstance(output, (list, tuple)):
        return [tensor for value in output for tensor in tensors_of(value)]
    return []


def mean_square(output: object) -> torch.Tensor:
    """A stand-in for a task's loss that gives every output a gradient."""
    return sum(tensor.square().mean() for tensor in tensors_of(output) if tensor.is_floating_point())


def timm_model(name: str, dtype: torch.dtype = torch.float64) -> tuple[nn.Module, torch.Tensor]:
    """timm's ``name`` with 10 classes, and a batch of 2 images (64x64 unless it needs more)."""
    import timm

    torch.manual_seed(0)
    model = randomize_constant_parameters(timm.create_model(name, num_classes=10).to(dtype))
    size = _TIMM_INPUT_SIZE.get(name, 64)
    return model, torch.randn(2, 3, size, size, dtype=dtype)


class DenseDetector(nn.Module):
    """What a detector computes at every position of the image: its backbone (with the
    feature pyramid) and its dense heads (RPN, RetinaNet's or SSD's). The features come out
    too, so the channels that the region heads read after RoI pooling, which fx cannot
    follow, stay. Users train the whole detector with its losses: the estimates are recorded
    wherever these layers run, so the pruner needs only this part's graph."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.backbone = detector.backbone
        self.head = detector.rpn.head if hasattr(detector, "rpn") else detector.head

    def forward(self, images: torch.Tensor):
        features = list(self.backbone(images).values())
        return features, self.head(features)


def yolov8n() -> nn.Module:
    """Ultralytics' YOLOv8n built from its yaml (random init); its forward is ``forward(x,
    *args, **kwargs)`` and in training it returns the raw predictions with the features."""
    from ultralytics.nn.tasks import DetectionModel

    return DetectionModel("yolov8n.yaml", nc=5, verbose=False)


_DETECTION = torchvision.models.detection
_SEGMENTATION = torchvision.models.segmentation
#: name -> builder of torchvision's dense-prediction, detection and video models and YOLOv8n.
OTHER_MODELS = {
    "fcn_resnet50": lambda: _SEGMENTATION.fcn_resnet50(weights=None, weights_backbone=None, num_classes=5),
    "deeplabv3_mobilenet_v3_large": lambda: _SEGMENTATION.deeplabv3_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=5
    ),
    "lraspp_mobilenet_v3_large": lambda: _SEGMENTATION.lraspp_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=5
    ),
    "fasterrcnn_mobilenet_v3_large_320_fpn": lambda: DenseDetector(
        _DETECTION.fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None, num_classes=5)
    ),
    "retinanet_resnet50_fpn": lambda: DenseDetector(
        _DETECTION.retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=5)
    ),
    "ssdlite320_mobilenet_v3_large": lambda: DenseDetector(
        _DETECTION.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=5)
    ),
    "r3d_18": lambda: torchvision.models.video.r3d_18(num_classes=5),
    "yolov8n": yolov8n,
}
_OTHER_INPUT_SHAPE = {"r3d_18": (2, 3, 4, 32, 32)}


def other_model(name: str, dtype: torch.dtype = torch.float64) -> tuple[nn.Module, torch.Tensor]:
    """One of :data:`OTHER_MODELS` and a batch of 2 inputs."""
    torch.manual_seed(0)
    model = randomize_constant_parameters(OTHER_MODELS[name]().to(dtype))
    return model, torch.randn(*_OTHER_INPUT_SHAPE.get(name, (2, 3, 64, 64)), dtype=dtype)
