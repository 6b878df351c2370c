"""The start model that the criteria benchmarks share: a VGG-11 trained on 28x28 images.

``load`` gives Fashion-MNIST (Debian's IDX files) or, needing nothing installed,
scikit-learn's 8x8 digits scaled to 28x28 (bilinear), split at random by the seed into the
training images and ``held_out`` validation images. ``trained_vgg`` trains a VGG-11 with
batch norm for ``steps`` Adam steps (learning rate 1e-3) of 128 images.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models import VGG  # noqa: E402
from prunable_nn.app import data  # noqa: E402
from prunable_nn.training import endless, make_loader, train_steps  # noqa: E402

IMAGE_SIZE = 28
DATA_SETS = ("fashion-mnist", "digits")
BATCH_SIZE = 128
LEARNING_RATE = 1e-3


def add_arguments(parser: argparse.ArgumentParser, seeds: int) -> None:
    """The start model's options: ``--seeds``, ``--width``, ``--hidden``, ``--steps``, ``--data``."""
    parser.add_argument("--seeds", type=int, default=seeds)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--steps", type=int, default=430, help="training steps of the start model (430: one epoch)")
    parser.add_argument("--data", choices=DATA_SETS, default="fashion-mnist")


def images(name: str, train: bool) -> TensorDataset:
    """The training or test images of data set ``name``, 28x28."""
    if name == "digits":
        digits = data.digits(train=train)
        scaled = F.interpolate(digits.tensors[0], size=IMAGE_SIZE, mode="bilinear", align_corners=False)
        return TensorDataset(scaled, digits.tensors[1])
    return data.fashion_mnist(train=train)


def load(name: str, seed: int, held_out: int) -> tuple[Dataset, TensorDataset]:
    """Training images and ``held_out`` validation images of data set ``name``, 28x28."""
    full = images(name, train=True)
    order = torch.randperm(len(full), generator=torch.Generator().manual_seed(seed))
    return Subset(full, order[held_out:].tolist()), TensorDataset(*full[order[:held_out]])


def trained_vgg(train_set: Dataset, seed: int, width: float, hidden: int, steps: int) -> tuple[VGG, float]:
    """A VGG-11 (seeded weights) after ``steps`` training steps, and their mean loss."""
    torch.manual_seed(seed)
    model = VGG("vgg11", 10, 1, IMAGE_SIZE, width=width, hidden=hidden)
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    loader = make_loader(train_set, BATCH_SIZE, shuffle=True, seed=seed)
    return model, train_steps(model, optimizer, endless(loader), steps, progress=False)
