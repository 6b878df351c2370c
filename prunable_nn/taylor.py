"""First-order Taylor estimates of channel importance (Molchanov et al. 2017, eq. 8).

Removing channel ``k`` of an activation ``a`` (setting it to zero) changes the loss ``L`` by
about ``-sum_m a[n, k, m] * dL/da[n, k, m]``. The paper's criterion for example ``n`` is the
absolute mean over the channel's ``M`` positions,

    theta[n, k] = | (1 / M) * sum_m a[n, k, m] * dL/da[n, k, m] |,

and a layer's estimate is the mean of ``theta[n, k]`` over every example seen by a backward
pass since the last reset.

The activation is read after the layer's forward pass and the gradient when autograd reaches
it: nothing is copied (``a.detach()`` shares memory), and the reference is dropped as soon as
the gradient has arrived. A later in-place ReLU is harmless: the gradient that reaches the
hook is the one with respect to the value before the ReLU, which is zero wherever the ReLU
zeroed the activation, so ``a * dL/da`` is the same before and after it.
"""

from __future__ import annotations

import torch


def taylor_criterion(activation: torch.Tensor, grad: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """``theta[n, k]`` of eq. 8 for every example ``n`` (dim 0) and channel ``k``.

    ``activation`` and ``grad`` share a shape whose dim 0 indexes examples and ``channel_dim``
    the channels; every other dim counts as a position ``m``. Returns ``(N, C)``.

    On the CPU the product ``a * dL/da`` is formed for a block of examples at a time, at most
    8 MiB of it (but at least one example): the same numbers, but a large map (16 MiB for
    64 x 64 x 32 x 32 floats) no longer needs one big fresh allocation, which often page-faults.
    The blocks are not smaller because each one adds kernels, which an oversubscribed CPU pays
    for dearly.
    """

    def mean_product(activation: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        product = (activation * grad).movedim(channel_dim, 1)
        return product.reshape(product.shape[0], product.shape[1], -1).mean(dim=2)

    examples = activation.shape[0]
    step = examples
    if activation.device.type == "cpu" and activation.numel():
        block_bytes = 8 << 20
        step = max(1, block_bytes * examples // (activation.numel() * activation.element_size()))
    if step >= examples:
        return mean_product(activation, grad).abs()
    blocks = range(0, examples, step)
    return torch.cat([mean_product(activation[i : i + step], grad[i : i + step]) for i in blocks]).abs()


class TaylorEstimates:
    """Mixin for a layer that estimates the importance of its output channels.

    Set ``estimating = False`` to switch it off; it also records nothing under
    ``torch.no_grad()``, ``torch.inference_mode()`` or in ``eval()`` mode, and nothing when
    the output does not require a gradient.
    """

    #: Dimension of the layer's output that indexes channels.
    channel_dim: int

    def _init_estimates(self) -> None:
        self.estimating = True
        #: ``statistic(activation, grad, channel_dim) -> (N, C)``, recorded per example
        #: (:mod:`prunable_nn.criteria`; a pruner sets it to its criterion's).
        self.statistic = taylor_criterion
        self.register_buffer("_taylor_sum", None, persistent=False)
        self._taylor_count = 0

    @property
    def taylor_estimates(self) -> torch.Tensor | None:
        """Mean of ``theta[n, k]`` over all examples seen since the last reset, shape ``(C,)``;
        ``None`` before the first backward pass."""
        if self._taylor_count == 0:
            return None
        return self._taylor_sum / self._taylor_count

    @property
    def examples_seen(self) -> int:
        """Number of examples whose gradients reached this layer since the last reset."""
        return self._taylor_count

    def reset_estimates(self) -> None:
        """Forget everything accumulated so far."""
        self._taylor_sum = None
        self._taylor_count = 0

    def _record(self, output: torch.Tensor) -> None:
        """Arrange for the estimate to be updated when the gradient of ``output`` arrives."""
        if not (self.estimating and self.training and isinstance(output, torch.Tensor) and output.requires_grad):
            return
        pending = [output.detach()]

        def accumulate(grad: torch.Tensor) -> None:
            if pending:
                self._accumulate(pending.pop(), grad)

        output.register_hook(accumulate)

    def _accumulate(self, activation: torch.Tensor, grad: torch.Tensor) -> None:
        channels = activation.shape[self.channel_dim]
        if channels != self._num_estimated_channels():
            return  # the graph was built before the layer was pruned
        theta = self.statistic(activation, grad, self.channel_dim)
        batch_sum = theta.sum(dim=0, dtype=torch.float64)
        if self._taylor_sum is None:
            self._taylor_sum = batch_sum
        else:
            self._taylor_sum += batch_sum
        self._taylor_count += theta.shape[0]

    def _shrink_estimates(self, keep: torch.Tensor) -> None:
        if self._taylor_sum is not None:
            self._taylor_sum = self._taylor_sum[keep.to(self._taylor_sum.device)]

    def _num_estimated_channels(self) -> int:
        raise NotImplementedError
