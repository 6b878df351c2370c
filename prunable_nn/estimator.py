"""The estimates a prunable layer keeps of its output channels' importance: running sums
of a statistic (:mod:`prunable_nn.taylor`) over the examples whose gradients reached it,
recorded eagerly or in a compiled graph (:mod:`prunable_nn.recording`).

The estimates are plain attributes of the layer, not buffers: they are not part of
``state_dict()``, ``buffers()`` or anything that walks them (EMA, DDP).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

from . import recording
from .taylor import TAYLOR
from .writes import InPlaceWrite


@dataclass(frozen=True)
class EstimateTotals:
    """What a layer has recorded since its last reset: ``sums``, the per-channel sum of the
    statistic over the examples (``(C,)`` float64, ``None`` before the first batch);
    ``examples``, how many examples counted; ``skipped``, the batches left out because their
    statistic was not finite. The estimate is ``sums / examples``. Counts may be 0-d tensors
    on the device (reading them as numbers would wait for it)."""

    sums: torch.Tensor | None
    examples: torch.Tensor | int
    skipped: torch.Tensor | int = 0


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
        #: instead (:class:`~prunable_nn.recording.RecordAfter`).
        self.records_after_activation = False
        #: How the model writes into this layer's output in place, where the pruner's graph
        #: shows that it does (:mod:`prunable_nn.writes`): the recording reads the sum after an
        #: addition, compiled as eagerly, and a copy made before an overwrite.
        self.in_place_write: InPlaceWrite | None = None
        self._awaited = None
        recording.register(self)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)  # a copy (deepcopy, pickle) records for itself
        recording.register(self)

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

    @property
    def estimate_totals(self) -> EstimateTotals:
        """The running sums behind :attr:`taylor_estimates`."""
        return EstimateTotals(self._taylor_sum, self._taylor_count, self._batches_skipped)

    def set_estimate_totals(self, totals: EstimateTotals) -> None:
        """Make ``totals`` this layer's running sums (an all-reduce's, a test's), after checking
        that they have one sum per output channel."""
        if totals.sums is not None and tuple(totals.sums.shape) != (self._num_estimated_channels(),):
            raise ValueError(
                f"{self.describe()}: estimate totals of shape {tuple(totals.sums.shape)} for "
                f"{self._num_estimated_channels()} channels"
            )
        self._taylor_sum, self._taylor_count, self._batches_skipped = totals.sums, totals.examples, totals.skipped

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
        if torch.compiler.is_compiling():
            return recording.record_in_graph(self, output, reads_the_sum=self.in_place_write is InPlaceWrite.ADDITION)
        if self._awaited is not None:  # the last output never reached the activation: record here
            self.records_after_activation, self._awaited = False, None
        if self.records_after_activation:
            self._awaited = weakref.ref(output)
            return output
        return recording.record_eagerly(self, output, copy=self.in_place_write is InPlaceWrite.OVERWRITE)

    def _add_batch(self, batch_total: torch.Tensor, examples: int) -> None:
        """Add a finished batch of the statistic, its ``(C,)`` float64 total over ``examples``
        examples, unless it is not finite (then count it as skipped). Nothing waits for the
        device."""
        if batch_total.shape[0] != self._num_estimated_channels():
            return
        finite = torch.isfinite(batch_total).all()
        if self._taylor_sum is None:
            self._taylor_sum = torch.zeros_like(batch_total)
        self._taylor_sum = self._taylor_sum.to(batch_total.device) + torch.where(finite, batch_total, 0.0)
        self._taylor_count = finite * examples + self._taylor_count
        self._batches_skipped = (~finite).long() + self._batches_skipped

    def _shrink_estimates(self, keep: torch.Tensor) -> None:
        if self._taylor_sum is not None:
            self._taylor_sum = self._taylor_sum[keep.to(self._taylor_sum.device)]

    def _num_estimated_channels(self) -> int:
        raise NotImplementedError
