"""Reliability diagram: accuracy against confidence per bin, with the ECE of seed 000 Table 3.

The top panel draws one bar per confidence bin, spanning the bin's edges, at the height of its
accuracy, next to the diagonal of perfect calibration; the red segment in each bin joins its mean
confidence to its accuracy (the gap that ECE averages). The bottom panel shows how many predictions
fall into each bin. With the default equal-mass bins (15, as the seed) every bin holds the same
number of predictions, so bin widths show where the confidences are.

matplotlib's object API on the Agg canvas is used (no pyplot, no global backend switch).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from ..metrics._validation import check_probabilities
from ..metrics.calibration import calibration_bins, expected_calibration_error

__all__ = ["reliability_diagram"]


def reliability_diagram(
    y_true: Any,
    y_prob: Any,
    path: str | os.PathLike,
    n_bins: int = 15,
    strategy: str = "quantile",
    *,
    labels: Sequence[Any] | None = None,
    title: str | None = None,
    dpi: int = 100,
) -> Path:
    """Draw the reliability diagram of top-label predictions and save it as PNG.

    Args:
        y_true: [N] class indices into the columns of ``y_prob`` (or any labels with ``labels``).
        y_prob: [N, K] predicted probabilities.
        path: PNG file to write (parent folders are created).
        n_bins, strategy: binning as :func:`polyheads.metrics.expected_calibration_error`.
        title: figure title; the legend always gives ECE (l1 and l2) for these bins.

    Returns:
        The path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    bins = calibration_bins(y_true, y_prob, n_bins, strategy, labels=labels)
    ece1 = expected_calibration_error(y_true, y_prob, n_bins, strategy, "l1", labels=labels)
    ece2 = expected_calibration_error(y_true, y_prob, n_bins, strategy, "l2", labels=labels)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    fig = Figure(figsize=(5.0, 6.0), dpi=dpi)
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    lo, hi = bins.edges[:-1].copy(), bins.edges[1:]
    if strategy == "quantile":  # the first equal-mass bin reaches down to 0; draw it from the lowest confidence
        lo[0] = min(float(check_probabilities(y_prob).max(axis=1).min()), hi[0])
    full = bins.count > 0
    top.bar(lo[full], bins.accuracy[full], width=(hi - lo)[full], align="edge", color="#4c72b0",
            edgecolor="white", linewidth=0.5, label="accuracy per bin")
    top.plot([0, 1], [0, 1], "--", color="gray", linewidth=1, label="perfect calibration")
    for c, a in zip(bins.confidence[full], bins.accuracy[full]):
        top.plot([c, c], [c, a], color="#c44e52", linewidth=1.5)
    top.plot([], [], color="#c44e52", linewidth=1.5, label="gap (confidence → accuracy)")
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    kind = "equal-mass" if strategy == "quantile" else "equal-width"
    top.set_title(title or f"Reliability diagram ({len(bins.count)} {kind} bins)", fontsize=10)
    top.legend(loc="upper left", fontsize=8, title=f"ECE = {100 * ece1:.2f} %, l2-ECE = {100 * ece2:.2f} %",
               title_fontsize=8)
    bottom.bar(lo, bins.count, width=hi - lo, align="edge", color="#8c8c8c", edgecolor="white", linewidth=0.5)
    bottom.set_xlim(0.0, 1.0)
    bottom.set_xlabel("confidence (top-label probability)")
    bottom.set_ylabel("predictions")
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path
