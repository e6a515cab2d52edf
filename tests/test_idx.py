"""The IDX reader (issue 3, item 7): files the test writes, both torchvision's layout and flat folders,
and the bundled Fashion-MNIST itself."""
import gzip
import struct

import numpy as np
import pytest
import torch

from polyheads.training.data import (
    FASHION_MNIST_DIR,
    load_digits_images,
    load_fashion_mnist,
    load_idx_dataset,
    read_idx,
    write_idx,
)


def raw_idx_bytes(array: np.ndarray, code: int) -> bytes:
    """IDX bytes built by hand from the format description, independent of write_idx."""
    header = bytes([0, 0, code, array.ndim]) + b"".join(struct.pack(">I", n) for n in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


@pytest.mark.parametrize("dtype,code", [(np.uint8, 0x08), (np.int8, 0x09), (np.int16, 0x0B), (np.int32, 0x0C),
                                        (np.float32, 0x0D), (np.float64, 0x0E)])
@pytest.mark.parametrize("compressed", [False, True])
def test_read_idx_hand_written(tmp_path, rng, dtype, code, compressed):
    array = (rng.standard_normal((3, 4, 5)) * 50).astype(dtype)
    path = tmp_path / ("a.idx.gz" if compressed else "a.idx")
    payload = raw_idx_bytes(array, code)
    path.write_bytes(gzip.compress(payload) if compressed else payload)
    out = read_idx(path)
    assert out.dtype == np.dtype(dtype) and out.shape == array.shape
    np.testing.assert_array_equal(out, array)


def test_write_then_read_round_trip(tmp_path, rng):
    array = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    for name in ("x-idx3-ubyte", "x-idx3-ubyte.gz"):
        np.testing.assert_array_equal(read_idx(write_idx(tmp_path / name, array)), array)
    assert (tmp_path / "x-idx3-ubyte").read_bytes() == raw_idx_bytes(array, 0x08)


def test_read_idx_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "missing")
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01\x00\x00\x00\x01\x00")
    with pytest.raises(ValueError, match="magic"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(raw_idx_bytes(np.zeros((4, 2), np.uint8), 0x08)[:-3])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "short")
    (tmp_path / "code").write_bytes(bytes([0, 0, 0x07, 1, 0, 0, 0, 1, 0]))
    with pytest.raises(ValueError, match="type code"):
        read_idx(tmp_path / "code")


def write_split(folder, split, n, rng):
    folder.mkdir(parents=True, exist_ok=True)
    stem = "train" if split == "train" else "t10k"
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    write_idx(folder / f"{stem}-images-idx3-ubyte.gz", images)
    write_idx(folder / f"{stem}-labels-idx1-ubyte.gz", labels)
    return images, labels


@pytest.mark.parametrize("layout", ["flat", "torchvision"])
def test_load_idx_dataset_layouts(tmp_path, rng, layout):
    folder = tmp_path if layout == "flat" else tmp_path / "FashionMNIST" / "raw"
    images, labels = write_split(folder, "test", 11, rng)
    x, y = load_fashion_mnist("test", root=tmp_path)
    assert x.dtype == torch.uint8 and y.dtype == torch.int64
    np.testing.assert_array_equal(x.numpy(), images)
    np.testing.assert_array_equal(y.numpy(), labels)


def test_missing_files_say_where_to_put_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_idx_dataset(tmp_path, "train")
    with pytest.raises(ValueError, match="split"):
        load_idx_dataset(tmp_path, "validation")


def test_mismatched_counts_are_an_error(tmp_path, rng):
    write_idx(tmp_path / "train-images-idx3-ubyte", rng.integers(0, 256, (5, 28, 28), dtype=np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(4, np.uint8))
    with pytest.raises(ValueError, match="expected images"):
        load_idx_dataset(tmp_path, "train")


def test_bundled_fashion_mnist_is_the_full_official_split():
    assert FASHION_MNIST_DIR.is_dir(), "install the Debian package dataset-fashion-mnist (make data)"
    x_train, y_train = load_fashion_mnist("train")
    x_test, y_test = load_fashion_mnist("test")
    assert x_train.shape == (60000, 28, 28) and x_test.shape == (10000, 28, 28)
    # the official split is balanced: 6 000 / 1 000 images per class
    assert torch.bincount(y_train).tolist() == [6000] * 10
    assert torch.bincount(y_test).tolist() == [1000] * 10


def test_digits_fallback():
    x, y = load_digits_images()
    assert x.shape == (1797, 1, 8, 8) and float(x.max()) == 1.0 and float(x.min()) == 0.0
    assert sorted(torch.unique(y).tolist()) == list(range(10))
