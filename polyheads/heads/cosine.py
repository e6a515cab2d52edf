"""COSINE (seed 000 Eq. 3, learned β = exp(τ), App. F) and NormFace (fixed scale)."""
from __future__ import annotations

import torch
from torch import nn

from ..functional import cosine_distance, cosine_logits
from ..registry import register_head
from .base import Head, InverseTemperature

__all__ = ["CosineHead", "NormFaceHead", "SphericalHead"]


class SphericalHead(Head):
    """Shared base of the spherical heads: unit-normalised class vectors ``w_j`` [K, dim], an inverse
    temperature β, cosine retrieval. ``cosines(z)`` gives cos θ_j [B, K]."""

    geometry = "spherical"
    retrieval_metric = "cosine"

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        dim: int | None = None,
        *,
        init_tau: float = 0.0,
        scale: float | None = None,
        embedding: bool = True,
    ) -> None:
        super().__init__(in_features, num_classes, dim, embedding=embedding)
        self.weight = nn.Parameter(torch.empty(self.num_classes, self.dim))
        nn.init.xavier_uniform_(self.weight)
        self.temperature = InverseTemperature(init_tau=init_tau, scale=scale)

    @property
    def beta(self) -> torch.Tensor:
        """The inverse temperature β = exp(τ)."""
        return self.temperature()

    def cosines(self, z: torch.Tensor) -> torch.Tensor:
        """cos θ_j between each embedding and each class vector -> [B, K]."""
        return cosine_logits(z, self.weight)

    def logits_from_embedding(self, z: torch.Tensor) -> torch.Tensor:
        """``β cos θ_j`` -- seed 000 Eq. 3."""
        return self.beta * self.cosines(z)

    def distance(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Cosine distance ``1 - cos`` (the spherical heads' retrieval metric, seed 000 Table 4)."""
        return cosine_distance(x, y)

    def extra_repr_args(self) -> list[str]:
        return [f"beta={float(self.beta.detach()):.4g}", f"learn_beta={self.temperature.learned}"]


@register_head("cosine")
class CosineHead(SphericalHead):
    """COSINE -- seed 000 Eq. 3: ``p(y|z) ∝ exp(β cos θ_y)`` with ``β = exp(τ)`` learned (App. F).

    ``init_tau`` is τ's initial value (0 for fixed-set tasks, 2.773 or 3.466 in seed 000 Tables 9-11);
    τ has its own parameter group (``param_groups(temperature_lr=...)``). Pass ``scale=`` to fix β.
    """


@register_head("normface")
class NormFaceHead(SphericalHead):
    """NormFace (Wang et al. 2017, seed 000 ref. [66]): cosine logits with a fixed scale β = ``scale``
    (default 16)."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        dim: int | None = None,
        *,
        scale: float = 16.0,
        embedding: bool = True,
    ) -> None:
        super().__init__(in_features, num_classes, dim, scale=scale, embedding=embedding)
