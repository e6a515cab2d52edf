"""Input checks for the metrics, the scikit-learn way (``check_array``, ``check_consistent_length``).

Every metric accepts numpy arrays, lists or torch tensors (any device: they are read back to the
CPU, except the retrieval embeddings, which stay on their device). Failures are ``ValueError`` /
``TypeError`` naming the argument and what was expected.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from sklearn.utils import check_array, check_consistent_length, column_or_1d

__all__ = [
    "to_numpy",
    "check_probabilities",
    "check_logits",
    "check_class_indices",
    "check_binary_target",
    "check_scores",
    "probability_tolerance",
]


def to_numpy(x: Any) -> Any:
    """A torch tensor as a numpy array on the CPU (detached, fp16/bf16 widened); anything else unchanged."""
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        return x.cpu().numpy()
    return x


def probability_tolerance(dtype: np.dtype) -> float:
    """How far a row sum may stray from 1: ``sqrt(eps)`` of the array's own precision (≈3e-4 for
    float32 softmax outputs, ≈1.5e-8 for float64), the tolerance scikit-learn's ``log_loss`` uses."""
    dtype = np.dtype(dtype) if np.issubdtype(np.dtype(dtype), np.floating) else np.dtype(np.float64)
    return float(np.sqrt(np.finfo(dtype).eps))


def check_probabilities(y_prob: Any, name: str = "y_prob") -> np.ndarray:
    """Predicted class probabilities: float64 array [N, K] with K >= 2, finite, in [0, 1], rows summing
    to 1. A 1-D array is read as P(class 1) of a binary problem (scikit-learn's convention) and
    becomes ``[1 - p, p]``."""
    raw = to_numpy(y_prob)
    ndim = np.ndim(raw)
    if ndim not in (1, 2):
        raise ValueError(f"{name} must be 2-D [n_samples, n_classes] (or 1-D for a binary problem), got {ndim}-D")
    arr = check_array(raw, ensure_2d=False, dtype="numeric", input_name=name)
    tol = probability_tolerance(arr.dtype)
    arr = arr.astype(np.float64, copy=False)
    if arr.ndim == 1:
        arr = np.stack([1.0 - arr, arr], axis=1)
    elif arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D [n_samples, n_classes] (or 1-D for a binary problem), got shape {arr.shape}")
    if arr.shape[1] < 2:
        raise ValueError(
            f"{name} has a single class column (shape {arr.shape}): calibration needs probabilities of at "
            "least 2 classes (pass a 1-D array of P(class 1) for a binary problem)"
        )
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -tol or hi > 1.0 + tol:
        raise ValueError(f"{name} must hold probabilities in [0, 1], got values in [{lo:.6g}, {hi:.6g}] (logits? apply softmax)")
    sums = arr.sum(axis=1)
    worst = int(np.argmax(np.abs(sums - 1.0)))
    if abs(sums[worst] - 1.0) > tol * max(1.0, np.sqrt(arr.shape[1])):
        raise ValueError(
            f"{name} rows must sum to 1 (probabilities), but row {worst} sums to {sums[worst]:.9g} "
            f"(tolerance {tol:.1e}); apply softmax to logits first"
        )
    return arr


def check_logits(logits: Any, name: str = "logits") -> np.ndarray:
    """Class logits (or log-probabilities): finite float64 array [N, K], K >= 2."""
    arr = check_array(to_numpy(logits), dtype="numeric", input_name=name).astype(np.float64, copy=False)
    if arr.shape[1] < 2:
        raise ValueError(f"{name} must have at least 2 class columns, got shape {arr.shape}")
    return arr


def check_class_indices(y_true: Any, n_classes: int, labels: Sequence[Any] | None = None, name: str = "y_true") -> np.ndarray:
    """True labels as class indices (int64 [N]) into the ``n_classes`` probability columns.

    Integer labels are column indices and must lie in ``[0, n_classes)``. Other labels (strings, ...)
    need ``labels``, the class of each column in order (scikit-learn's ``log_loss`` convention).
    """
    y = column_or_1d(to_numpy(y_true), warn=False)
    if labels is not None:
        labels = np.asarray(to_numpy(labels))
        if labels.ndim != 1 or len(labels) != n_classes:
            raise ValueError(f"labels must list the class of each of the {n_classes} columns, got shape {labels.shape}")
        if len(np.unique(labels)) != len(labels):
            raise ValueError("labels must not repeat a class")
        order = np.argsort(labels, kind="stable")
        pos = np.searchsorted(labels[order], y)
        pos = np.clip(pos, 0, len(labels) - 1)
        found = labels[order][pos] == y
        if not bool(np.all(found)):
            missing = np.unique(y[~found])[:5]
            raise ValueError(f"{name} holds labels that are not in labels: {missing.tolist()}")
        return order[pos].astype(np.int64)
    if y.dtype.kind == "b" or y.dtype.kind not in "iuf":
        raise ValueError(
            f"{name} must hold integer class indices into the columns (got dtype {y.dtype}); "
            "pass labels=[class of column 0, class of column 1, ...] for other label types"
        )
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise ValueError(f"{name} must hold integer class indices, got non-integer values")
    y = y.astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"{name} must be class indices in [0, {n_classes}), got values in [{y.min()}, {y.max()}]")
    return y


def check_binary_target(target: Any, name: str) -> np.ndarray:
    """A binary target (bool or 0/1) as a bool array [N]; both classes must be present."""
    t = column_or_1d(to_numpy(target), warn=False)
    if t.dtype.kind == "b":
        out = t.astype(bool)
    else:
        if t.dtype.kind not in "iuf":
            raise ValueError(f"{name} must be boolean (or 0/1), got dtype {t.dtype}")
        values = np.unique(t)
        if not np.all(np.isin(values, [0, 1])):
            raise ValueError(f"{name} must be boolean (or 0/1), got values {values[:5].tolist()}")
        out = t.astype(bool)
    n_true = int(out.sum())
    if n_true == 0 or n_true == len(out):
        which = "True" if n_true else "False"
        raise ValueError(f"{name} holds a single class (all {which}): the metric needs both classes")
    return out


def check_scores(scores: Any, name: str = "scores") -> np.ndarray:
    """Finite real scores, float64 [N]."""
    arr = check_array(to_numpy(scores), ensure_2d=False, dtype="numeric", input_name=name)
    if arr.ndim != 1:
        arr = column_or_1d(arr, warn=False) if arr.ndim == 2 and 1 in arr.shape else arr
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    return arr.astype(np.float64, copy=False)


def consistent_length(*arrays: Any) -> None:
    """scikit-learn's ``check_consistent_length`` (re-exported so every metric uses the same one)."""
    check_consistent_length(*arrays)
