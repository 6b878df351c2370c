"""Pruning under ``torch.distributed``: every rank ranks the same numbers and removes the
same channels, and a ``DistributedDataParallel`` wrapper is rebuilt for the new shapes.

Under data parallelism each rank ``r`` sees its own examples and its estimator layers record
their own sums ``S_r[k]`` (over examples ``n`` of the per-example statistic ``theta[n, k]``,
:mod:`prunable_nn.taylor`) and counts ``N_r``. Ranked alone, these differ from rank to rank,
the ranks would remove different channels and the replicas would silently stop being
replicas. :func:`reduced_estimates` all-reduces (sums) them, so that every rank ranks the
mean over all ranks' examples,

    estimate[k] = (sum_r S_r[k]) / (sum_r N_r) / W ** p,

where ``W`` is the world size and ``p`` the criterion's ``gradient_power``. DDP averages the
parameter gradients of the ranks' losses, so the loss it optimises is the mean of the ranks'
losses and the gradient of that loss with respect to an activation on rank ``r`` is
``dL_r/da / W``. The Taylor statistic ``|mean_m a * dL/da|`` is proportional to the gradient
(``p = 1``), so the factor makes the estimates equal to those one process computes on the
concatenated batches (the statistics of the activation alone, ``p = 0``, need none). Sums and
counts travel in one float64 tensor (counts are exact below 2**53) in one ``all_reduce``.

Before anything changes, :func:`check_agreement` gathers a digest of the units each rank chose
(``all_gather_object``) and raises if they differ: a criterion that is not a recorded
statistic (weights that diverged, random scores seeded per rank, an oracle on each rank's
own batches) may still disagree.

A failed or stalled rank makes the collectives fail after the process group's ``timeout``
(``torch.distributed.init_process_group(..., timeout=datetime.timedelta(...))``);
:class:`DistributedPruningError` then names the step and the rank rather than hanging.

``prune()`` resizes parameters in place: DDP's gradient buckets and hooks were built for the
old shapes, so after a prune the model must be wrapped anew, :func:`rewrap`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .estimator import EstimateTotals

if TYPE_CHECKING:
    from .layers import PrunableLayer

ProcessGroup = Any  # torch.distributed.ProcessGroup (absent from builds without distributed)


class DistributedPruningError(RuntimeError):
    """Ranks disagree, or a collective of the pruning step failed (a rank failed or timed out)."""


def is_distributed(group: ProcessGroup | None = None) -> bool:
    """Whether a process group of more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def _collective(what: str, call, group: ProcessGroup | None):
    try:
        return call()
    except DistributedPruningError:
        raise
    except Exception as error:  # gloo and nccl raise several kinds (RuntimeError, DistBackendError)
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        raise DistributedPruningError(
            f"rank {rank} of {world}: {what} failed: did another rank fail, stall, or not get there? "
            f"(the process group's timeout bounds the wait) [{type(error).__name__}: {error}]"
        ) from error


