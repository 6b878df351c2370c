"""The small digit classifier of MATLAB's ``taylorPrunableNetwork`` example."""

from __future__ import annotations

import torch
from torch import nn

from prunable_nn import PBatchNorm2d, PConv2d, PLinear, PrunableModule


def _conv_block(in_channels: int, out_channels: int, kernel_size: int, padding: int) -> list[nn.Module]:
    return [
        PConv2d(in_channels, out_channels, kernel_size, padding=padding),
        PBatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class DigitsNet(PrunableModule):
    """Three conv-BN-ReLU blocks of ``width`` filters (5x5 unpadded, then two 3x3 padded) and
    a Linear layer from the flattened 24x24 maps to the classes. Input: ``(N, 1, 28, 28)``."""

    def __init__(self, num_classes: int = 10, width: int = 20, in_channels: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_conv_block(in_channels, width, 5, 0),
            *_conv_block(width, width, 3, 1),
            *_conv_block(width, width, 3, 1),
        )
        self.classifier = nn.Sequential(nn.Flatten(), PLinear(width * 24 * 24, num_classes))
        self.in_channels = in_channels

    def example_inputs(self) -> torch.Tensor:
        return torch.zeros(1, self.in_channels, 28, 28, device=self.classifier[1].weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
