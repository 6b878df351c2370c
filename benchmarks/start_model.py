"""The start model that the criteria benchmarks share: a VGG-11 trained on 28x28 images.

``load`` gives Fashion-MNIST (Debian's IDX files) or, needing nothing installed,
scikit-learn's 8x8 digits scaled to 28x28 (bilinear), split at random by the seed into the
training images and ``held_out`` validation images. ``trained_vgg`` trains a VGG-11 with
batch norm for ``steps`` Adam steps (learning rate 1e-3) of 128 images.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models import VGG  # noqa: E402
from prunable_nn import data  # noqa: E402
from prunable_nn.training import endless, make_loader, train_steps  # noqa: E402

IMAGE_SIZE = 28
DATA_SETS = ("fashion-mnist", "digits")
BATCH_SIZE = 128
LEARNING_RATE = 1e-3


def load(name: str, seed: int, held_out: int) -> tuple[Dataset, TensorDataset]:
    """Training images and ``held_out`` validation images of data set ``name``, 28x28."""
    if name == "digits":
        full = data.digits(train=True)
        images = F.interpolate(full.tensors[0], size=IMAGE_SIZE, mode="bilinear", align_corners=False)
        full = TensorDataset(images, full.tensors[1])
    else:
        full = data.fashion_mnist(train=True)
    order = torch.randperm(len(full), generator=torch.Generator().manual_seed(seed))
    return Subset(full, order[held_out:].tolist()), TensorDataset(*full[order[:held_out]])


def trained_vgg(train_set: Dataset, seed: int, width: float, hidden: int, steps: int) -> tuple[VGG, float]:
    """A VGG-11 (seeded weights) after ``steps`` training steps, and their mean loss."""
    torch.manual_seed(seed)
    model = VGG("vgg11", 10, 1, IMAGE_SIZE, width=width, hidden=hidden)
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    loader = make_loader(train_set, BATCH_SIZE, shuffle=True, seed=seed)
    return model, train_steps(model, optimizer, endless(loader), steps, progress=False)
