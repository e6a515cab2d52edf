"""Pair verification: "same identity or not?" by thresholding a similarity (seed 001).

Seed 001 (the face-recognition survey) describes verification as comparing two feature vectors by a
distance and a threshold (FaceNet: squared L2 distance; SphereFace/NormFace/ArcFace: cosine), under
the closed-set protocol (test identities seen in training) or the open-set protocol (disjoint
identities, where verification is the only thing that makes sense). The measures here are the ones
face recognition reports:

* :func:`verification_accuracy` -- the LFW protocol: pairs are split into ``n_folds`` (10)
  consecutive folds; for each fold the threshold that maximises accuracy on the *other* folds is
  applied to it; the result is the mean (± std) accuracy over folds.
* :func:`tar_at_far` -- true-accept rate at the threshold whose false-accept rate is at most ``far``
  (IJB-style, e.g. TAR@FAR=1e-3).
* :func:`verification_roc` -- the ROC points (FAR, TAR, threshold).

Scores: higher means "more likely the same" (cosine similarity, negative distance). Pass
``higher_is_same=False`` for raw distances, or give pairs of embeddings and a ``metric``.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Sequence, Union

import numpy as np
import torch
from sklearn.metrics import roc_curve
from sklearn.model_selection import KFold

from .._checks import check_choice, check_float, check_int
from ._validation import check_binary_target, check_scores, consistent_length, to_numpy
from .retrieval import METRICS, _as_embeddings, _check_poincare

__all__ = ["pair_scores", "verification_accuracy", "tar_at_far", "verification_roc", "sample_pairs"]

Metric = Union[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]


def _split_pairs(pairs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(pairs, (tuple, list)) and len(pairs) == 2:
        a = _as_embeddings(pairs[0], "pairs[0]")
        b = _as_embeddings(pairs[1], "pairs[1]")
        if a.ndim != 2 or a.shape != b.shape:
            raise ValueError(f"pairs must be two arrays of the same shape [P, dim], got {list(a.shape)} and {list(b.shape)}")
        return a, b.to(device=a.device, dtype=a.dtype)
    x = _as_embeddings(pairs, "pairs")
    if x.ndim != 3 or x.shape[1] != 2:
        raise ValueError(f"pairs must be [P, 2, dim] or a tuple (a [P, dim], b [P, dim]), got shape {list(x.shape)}")
    return x[:, 0], x[:, 1]


def pair_scores(pairs: Any, metric: Metric = "cosine", *, c: float = 1.0) -> np.ndarray:
    """Similarity score of each pair (higher = more alike), float64 [P].

    ``pairs``: a tuple ``(a [P, d], b [P, d])`` or an array [P, 2, d]. ``metric``: ``"cosine"``
    (cosine similarity), ``"euclidean"`` (minus the distance), ``"poincare"`` (minus the geodesic
    distance on the ball of curvature ``c``) or a callable ``f(x, y)`` returning distances, either
    per pair [P] or pairwise [P, P] (e.g. a head's ``distance``; its diagonal is used, in chunks).
    """
    a, b = _split_pairs(pairs)
    with torch.no_grad():
        if callable(metric):
            out = []
            step = 1024
            for s in range(0, a.shape[0], step):
                d = metric(a[s : s + step], b[s : s + step])
                if not isinstance(d, torch.Tensor):
                    d = torch.as_tensor(np.asarray(d))
                n = min(step, a.shape[0] - s)
                if d.ndim == 2 and tuple(d.shape) == (n, n):
                    d = torch.diagonal(d)
                if tuple(d.shape) != (n,):
                    raise ValueError(f"metric callable must return distances [P] or [P, P], got shape {list(d.shape)}")
                out.append(-d.double())
            scores = torch.cat(out)
        else:
            check_choice("metric", metric, METRICS)
            a64, b64 = a.double(), b.double()
            if metric == "cosine":
                scores = torch.nn.functional.cosine_similarity(a64, b64, dim=1, eps=1e-12)
            elif metric == "euclidean":
                scores = -(a64 - b64).norm(dim=1)
            else:
                c = check_float("c", c, minimum=0.0, min_inclusive=False)
                _check_poincare(a64, c, "pairs")
                _check_poincare(b64, c, "pairs")
                num = 2.0 * c * ((a64 - b64) ** 2).sum(dim=1)
                den = (1.0 - c * (a64**2).sum(dim=1)) * (1.0 - c * (b64**2).sum(dim=1))
                scores = -torch.acosh(1.0 + num / den) / math.sqrt(c)
    s = scores.cpu().numpy()
    if not np.all(np.isfinite(s)):
        raise ValueError("pair scores contain NaN or inf")
    return s


def _scores(scores_or_pairs: Any, metric: Metric, c: float, higher_is_same: bool) -> np.ndarray:
    """1-D scores pass through (negated when they are distances); pairs are scored with ``metric``."""
    is_pairs = isinstance(scores_or_pairs, (tuple, list)) and len(scores_or_pairs) == 2 and np.ndim(to_numpy(scores_or_pairs[0])) == 2
    if not is_pairs and np.ndim(to_numpy(scores_or_pairs)) == 3:
        is_pairs = True
    if is_pairs:
        return pair_scores(scores_or_pairs, metric, c=c)
    s = check_scores(scores_or_pairs, "scores")
    return s if higher_is_same else -s


def _best_threshold(scores: np.ndarray, same: np.ndarray) -> float:
    """The threshold t maximising the accuracy of "same iff score > t" (the first maximiser).

    Candidates: -inf, every midpoint between consecutive distinct scores, +inf -- all distinct
    decisions, found exactly from cumulative counts (no grid).
    """
    order = np.argsort(scores, kind="stable")
    s, y = scores[order], same[order]
    uniq, first = np.unique(s, return_index=True)
    last = np.append(first[1:], len(s))  # each distinct value occupies s[first:last]
    n_diff_upto = np.concatenate([[0], np.cumsum(~y)[last - 1]])  # values <= u_i predicted "different"
    n_same_upto = np.concatenate([[0], np.cumsum(y)[last - 1]])
    correct = n_diff_upto + (int(y.sum()) - n_same_upto)
    i = int(np.argmax(correct))
    if i == 0:
        return -math.inf
    if i == len(uniq):
        return math.inf
    return float((uniq[i - 1] + uniq[i]) / 2.0)


def verification_accuracy(
    scores_or_pairs: Any,
    is_same: Any,
    n_folds: int = 10,
    *,
    metric: Metric = "cosine",
    c: float = 1.0,
    higher_is_same: bool = True,
    shuffle: bool = False,
    random_state: int | None = None,
    return_std: bool = False,
) -> Union[float, tuple[float, float]]:
    """Verification accuracy under the LFW protocol (seed 001: verification by a thresholded distance).

    The pairs are split into ``n_folds`` folds (consecutive, as LFW's 10 sets of 600 pairs; pass
    ``shuffle=True`` to shuffle with ``random_state``). For each fold, the threshold that maximises
    accuracy on the other folds (exactly, over all distinct thresholds) classifies the fold's pairs as
    "same" iff score > threshold. Returns the mean accuracy over folds (and its std with
    ``return_std=True``, the "mean ± std" LFW tables print).

    Args:
        scores_or_pairs: scores [P] (higher = same; distances with ``higher_is_same=False``), or pairs
            of embeddings ``(a [P, d], b [P, d])`` / [P, 2, d] scored by ``metric`` (:func:`pair_scores`).
        is_same: [P] bool (or 0/1): whether each pair shows the same class; both kinds must occur.
        n_folds: number of folds (10 for LFW), 2 <= n_folds <= P.

    Example:
        >>> verification_accuracy([0.9, 0.8, 0.1, 0.2] * 5, [1, 1, 0, 0] * 5, n_folds=5)
        1.0
    """
    s = _scores(scores_or_pairs, metric, c, higher_is_same)
    same = check_binary_target(is_same, "is_same")
    consistent_length(s, same)
    n_folds = check_int("n_folds", n_folds, minimum=2, maximum=len(s))
    folds = KFold(n_splits=n_folds, shuffle=shuffle, random_state=random_state if shuffle else None)
    accs = []
    for train, test in folds.split(s):
        if same[train].all() or (~same[train]).all():
            raise ValueError("a training split holds a single class of pairs: use more pairs, fewer folds or shuffle=True")
        t = _best_threshold(s[train], same[train])
        accs.append(float(np.mean((s[test] > t) == same[test])))
    mean = float(np.mean(accs))
    return (mean, float(np.std(accs))) if return_std else mean


def verification_roc(
    scores_or_pairs: Any,
    is_same: Any,
    *,
    metric: Metric = "cosine",
    c: float = 1.0,
    higher_is_same: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC points of verification: ``(far, tar, thresholds)`` (scikit-learn's ``roc_curve``, every
    distinct threshold kept). Pairs are accepted as "same" when score >= threshold (with
    ``higher_is_same=False``: when distance <= threshold; the thresholds are then distances)."""
    s = _scores(scores_or_pairs, metric, c, higher_is_same)
    same = check_binary_target(is_same, "is_same")
    consistent_length(s, same)
    far, tar, thr = roc_curve(same, s, drop_intermediate=False)
    if not higher_is_same and not (isinstance(scores_or_pairs, (tuple, list)) or np.ndim(to_numpy(scores_or_pairs)) == 3):
        thr = -thr
    return far, tar, thr


def tar_at_far(
    scores_or_pairs: Any,
    is_same: Any,
    far: Union[float, Sequence[float]] = 1e-3,
    *,
    metric: Metric = "cosine",
    c: float = 1.0,
    higher_is_same: bool = True,
) -> Union[float, np.ndarray]:
    """True-accept rate at the most permissive threshold whose false-accept rate is <= ``far``.

    Resolution: FAR moves in steps of 1 / (number of impostor pairs); a ``far`` below one step warns
    (the answer is then the TAR at FAR = 0). ``far`` may be a list (returns an array).
    """
    s = _scores(scores_or_pairs, metric, c, higher_is_same)
    same = check_binary_target(is_same, "is_same")
    consistent_length(s, same)
    targets = np.atleast_1d(np.asarray(far, dtype=np.float64))
    for f in targets:
        check_float("far", float(f), minimum=0.0, maximum=1.0)
    fpr, tpr, _ = roc_curve(same, s, drop_intermediate=False)
    n_impostor = int((~same).sum())
    if np.any(targets * n_impostor < 1.0) and np.any(targets > 0):
        warnings.warn(
            f"far={targets.min():g} is below the resolution 1/{n_impostor} of {n_impostor} impostor pairs; "
            "the TAR reported is the one at FAR = 0",
            UserWarning,
            stacklevel=2,
        )
    out = np.array([float(tpr[fpr <= f].max()) for f in targets])
    return float(out[0]) if np.ndim(far) == 0 else out


def sample_pairs(
    labels: Any, n_pairs: int = 6000, *, random_state: int | np.random.Generator | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw ``n_pairs`` verification pairs from labelled samples: half genuine (same class, two
    different samples), half impostor (different classes), uniformly over samples.

    Returns ``(first, second, is_same)``: index arrays into ``labels`` and the bool target -- e.g.
    ``verification_accuracy((emb[first], emb[second]), is_same)`` on an open-set split.
    """
    y = np.asarray(to_numpy(labels))
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {y.shape}")
    n_pairs = check_int("n_pairs", n_pairs, minimum=2)
    rng = random_state if isinstance(random_state, np.random.Generator) else np.random.default_rng(random_state)
    _, codes, counts = np.unique(y, return_inverse=True, return_counts=True)
    codes = codes.reshape(-1)
    if len(counts) < 2:
        raise ValueError("labels hold a single class: impostor pairs need at least 2 classes")
    eligible = np.flatnonzero(counts[codes] >= 2)
    if eligible.size == 0:
        raise ValueError("no class has 2 samples: genuine pairs are impossible")
    n_gen = n_pairs // 2
    n_imp = n_pairs - n_gen
    by_class = np.argsort(codes, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    a = rng.choice(eligible, size=n_gen)
    ca = codes[a]
    # a uniform other member of a's class: draw among the count-1 others and skip a's own slot
    rank_a = np.empty(len(y), dtype=np.int64)
    rank_a[by_class] = np.arange(len(y)) - np.repeat(starts, counts)
    off = rng.integers(0, counts[ca] - 1)
    off = off + (off >= rank_a[a])
    b = by_class[starts[ca] + off]
    first_i = rng.integers(0, len(y), size=n_imp)
    # a uniform sample of another class: draw among the N - count(class) others
    n_other = len(y) - counts[codes[first_i]]
    pick = rng.integers(0, n_other)
    cls_start = starts[codes[first_i]]
    pick = pick + (pick >= cls_start) * counts[codes[first_i]]
    second_i = by_class[pick]
    first = np.concatenate([a, first_i])
    second = np.concatenate([b, second_i])
    is_same = np.concatenate([np.ones(n_gen, bool), np.zeros(n_imp, bool)])
    return first, second, is_same
