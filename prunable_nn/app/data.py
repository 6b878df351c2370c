"""Small image data sets for the demo and the tests, read without torchvision's downloads.

Fashion-MNIST (and MNIST, which shares its format) comes as four IDX files::

    train-images-idx3-ubyte   train-labels-idx1-ubyte   (60000 examples)
    t10k-images-idx3-ubyte    t10k-labels-idx1-ubyte    (10000 examples)

each either plain or gzip-compressed (``.gz``; recognised by content, not by name). An IDX
file is a big-endian header followed by the raw array in C order::

    bytes 0-1   0x00 0x00
    byte  2     element type: 0x08 = unsigned byte (the only type these data sets use)
    byte  3     number of dimensions d (3 for images, 1 for labels)
    4 * d       the size of each dimension, unsigned 32-bit big-endian
    ...         prod(sizes) bytes of data

so the magic number (the first four bytes) is ``0x00000803`` for images and ``0x00000801``
for labels. The files are looked for in ``root`` itself (Debian's flat layout, the default
``/usr/share/datasets/fashion-mnist`` of the package ``dataset-fashion-mnist``) and in
torchvision's layout ``root/FashionMNIST/raw`` (or ``root/MNIST/raw``).

Every loader returns a :class:`torch.utils.data.TensorDataset` of ``(images, labels)``:
images ``float32`` of shape ``(N, 1, H, W)``, scaled to ``[0, 1]`` and then normalised with
the data set's mean and standard deviation; labels ``int64`` of shape ``(N,)``.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

DEFAULT_FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")

#: Mean and standard deviation of the Fashion-MNIST training pixels scaled to [0, 1].
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530
#: The same for MNIST.
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
#: The same for scikit-learn's 8x8 digits scaled to [0, 1] (pixels 0..16 divided by 16).
DIGITS_MEAN, DIGITS_STD = 0.3053, 0.3760

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
_UBYTE = 0x08
_GZIP_MAGIC = b"\x1f\x8b"

_FASHION_MNIST_HINT = (
    "install Debian's package with `apt-get install dataset-fashion-mnist` "
    f"(it puts the files in {DEFAULT_FASHION_MNIST_ROOT}), or pass root (--data DIR on the "
    "command line) naming a folder that holds them, directly or as torchvision's "
    "FashionMNIST/raw or MNIST/raw"
)
_MNIST_HINT = "pass root naming a folder that holds the MNIST IDX files, directly or as torchvision's MNIST/raw"


def read_idx(path: str | Path, expected_magic: int | None = None) -> np.ndarray:
    """Read one IDX file of unsigned bytes, plain or gzip-compressed, as a ``uint8`` array.

    Raises ``ValueError`` naming the file when the header is malformed, the magic number is
    not ``expected_magic``, or the data is shorter or longer than the header says.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise ValueError(f"{path}: not an IDX file (only {len(raw)} bytes)")
    magic = int.from_bytes(raw[:4], "big")
    zeros, dtype, ndim = raw[:2], raw[2], raw[3]
    if zeros != b"\x00\x00" or dtype != _UBYTE or ndim == 0:
        raise ValueError(
            f"{path}: bad IDX magic number 0x{magic:08x} (expected 0x000008NN: two zero bytes, "
            "0x08 for unsigned bytes, then the number of dimensions); is it an IDX file?"
        )
    if expected_magic is not None and magic != expected_magic:
        raise ValueError(f"{path}: IDX magic number is 0x{magic:08x}, expected 0x{expected_magic:08x}")
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise ValueError(f"{path}: IDX header truncated ({len(raw)} bytes, {ndim} dimensions need {header_size})")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape, dtype=np.int64))
    actual = len(raw) - header_size
    if actual != expected:
        raise ValueError(f"{path}: IDX header says shape {shape} ({expected} bytes of data), file has {actual}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(shape)


def fashion_mnist(train: bool = True, root: str | Path | None = None) -> TensorDataset:
    """Fashion-MNIST's training (60000) or test (10000) set as ``(N, 1, 28, 28)`` images.

    ``root`` defaults to ``/usr/share/datasets/fashion-mnist`` (Debian's
    ``dataset-fashion-mnist``); torchvision's ``root/FashionMNIST/raw`` and ``root/MNIST/raw``
    are searched too. Images are normalised with mean 0.2860 and std 0.3530.
    """
    root = DEFAULT_FASHION_MNIST_ROOT if root is None else Path(root)
    subfolders = ("", "FashionMNIST/raw", "MNIST/raw")
    return load_idx_dataset(root, train, subfolders, FASHION_MNIST_MEAN, FASHION_MNIST_STD, _FASHION_MNIST_HINT)


def mnist(train: bool = True, root: str | Path = ".") -> TensorDataset:
    """MNIST from ``root`` or torchvision's ``root/MNIST/raw``, normalised with 0.1307, 0.3081."""
    return load_idx_dataset(Path(root), train, ("", "MNIST/raw"), MNIST_MEAN, MNIST_STD, _MNIST_HINT)


def load_idx_dataset(
    root: str | Path,
    train: bool,
    subfolders: tuple[str, ...] = ("",),
    mean: float = 0.0,
    std: float = 1.0,
    hint: str = "pass root naming the folder that holds them",
) -> TensorDataset:
    """Images and labels of an MNIST-style IDX data set found under ``root``.

    ``subfolders`` are searched in order ("" is ``root`` itself); the first that holds the
    images file must hold the labels file too. Image and label counts must agree. A missing
    file raises ``FileNotFoundError`` naming where it was looked for, followed by ``hint``.
    """
    root = Path(root)
    split = "train" if train else "t10k"
    images_path = _find_file(root, [root / sub for sub in subfolders], f"{split}-images-idx3-ubyte", hint)
    labels_path = _find_file(root, [images_path.parent], f"{split}-labels-idx1-ubyte", hint)
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if len(images) != len(labels):
        raise ValueError(f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels")
    return _as_dataset(images.astype(np.float32) / 255.0, labels, mean, std)


def digits(train: bool = True) -> TensorDataset:
    """scikit-learn's 8x8 handwritten digits, a tiny fixture: ``(N, 1, 8, 8)`` images.

    A fixed split of the 1797 examples: a seeded permutation (seed 0) gives the first 1438
    (80 %) to the training set and the other 359 to the test set, the same on every call.
    Pixels (0..16) are divided by 16 and normalised with mean 0.3053 and std 0.3760.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    order = np.random.RandomState(0).permutation(len(bunch.target))
    cut = int(round(0.8 * len(order)))
    chosen = order[:cut] if train else order[cut:]
    images = bunch.images[chosen].astype(np.float32) / 16.0
    return _as_dataset(images, bunch.target[chosen], DIGITS_MEAN, DIGITS_STD)


def _as_dataset(images: np.ndarray, labels: np.ndarray, mean: float, std: float) -> TensorDataset:
    pixels = (torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)) - mean) / std
    return TensorDataset(pixels.unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))


def _read_bytes(path: Path) -> bytes:
    with open(path, "rb") as file:
        compressed = file.read(2) == _GZIP_MAGIC
    opener = gzip.open if compressed else open
    try:
        with opener(path, "rb") as file:
            return file.read()
    except (OSError, EOFError) as error:  # a corrupt or truncated gzip stream
        raise ValueError(f"{path}: cannot decompress: {error}") from error


def _find_file(root: Path, folders: list[Path], stem: str, hint: str) -> Path:
    candidates = [folder / name for folder in folders for name in (stem, stem + ".gz")]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist: {hint}")
    looked = ", ".join(str(candidate) for candidate in candidates)
    raise FileNotFoundError(f"{stem}[.gz] not found (looked for {looked}): {hint}")