def _device(layers: Sequence[PrunableLayer], group: ProcessGroup | None) -> torch.device:
    """Where the reduced tensor lives: CUDA for nccl (which reduces only CUDA tensors), else
    the layers' own device."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    for layer in layers:
        for param in layer.parameters():
            return param.device
    return torch.device("cpu")


@contextmanager
def reduced_estimates(
    layers: Sequence[PrunableLayer], gradient_power: int = 1, group: ProcessGroup | None = None
) -> Iterator[None]:
    """Within the block, every layer of ``layers`` holds the sums and counts of all ranks
    (see the module docstring); on leaving it (normally or by an error) its own come back.

    Every rank must pass the same layers in the same order (those of one traced model).
    A layer that has seen nothing on this rank contributes zeros. The channel counts are
    checked first (one small ``all_reduce`` of their total, as max and -min) so that ranks
    whose models differ get an error rather than a garbled sum.
    """
    world = dist.get_world_size(group)
    device = _device(layers, group)
    sizes = [layer._num_estimated_channels() for layer in layers]
    total = sum(sizes) + len(layers)
    bounds = torch.tensor([total, -total], dtype=torch.float64, device=device)
    _collective(
        "prune(): comparing the models' sizes", lambda: dist.all_reduce(bounds, dist.ReduceOp.MAX, group=group), group
    )
    if bounds[0].item() != total or -bounds[1].item() != total:
        raise DistributedPruningError(
            f"prune() on rank {dist.get_rank(group)}: the ranks' models differ, {total} channels and estimators "
            f"here, between {int(-bounds[1].item())} and {int(bounds[0].item())} across the ranks "
            "(were they pruned apart, or built differently?)"
        )
    parts = []
    for layer, size in zip(layers, sizes):
        local = layer.estimate_totals
        parts.append(torch.zeros(size, dtype=torch.float64, device=device) if local.sums is None else local.sums.to(device))
        parts.append(torch.tensor([float(local.examples)], dtype=torch.float64, device=device))
    flat = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64, device=device)
    _collective("prune(): the all-reduce of the estimates", lambda: dist.all_reduce(flat, group=group), group)
    saved = [layer.estimate_totals for layer in layers]
    scale = float(world) ** gradient_power
    try:
        offset = 0
        for layer, own, size in zip(layers, saved, sizes):
            sums, count = flat[offset : offset + size], int(flat[offset + size].item())
            offset += size + 1
            home = own.sums.device if own.sums is not None else device
            layer.set_estimate_totals(EstimateTotals((sums / scale).to(home) if count else None, count, own.skipped))
        yield
    finally:
        for layer, own in zip(layers, saved):
            layer.set_estimate_totals(own)


def units_digest(units: Sequence[int], num_units: int) -> str:
    """A short digest of the chosen ``units`` (and of the size of the unit numbering)."""
    text = f"{num_units}:" + ",".join(str(int(unit)) for unit in units)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_agreement(units: Sequence[int], num_units: int, group: ProcessGroup | None = None) -> None:
    """Raise :class:`DistributedPruningError` unless every rank chose the same ``units``.

    One ``all_gather_object`` of ``(digest, count, first units)`` per rank; the message lists
    what each rank chose."""
    world = dist.get_world_size(group)
    mine = (units_digest(units, num_units), len(units), [int(unit) for unit in units[:8]])
    gathered: list[Any] = [None] * world
    _collective(
        "prune(): the check that the ranks chose the same channels",
        lambda: dist.all_gather_object(gathered, mine, group=group),
        group,
    )
    if any(other[0] != mine[0] for other in gathered):
        choices = "; ".join(
            f"rank {rank}: {count} units {first}{'...' if count > len(first) else ''} (digest {digest})"
            for rank, (digest, count, first) in enumerate(gathered)
        )
        raise DistributedPruningError(
            f"prune() on rank {dist.get_rank(group)}: the ranks chose different channels, nothing was removed "
            f"({choices}); a criterion that is not a recorded statistic (weights, random scores, an oracle) "
            "must give the same scores on every rank"
        )


def rewrap(
    ddp_model: DistributedDataParallel,
    optimizer: torch.optim.Optimizer | None = None,
    **overrides: Any,
) -> DistributedDataParallel:
    """A new :class:`~torch.nn.parallel.DistributedDataParallel` around ``ddp_model.module``
    with the same settings, for the module's shapes after ``prune()``.

    DDP builds its gradient buckets and autograd hooks for the parameters' shapes when it is
    made; ``prune()`` shrinks parameters in place (same ``nn.Parameter`` objects, new tensors),
    so the old wrapper must not be used again: train with the one returned. The new wrapper
    broadcasts rank 0's parameters and buffers, as DDP does when it is made (after a prune
    that the ranks agreed on they are equal anyway). The settings copied are ``device_ids``,
    ``output_device``, ``dim``, ``broadcast_buffers``, ``process_group``, ``bucket_cap_mb``,
    ``find_unused_parameters``, ``gradient_as_bucket_view`` and ``static_graph``;
    ``overrides`` replace them or add others (``find_unused_parameters=True``, say). A
    communication hook (``register_comm_hook``) must be registered on the new wrapper again.

    The optimizer needs no rebuilding: it holds the same parameter objects, and
    ``prune(optimizer=...)`` sliced their state. With ``optimizer``, that is checked:
    a parameter of the module that the optimizer does not hold, or a state tensor whose
    shape no longer matches its parameter (``prune()`` was called without the optimizer),
    raises ``ValueError`` before anything is built.
    """
    if not isinstance(ddp_model, DistributedDataParallel):
        raise TypeError(f"rewrap() needs a DistributedDataParallel, got {type(ddp_model).__name__}")
    module = ddp_model.module
    if optimizer is not None:
        _check_optimizer(module, optimizer)
    settings: dict[str, Any] = {
        "device_ids": ddp_model.device_ids,
        "output_device": ddp_model.output_device,
        "dim": ddp_model.dim,
        "process_group": ddp_model.process_group,
        "bucket_cap_mb": ddp_model.bucket_bytes_cap / (1024 * 1024),
        "find_unused_parameters": ddp_model.find_unused_parameters,
        "gradient_as_bucket_view": ddp_model.gradient_as_bucket_view,
        "static_graph": ddp_model.static_graph,
    }
    if not ddp_model.broadcast_buffers:  # the default (True) is not passed: newer torch deprecates the name
        settings["broadcast_buffers"] = False
    settings.update(overrides)
    return DistributedDataParallel(module, **settings)


def _check_optimizer(module: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    held = {id(param) for group in optimizer.param_groups for param in group["params"]}
    for name, param in module.named_parameters():
        if param.requires_grad and id(param) not in held:
            raise ValueError(f"rewrap(): the optimizer does not hold parameter '{name}' {tuple(param.shape)}")
        for key, value in optimizer.state.get(param, {}).items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != param.shape:
                raise ValueError(
                    f"rewrap(): the optimizer's state '{key}' of parameter '{name}' has shape {tuple(value.shape)}, "
                    f"the parameter {tuple(param.shape)}: pass the optimizer to prune(optimizer=...)"
                )


def all_reduce_mean(values: Sequence[float], group: ProcessGroup | None = None) -> list[float]:
    """``values`` averaged over the ranks, the same on every rank: :func:`prunable_nn.prune_loop`
    reduces its measurements with it so that every rank decides to stop at the same round."""
    flat = torch.tensor(list(values), dtype=torch.float64, device=_device([], group))
    what = "prune_loop(): the all-reduce of the round's measurements"
    _collective(what, lambda: dist.all_reduce(flat, group=group), group)
    return (flat / dist.get_world_size(group)).tolist()
