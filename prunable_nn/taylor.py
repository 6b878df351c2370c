"""First-order Taylor estimates of channel importance (Molchanov et al. 2017, eq. 8).

Removing channel ``k`` of an activation ``a`` (setting it to zero) changes the loss ``L`` by
about ``-sum_m a[n, k, m] * dL/da[n, k, m]``. The paper's criterion for example ``n`` is the
absolute mean over the channel's ``M`` positions,

    theta[n, k] = | (1 / M) * sum_m a[n, k, m] * dL/da[n, k, m] |,

and a layer's estimate is the mean of ``theta[n, k]`` over every example seen since the
last reset. Other criteria record other statistics the same way (:class:`Statistic`).

**What counts.** Every backward pass through a forward adds its gradient: two losses
backward'ed one after the other (``retain_graph=True``), a ``torch.autograd.grad`` before
``loss.backward()``, a gradient penalty. ``dL/da`` above is the sum of their gradients, so
the estimate is that of the total loss (the absolute value is taken once, after the sum).
A pass run inside :func:`no_estimates` adds nothing. A forward's examples count once its
graph can take no more backward passes: when a backward pass without ``retain_graph``
frees it, or when the graph is dropped. A forward no gradient reached counts nothing, in
training or eval mode alike. A batch whose statistic is not finite (an overflowed
mixed-precision step) is skipped and counted in :attr:`TaylorEstimates.batches_skipped`.
With a ``torch.amp.GradScaler`` attached (``layer.grad_scaler``), the gradients are divided
by its scale, so that a backoff in the middle of an interval weights no batch differently.

**How.** The layer's output goes through :class:`_Recorded`, an autograd function that
marks it as changed in place (nothing is copied; its version counter is set back, since its
values do not change) and saves it for its backward, which reads the gradient. Autograd frees what a node saved when a pass without ``retain_graph`` has run
through it, and that is when a forward's statistic is final. The output is saved without
autograd's version check, so a later in-place ReLU is harmless: the gradient that reaches the
layer's output is zero wherever the ReLU zeroed the activation, so ``a * dL/da`` is the same
before and after it. The estimates are plain attributes of the layer, not buffers: they are
not part of ``state_dict()``, ``buffers()`` or anything that walks them (EMA, DDP).

**Memory.** A batch norm keeps its input for its backward, not its output: saved for the
estimate alone, the output would stay alive until its gradient arrived. Where the pruner's
graph shows that one ReLU module alone reads a layer's output, that ReLU records its own
output for the layer (:class:`RecordAfter`), which autograd keeps anyway: the numbers are
the same (``relu(a) * dL/drelu(a) = a * dL/da``) and the estimate costs no memory.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

#: Backward passes running inside :func:`no_estimates` (any thread: on a GPU autograd runs
#: the backward in its own threads).
_excluding = 0


@contextmanager
def no_estimates() -> Iterator[None]:
    """Backward passes run inside this block add nothing to any estimate (a saliency map's
    ``torch.autograd.grad``, a loss that should not rank channels)."""
    global _excluding
    _excluding += 1
    try:
        yield
    finally:
        _excluding -= 1


def mean_product(activation: torch.Tensor, grad: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """``(1 / M) * sum_m a[n, k, m] * dL/da[n, k, m]`` for every example ``n`` (dim 0) and
    channel ``k``, in at least float32.

    ``activation`` and ``grad`` share a shape whose dim 0 indexes examples and ``channel_dim``
    the channels; every other dim counts as a position ``m``. Returns ``(N, C)``.

    On the CPU the product is formed for a block of examples at a time, at most 8 MiB of it
    (but at least one example): the same numbers, but a large map (16 MiB for 64 x 64 x 32 x 32
    floats) no longer needs one big fresh allocation, which often page-faults. The blocks are
    not smaller because each one adds kernels, which an oversubscribed CPU pays for dearly.
    """
    dtype = torch.promote_types(activation.dtype, torch.float32)

    def block_mean(activation: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        product = (activation.to(dtype) * grad.to(dtype)).movedim(channel_dim, 1)
        return product.reshape(product.shape[0], product.shape[1], -1).mean(dim=2)

    examples = activation.shape[0]
    step = examples
    if activation.device.type == "cpu" and activation.numel():
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
    forward. ``finish`` (default: none) is applied after the sum (Taylor's absolute value).
    """

    values: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]
    gradient_power: int
    finish: Callable[[torch.Tensor], torch.Tensor] | None = None


TAYLOR = Statistic(mean_product, gradient_power=1, finish=torch.abs)


