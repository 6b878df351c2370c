"""prunable_nn: drop-in prunable PyTorch layers pruned by first-order Taylor estimates."""

from .chain import Chain, Consumer
from .checkpoint import load_pruned, save_pruned
from .convert import convert
from .copies import check_in_step
from .criteria import (
    ActivationMean,
    ActivationStd,
    APoZ,
    Criterion,
    MinWeight,
    Oracle,
    RandomScores,
    Taylor,
)
from .distributed import DistributedPruningError, rewrap
from .estimator import EstimateTotals
from .export import to_torch
from .flops import count_flops, count_parameters
from .kinds import LayerKind, register_layer
from .layers import (
    PBatchNorm1d,
    PBatchNorm2d,
    PBatchNorm3d,
    PConv1d,
    PConv2d,
    PConv3d,
    PConvTranspose1d,
    PConvTranspose2d,
    PConvTranspose3d,
    PGroupNorm,
    PInstanceNorm1d,
    PInstanceNorm2d,
    PInstanceNorm3d,
    PLinear,
    PrunableLayer,
)
from .loop import prune_loop
from .module import PrunableModule
from .ops import declare_channelwise, declare_opaque
from .pruner import Removal, TaylorPruner
from .recording import no_estimates
from .targets import (
    AccuracyDrop,
    ChannelsTarget,
    FlopsTarget,
    History,
    ParamsTarget,
    Round,
    Target,
)
from .training import evaluate, train_epoch, train_steps

__all__ = [
    "APoZ",
    "AccuracyDrop",
    "ActivationMean",
    "ActivationStd",
    "Chain",
    "ChannelsTarget",
    "Consumer",
    "Criterion",
    "DistributedPruningError",
    "EstimateTotals",
    "FlopsTarget",
    "History",
    "MinWeight",
    "Oracle",
    "LayerKind",
    "PBatchNorm1d",
    "PBatchNorm2d",
    "PBatchNorm3d",
    "PConv1d",
    "PConv2d",
    "PConv3d",
    "PConvTranspose1d",
    "PConvTranspose2d",
    "PConvTranspose3d",
    "PGroupNorm",
    "PInstanceNorm1d",
    "PInstanceNorm2d",
    "PInstanceNorm3d",
    "PLinear",
    "ParamsTarget",
    "PrunableLayer",
    "PrunableModule",
    "RandomScores",
    "Removal",
    "Round",
    "Target",
    "Taylor",
    "TaylorPruner",
    "check_in_step",
    "convert",
    "count_flops",
    "count_parameters",
    "declare_channelwise",
    "declare_opaque",
    "evaluate",
    "load_pruned",
    "no_estimates",
    "prune_loop",
    "register_layer",
    "rewrap",
    "save_pruned",
    "to_torch",
    "train_epoch",
    "train_steps",
]
