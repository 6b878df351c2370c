"""How a layer's outputs are recorded, so that the gradients reaching them update its
estimate (:mod:`prunable_nn.taylor` states the statistics, :class:`~prunable_nn.estimator.TaylorEstimates`
keeps the sums).

**What counts.** Every backward pass through a forward adds its gradient: two losses
backward'ed one after the other (``retain_graph=True``), a ``torch.autograd.grad`` before
``loss.backward()``, a gradient penalty. ``dL/da`` is the sum of their gradients, so the
estimate is that of the total loss (the absolute value is taken once, after the sum). A
pass run inside :func:`no_estimates` adds nothing. A forward's examples count once its
graph can take no more backward passes: when a backward pass without ``retain_graph``
frees it, or when the graph is dropped. A forward no gradient reached counts nothing, in
training or eval mode alike. A batch whose statistic is not finite (an overflowed
mixed-precision step) is skipped and counted. With a ``torch.amp.GradScaler`` attached
(``layer.grad_scaler``), the gradients are divided by its scale, so that a backoff in the
middle of an interval weights no batch differently.

**Eagerly.** The layer's output goes through :class:`_Recorded`, an autograd function that
marks it as changed in place (nothing is copied; its version counter is set back, since its
values do not change) and saves it for its backward, which reads the gradient. Autograd
frees what a node saved when a pass without ``retain_graph`` has run through it, and that
is when a forward's statistic is final. The output is saved without autograd's version
check, so a later in-place ReLU is harmless: the gradient that reaches the layer's output
is zero wherever the ReLU zeroed the activation, so ``a * dL/da`` is the same before and
after it. Where the pruner's graph shows an in-place product or quotient overwriting the
output (:mod:`prunable_nn.writes`), a copy is saved instead.

**Memory.** A batch norm keeps its input for its backward, not its output: saved for the
estimate alone, the output would stay alive until its gradient arrived. Where the pruner's
graph shows that one ReLU module alone reads a layer's output, that ReLU records its own
output for the layer (:class:`RecordAfter`), which autograd keeps anyway: the numbers are
the same (``relu(a) * dL/drelu(a) = a * dL/da``) and the estimate costs no memory.

**Compiled.** Under ``torch.compile`` the recording is part of the graph, with no graph
break (``fullgraph=True`` works): :class:`_RecordedInGraph` saves the output (the sum
after ``out += identity``, where the pruner's graph shows one, as eagerly), computes a
batch's statistic in the compiled backward, where the compiler fuses it with the layer's
own gradient, and hands the ``(C,)`` total to the ``prunable_nn::add_batch`` operator,
which runs eagerly at every backward pass (an ordered side effect, so the compiler neither
drops nor reorders it) and adds it to the layer's sums. The compiler decides what the
backward keeps (it recomputes a batch norm's output rather than keep it, where that is
cheaper). The loss scale, the :func:`no_estimates` blocks and the finiteness check are
read when the backward runs, as eagerly. One thing differs: each backward pass through a compiled forward counts as a
batch of its own, its statistic taken on its own gradient. With one backward pass per
forward, the usual training step, the numbers are the eager ones.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch

from .compat import loss_scale, set_version

if TYPE_CHECKING:
    from .estimator import TaylorEstimates
    from .taylor import Statistic

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


def unscaled(layer: TaylorEstimates, values: torch.Tensor, gradient_power: int) -> torch.Tensor:
    """``values`` divided by ``s ** gradient_power``, ``s`` the scale of the layer's
    ``GradScaler`` (when one is attached and enabled)."""
    scaler = layer.grad_scaler
    if not gradient_power or scaler is None or not scaler.is_enabled():
        return values
    return values / loss_scale(scaler).to(values.device) ** gradient_power


# -- eagerly ------------------------------------------------------------------------------------
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
        values = unscaled(layer, statistic.values(self.activation, grad, layer.channel_dim), statistic.gradient_power)
        self.values = values if self.values is None else self.values + values

    def __del__(self) -> None:
        if self.values is not None and self.generation == self.layer._generation:
            self.layer._add_batch(self.statistic.batch_total(self.values), self.values.shape[0])


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


def record_eagerly(layer: TaylorEstimates, output: torch.Tensor, copy: bool = False) -> torch.Tensor:
    """``output``, arranged so that every gradient that reaches it adds to ``layer``'s
    pending statistic of this forward (read on a ``copy`` of it, made now, if the model
    overwrites it later)."""
    made: list[_Pending] = []

    def pack(tensor: torch.Tensor) -> _Pending:
        activation = tensor.detach()  # detached: no cycle through the graph
        made.append(_Pending(layer, activation.clone() if copy else activation))
        return made[-1]

    slot: list = [None]
    version = output._version
    with torch.autograd.graph.saved_tensors_hooks(pack, _activation_of):
        recorded = _Recorded.apply(output, slot)
    # Marked as changed in place, the output's version went up; its values did not change,
    # and an op that saved it (a ReLU inside timm's BatchNormAct2d) must still find it valid.
    set_version(recorded, version)
    slot[0] = weakref.ref(made[0])
    return recorded


def _activation_of(pending: _Pending) -> torch.Tensor:
    """Unpack hook of :func:`record_eagerly` (the backward itself reads the pending sum
    through a weak reference)."""
    return pending.activation


# -- in a compiled graph ------------------------------------------------------------------------
#: The layers the compiled graphs record for, by ``id``: what ``prunable_nn::add_batch``
#: receives (an operator takes numbers and tensors, not modules).
_layers: weakref.WeakValueDictionary[int, TaylorEstimates] = weakref.WeakValueDictionary()


def register(layer: TaylorEstimates) -> None:
    """Make ``layer`` the one that compiled graphs recording for ``id(layer)`` add to."""
    _layers[id(layer)] = layer


@torch.library.custom_op("prunable_nn::add_batch", mutates_args=())
def _add_batch(batch_total: torch.Tensor, layer_id: int, examples: int, gradient_power: int) -> None:
    """Add one backward pass's ``(C,)`` total over ``examples`` examples to the sums of the
    layer ``layer_id``, after the loss scale (to ``gradient_power``) is divided out; nothing
    inside :func:`no_estimates`, and nothing for a layer pruned since the forward."""
    layer = _layers.get(layer_id)
    if layer is not None and not _excluding:
        layer._add_batch(unscaled(layer, batch_total, gradient_power), examples)  # it checks the channels


_add_batch.register_effect(torch.library.EffectType.ORDERED)


@_add_batch.register_fake
def _(batch_total: torch.Tensor, layer_id: int, examples: int, gradient_power: int) -> None:
    return None


class _RecordedInGraph(torch.autograd.Function):
    """Identity on a layer's output whose backward computes the batch's statistic and hands
    its total to ``prunable_nn::add_batch``: the compiled form of :class:`_Recorded`.

    The forward returns a copy, which the model's later in-place ops change, while the
    output itself is saved as it is: the compiler allows no version counter to be set back,
    and the output may be saved by an op before (the ReLU inside timm's ``BatchNormAct2d``).
    Where the model adds into it in place, the output is marked as changed in place instead
    (nothing saved it, or the model's own backward would fail), and what is saved is the sum
    the forward leaves in it, as eagerly."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        output: torch.Tensor,
        layer_id: int,
        statistic: Statistic,
        channel_dim: int,
        reads_the_sum: bool,
    ) -> torch.Tensor:
        ctx.save_for_backward(output)
        ctx.layer_id, ctx.statistic, ctx.channel_dim = layer_id, statistic, channel_dim
        if not reads_the_sum:
            return output.clone()
        ctx.mark_dirty(output)
        return output

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor, None, None, None, None]:
        (output,) = ctx.saved_tensors
        statistic = ctx.statistic
        with torch.no_grad():
            total = statistic.batch_total(statistic.values(output, grad, ctx.channel_dim))
            torch.ops.prunable_nn.add_batch(total, ctx.layer_id, output.shape[0], statistic.gradient_power)
        return grad, None, None, None, None


def record_in_graph(layer: TaylorEstimates, output: torch.Tensor, reads_the_sum: bool = False) -> torch.Tensor:
    """``output``, arranged so that the compiled backward adds each pass's statistic to
    ``layer``'s sums (read on the sum that an in-place addition leaves in it, if
    ``reads_the_sum``)."""
    return _RecordedInGraph.apply(output, id(layer), layer.statistic, layer.channel_dim, reads_the_sum)


# -- after the activation -----------------------------------------------------------------------
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
    outputs from its next forward on. A compiled graph records at the layer itself."""

    def __init__(self, layers: list[TaylorEstimates]) -> None:
        self.layers = layers

    def __call__(self, module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            return output
        for layer in self.layers:
            awaited = None if layer._awaited is None else layer._awaited()
            if awaited is not None and args and _same_values(awaited, args[0]):
                layer._awaited = None
                output = record_eagerly(layer, output)
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
