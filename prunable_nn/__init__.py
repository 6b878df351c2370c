"""prunable_nn: drop-in prunable PyTorch layers pruned by first-order Taylor estimates."""

from .chain import Chain, Consumer
from .flops import count_flops, count_parameters
from .layers import PBatchNorm2d, PConv2d, PLinear, PrunableLayer
from .module import PrunableModule
from .pruner import Removal, TaylorPruner

__all__ = [
    "Chain",
    "Consumer",
    "PBatchNorm2d",
    "PConv2d",
    "PLinear",
    "PrunableLayer",
    "PrunableModule",
    "Removal",
    "TaylorPruner",
    "count_flops",
    "count_parameters",
]
