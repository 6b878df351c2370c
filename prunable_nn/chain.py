"""A chain: layers whose output channels are removed together, and the layers that read them.

For ``conv -> bn -> relu -> pool -> next_conv`` the producers are ``(conv, bn)`` and the
consumer is ``next_conv``. Removing channel ``k`` of the chain removes output channel ``k`` of
every producer and input channel ``k`` of every consumer, which computes exactly what the
unpruned network computes with channel ``k`` of the consumers' input set to zero. The
estimate is read at the last producer, the activation that the consumers actually see.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from .channels import as_channel_list, keep_indices
from .layers import PrunableLayer


@dataclass(frozen=True)
class Consumer:
    """A layer that reads a chain's channels as its input channels.

    ``features_per_channel`` is ``H * W`` for a Linear layer fed by a flattened ``(C, H, W)``
    map, else 1.
    """

    layer: PrunableLayer
    features_per_channel: int = 1


@dataclass(eq=False)
class Chain:
    """Producers whose output channels go together, and the consumers whose inputs follow.

    ``original_channels[i]`` is the number, when the chain was made, of its channel ``i`` now.
    """

    name: str
    producers: tuple[PrunableLayer, ...]
    consumers: tuple[Consumer, ...]
    original_channels: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        if not self.producers:
            raise ValueError(f"chain '{self.name}' has no producer layer")
        sizes = {layer.describe(): layer.num_output_channels for layer in self.producers}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"chain '{self.name}': producers disagree on the channel count: {sizes}")
        for consumer in self.consumers:
            read = consumer.layer._input_channels_for(consumer.features_per_channel)
            if read != self.num_channels:
                raise ValueError(
                    f"chain '{self.name}': {consumer.layer.describe()} reads {read} input channels "
                    f"(features_per_channel={consumer.features_per_channel}), "
                    f"its producers make {self.num_channels}"
                )
        self.original_channels = torch.arange(self.num_channels)

    @property
    def estimator(self) -> PrunableLayer:
        """The layer whose estimates rank this chain's channels: the last producer."""
        return self.producers[-1]

    @property
    def num_channels(self) -> int:
        return self.producers[0].num_output_channels

    @property
    def layers(self) -> tuple[PrunableLayer, ...]:
        return self.producers + tuple(consumer.layer for consumer in self.consumers)

    def estimates(self) -> torch.Tensor | None:
        """The estimator's per-channel Taylor estimates (``None`` before any backward)."""
        return self.estimator.taylor_estimates

    def validate_drop(self, indices: Iterable[int] | torch.Tensor) -> torch.Tensor:
        """Check that every layer of the chain can drop ``indices``; return the channels kept."""
        owner = f"chain '{self.name}'"
        indices = as_channel_list(indices, owner=owner)
        keep = keep_indices(indices, self.num_channels, owner=owner)
        for layer in self.producers:
            layer._output_keep(indices)
        for consumer in self.consumers:
            consumer.layer._input_keep(indices, consumer.features_per_channel)
        return keep

    def keep(self, keep: torch.Tensor, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Keep only channels ``keep`` (already validated) in every layer of the chain."""
        for layer in self.producers:
            layer._keep_outputs(keep, optimizer)
        for consumer in self.consumers:
            consumer.layer._keep_inputs(keep, optimizer, consumer.features_per_channel)
        self.original_channels = self.original_channels[keep]

    def drop(self, indices: Iterable[int] | torch.Tensor, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Remove channels ``indices`` from every layer of the chain, or nothing if any is bad."""
        self.keep(self.validate_drop(indices), optimizer)
