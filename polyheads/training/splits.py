"""Train / validation / test splits of seed 000 App. E.2 and §3.2.

* Fixed-set (MNIST, Fashion-MNIST, CIFAR): "The validation set is created by splitting off 15 % of
  the train data, stratified by class label" -- :func:`stratified_split`.
* Open-set (Cars196, CUB-200-2011, SOP): "The train set contains half of the classes and the test
  contains the other half. The validation set is created by splitting off 15 % of the train
  classes" -- :func:`class_halves` then :func:`class_split`. With 98 / 100 / 11 318 training
  classes this leaves the Y = 83 / 85 / 9 620 classes of App. E.1.

All functions return sorted numpy index arrays into the given labels and are deterministic given
``seed``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .._checks import check_float, check_int

__all__ = ["stratified_split", "stratified_subset", "class_halves", "class_split", "remap_labels"]


def _labels(labels: Sequence[int] | np.ndarray | torch.Tensor) -> np.ndarray:
    array = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D sequence, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"labels must be integers, got dtype {array.dtype}")
    return array


def _per_class_counts(counts: np.ndarray, total: int) -> np.ndarray:
    """Largest-remainder apportionment of ``total`` items over classes proportionally to ``counts``."""
    quota = counts * (total / counts.sum())
    take = np.floor(quota).astype(np.int64)
    remainder = total - int(take.sum())
    if remainder > 0:
        order = np.argsort(-(quota - take), kind="stable")
        take[order[:remainder]] += 1
    return np.minimum(take, counts)


def stratified_split(labels: Sequence[int] | np.ndarray | torch.Tensor, fraction: float = 0.15, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split off ``fraction`` of the items, stratified by class (seed 000 App. E.2): ``(train, val)``.

    The validation set has ``round(fraction * len(labels))`` items apportioned to classes by the
    largest-remainder rule, so every class's share is within one item of ``fraction`` of its size.
    """
    y = _labels(labels)
    fraction = check_float("fraction", fraction, minimum=0.0, maximum=1.0, min_inclusive=False, max_inclusive=False)
    seed = check_int("seed", seed, minimum=0)
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    n_val = _per_class_counts(counts, int(round(fraction * len(y))))
    rng = np.random.default_rng(seed)
    val = []
    for c in range(len(classes)):
        members = np.flatnonzero(inverse == c)
        val.append(rng.choice(members, size=int(n_val[c]), replace=False))
    val_idx = np.sort(np.concatenate(val))
    train_idx = np.setdiff1d(np.arange(len(y)), val_idx, assume_unique=True)
    return train_idx, val_idx


def stratified_subset(labels: Sequence[int] | np.ndarray | torch.Tensor, size: int, seed: int = 0) -> np.ndarray:
    """``size`` items drawn without replacement, stratified by class (quick runs on a subset)."""
    y = _labels(labels)
    size = check_int("size", size, minimum=1)
    if size >= len(y):
        return np.arange(len(y))
    _, val = stratified_split(y, size / len(y), seed)
    return val


def class_halves(labels: Sequence[int] | np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Open-set train/test split (seed 000 App. E.2): the first half of the sorted classes train,
    the second half test. Returns item indices ``(train, test)``; for an odd class count the
    training half gets the extra class."""
    y = _labels(labels)
    classes = np.unique(y)
    if len(classes) < 2:
        raise ValueError(f"an open-set split needs at least 2 classes, got {len(classes)}")
    train_classes = classes[: (len(classes) + 1) // 2]
    in_train = np.isin(y, train_classes)
    return np.flatnonzero(in_train), np.flatnonzero(~in_train)


def class_split(labels: Sequence[int] | np.ndarray | torch.Tensor, fraction: float = 0.15, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split off ``round(fraction * classes)`` whole classes, chosen at random (seed 000 App. E.2
    "15 % of the train classes"): item indices ``(train, val)`` with disjoint class sets."""
    y = _labels(labels)
    fraction = check_float("fraction", fraction, minimum=0.0, maximum=1.0, min_inclusive=False, max_inclusive=False)
    seed = check_int("seed", seed, minimum=0)
    classes = np.unique(y)
    n_val = int(round(fraction * len(classes)))
    if not 1 <= n_val < len(classes):
        raise ValueError(
            f"fraction={fraction} of {len(classes)} classes leaves {n_val} validation classes; "
            "need at least one on each side"
        )
    val_classes = np.random.default_rng(seed).choice(classes, size=n_val, replace=False)
    in_val = np.isin(y, val_classes)
    return np.flatnonzero(~in_val), np.flatnonzero(in_val)


def remap_labels(labels: Sequence[int] | np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Labels renumbered to ``0 .. C-1`` in sorted order: ``(new_labels, original_classes)``."""
    y = _labels(labels)
    classes, inverse = np.unique(y, return_inverse=True)
    return inverse.astype(np.int64), classes
