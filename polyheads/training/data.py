"""Data that is really here: the IDX reader and the bundled Fashion-MNIST (no download, ever).

Fashion-MNIST (the full official 60 000 / 10 000 split) ships in the Debian package
``dataset-fashion-mnist`` as the four original IDX ``.gz`` files in ``/usr/share/datasets/fashion-mnist/``;
polyheads reads them itself. Any folder holding the same files works too, flat or in torchvision's
layout (``ROOT/FashionMNIST/raw/``), as does MNIST in the same format. scikit-learn's ``load_digits``
(8 x 8, shipped inside scikit-learn) is the tiny fallback used by fast unit tests.
"""
from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._checks import check_choice

__all__ = [
    "read_idx",
    "write_idx",
    "load_idx_dataset",
    "load_fashion_mnist",
    "load_digits_images",
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_CLASSES",
]

#: where the Debian package ``dataset-fashion-mnist`` puts the files; override with POLYHEADS_FASHION_MNIST
FASHION_MNIST_DIR = Path(os.environ.get("POLYHEADS_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

# IDX type codes (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT")
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(np.int16): 0x0B,
              np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D, np.dtype(np.float64): 0x0E}


def _open(path: Path):
    with open(path, "rb") as fh:
        gzipped = fh.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gzipped else open(path, "rb")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a numpy array of its stored shape."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no IDX file at {path}")
    with _open(path) as fh:
        header = fh.read(4)
        if len(header) != 4 or header[0] != 0 or header[1] != 0:
            raise ValueError(f"{path} is not an IDX file (bad magic number {header!r})")
        code, ndim = header[2], header[3]
        if code not in _IDX_DTYPES:
            raise ValueError(f"{path}: unknown IDX data type code 0x{code:02x}")
        dims = struct.unpack(f">{ndim}I", fh.read(4 * ndim))
        dtype = np.dtype(_IDX_DTYPES[code])
        count = int(np.prod(dims, dtype=np.int64)) if ndim else 1
        data = fh.read(count * dtype.itemsize)
    if len(data) != count * dtype.itemsize:
        raise ValueError(f"{path}: truncated IDX file ({len(data)} of {count * dtype.itemsize} data bytes)")
    return np.frombuffer(data, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, array: np.ndarray, compress: bool | None = None) -> Path:
    """Write ``array`` as an IDX file (gzip-compressed when the name ends in ``.gz``)."""
    path = Path(path)
    array = np.asarray(array)
    if array.dtype not in _IDX_CODES:
        raise TypeError(f"array dtype {array.dtype} has no IDX type code; use one of {sorted(map(str, _IDX_CODES))}")
    compress = path.suffix == ".gz" if compress is None else compress
    big_endian = array.astype(array.dtype.newbyteorder(">"))
    payload = bytes([0, 0, _IDX_CODES[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload += big_endian.tobytes()
    opener = gzip.open if compress else open
    with opener(path, "wb") as fh:
        fh.write(payload)
    return path


_SPLIT_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _find(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


def load_idx_dataset(root: str | os.PathLike, split: str = "train", subdir: str = "FashionMNIST") -> tuple[torch.Tensor, torch.Tensor]:
    """Images [N, H, W] uint8 and labels [N] int64 from the MNIST-format IDX files under ``root``.

    ``root`` may hold the files directly or in torchvision's layout ``root/<subdir>/raw/``.
    """
    check_choice("split", split, tuple(_SPLIT_FILES))
    root = Path(root)
    candidates = [root, root / subdir / "raw", root / subdir]
    image_stem, label_stem = _SPLIT_FILES[split]
    for directory in candidates:
        images_path, labels_path = _find(directory, image_stem), _find(directory, label_stem)
        if images_path and labels_path:
            images, labels = read_idx(images_path), read_idx(labels_path)
            if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
                raise ValueError(
                    f"{directory}: expected images [N, H, W] and labels [N], got {images.shape} and {labels.shape}"
                )
            return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))
    raise FileNotFoundError(
        f"no {split} IDX files ({image_stem}[.gz], {label_stem}[.gz]) in any of {[str(c) for c in candidates]}. "
        "For the bundled Fashion-MNIST install the Debian package: apt-get install dataset-fashion-mnist "
        f"(files in {FASHION_MNIST_DIR}); or put the four IDX files in one of those folders. Nothing is downloaded."
    )


def load_fashion_mnist(split: str = "train", root: str | os.PathLike | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST images [N, 28, 28] uint8 and labels [N] int64 (60 000 train / 10 000 test)."""
    return load_idx_dataset(FASHION_MNIST_DIR if root is None else root, split, subdir="FashionMNIST")


def load_digits_images(**kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8 x 8 digits (1 797 images, 10 classes) as float images [N, 1, 8, 8] in [0, 1]
    and int64 labels: the tiny data set shipped inside scikit-learn, for fast tests."""
    from sklearn.datasets import load_digits

    digits = load_digits(**kwargs)
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return images, torch.tensor(digits.target, dtype=torch.int64)
