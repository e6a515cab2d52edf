"""The scatter-plot matrix of learned features (seed 002 Fig. 2, 4, 5, 6).

Every pair of feature coordinates (i, j) gets a panel with coordinate j on the horizontal axis and i on
the vertical one, points coloured by class; the diagonal shows each coordinate's per-class histogram.
Each panel is a parallel projection onto the plane of two axes, so features that follow a fixed
polytope classifier draw its shape: ∧ for the simplex, + for the orthoplex, × for the cube (seed 002
§3). The fixed vertices can be overlaid (black-edged stars).

matplotlib's object API on the Agg canvas is used (no pyplot, no global backend switch), so the
function is safe in scripts, tests and servers.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .._checks import check_finite, check_float, check_int, check_tensor

__all__ = ["scatter_matrix"]


def _as_numpy(name: str, value: object, ndim: int) -> np.ndarray:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    check_tensor(name, value, ndim=ndim)
    return value.detach().to("cpu").numpy()


def scatter_matrix(
    features: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    path: str | os.PathLike,
    vertices: torch.Tensor | np.ndarray | None = None,
    *,
    normalize: bool = False,
    max_dims: int = 10,
    max_points: int = 3000,
    class_names: Sequence[str] | None = None,
    title: str | None = None,
    panel_size: float = 1.2,
    point_size: float = 1.5,
    alpha: float = 0.5,
    dpi: int = 80,
    seed: int = 0,
) -> Path:
    """Draw the scatter-plot matrix of ``features`` [N, d] coloured by ``labels`` [N] and save it as PNG.

    Args:
        features: embeddings (e.g. ``head.embed(x)``), a float tensor or array [N, d], d >= 2.
        labels: class indices [N] (integers >= 0).
        path: the PNG file to write (parent folders are created).
        vertices: optional fixed class vectors [K, d] (``head.vertices``): drawn as stars in each
            panel, scaled to the median feature norm (to unit norm with ``normalize=True``) and
            coloured like their class.
        normalize: plot the L2-normalised features z/‖z‖ (seed 002 Fig. 6) instead of the raw ones.
        max_dims: show at most the first ``max_dims`` coordinates (a d x d grid grows fast).
        max_points: plot a random subset of at most this many points (``seed`` fixes it).
        class_names: legend names, one per class index.
        title: figure title.
        panel_size, point_size, alpha, dpi: figure layout (inches per panel, marker area, opacity,
            resolution).

    Returns the path written.
    """
    x = _as_numpy("features", features, 2)
    y = _as_numpy("labels", labels, 1)
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"features must be floating point, got dtype {x.dtype}")
    if not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"labels must hold integer class indices, got dtype {y.dtype}")
    if len(y) != len(x):
        raise ValueError(f"labels has {len(y)} entries but features has {len(x)} rows")
    if len(x) == 0:
        raise ValueError("features is empty (0 rows)")
    if x.shape[1] < 2:
        raise ValueError(f"features must have at least 2 coordinates for a scatter-plot matrix, got shape {list(x.shape)}")
    check_finite("features", torch.from_numpy(np.ascontiguousarray(x)))
    if y.min() < 0:
        raise ValueError(f"labels must be class indices >= 0, got minimum {int(y.min())}")
    max_dims = check_int("max_dims", max_dims, minimum=2)
    max_points = check_int("max_points", max_points, minimum=1)
    panel_size = check_float("panel_size", panel_size, minimum=0.0, min_inclusive=False)
    point_size = check_float("point_size", point_size, minimum=0.0, min_inclusive=False)
    alpha = check_float("alpha", alpha, minimum=0.0, maximum=1.0)
    dpi = check_int("dpi", dpi, minimum=10)
    num_classes = int(y.max()) + 1
    v = None
    if vertices is not None:
        v = _as_numpy("vertices", vertices, 2).astype(np.float64)
        if v.shape[1] != x.shape[1]:
            raise ValueError(f"vertices must have {x.shape[1]} columns (the width of features), got shape {list(v.shape)}")
        if v.shape[0] < num_classes:
            raise ValueError(f"vertices has {v.shape[0]} rows but labels go up to {num_classes - 1}")
        num_classes = v.shape[0]
    if class_names is not None and len(class_names) < num_classes:
        raise ValueError(f"class_names has {len(class_names)} names for {num_classes} classes")

    x = x.astype(np.float64)
    if normalize:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    if len(x) > max_points:
        keep = np.random.default_rng(seed).choice(len(x), size=max_points, replace=False)
        x, y = x[keep], y[keep]
    d = min(x.shape[1], max_dims)
    radius = 1.0 if normalize else float(np.median(np.linalg.norm(x, axis=1)))
    if v is not None:
        v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12) * radius

    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    cmap = colormaps["tab10" if num_classes <= 10 else "tab20" if num_classes <= 20 else "turbo"]
    colours = [cmap(c % cmap.N) if num_classes <= 20 else cmap(c / max(num_classes - 1, 1)) for c in range(num_classes)]
    point_colours = np.array([colours[c] for c in y])
    limit = 1.1 * max(float(np.abs(x[:, :d]).max()), radius if v is not None else 0.0, 1e-12)

    names = [str(class_names[c]) if class_names is not None else str(c) for c in range(num_classes)]
    legend_width = 0.45 + 0.065 * max(len(n) for n in names) if num_classes <= 20 else 0.1
    width = panel_size * d + legend_width
    height = panel_size * d + (0.55 if title else 0.25)
    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(d, d, squeeze=False, sharex=False, sharey=False)
    bins = np.linspace(-limit, limit, 31)
    order = np.random.default_rng(seed + 1).permutation(len(x))  # no class painted last everywhere
    for i in range(d):
        for j in range(d):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlim(-limit, limit)
            if i == j:
                for c in np.unique(y):
                    ax.hist(x[y == c, i], bins=bins, color=colours[c], alpha=0.6, histtype="stepfilled", linewidth=0)
                ax.text(0.04, 0.86, f"z{i + 1}", transform=ax.transAxes, fontsize=7)
                continue
            ax.set_ylim(-limit, limit)
            ax.scatter(x[order, j], x[order, i], s=point_size, c=point_colours[order], alpha=alpha, linewidths=0, rasterized=True)
            if v is not None:
                ax.scatter(v[:, j], v[:, i], s=28, marker="*", c=colours[: len(v)], edgecolors="black", linewidths=0.5, zorder=3)
    for j in range(d):
        axes[-1, j].set_xlabel(f"z{j + 1}", fontsize=7, labelpad=1)
        axes[j, 0].set_ylabel(f"z{j + 1}", fontsize=7, labelpad=1)
    if num_classes <= 20:
        handles = [Line2D([], [], marker="o", linestyle="", color=colours[c], markersize=4) for c in range(num_classes)]
        fig.legend(handles, names, loc="center right", fontsize=7, frameon=False, handletextpad=0.2)
    if title:
        fig.suptitle(title, fontsize=8, y=1.0 - 0.12 / height, va="top")
    shown = f"first {d} of {x.shape[1]} coordinates" if d < x.shape[1] else f"{d} coordinates"
    fig.text(0.01, 0.005, f"{len(x)} points, {shown}" + (", L2-normalised" if normalize else ""), fontsize=6)
    right = 1.0 - legend_width / width
    top = 1.0 - (0.45 if title else 0.1) / height
    fig.subplots_adjust(left=0.25 / width, right=right, bottom=0.2 / height, top=top, wspace=0.05, hspace=0.05)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=dpi)
    return out
