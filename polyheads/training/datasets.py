"""Data sets of seed 000 from local files, split by the protocol of App. E.2.

Nothing is downloaded, ever. Where each data set is read from:

* ``fashion_mnist`` -- the bundled default: the Debian package ``dataset-fashion-mnist``
  (``/usr/share/datasets/fashion-mnist/``), or ``data_root`` holding the four IDX files flat or in
  torchvision's layout (``ROOT/FashionMNIST/raw/``).
* ``mnist`` -- the four IDX files in ``data_root`` (flat or ``ROOT/MNIST/raw/``, torchvision's layout).
* ``cifar10`` / ``cifar100`` -- the "python version" archives extracted into ``data_root``
  (``ROOT/cifar-10-batches-py/`` or ``ROOT/cifar-100-python/``, torchvision's layout). They are
  read directly (torchvision's classes refuse files whose MD5 differs, which rules out tests on
  small files).
* ``cars196``, ``cub200``, ``sop``, ``folder`` -- ImageFolder layout: ``ROOT/<class>/<image>``
  (one pool, split into class halves for the open-set protocol), or ``ROOT/train/<class>/...`` and
  ``ROOT/test/<class>/...`` when the split is given (SOP's official 11 318 / 11 316 classes).
  CUB-200-2011's ``images/`` folder is already in this layout.
* ``digits`` -- scikit-learn's 8 x 8 digits (tiny, for tests).

:func:`build_data` applies the protocol: fixed-set -- a stratified 15 % of the training images
validates, the official test split tests (an image folder without ``train/`` + ``test/`` gives a
stratified 20 % of its images to the test split); open-set -- the first half of the classes trains
(minus 15 % of those classes, which validate), the second half tests.
"""
from __future__ import annotations

import os
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .data import FASHION_MNIST_DIR, load_digits_images, load_idx_dataset
from .splits import class_halves, class_split, remap_labels, stratified_split, stratified_subset
from .transforms import CIFAR100_MEAN, CIFAR100_STD, CIFAR10_MEAN, CIFAR10_STD, build_transforms

__all__ = ["DatasetSpec", "DATASETS", "TensorImageDataset", "LabeledSubset", "DataBundle", "build_data",
           "load_pool", "load_cifar", "dataset_labels", "collate_batched"]


@dataclass(frozen=True)
class DatasetSpec:
    """What seed 000 App. E.1-E.2 fixes per data set (N x K, protocol, input, augmentation preset)."""

    name: str
    protocol: str
    batch_classes: int
    batch_instances: int
    augmentation: str
    image_size: int
    in_chans: int
    episodes_per_epoch: int  # the authors' released configuration


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec("mnist", "fixed", 10, 13, "none", 28, 1, 250),
    "fashion_mnist": DatasetSpec("fashion_mnist", "fixed", 10, 13, "none", 28, 1, 250),
    "cifar10": DatasetSpec("cifar10", "fixed", 10, 26, "cifar", 32, 3, 250),
    "cifar100": DatasetSpec("cifar100", "fixed", 32, 8, "cifar", 32, 3, 250),
    "cars196": DatasetSpec("cars196", "open", 32, 4, "cars196", 224, 3, 100),
    "cub200": DatasetSpec("cub200", "open", 32, 4, "cub200", 224, 3, 100),
    "sop": DatasetSpec("sop", "open", 32, 2, "sop", 224, 3, 500),
    "folder": DatasetSpec("folder", "open", 32, 4, "sop", 224, 3, 100),
    "digits": DatasetSpec("digits", "fixed", 10, 4, "none", 8, 1, 30),
}


# ---------------------------------------------------------------------------------------------
# data set classes
# ---------------------------------------------------------------------------------------------
class TensorImageDataset(Dataset):
    """Images held in memory: ``images`` [N, C, H, W] (uint8 0-255 or float in [0, 1]), ``labels`` [N].

    ``transform`` acts on one float image [C, H, W] in [0, 1]; with ``batched=True`` it is applied
    to whole batches instead (deterministic transforms such as ``Normalize``), which the
    ``DataLoader`` uses through ``__getitems__`` -- no per-image Python work for MNIST-style data.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Callable | None = None, *, batched: bool = False) -> None:
        if not isinstance(images, torch.Tensor) or images.ndim != 4:
            raise ValueError(f"images must be a tensor [N, C, H, W], got {getattr(images, 'shape', type(images))}")
        labels = torch.as_tensor(labels, dtype=torch.int64)
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must have shape [{images.shape[0]}], got {list(labels.shape)}")
        self.images, self.labels, self.transform, self.batched = images, labels, transform, batched

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def _float(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self._float(self.images[index])
        if self.transform is not None:
            x = self.transform(x.unsqueeze(0)).squeeze(0) if self.batched else self.transform(x)
        return x, self.labels[index]

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(indices, dtype=torch.int64)
        x = self._float(self.images[index])
        if self.transform is not None:
            x = self.transform(x) if self.batched else torch.stack([self.transform(img) for img in x])
        return x, self.labels[index]

    def with_transform(self, transform: Callable | None, *, batched: bool = False) -> "TensorImageDataset":
        """The same images and labels with another transform (no copy)."""
        return TensorImageDataset(self.images, self.labels, transform, batched=batched)

    def subset(self, indices: np.ndarray | Sequence[int], labels: np.ndarray | None = None) -> "TensorImageDataset":
        """The items at ``indices`` (optionally relabelled), sharing this set's transform."""
        index = torch.as_tensor(np.asarray(indices), dtype=torch.int64)
        new_labels = self.labels[index] if labels is None else torch.as_tensor(labels, dtype=torch.int64)
        return TensorImageDataset(self.images[index], new_labels, self.transform, batched=self.batched)

    @property
    def targets(self) -> np.ndarray:
        return self.labels.numpy()


