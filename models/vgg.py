"""VGG with batch norm (Simonyan and Zisserman 2015), written with prunable layers."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from prunable_nn import PBatchNorm2d, PConv2d, PLinear, PrunableModule

#: Conv widths per layer, "M" for a 2x2 max pooling (torchvision's configurations A and D).
VGG_LAYOUTS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


class VGG(PrunableModule):
    """VGG-BN for ``input_size`` x ``input_size`` images with ``in_channels`` channels.

    ``layout`` names a configuration of :data:`VGG_LAYOUTS` or lists the widths. ``width``
    scales every conv. A pooling that would shrink the map below 1 pixel is skipped (28x28
    input keeps four of VGG's five). The classifier averages the map to 7x7 for 224x224
    input and to 1x1 otherwise, then has two hidden layers of ``hidden`` units (default 4096
    for 224x224, else 512), whose units are prunable like the conv channels.
    """

    def __init__(
        self,
        layout: str | Sequence[int | str] = "vgg11",
        num_classes: int = 10,
        in_channels: int = 3,
        input_size: int = 32,
        width: float = 1.0,
        hidden: int | None = None,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if isinstance(layout, str):
            if layout not in VGG_LAYOUTS:
                raise ValueError(f"unknown VGG layout {layout!r}; known: {sorted(VGG_LAYOUTS)}")
            layout = VGG_LAYOUTS[layout]
        layers: list[nn.Module] = []
        channels, size = in_channels, input_size
        for item in layout:
            if item == "M":
                if size >= 2:
                    layers.append(nn.MaxPool2d(2))
                    size //= 2
                continue
            out = max(1, round(int(item) * width))
            layers += [PConv2d(channels, out, 3, padding=1), PBatchNorm2d(out), nn.ReLU(inplace=True)]
            channels = out
        self.features = nn.Sequential(*layers)
        pooled = 7 if input_size >= 224 else 1
        hidden = hidden or (4096 if input_size >= 224 else 512)
        self.pool = nn.AdaptiveAvgPool2d(pooled)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            PLinear(channels * pooled * pooled, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            PLinear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            PLinear(hidden, num_classes),
        )

        self.input_shape = (in_channels, input_size, input_size)

    def example_inputs(self) -> torch.Tensor:
        return torch.zeros(1, *self.input_shape, device=self.classifier[1].weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))
