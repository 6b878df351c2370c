"""A base class that gives a network written with prunable layers its own ``prune()``."""

from __future__ import annotations

import torch
from torch import nn

from .flops import ExampleInputs
from .layers import PrunableLayer
from .pruner import Removal, TaylorPruner


class PrunableModule(nn.Module):
    """``nn.Module`` with ``prune()`` and ``num_prunables``, backed by a :class:`TaylorPruner`.

    The pruner is made on first use, from the model's ``torch.fx`` graph traced with
    ``example_inputs()``, which a subclass defines. Set ``pruner`` to one of your own to
    change its options (normalisation, FLOPs regularisation, rounding).
    """

    #: TorchScript must not compile these (it reads every attribute of a module it scripts).
    __jit_unused_properties__ = ["pruner", "num_prunables"]

    def example_inputs(self) -> ExampleInputs:
        """Inputs of one forward pass (batch of one), to trace shapes and count FLOPs."""
        raise NotImplementedError(
            f"{type(self).__name__} must define example_inputs(), or set "
            "model.pruner = TaylorPruner(model, example_inputs)"
        )

    @property
    def pruner(self) -> TaylorPruner:
        pruner = self.__dict__.get("_pruner")
        if pruner is None:
            if not any(isinstance(module, PrunableLayer) for module in self.modules()):
                # an AttributeError, so that hasattr() and TorchScript see no pruner
                raise AttributeError(
                    f"{type(self).__name__} has no prunable layers (a copy made by to_torch?): "
                    "it has no pruner"
                )
            pruner = self.__dict__["_pruner"] = TaylorPruner(self)
        return pruner

    @pruner.setter
    def pruner(self, pruner: TaylorPruner) -> None:
        if pruner.model is not self:
            raise ValueError("the pruner belongs to another model")
        self.__dict__["_pruner"] = pruner

    @property
    def num_prunables(self) -> int:
        """Channels that can still be removed."""
        return self.pruner.num_prunables

    def prune(
        self, max_to_prune: int | None = 8, optimizer: torch.optim.Optimizer | None = None, *, flops: float | None = None
    ) -> list[Removal]:
        """Remove up to ``max_to_prune`` of the globally least important channels, stopping
        once they take ``flops`` FLOPs (:meth:`TaylorPruner.prune`)."""
        return self.pruner.prune(max_to_prune, optimizer, flops=flops)