class _Pending:
    """One forward's output of one layer and the sum of its statistic's values so far. It
    lives as long as autograd keeps the output saved; when it goes, the sum is final."""

    __slots__ = ("__weakref__", "activation", "generation", "layer", "statistic", "values")

    def __init__(self, layer: TaylorEstimates, activation: torch.Tensor) -> None:
        self.layer = layer
        self.activation = activation
        self.generation = layer._generation
        self.statistic = layer.statistic
        self.values: torch.Tensor | None = None

    def add(self, grad: torch.Tensor) -> None:
        layer, statistic = self.layer, self.statistic
        if self.generation != layer._generation or self.activation.shape[layer.channel_dim] != layer._num_estimated_channels():
            return  # reset, or pruned, since this forward
        if statistic.gradient_power == 0 and self.values is not None:
            return
        values = statistic.values(self.activation, grad, layer.channel_dim)
        scaler = getattr(layer, "grad_scaler", None)
        if statistic.gradient_power and scaler is not None and scaler.is_enabled():
            values = values / loss_scale(scaler).to(values.device) ** statistic.gradient_power
        self.values = values if self.values is None else self.values + values

    def __del__(self) -> None:
        values = getattr(self, "values", None)  # torch.compile may copy one without __init__
        if values is not None and self.generation == self.layer._generation:
            self.layer._add_batch(values if self.statistic.finish is None else self.statistic.finish(values))


def loss_scale(scaler: torch.amp.GradScaler) -> torch.Tensor:
    """The scale ``scaler`` multiplies the loss by now, as a tensor on its device (reading
    it as a number would wait for the device). ``GradScaler`` keeps it in ``_scale``, which
    ``update()`` changes in place, hence the copy."""
    scale = getattr(scaler, "_scale", None)
    return torch.tensor(scaler.get_scale()) if scale is None else scale.detach().clone()


