"""Plain training helpers: data loaders, training steps and epochs, test accuracy.

Nothing here knows about pruning: the prunable layers accumulate their Taylor estimates on
every backward pass of :func:`train_steps`, so a pruning loop only has to call
``model.prune()`` between calls. Progress bars (tqdm) go to stderr and switch themselves
off when stderr is not a terminal, unless ``progress`` says otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

Batch = tuple[torch.Tensor, torch.Tensor]
#: ``loss_fn(outputs, labels)``, a scalar tensor (default: cross-entropy).
LossFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def subset(dataset: Dataset, size: int | None, seed: int = 0) -> Dataset:
    """``size`` examples of ``dataset`` drawn at random (by ``seed``); all of it if ``size``
    is ``None`` or at least its length."""
    total = len(dataset)
    if size is None or size >= total:
        return dataset
    if size < 1:
        raise ValueError(f"subset size must be positive, got {size}")
    generator = torch.Generator().manual_seed(seed)
    return Subset(dataset, torch.randperm(total, generator=generator)[:size].tolist())


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool = False, seed: int = 0) -> DataLoader:
    """A single-process loader; shuffled by its own generator seeded with ``seed``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)


def endless(loader: DataLoader) -> Iterator[Batch]:
    """The loader's batches over and over, one pass (a fresh shuffle) after another; a
    sampler with ``set_epoch`` (``DistributedSampler``) is told the pass number first."""
    set_epoch = getattr(loader.sampler, "set_epoch", None)
    passes = 0
    while True:
        if set_epoch is not None:
            set_epoch(passes)
        passes += 1
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError("the data loader yields no batches")


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    loss_fn: LossFunction = nn.functional.cross_entropy,
    *,
    autocast: torch.dtype | None = None,
    grad_scaler: torch.amp.GradScaler | None = None,
) -> float:
    """One step of ``loss_fn(model(images), labels)`` in training mode; returns the loss.

    ``autocast``: run the forward under ``torch.autocast`` with this dtype (``torch.float16``,
    ``torch.bfloat16``). ``grad_scaler``: scale the loss, and step and update through it (a
    step whose gradients overflowed is skipped, as ``GradScaler`` does)."""
    model.train()
    with torch.autocast(images.device.type, dtype=autocast, enabled=autocast is not None):
        loss = loss_fn(model(images), labels)
    optimizer.zero_grad(set_to_none=True)
    if grad_scaler is None:
        loss.backward()
        optimizer.step()
    else:
        grad_scaler.scale(loss).backward()
        grad_scaler.step(optimizer)
        grad_scaler.update()
    return loss.item()


def train_steps(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterator[Batch],
    steps: int,
    *,
    desc: str = "train",
    progress: bool | None = None,
    loss_fn: LossFunction = nn.functional.cross_entropy,
    autocast: torch.dtype | None = None,
    grad_scaler: torch.amp.GradScaler | None = None,
) -> float:
    """Run ``steps`` training steps (:func:`train_step`) on batches taken from ``batches``;
    return the mean loss."""
    if steps < 1:
        raise ValueError(f"steps must be positive, got {steps}")
    total = 0.0
    with tqdm(total=steps, desc=desc, unit="step", leave=False, disable=progress_disabled(progress)) as bar:
        for _ in range(steps):
            images, labels = next(batches)
            loss = train_step(model, optimizer, images, labels, loss_fn, autocast=autocast, grad_scaler=grad_scaler)
            total += loss
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
            bar.update()
    return total / steps


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    *,
    desc: str = "epoch",
    progress: bool | None = None,
    loss_fn: LossFunction = nn.functional.cross_entropy,
    autocast: torch.dtype | None = None,
    grad_scaler: torch.amp.GradScaler | None = None,
) -> float:
    """One pass over ``loader`` (:func:`train_step`); returns the mean loss."""
    return train_steps(
        model, optimizer, iter(loader), len(loader), desc=desc, progress=progress, loss_fn=loss_fn,
        autocast=autocast, grad_scaler=grad_scaler,
    )


def evaluate(model: nn.Module, loader: DataLoader, *, desc: str = "test", progress: bool | None = None) -> float:
    """Top-1 accuracy (0..1) of ``model`` in eval mode; its training flags are restored."""
    modes = {module: module.training for module in model.modules()}
    correct = seen = 0
    model.eval()
    try:
        with torch.no_grad():
            for images, labels in tqdm(loader, desc=desc, unit="batch", leave=False, disable=progress_disabled(progress)):
                correct += (model(images).argmax(dim=1) == labels).sum().item()
                seen += len(labels)
    finally:
        for module, training in modes.items():
            module.training = training
    if seen == 0:
        raise ValueError("cannot evaluate on an empty data set")
    return correct / seen


def progress_disabled(progress: bool | None) -> bool | None:
    """tqdm's ``disable`` for ``progress``: ``None`` (the default) shows a bar only when the
    output is a terminal."""
    return None if progress is None else not progress
