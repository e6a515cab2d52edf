"""STANDARD: the dot-product softmax of seed 000 Eq. 1 (Euclidean geometry)."""
from __future__ import annotations

import torch
from torch import nn

from ..registry import register_head
from .base import Head

__all__ = ["StandardHead"]


@register_head("standard", aliases=("softmax",))
class StandardHead(Head):
    """``p(y|z) ∝ exp(w_y^T z)`` -- seed 000 Eq. 1; seed 001's N-way softmax (DeepID).

    Embedding ``in_features -> dim``, then ``W: dim -> num_classes`` without bias.
    Confidence is ‖z‖ (seed 000 Table 1), retrieval uses the Euclidean distance (Table 4).
    """

    geometry = "euclidean"
    retrieval_metric = "euclidean"

    def __init__(self, in_features: int, num_classes: int, dim: int | None = None, *, embedding: bool = True) -> None:
        super().__init__(in_features, num_classes, dim, embedding=embedding)
        self.weight = nn.Parameter(torch.empty(self.num_classes, self.dim))
        nn.init.xavier_uniform_(self.weight)

    def logits_from_embedding(self, z: torch.Tensor) -> torch.Tensor:
        """``w_j^T z`` for every class -> [B, K]."""
        return z @ self.weight.t()
