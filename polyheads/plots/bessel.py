"""Seed 000 Figure 2: the Bessel ratio A_n(κ) = I_{n/2}(κ)/I_{n/2-1}(κ) against κ, with the
initialiser's points.

One curve per dimension n (colour); solid lines are the exact ratio (``bessel_ratio(..., exact=True)``,
n <= 64) or Eq. 10 where the exact mode is not offered (n > 64, where Eq. 10 is within 1.5e-3 of exact,
below the line width); dashed lines show Eq. 10 for the small n where it visibly differs. Each
dimension gets the initialiser's points at height λ (App. D): a filled circle at the mean ‖w̃_j‖ of
class weights drawn by Eq. 19, a hollow one at Eq. 14's κ* (the mean κ_z after
``VMFHead.init_from_data``). "A perfect initializer would ensure the point sits exactly on the
matching-colored curve" (seed 000, Fig. 2 caption): the points sit on their curves for n >= 8.

matplotlib's object API on the Agg canvas (no pyplot, no global backend switch).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import torch

from .._checks import check_float, check_int
from ..functional.bessel import EXACT_MAX_DIM, bessel_ratio
from ..heads.vmf import target_concentration, weight_init_std

__all__ = ["bessel_ratio_figure", "initializer_points"]

DEFAULT_DIMS = (2, 4, 8, 16, 32, 64, 128, 256, 512)


def initializer_points(dim: int, lam: float, num_classes: int = 1000, seed: int = 0) -> tuple[float, float]:
    """(mean ‖w̃_j‖ of ``num_classes`` class weights drawn by seed 000 Eq. 19, κ* of Eq. 14)."""
    dim = check_int("dim", dim, minimum=2)
    num_classes = check_int("num_classes", num_classes, minimum=1)
    lam = check_float("lam", lam, minimum=0.0, maximum=1.0, min_inclusive=False, max_inclusive=False)
    g = torch.Generator().manual_seed(seed)
    weights = torch.randn(num_classes, dim, generator=g, dtype=torch.float64) * weight_init_std(dim, lam)
    target = target_concentration(dim, lam)
    return float(weights.norm(dim=1).mean()), target


def bessel_ratio_figure(
    path: str | os.PathLike,
    dims: Sequence[int] = DEFAULT_DIMS,
    lam: float = 0.4,
    *,
    num_classes: int = 1000,
    kappa_range: tuple[float, float] = (1e-2, 1e4),
    dpi: int = 100,
    seed: int = 0,
) -> Path:
    """Draw seed 000 Fig. 2 for ``dims`` and the initialiser at ``lam`` and save it as PNG ``path``."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    dims = [check_int("dims", d, minimum=2) for d in dims]
    if not dims:
        raise ValueError("dims must name at least one dimension")
    lam = check_float("lam", lam, minimum=0.0, maximum=1.0, min_inclusive=False, max_inclusive=False)
    lo, hi = (check_float("kappa_range", k, minimum=0.0, min_inclusive=False) for k in kappa_range)
    if lo >= hi:
        raise ValueError(f"kappa_range must be increasing, got {kappa_range}")
    kappa = torch.logspace(math.log10(lo), math.log10(hi), 400, dtype=torch.float64)

    fig = Figure(figsize=(7.0, 4.6), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    cmap = matplotlib.colormaps["viridis"]
    for i, n in enumerate(dims):
        colour = cmap(0.9 * i / max(1, len(dims) - 1))
        exact = n <= EXACT_MAX_DIM
        curve = bessel_ratio(n, kappa, exact=exact)
        ax.plot(kappa.numpy(), curve.numpy(), color=colour, lw=1.6, label=f"n = {n}")
        if exact and n <= 16:
            ax.plot(kappa.numpy(), bessel_ratio(n, kappa).numpy(), color=colour, lw=1.0, ls="--")
        mean_w, target = initializer_points(n, lam, num_classes, seed)
        ax.plot([mean_w], [lam], "o", color=colour, ms=7, mec="black", mew=0.6)
        ax.plot([target], [lam], "o", mfc="none", mec=colour, ms=11, mew=1.4)
    ax.axhline(lam, color="0.6", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel(r"$\kappa$")
    ax.set_ylabel(r"$I_{n/2}(\kappa)\,/\,I_{n/2-1}(\kappa)$")
    ax.set_title(
        f"Bessel ratio vs κ (seed 000 Fig. 2); points: initialiser at λ = {lam:g}\n"
        "solid: exact (Eq. 10 for n > 64), dashed: Eq. 10; ● mean ‖w̃_j‖ (Eq. 19), ○ κ* (Eq. 14)",
        fontsize=9,
    )
    ax.legend(fontsize=8, loc="upper left", ncol=1, frameon=False)
    ax.grid(True, which="major", lw=0.3, alpha=0.5)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=dpi)
    return out