class LabeledSubset(Dataset):
    """Items ``indices`` of a (PIL-image) data set with new labels and its own transform."""

    def __init__(self, base: Any, indices: np.ndarray, labels: np.ndarray, transform: Callable | None) -> None:
        if len(indices) != len(labels):
            raise ValueError(f"{len(indices)} indices but {len(labels)} labels")
        self.base, self.indices = base, np.asarray(indices, dtype=np.int64)
        self.labels, self.transform = np.asarray(labels, dtype=np.int64), transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path = self.base.samples[int(self.indices[index])][0]
        image = self.base.loader(path)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])

    def with_transform(self, transform: Callable | None, **_: Any) -> "LabeledSubset":
        return LabeledSubset(self.base, self.indices, self.labels, transform)

    def subset(self, indices: np.ndarray | Sequence[int], labels: np.ndarray | None = None) -> "LabeledSubset":
        indices = np.asarray(indices, dtype=np.int64)
        new_labels = self.labels[indices] if labels is None else np.asarray(labels, dtype=np.int64)
        return LabeledSubset(self.base, self.indices[indices], new_labels, self.transform)

    @property
    def targets(self) -> np.ndarray:
        return self.labels


def dataset_labels(dataset: Any) -> np.ndarray:
    """The labels of a data set as an int64 numpy array (``targets`` attribute or one pass)."""
    targets = getattr(dataset, "targets", None)
    if targets is None:
        targets = [int(dataset[i][1]) for i in range(len(dataset))]
    return np.asarray(targets.cpu() if isinstance(targets, torch.Tensor) else targets, dtype=np.int64)


def collate_batched(batch: Any) -> Any:
    """``collate_fn`` for data sets with ``__getitems__`` that already return ``(images, labels)``
    batches; anything else goes through torch's default collation."""
    if isinstance(batch, tuple) and len(batch) == 2 and all(isinstance(t, torch.Tensor) for t in batch):
        return batch
    return torch.utils.data.default_collate(batch)


# ---------------------------------------------------------------------------------------------
# readers of the raw pools
# ---------------------------------------------------------------------------------------------
def _missing(name: str, root: Path, layout: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"{name} not found under {root}. Expected {layout}. polyheads never downloads data: put the files "
        "there (or point data_root=... at the folder that holds them)."
    )


def load_cifar(root: str | os.PathLike, num_classes: int = 10) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """CIFAR-10/100 "python version" from ``root`` (torchvision's layout): ``{"train": (images
    uint8 [N, 3, 32, 32], labels), "test": ...}``."""
    root = Path(root)
    if num_classes == 10:
        folder, files = "cifar-10-batches-py", {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
        key = "labels"
    elif num_classes == 100:
        folder, files, key = "cifar-100-python", {"train": ["train"], "test": ["test"]}, "fine_labels"
    else:
        raise ValueError(f"num_classes must be 10 or 100 for CIFAR, got {num_classes}")
    base = root / folder if (root / folder).is_dir() else root
    out = {}
    for split, names in files.items():
        images, labels = [], []
        for name in names:
            path = base / name
            if not path.is_file():
                raise _missing(f"CIFAR-{num_classes}", root,
                               f"{root / folder}/{{{', '.join(n for ns in files.values() for n in ns)}}} -- the "
                               f"extracted 'CIFAR-{num_classes} python version' archive from https://www.cs.toronto.edu/~kriz/cifar.html")
            with open(path, "rb") as fh:
                entry = pickle.load(fh, encoding="latin1")
            images.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.append(np.asarray(entry[key], dtype=np.int64))
        out[split] = (torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)))
    return out


