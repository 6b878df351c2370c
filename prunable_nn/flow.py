"""What the walk of a model's graph finds (:mod:`prunable_nn.graph`): labels for the
channels, which layers own or read them, which are tied or frozen, and the estimators."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .layers import PrunableLayer
from .writes import InPlaceWrite


@dataclass(frozen=True)
class Channels:
    """The labels of one value's channel dimension ``dim`` (of ``ndim`` dims)."""

    dim: int
    ndim: int
    labels: torch.Tensor


@dataclass
class Space:
    """Labels ``start`` to ``start + size - 1``, made by one layer or value ``name``."""

    name: str
    start: int
    size: int
    layer: PrunableLayer | None


@dataclass
class ChannelFlow:
    """What the walk found: the labels each layer owns or reads, the ties between labels, the
    frozen labels and the estimators.

    ``members[(layer, "output")]`` are the labels of a layer's output channels (for per-channel
    layers, the channels they own); ``members[(layer, "input")]`` the labels of each input
    channel (input feature of a ``PLinear``). ``ties`` pairs label tensors whose labels are
    tied position by position. ``out_of_place`` lists the in-place activation modules to
    make out of place (:mod:`prunable_nn.graph`). ``records_after`` maps an estimator called
    once whose output only a ReLU module reads to that ReLU, which records for it
    (:class:`~prunable_nn.recording.RecordAfter`). ``in_place_writes`` says how the model
    writes into an estimator's output in place, where it does (:mod:`prunable_nn.writes`).
    """

    spaces: list[Space] = field(default_factory=list)
    members: dict[tuple[PrunableLayer, str], torch.Tensor] = field(default_factory=dict)
    ties: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    frozen: list[tuple[torch.Tensor, str]] = field(default_factory=list)
    estimators: list[PrunableLayer] = field(default_factory=list)
    out_of_place: list[nn.Module] = field(default_factory=list)
    records_after: dict[PrunableLayer, nn.Module] = field(default_factory=dict)
    in_place_writes: dict[PrunableLayer, InPlaceWrite] = field(default_factory=dict)

    @property
    def num_labels(self) -> int:
        return self.spaces[-1].start + self.spaces[-1].size if self.spaces else 0
