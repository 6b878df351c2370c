"""prunable_nn: drop-in prunable PyTorch layers pruned by first-order Taylor estimates."""

from .chain import Chain, Consumer
from .convert import convert
from .data import digits, fashion_mnist, mnist, read_idx
from .export import to_torch
from .flops import count_flops, count_parameters
from .layers import PBatchNorm2d, PConv2d, PLinear, PrunableLayer
from .module import PrunableModule
from .pruner import Removal, TaylorPruner
from .training import evaluate, train_epoch, train_steps

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
    "convert",
    "count_flops",
    "count_parameters",
    "digits",
    "evaluate",
    "fashion_mnist",
    "mnist",
    "read_idx",
    "to_torch",
    "train_epoch",
    "train_steps",
]
