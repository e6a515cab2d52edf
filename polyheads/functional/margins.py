"""Margin functions on cosines, shared by every margin head (one implementation each).

``additive_angular_margin`` is the ArcFace target logit of seed 000 Eq. 4 / seed 002 Eq. 9,
``cos(θ + m)``, computed from ``cos θ`` without ``arccos`` so its gradient is finite at cos θ = ±1.
"""
from __future__ import annotations

import math

import torch

from .._checks import check_choice, check_float

__all__ = ["additive_angular_margin"]

ANGULAR_FALLBACKS = ("standard", "easy", "none")


def additive_angular_margin(cos: torch.Tensor, margin: float, fallback: str = "standard", eps: float = 1e-7) -> torch.Tensor:
    """``cos(θ + m)`` from ``cos θ`` (seed 000 Eq. 4; seed 002 Eq. 9), elementwise.

    Expands ``cos(θ+m) = cos θ cos m - sin θ sin m`` with ``sin θ = sqrt(max(1 - cos²θ, eps))``: no
    ``arccos``, and the clamp makes the derivative finite (zero) at cos θ = ±1 where
    d sin θ / d cos θ is infinite.

    ``θ + m > π`` is degenerate: ``cos(θ+m)`` increases again, so the loss pushes embeddings to the
    far side of the sphere (seed 000 App. E.3). ``fallback`` chooses the remedy for ``θ > π - m``:

    - ``"standard"`` (default, as insightface and the ArcFace paper's code): ``cos θ - m sin m``;
    - ``"easy"`` (``easy_margin``): apply the margin only where ``cos θ > 0``, else keep ``cos θ``;
    - ``"none"``: ``cos(θ + m)`` everywhere (the literal Eq. 4, non-monotonic past π - m).
    """
    m = check_float("margin", margin, minimum=0.0, maximum=math.pi, max_inclusive=False)
    check_choice("fallback", fallback, ANGULAR_FALLBACKS)
    if m == 0.0:
        return cos
    sin = torch.sqrt(torch.clamp(1.0 - cos * cos, min=eps))
    shifted = cos * math.cos(m) - sin * math.sin(m)
    if fallback == "none":
        return shifted
    if fallback == "easy":
        return torch.where(cos > 0, shifted, cos)
    threshold = math.cos(math.pi - m)  # θ > π - m  <=>  cos θ < cos(π - m)
    return torch.where(cos > threshold, shifted, cos - m * math.sin(m))
