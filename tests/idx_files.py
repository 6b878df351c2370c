"""Writes small synthetic IDX data sets (the Fashion-MNIST file format) for the tests."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """The IDX encoding of a ``uint8`` array: magic number, big-endian sizes, data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = 0x00000800 + array.ndim if magic is None else magic
    header = magic.to_bytes(4, "big") + b"".join(size.to_bytes(4, "big") for size in array.shape)
    return header + array.tobytes()


def write_idx(path: Path, array: np.ndarray, compress: bool = False, magic: int | None = None) -> Path:
    """Write ``array`` as an IDX file at ``path`` (plus ``.gz`` when ``compress``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = idx_bytes(array, magic)
    if compress:
        path = path.with_name(path.name + ".gz")
        payload = gzip.compress(payload)
    path.write_bytes(payload)
    return path


def class_images(labels: np.ndarray, size: int = 28, seed: int = 0) -> np.ndarray:
    """Noisy images whose class is easy to learn: label ``k`` lights up the k-th band of rows."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, size=(len(labels), size, size))
    band = max(size // 10, 1)
    for index, label in enumerate(labels):
        images[index, band * label : band * (label + 1), :] += 180
    return images.clip(0, 255).astype(np.uint8)


def write_dataset(
    folder: Path,
    train_size: int = 40,
    test_size: int = 20,
    size: int = 28,
    compress: bool = True,
    seed: int = 0,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write the four Fashion-MNIST files into ``folder``; return ``{split: (images, labels)}``."""
    rng = np.random.default_rng(seed)
    written = {}
    for split, count in (("train", train_size), ("t10k", test_size)):
        labels = rng.integers(0, 10, size=count).astype(np.uint8)
        images = class_images(labels, size, seed=seed + count)
        write_idx(folder / f"{split}-images-idx3-ubyte", images, compress)
        write_idx(folder / f"{split}-labels-idx1-ubyte", labels, compress)
        written[split] = (images, labels)
    return written