def _idx_pool(name: str, root: str | None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    subdir = "FashionMNIST" if name == "fashion_mnist" else "MNIST"
    if root is None:
        if name != "fashion_mnist":
            raise ValueError(f"dataset {name!r} needs data_root=<folder with the IDX files> (nothing is downloaded)")
        root = str(FASHION_MNIST_DIR)
    out = {}
    for split in ("train", "test"):
        images, labels = load_idx_dataset(root, split, subdir=subdir)
        out[split] = (images.unsqueeze(1), labels)
    return out


def _image_folder(root: Path) -> Any:
    from torchvision.datasets import ImageFolder

    try:
        return ImageFolder(str(root))
    except (FileNotFoundError, RuntimeError) as exc:
        raise _missing("image folder", root, "ROOT/<class name>/<image files> (ImageFolder layout), or ROOT/train/... "
                       f"and ROOT/test/... ({exc})") from None


def load_pool(name: str, root: str | None) -> dict[str, Any]:
    """The raw data of data set ``name``: ``{"train": ..., "test": ...}`` (fixed) or ``{"all": ...}``
    (one image-folder pool). Tensor pools are ``(images, labels)``; folder pools ImageFolder objects."""
    if name in ("fashion_mnist", "mnist"):
        return _idx_pool(name, root)
    if name in ("cifar10", "cifar100"):
        if root is None:
            raise ValueError(f"dataset {name!r} needs data_root=<folder with the extracted python archive> "
                             "(nothing is downloaded)")
        return load_cifar(root, 10 if name == "cifar10" else 100)
    if name == "digits":
        images, labels = load_digits_images()
        test = stratified_subset(labels.numpy(), int(round(0.2 * len(labels))), seed=0)
        train = np.setdiff1d(np.arange(len(labels)), test)
        return {"train": (images[train], labels[train]), "test": (images[test], labels[test])}
    if root is None:
        raise ValueError(f"dataset {name!r} needs data_root=<image folder> (nothing is downloaded)")
    base = Path(root)
    if not base.is_dir():
        raise _missing(name, base, "an image folder ROOT/<class>/<images> or ROOT/train + ROOT/test")
    if (base / "train").is_dir() and (base / "test").is_dir():
        return {"train": _image_folder(base / "train"), "test": _image_folder(base / "test")}
    return {"all": _image_folder(base)}


# ---------------------------------------------------------------------------------------------
# the protocol
# ---------------------------------------------------------------------------------------------
@dataclass
class DataBundle:
    """Everything the trainer needs from the data: the splits with their transforms, and facts."""

    train: Dataset            # augmented
    train_eval: Dataset       # the same items without augmentation (head.init_from_data)
    val: Dataset
    test: Dataset | None
    train_labels: np.ndarray
    num_classes: int          # training classes (the head's K)
    protocol: str
    in_chans: int
    spec: DatasetSpec
    info: dict[str, Any] = field(default_factory=dict)


def _labels_of(pool: Any, names: Sequence[str] | None = None) -> np.ndarray:
    """Labels of a raw pool; for an image folder optionally as indices into another folder's
    class ``names`` (so that train/ and test/ folders agree by class name)."""
    if isinstance(pool, tuple):
        return pool[1].numpy()
    labels = np.asarray(pool.targets, dtype=np.int64)
    if names is None or list(pool.classes) == list(names):
        return labels
    position = {name: i for i, name in enumerate(names)}
    offset = len(names)
    mapping = []
    for name in pool.classes:  # classes absent from ``names`` get fresh ids after them
        if name not in position:
            position[name] = offset
            offset += 1
        mapping.append(position[name])
    return np.asarray(mapping, dtype=np.int64)[labels]


def _make(pool: Any, indices: np.ndarray, labels: np.ndarray, transform: Callable | None, batched: bool) -> Dataset:
    if isinstance(pool, tuple):
        return TensorImageDataset(pool[0][torch.as_tensor(indices)], torch.as_tensor(labels), transform, batched=batched)
    return LabeledSubset(pool, indices, labels, transform)


def build_data(config: Any) -> DataBundle:
    """Load ``config.dataset`` and split it by ``config.protocol`` (seed 000 App. E.2).

    ``config`` is a :class:`polyheads.training.TrainConfig` (or anything with its data fields).
    Labels of every split are renumbered ``0 .. C-1``; the training split's classes are the head's.
    """
    spec = DATASETS[config.dataset]
    protocol = config.protocol or spec.protocol
    pool = load_pool(config.dataset, config.data_root)
    mean_std: dict[str, Any] = {}
    if config.dataset == "cifar100":
        mean_std = {"mean": CIFAR100_MEAN, "std": CIFAR100_STD}
    elif config.dataset == "cifar10":
        mean_std = {"mean": CIFAR10_MEAN, "std": CIFAR10_STD}
    train_tf, eval_tf = build_transforms(spec.augmentation, image_size=config.image_size, augment=config.augment, **mean_std)
    tensor_data = isinstance(next(iter(pool.values())), tuple)
    # tensor data: the eval transform (Normalize or nothing) runs on whole batches
    train_batched = tensor_data and (train_tf is None or train_tf is eval_tf)

    if "all" in pool:  # one pool of classes: class halves (open) or a stratified test split (fixed)
        everything = pool["all"]
        labels_all = _labels_of(everything)
        if protocol == "open":
            train_idx, test_idx = class_halves(labels_all)
        else:
            train_idx, test_idx = stratified_split(labels_all, 0.2, config.split_seed)
        train_pool_idx, test_pool_idx = train_idx, test_idx
        train_src = test_src = everything
    else:
        train_src, test_src = pool["train"], pool["test"]
        train_pool_idx = np.arange(len(_labels_of(train_src)))
        test_pool_idx = np.arange(len(_labels_of(test_src)))
        if protocol == "open" and isinstance(train_src, tuple):
            # open-set on a fixed-split data set: first half of the classes from train, second half from test
            train_labels_all, test_labels_all = _labels_of(train_src), _labels_of(test_src)
            classes = np.unique(np.concatenate([train_labels_all, test_labels_all]))
            first = classes[: (len(classes) + 1) // 2]
            train_pool_idx = np.flatnonzero(np.isin(train_labels_all, first))
            test_pool_idx = np.flatnonzero(~np.isin(test_labels_all, first))

    train_labels_raw = _labels_of(train_src)[train_pool_idx]
    if config.train_subset is not None and config.train_subset < len(train_pool_idx):
        keep = stratified_subset(train_labels_raw, config.train_subset, config.split_seed)
        train_pool_idx, train_labels_raw = train_pool_idx[keep], train_labels_raw[keep]
    if protocol == "open":
        fit, val = class_split(train_labels_raw, config.val_fraction, config.split_seed)
        if len(np.unique(train_labels_raw[val])) < 2:
            raise ValueError(
                f"{config.dataset}: open-set validation gets {len(np.unique(train_labels_raw[val]))} class "
                f"(val_fraction={config.val_fraction} of {len(np.unique(train_labels_raw))} training classes); "
                "retrieval needs at least 2 -- raise val_fraction or use more classes"
            )
    else:
        fit, val = stratified_split(train_labels_raw, config.val_fraction, config.split_seed)
    fit_labels, classes = remap_labels(train_labels_raw[fit])
    if protocol == "open":
        val_labels, _ = remap_labels(train_labels_raw[val])
    else:
        val_labels = np.searchsorted(classes, train_labels_raw[val])
    test_labels_raw = _labels_of(test_src, getattr(train_src, "classes", None))[test_pool_idx]
    if config.test_subset is not None and config.test_subset < len(test_pool_idx):
        keep = stratified_subset(test_labels_raw, config.test_subset, config.split_seed)
        test_pool_idx, test_labels_raw = test_pool_idx[keep], test_labels_raw[keep]
    if protocol == "open":
        test_labels, _ = remap_labels(test_labels_raw)
    else:
        unknown = np.setdiff1d(np.unique(test_labels_raw), classes)
        if len(unknown):
            raise ValueError(f"{config.dataset}: test classes {unknown[:10].tolist()} never occur in training")
        test_labels = np.searchsorted(classes, test_labels_raw)

    fit_idx, val_idx = train_pool_idx[fit], train_pool_idx[val]
    train = _make(train_src, fit_idx, fit_labels, train_tf if not train_batched else eval_tf, train_batched)
    train_eval = train.with_transform(eval_tf, batched=tensor_data)  # the same images, no copy
    val_set = _make(train_src, val_idx, val_labels, eval_tf, tensor_data)
    test = _make(test_src, test_pool_idx, test_labels, eval_tf, tensor_data) if len(test_pool_idx) else None
    if protocol == "fixed" and len(classes) < 2:
        raise ValueError(f"{config.dataset}: the training split has {len(classes)} class(es); need >= 2")
    too_small = np.bincount(fit_labels).min()
    if too_small < 2:
        warnings.warn(f"{config.dataset}: some training class has only {too_small} image(s)", RuntimeWarning, stacklevel=2)
    sample = train_eval[0][0]
    info = {
        "train": len(fit_idx), "val": len(val_idx), "test": len(test_pool_idx),
        "train_classes": int(len(classes)), "val_classes": int(len(np.unique(val_labels))),
        "test_classes": int(len(np.unique(test_labels))) if len(test_labels) else 0,
        "input_shape": list(sample.shape),
    }
    return DataBundle(train=train, train_eval=train_eval, val=val_set, test=test, train_labels=fit_labels,
                      num_classes=int(len(classes)), protocol=protocol, in_chans=int(sample.shape[0]), spec=spec, info=info)
