"""prunable_nn.app.data: the IDX reader, the folder layouts, the errors, and the digits fixture."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from idx_files import IMAGES_MAGIC, LABELS_MAGIC, idx_bytes, write_dataset, write_idx
from prunable_nn.app import data

LAYOUTS = {"debian": "", "torchvision": "FashionMNIST/raw", "torchvision-mnist": "MNIST/raw"}


def expected_pixels(images: np.ndarray) -> torch.Tensor:
    scaled = torch.from_numpy(images.astype(np.float32) / 255.0)
    return ((scaled - data.FASHION_MNIST_MEAN) / data.FASHION_MNIST_STD).unsqueeze(1)


@pytest.mark.parametrize("compress", [True, False], ids=["gz", "raw"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("train", [True, False], ids=["train", "test"])
def test_fashion_mnist_reads_every_layout(tmp_path, layout, compress, train):
    written = write_dataset(tmp_path / LAYOUTS[layout], train_size=7, test_size=5, compress=compress)
    images, labels = written["train" if train else "t10k"]

    dataset = data.fashion_mnist(train=train, root=tmp_path)

    pixels, targets = dataset.tensors
    assert pixels.dtype == torch.float32 and pixels.shape == (len(labels), 1, 28, 28)
    assert targets.dtype == torch.int64 and targets.tolist() == labels.tolist()
    torch.testing.assert_close(pixels, expected_pixels(images))
    assert len(dataset) == len(labels)


def test_root_accepts_str_and_prefers_the_flat_layout(tmp_path):
    flat = write_dataset(tmp_path, train_size=3, seed=1)
    write_dataset(tmp_path / "FashionMNIST" / "raw", train_size=4, seed=2)
    dataset = data.fashion_mnist(root=str(tmp_path))
    assert dataset.tensors[1].tolist() == flat["train"][1].tolist()


def test_plain_file_is_read_before_its_gz_twin(tmp_path):
    labels = np.arange(10, dtype=np.uint8)
    write_idx(tmp_path / "l", labels, compress=False)
    write_idx(tmp_path / "l", labels[::-1], compress=True)
    assert data.read_idx(tmp_path / "l").tolist() == labels.tolist()
    assert data.read_idx(tmp_path / "l.gz").tolist() == labels[::-1].tolist()


def test_gzip_is_recognised_by_content_not_name(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "images-without-suffix"
    path.write_bytes(gzip.compress(idx_bytes(array)))
    np.testing.assert_array_equal(data.read_idx(path, IMAGES_MAGIC), array)


def test_mnist_reads_torchvision_layout_with_its_own_statistics(tmp_path):
    written = write_dataset(tmp_path / "MNIST" / "raw", train_size=4, test_size=2)
    pixels, _ = data.mnist(train=False, root=tmp_path).tensors
    scaled = torch.from_numpy(written["t10k"][0].astype(np.float32) / 255.0).unsqueeze(1)
    torch.testing.assert_close(pixels, (scaled - data.MNIST_MEAN) / data.MNIST_STD)


@pytest.mark.parametrize(
    "payload, message",
    [
        (LABELS_MAGIC.to_bytes(4, "big") + (3).to_bytes(4, "big") + bytes(3), "magic number is 0x00000801, expected 0x00000803"),
        (b"\x00\x00\x0d\x03" + bytes(12), "bad IDX magic number 0x00000d03"),
        (b"GIF89a" + bytes(20), "bad IDX magic number"),
        (b"\x00\x00", "not an IDX file"),
        (IMAGES_MAGIC.to_bytes(4, "big") + bytes(5), "header truncated"),
        (idx_bytes(np.zeros((2, 28, 28), np.uint8))[:-1], "(2, 28, 28)"),
        (idx_bytes(np.zeros((2, 28, 28), np.uint8)) + b"\x00", "file has 1569"),
    ],
    ids=["labels-magic", "wrong-type", "not-idx", "too-short", "truncated-header", "truncated-data", "trailing-data"],
)
def test_bad_images_file_raises_naming_it(tmp_path, payload, message):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(payload)
    with pytest.raises(ValueError, match="train-images-idx3-ubyte") as error:
        data.read_idx(path, IMAGES_MAGIC)
    assert message in str(error.value)


def test_corrupt_gzip_raises_value_error(tmp_path):
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.arange(100, dtype=np.uint8)))[:30])
    with pytest.raises(ValueError, match="cannot decompress"):
        data.read_idx(path)


def test_labels_with_images_magic_are_rejected(tmp_path):
    write_dataset(tmp_path, train_size=3)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(3, np.uint8), compress=True, magic=IMAGES_MAGIC)
    with pytest.raises(ValueError, match="expected 0x00000801"):
        data.fashion_mnist(root=tmp_path)


def test_image_and_label_counts_must_agree(tmp_path):
    write_dataset(tmp_path, train_size=3)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(4, np.uint8), compress=True)
    with pytest.raises(ValueError, match="3 images but .* 4 labels"):
        data.fashion_mnist(root=tmp_path)


def test_missing_folder_says_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist") as error:
        data.fashion_mnist(root=tmp_path / "nowhere")
    assert "apt-get install dataset-fashion-mnist" in str(error.value)


def test_missing_files_say_where_they_were_looked_for(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        data.fashion_mnist(train=False, root=tmp_path)
    message = str(error.value)
    assert "t10k-images-idx3-ubyte" in message
    assert str(tmp_path / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte.gz") in message
    assert "apt-get install dataset-fashion-mnist" in message and "root" in message


def test_missing_labels_next_to_the_images(tmp_path):
    write_dataset(tmp_path / "FashionMNIST" / "raw", train_size=3)
    (tmp_path / "FashionMNIST" / "raw" / "train-labels-idx1-ubyte.gz").unlink()
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(3, np.uint8))  # elsewhere: not used
    with pytest.raises(FileNotFoundError, match="train-labels-idx1-ubyte"):
        data.fashion_mnist(root=tmp_path)


def test_mnist_hint_does_not_mention_fashion(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        data.mnist(root=tmp_path)
    assert "fashion" not in str(error.value).lower()


@pytest.mark.skipif(
    not (data.DEFAULT_FASHION_MNIST_ROOT / "train-images-idx3-ubyte.gz").exists(),
    reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)",
)
def test_real_fashion_mnist():
    train, test = data.fashion_mnist(train=True), data.fashion_mnist(train=False)
    assert train.tensors[0].shape == (60000, 1, 28, 28)
    assert test.tensors[0].shape == (10000, 1, 28, 28)
    for dataset in (train, test):
        labels = dataset.tensors[1]
        assert labels.dtype == torch.int64 and labels.min() == 0 and labels.max() == 9
        assert torch.bincount(labels).tolist() == [len(labels) // 10] * 10
    pixels = train.tensors[0]
    assert abs(pixels.mean().item()) < 1e-3 and abs(pixels.std().item() - 1) < 1e-3


def test_digits_fixture_shapes_and_values():
    train, test = data.digits(train=True), data.digits(train=False)
    assert train.tensors[0].shape == (1438, 1, 8, 8) and test.tensors[0].shape == (359, 1, 8, 8)
    for dataset in (train, test):
        images, labels = dataset.tensors
        assert images.dtype == torch.float32 and labels.dtype == torch.int64
        assert set(labels.tolist()) == set(range(10))
    pixels = torch.cat([train.tensors[0], test.tensors[0]])
    assert abs(pixels.mean().item()) < 1e-3 and abs(pixels.std().item() - 1) < 1e-2


def test_digits_split_is_fixed_and_disjoint():
    from sklearn.datasets import load_digits

    first, again = data.digits(train=True), data.digits(train=True)
    for a, b in zip(first.tensors, again.tensors):
        assert torch.equal(a, b)
    test = data.digits(train=False)
    raw = torch.from_numpy(load_digits().images.astype(np.float32) / 16.0)
    recovered = torch.cat([first.tensors[0], test.tensors[0]]).squeeze(1) * data.DIGITS_STD + data.DIGITS_MEAN
    # Every original image appears exactly once across the two splits.
    assert sorted(map(_key, recovered)) == sorted(map(_key, raw))


def _key(image: torch.Tensor) -> tuple[int, ...]:
    return tuple((image * 16).round().int().flatten().tolist())
