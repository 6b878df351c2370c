"""Prunable networks written with prunable_nn's layers; each has ``prune()``."""

from .digits import DigitsNet
from .vgg import VGG, VGG_LAYOUTS

__all__ = ["DigitsNet", "VGG", "VGG_LAYOUTS"]
