"""First-order Taylor estimates of channel importance (Molchanov et al. 2017, eq. 8).

Removing channel ``k`` of an activation ``a`` (setting it to zero) changes the loss ``L`` by
about ``-sum_m a[n, k, m] * dL/da[n, k, m]``. The paper's criterion for example ``n`` is the
absolute mean over the channel's ``M`` positions,

    theta[n, k] = | (1 / M) * sum_m a[n, k, m] * dL/da[n, k, m] |,

and a layer's estimate is the mean of ``theta[n, k]`` over every example seen since the
last reset. Other criteria record other statistics the same way (:class:`Statistic`); how
a layer's outputs are recorded, eagerly or in a compiled graph, is :mod:`prunable_nn.recording`'s
to say, and the running sums are :class:`prunable_nn.estimator.TaylorEstimates`'.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


def mean_product(activation: torch.Tensor, grad: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """``(1 / M) * sum_m a[n, k, m] * dL/da[n, k, m]`` for every example ``n`` (dim 0) and
    channel ``k``, in at least float32.

    ``activation`` and ``grad`` share a shape whose dim 0 indexes examples and ``channel_dim``
    the channels; every other dim counts as a position ``m``. Returns ``(N, C)``.

    Run eagerly on the CPU, the product is formed for a block of examples at a time, at most
    8 MiB of it (but at least one example): the same numbers, but a large map (16 MiB for
    64 x 64 x 32 x 32 floats) no longer needs one big fresh allocation, which often
    page-faults. The blocks are not smaller because each one adds kernels, which an
    oversubscribed CPU pays for dearly. A compiled graph fuses the product into the mean.
    """
    dtype = torch.promote_types(activation.dtype, torch.float32)

    def block_mean(activation: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        product = (activation.to(dtype) * grad.to(dtype)).movedim(channel_dim, 1)
        return product.reshape(product.shape[0], product.shape[1], -1).mean(dim=2)

    examples = activation.shape[0]
    step = examples
    if activation.device.type == "cpu" and activation.numel() and not torch.compiler.is_compiling():
        block_bytes = 8 << 20
        step = max(1, block_bytes * examples // (activation.numel() * dtype.itemsize))
    if step >= examples:
        return block_mean(activation, grad)
    return torch.cat([block_mean(activation[i : i + step], grad[i : i + step]) for i in range(0, examples, step)])


def taylor_criterion(activation: torch.Tensor, grad: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """``theta[n, k]`` of eq. 8 for every example ``n`` and channel ``k``: ``(N, C)``."""
    return mean_product(activation, grad, channel_dim).abs()


@dataclass(frozen=True)
class Statistic:
    """A per-example, per-channel statistic ``finish(sum_i values(a, dL_i/da))``, ``(N, C)``,
    over the backward passes ``i`` through one forward.

    ``values`` is linear in the gradient when ``gradient_power`` is 1 (Taylor's signed mean
    product); with ``gradient_power`` 0 it reads the activation alone and is taken once per
    forward. ``finish`` (default: none) is applied after the sum (Taylor's absolute value),
    and is positively homogeneous: ``finish(v / s) = finish(v) / s`` for ``s > 0``.
    """

    values: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]
    gradient_power: int
    finish: Callable[[torch.Tensor], torch.Tensor] | None = None

    def batch_total(self, values: torch.Tensor) -> torch.Tensor:
        """``sum_n finish(values)[n, k]``, ``(C,)`` in float64: what a batch adds to the sums."""
        finished = values if self.finish is None else self.finish(values)
        return finished.sum(dim=0, dtype=torch.float64)


TAYLOR = Statistic(mean_product, gradient_power=1, finish=torch.abs)
