"""Spherical geometry: normalisation and cosine logits (seed 000 Eq. 3, seed 002 Eq. 6/8)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["l2_normalize", "cosine_logits", "cosine_distance"]


def l2_normalize(x: torch.Tensor, dim: int = -1, eps: float = 1e-12) -> torch.Tensor:
    """``x / max(||x||, eps)`` along ``dim`` (``torch.nn.functional.normalize``)."""
    return F.normalize(x, p=2.0, dim=dim, eps=eps)


def cosine_logits(z: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """cos θ_j between every row of ``z`` [B, d] and every class vector ``weight`` [K, d] -> [B, K].

    Seed 000 Eq. 3 before the inverse temperature β: ``cos θ_j = z^T w_j / (||z|| ||w_j||)``.
    """
    return l2_normalize(z) @ l2_normalize(weight).transpose(0, 1)


def cosine_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pairwise cosine distance ``1 - cos`` between rows of ``x`` [N, d] and ``y`` [M, d] -> [N, M]."""
    return 1.0 - cosine_logits(x, y)