class _Recorded(torch.autograd.Function):
    """Identity on a layer's output (marked as changed in place: no copy) whose backward
    adds each gradient to the output's :class:`_Pending`."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, output: torch.Tensor, slot: list) -> torch.Tensor:
        ctx.mark_dirty(output)
        ctx.save_for_backward(output)
        ctx.slot = slot  # filled with a weak reference to the pending sum once it exists
        return output

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        pending = ctx.slot[0]()  # gone once autograd has freed what this node saved
        if pending is not None and not _excluding:
            with torch.no_grad():
                pending.add(grad.detach())
        return grad, None


class TaylorEstimates:
    """Mixin for a layer that estimates the importance of its output channels.

    Set ``estimating = False`` to switch it off; it also records nothing under
    ``torch.no_grad()`` or ``torch.inference_mode()``, and nothing when the output does not
    require a gradient (a frozen layer upstream of everything trainable).
    """

    #: Dimension of the layer's output that indexes channels.
    channel_dim: int

    def _init_estimates(self) -> None:
        self.estimating = True
        #: What is recorded per example (:mod:`prunable_nn.criteria`; a pruner sets it to
        #: its criterion's).
        self.statistic = TAYLOR
        #: A ``torch.amp.GradScaler`` whose scale the gradients carry, or ``None``.
        self.grad_scaler = None
        self._taylor_sum: torch.Tensor | None = None
        self._taylor_count: torch.Tensor | int = 0
        self._batches_skipped: torch.Tensor | int = 0
        #: Counts the resets: a forward made before one adds nothing after it.
        self._generation = 0
        #: Whether the ReLU that alone reads this layer's output records its own output
        #: instead (:class:`RecordAfter`).
        self.records_after_activation = False
        self._awaited = None

    @property
    def taylor_estimates(self) -> torch.Tensor | None:
        """Mean of ``theta[n, k]`` over all examples seen since the last reset, shape ``(C,)``;
        ``None`` before the first backward pass."""
        if self._taylor_sum is None or self._taylor_count == 0:
            return None
        return self._taylor_sum / self._taylor_count

    @property
    def examples_seen(self) -> int:
        """Number of examples whose gradients reached this layer since the last reset."""
        return int(self._taylor_count)

    @property
    def batches_skipped(self) -> int:
        """Batches left out since the last reset because their statistic was not finite."""
        return int(self._batches_skipped)

    def reset_estimates(self) -> None:
        """Forget everything accumulated so far, and every forward not yet counted."""
        self._taylor_sum = None
        self._taylor_count = 0
        self._batches_skipped = 0
        self._generation += 1

    def _record(self, output: torch.Tensor) -> torch.Tensor:
        """``output``, arranged so that the gradients that reach it update the estimate (or,
        with :attr:`records_after_activation`, so that the activation reading it records its own)."""
        if not (self.estimating and isinstance(output, torch.Tensor) and output.requires_grad):
            return output
        if self._awaited is not None:  # the last output never reached the activation: record here
            self.records_after_activation, self._awaited = False, None
        if self.records_after_activation:
            self._awaited = weakref.ref(output)
            return output
        return self._record_now(output)

    def _record_now(self, output: torch.Tensor) -> torch.Tensor:
        made: list[_Pending] = []

        def pack(tensor: torch.Tensor) -> _Pending:
            made.append(_Pending(self, tensor.detach()))  # detached: no cycle through the graph
            return made[-1]

        slot: list = [None]
        version = output._version
        with torch.autograd.graph.saved_tensors_hooks(pack, _activation_of):
            recorded = _Recorded.apply(output, slot)
        # Marked as changed in place, the output's version went up; its values did not change,
        # and an op that saved it (a ReLU inside timm's BatchNormAct2d) must still find it valid.
        torch._C._autograd._unsafe_set_version_counter((recorded,), (version,))
        slot[0] = weakref.ref(made[0])
        return recorded

    def _add_batch(self, theta: torch.Tensor) -> None:
        """Add a finished ``(N, C)`` batch of the statistic, unless it is not finite (then
        count it as skipped). Nothing waits for the device."""
        if theta.shape[1] != self._num_estimated_channels():
            return
        batch_sum = theta.sum(dim=0, dtype=torch.float64)
        finite = torch.isfinite(batch_sum).all()
        if self._taylor_sum is None:
            self._taylor_sum = torch.zeros_like(batch_sum)
        self._taylor_sum = self._taylor_sum.to(batch_sum.device) + torch.where(finite, batch_sum, 0.0)
        self._taylor_count = finite * theta.shape[0] + self._taylor_count
        self._batches_skipped = (~finite).long() + self._batches_skipped

    def _shrink_estimates(self, keep: torch.Tensor) -> None:
        if self._taylor_sum is not None:
            self._taylor_sum = self._taylor_sum[keep.to(self._taylor_sum.device)]

    def _num_estimated_channels(self) -> int:
        raise NotImplementedError


#: Activations ``f`` with ``f(a) = f'(a) * a``, so that ``f(a) * dL/df(a) = a * dL/da``, and
#: ``relu(f(a)) = relu(a)``: every statistic reads the same numbers after them.
HOMOGENEOUS_ACTIVATIONS = (torch.nn.ReLU, torch.nn.LeakyReLU)


class RecordAfter:
    """Forward hook of a ReLU that alone reads the outputs of ``layers``: when its input is
    the output a layer is waiting on, the ReLU's output is recorded for that layer.

    Autograd keeps a ReLU's output for its backward anyway, while nothing but the estimate
    would keep the layer's own output (a batch norm keeps its input): recording after the
    ReLU costs no memory, and gives the same numbers (:data:`HOMOGENEOUS_ACTIVATIONS`). A
    layer whose output did not reach the ReLU (code the graph did not show) records its own
    outputs from its next forward on."""

    def __init__(self, layers: list[TaylorEstimates]) -> None:
        self.layers = layers

    def __call__(self, module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            awaited = None if layer._awaited is None else layer._awaited()
            if awaited is not None and args and _same_values(awaited, args[0]):
                layer._awaited = None
                output = layer._record_now(output)
        return output


def _same_values(tensor: torch.Tensor, other: object) -> bool:
    """Whether ``other`` is ``tensor`` or an alias of it (a backward hook's identity)."""
    return tensor is other or (
        isinstance(other, torch.Tensor)
        and other.data_ptr() == tensor.data_ptr()
        and other.shape == tensor.shape
        and other.stride() == tensor.stride()
    )


def record_after(activation: torch.nn.Module, layers: list[TaylorEstimates]) -> None:
    """Make ``activation`` record its output for ``layers`` (replacing an earlier hook)."""
    strip_record_hooks(activation)
    for layer in layers:
        layer.records_after_activation = True
    activation.register_forward_hook(RecordAfter(layers))


def strip_record_hooks(module: torch.nn.Module) -> None:
    """Remove the :class:`RecordAfter` hooks of ``module`` and its submodules."""
    for each in module.modules():
        for key in [key for key, hook in each._forward_hooks.items() if isinstance(hook, RecordAfter)]:
            del each._forward_hooks[key]


def _activation_of(pending: _Pending) -> torch.Tensor:
    """Unpack hook of :meth:`TaylorEstimates._record` (the backward itself reads the
    pending sum through a weak reference)."""
    return pending.activation
