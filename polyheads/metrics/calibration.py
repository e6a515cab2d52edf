"""Calibration and uncertainty: top-label ECE (seed 000 Table 3), temperature scaling (Table 3, right
half; Guo et al. 2017, seed 000 ref. [19]) and the confidence AUROC of Table 1.

Top-label ECE (Kumar et al. 2019, seed 000 ref. [30])
-----------------------------------------------------
With confidence ``c_i = max_k p_ik``, prediction ``argmax_k p_ik`` and ``a_i = 1[prediction is
correct]``, the N predictions are split into bins ``B_1..B_M`` by confidence and

    ECE_1 = sum_b |B_b|/N * |acc(B_b) - conf(B_b)|              (norm="l1", the usual "ECE")
    ECE_2 = sqrt( sum_b |B_b|/N * (acc(B_b) - conf(B_b))^2 )     (norm="l2", Kumar et al.'s l2-CE)

where ``acc`` and ``conf`` are the bin means of ``a`` and ``c``. ``debias=True`` (l2 only) subtracts
each bin's sampling variance ``acc(1 - acc)/(|B| - 1)`` from the squared gap before the square root,
Kumar et al.'s unbiased estimator.

Bins (both rules put a confidence equal to an edge into the lower bin, ``(lo, hi]``):

* ``strategy="quantile"`` -- equal mass, seed 000 Table 3 ("15 equal-mass bins"): sort the
  confidences, split them into ``n_bins`` consecutive groups of (nearly) equal size
  (``numpy.array_split``), and put each edge halfway between the last confidence of one group and the
  first of the next; repeated edges merge, so tied confidences never straddle two bins. This is
  exactly ``get_equal_bins`` of Kumar et al.'s ``calibration`` package.
* ``strategy="uniform"`` -- equal width, ``n_bins`` intervals of ``[0, 1]`` (Guo et al.).

Which one reproduces the paper: seed 000 reports "ECE with 15 equal-mass bins" and cites [30] for
the estimator; [30]'s package computes, by default, the *l2* error with 15 equal-mass bins in
top-label mode and the debiased estimator. ``norm="l2", debias=True`` is therefore the closest
reproduction of Table 3's numbers; ``norm="l1"`` (the default here) is the ECE most papers and
libraries (netcal, torchmetrics) report, with the same equal-mass bins.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator
from sklearn.metrics import roc_auc_score
from sklearn.utils.validation import check_is_fitted

from .._checks import check_choice, check_int
from ._validation import (
    check_class_indices,
    check_logits,
    check_probabilities,
    check_scores,
    consistent_length,
)

__all__ = [
    "CalibrationBins",
    "calibration_bins",
    "expected_calibration_error",
    "fit_temperature",
    "TemperatureScaler",
    "confidence_auroc",
]

STRATEGIES = ("quantile", "uniform")
NORMS = ("l1", "l2")


@dataclass(frozen=True)
class CalibrationBins:
    """Per-bin statistics of top-label confidences (what ECE and the reliability diagram use).

    ``edges`` has ``M + 1`` entries (0, then each bin's upper edge; bin b is ``(edges[b], edges[b+1]]``,
    the first also holds 0). ``count``, ``confidence`` (mean top-label probability) and ``accuracy``
    (fraction correct) have ``M`` entries; the means are NaN for empty bins.
    """

    edges: np.ndarray
    count: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray

    @property
    def weight(self) -> np.ndarray:
        """|B_b| / N."""
        return self.count / max(int(self.count.sum()), 1)


def _bin_edges(conf: np.ndarray, n_bins: int, strategy: str) -> np.ndarray:
    """Upper bin edges (sorted, unique, last = 1.0) -- see the module docstring."""
    if strategy == "uniform":
        return np.arange(1, n_bins + 1, dtype=np.float64) / n_bins
    s = np.sort(conf)
    n = min(n_bins, len(s))
    sizes = np.full(n, len(s) // n)
    sizes[: len(s) % n] += 1  # numpy.array_split: the first groups are one longer
    first_of_next = np.cumsum(sizes)[:-1]
    edges = (s[first_of_next - 1] + s[first_of_next]) / 2.0
    return np.unique(np.append(edges, 1.0))


def _top_label(y_true: Any, y_prob: Any, labels: Sequence[Any] | None) -> tuple[np.ndarray, np.ndarray]:
    prob = check_probabilities(y_prob)
    y = check_class_indices(y_true, prob.shape[1], labels)
    consistent_length(y, prob)
    conf = np.clip(prob.max(axis=1), 0.0, 1.0)
    correct = (prob.argmax(axis=1) == y).astype(np.float64)
    return conf, correct


def calibration_bins(
    y_true: Any,
    y_prob: Any,
    n_bins: int = 15,
    strategy: str = "quantile",
    *,
    labels: Sequence[Any] | None = None,
) -> CalibrationBins:
    """Bin the top-label confidences of ``y_prob`` [N, K] and return per-bin count, mean confidence and
    accuracy (the ingredients of ECE and of :func:`polyheads.plots.reliability_diagram`).

    ``y_true`` are class indices into the columns of ``y_prob`` (or any labels, with ``labels`` giving
    the class of each column). Binning rules: module docstring.
    """
    n_bins = check_int("n_bins", n_bins, minimum=1)
    check_choice("strategy", strategy, STRATEGIES)
    conf, correct = _top_label(y_true, y_prob, labels)
    upper = _bin_edges(conf, n_bins, strategy)
    which = np.minimum(np.searchsorted(upper, conf, side="left"), len(upper) - 1)
    m = len(upper)
    count = np.bincount(which, minlength=m).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(which, weights=conf, minlength=m) / count
        mean_acc = np.bincount(which, weights=correct, minlength=m) / count
    return CalibrationBins(np.concatenate([[0.0], upper]), count.astype(np.int64), mean_conf, mean_acc)


def expected_calibration_error(
    y_true: Any,
    y_prob: Any,
    n_bins: int = 15,
    strategy: str = "quantile",
    norm: str = "l1",
    *,
    debias: bool = False,
    labels: Sequence[Any] | None = None,
) -> float:
    """Top-label expected calibration error (seed 000 Table 3; Kumar et al. 2019, ref. [30]).

    Args:
        y_true: [N] class indices into the columns of ``y_prob`` (or any labels with ``labels``).
        y_prob: [N, K] predicted probabilities (rows sum to 1), or [N] P(class 1) for binary problems.
        n_bins: number of bins (15 in seed 000).
        strategy: ``"quantile"`` (equal mass, the seed's) or ``"uniform"`` (equal width).
        norm: ``"l1"`` (ECE) or ``"l2"`` (the root of the weighted mean squared gap, ref. [30]).
        debias: l2 only: Kumar et al.'s unbiased estimate (subtract each bin's sampling variance).
        labels: the class of each column of ``y_prob`` when ``y_true`` is not integer indices.

    Returns:
        ECE as a fraction in [0, 1] (multiply by 100 for the paper's percentages).

    Example (one bin: mean confidence (0.9 + 0.8 + 0.6)/3, accuracy 2/3, ECE = |2/3 - 23/30| = 0.1):
        >>> round(expected_calibration_error([0, 1, 1], [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], n_bins=1), 12)
        0.1
    """
    check_choice("norm", norm, NORMS)
    if debias and norm != "l2":
        raise ValueError("debias=True is defined for norm='l2' only (Kumar et al.'s unbiased l2 estimator)")
    bins = calibration_bins(y_true, y_prob, n_bins, strategy, labels=labels)
    full = bins.count > 0
    w, acc, conf, n = bins.weight[full], bins.accuracy[full], bins.confidence[full], bins.count[full]
    gap = acc - conf
    if norm == "l1":
        return float(np.sum(w * np.abs(gap)))
    sq = gap**2
    if debias:
        variance = np.where(n >= 2, acc * (1.0 - acc) / np.maximum(n - 1.0, 1.0), 0.0)
        sq = np.where(n >= 2, sq - variance, 0.0)
        return float(np.sqrt(max(float(np.sum(w * sq)), 0.0)))
    return float(np.sqrt(np.sum(w * sq)))


def fit_temperature(logits: Any, y_true: Any, *, max_iter: int = 100) -> float:
    """The temperature T minimising the validation NLL of ``softmax(logits / T)`` (Guo et al. 2017,
    seed 000 ref. [19], Table 3 right half).

    Optimises ``log T`` (so T stays positive) with L-BFGS and a strong-Wolfe line search in float64.
    The NLL is convex in 1/T, so the stationary point found is the global minimum. ``logits`` may also
    be log-probabilities (stochastic heads' eval output). Returns T as a float.
    """
    max_iter = check_int("max_iter", max_iter, minimum=1)
    z = torch.from_numpy(check_logits(logits))
    y = torch.from_numpy(check_class_indices(y_true, z.shape[1]))
    consistent_length(y.numpy(), z.numpy())
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [log_t], lr=1.0, max_iter=max_iter, tolerance_grad=1e-12, tolerance_change=1e-14, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z * torch.exp(-log_t), y)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(torch.exp(log_t.detach()))
    if not np.isfinite(t) or t <= 0.0:  # pragma: no cover - LBFGS on a convex 1-D problem
        raise FloatingPointError(f"temperature fit diverged (T = {t})")
    return t


class TemperatureScaler(BaseEstimator):
    """Post-hoc temperature scaling of logits (Guo et al. 2017): ``fit`` on validation logits, then
    ``transform`` divides logits by T and ``predict_proba`` returns ``softmax(logits / T)``.

    Torch tensors in give torch tensors out (same device); anything else gives numpy arrays.

    Attributes:
        temperature_: the fitted T.
    """

    def __init__(self, max_iter: int = 100) -> None:
        self.max_iter = max_iter

    def fit(self, logits: Any, y: Any) -> "TemperatureScaler":
        self.temperature_ = fit_temperature(logits, y, max_iter=self.max_iter)
        return self

    def transform(self, logits: Any) -> Any:
        check_is_fitted(self, "temperature_")
        if isinstance(logits, torch.Tensor):
            if logits.ndim != 2 or not logits.is_floating_point():
                raise ValueError(f"logits must be a floating tensor [N, K], got {logits.dtype} {list(logits.shape)}")
            return logits / self.temperature_
        return check_logits(logits) / self.temperature_

    def predict_proba(self, logits: Any) -> Any:
        scaled = self.transform(logits)
        if isinstance(scaled, torch.Tensor):
            return torch.softmax(scaled, dim=1)
        return torch.softmax(torch.from_numpy(scaled), dim=1).numpy()


def confidence_auroc(y_true: Any, y_prob: Any, confidence: Any, *, labels: Sequence[Any] | None = None) -> float:
    """AUROC of ``confidence`` at telling correct from incorrect predictions (seed 000 Table 1, where
    the confidence is ‖z‖ or κ_z; chance 0.5, perfect 1.0), on scikit-learn's ``roc_auc_score``.

    ``y_prob`` [N, K] gives the predictions (argmax); ``confidence`` [N] is any score where larger
    means "more likely correct" (the head's ``confidence()``, or the top-label probability).
    Raises ``ValueError`` if every prediction is correct (or every one wrong): AUROC is undefined.
    """
    prob = check_probabilities(y_prob)
    y = check_class_indices(y_true, prob.shape[1], labels)
    conf = check_scores(confidence, "confidence")
    consistent_length(y, prob, conf)
    correct = prob.argmax(axis=1) == y
    n_correct = int(correct.sum())
    if n_correct in (0, len(correct)):
        which = "correct" if n_correct else "wrong"
        raise ValueError(
            f"every prediction is {which}: the correct/incorrect split has a single class, so its AUROC is undefined"
        )
    return float(roc_auc_score(correct, conf))
