"""FaceNet's triplet loss as a head (seed 001), with class logits from running class centroids."""
from __future__ import annotations

import torch

from .._checks import check_choice, check_float
from ..distributed.comm import gather_rows_nograd, syncing_state
from ..functional import cosine_distance, cosine_logits, l2_normalize
from ..functional.margins import TRIPLET_MINING, triplet_loss
from ..registry import register_head
from .base import Head, InverseTemperature

__all__ = ["TripletHead"]


@register_head("triplet")
class TripletHead(Head):
    """FaceNet (seed 001): ``[‖a − p‖² − ‖a − n‖² + α]_+`` on L2-normalised embeddings, averaged over
    the triplets mined online inside the batch. Spherical geometry, cosine retrieval.

    Args:
        margin: α >= 0 (default 0.2, FaceNet).
        mining: ``"semihard"`` (default; FaceNet's ``d_ap < d_an < d_ap + α``, the hardest such
            negative per anchor–positive pair, falling back to the hardest negative when the pair has
            none), ``"hard"`` (per anchor the hardest positive and hardest negative) or ``"all"``.
            See :func:`polyheads.functional.mine_triplets`.
        scale: the fixed β of the class logits (default 16; the triplet loss does not train it).
        centroid_momentum: the centroids' running-mean rate μ, as BatchNorm's ``momentum``:
            ``c_j ← (1 − μ) c_j + μ mean_batch(ẑ | y = j)`` (a class's first batch sets it directly);
            ``None`` keeps the cumulative mean of every embedding seen.

    ``forward`` returns ``β cos(z, c_j)`` to per-class centroids ``c_j`` of the normalised embeddings:
    buffers, updated after each :meth:`loss` in training mode with gradients enabled, so accuracy,
    calibration and timm's API work. Classes not seen yet have a zero centroid (logit 0).
    Batches need ≥ 2 samples of some class and ≥ 2 classes (an N×K episodic sampler); otherwise
    :meth:`loss` raises ``ValueError``. With an initialised process group (DDP) the centroid update
    uses every rank's batch (all-gathered), so the centroids stay equal on all ranks; the triplets are
    still mined inside each rank's own batch.
    """

    geometry = "spherical"
    retrieval_metric = "cosine"

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        dim: int | None = None,
        *,
        margin: float = 0.2,
        mining: str = "semihard",
        scale: float = 16.0,
        centroid_momentum: float | None = 0.1,
        embedding: bool = True,
    ) -> None:
        super().__init__(in_features, num_classes, dim, embedding=embedding)
        self.margin = check_float("margin", margin, minimum=0.0)
        self.mining = check_choice("mining", mining, TRIPLET_MINING)
        self.temperature = InverseTemperature(scale=scale)
        if centroid_momentum is not None:
            centroid_momentum = check_float("centroid_momentum", centroid_momentum, minimum=0.0, maximum=1.0, min_inclusive=False)
        self.centroid_momentum = centroid_momentum
        self.register_buffer("centroids", torch.zeros(self.num_classes, self.dim))
        self.register_buffer("centroid_counts", torch.zeros(self.num_classes, dtype=torch.long))

    @property
    def beta(self) -> torch.Tensor:
        """The fixed inverse temperature β of the centroid logits."""
        return self.temperature()

    def logits_from_embedding(self, z: torch.Tensor) -> torch.Tensor:
        """``β cos θ_j`` between z and the class centroids -> [B, K]."""
        return self.beta * cosine_logits(z, self.centroids.to(z.dtype))

    def loss_from_embedding(self, z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """FaceNet's loss on ``ẑ = z / ‖z‖``; then the centroid update in training mode."""
        z_hat = l2_normalize(z)
        value = triplet_loss(z_hat, target, self.margin, self.mining)
        if self.training and torch.is_grad_enabled():
            if syncing_state():  # every rank's embeddings: the centroids stay equal on all ranks
                self._update_centroids(gather_rows_nograd(z_hat.detach()), gather_rows_nograd(target))
            else:
                self._update_centroids(z_hat.detach(), target)
        return value

    @torch.no_grad()
    def _update_centroids(self, z_hat: torch.Tensor, target: torch.Tensor) -> None:
        classes, inverse, counts = torch.unique(target, return_inverse=True, return_counts=True)
        z_hat = z_hat.to(self.centroids.dtype)
        means = torch.zeros(classes.shape[0], z_hat.shape[1], dtype=z_hat.dtype, device=z_hat.device)
        means.index_add_(0, inverse, z_hat).div_(counts.unsqueeze(1).to(z_hat.dtype))
        seen = self.centroid_counts.index_select(0, classes)
        old = self.centroids.index_select(0, classes)
        if self.centroid_momentum is None:
            rate = counts.to(z_hat.dtype) / (seen + counts).to(z_hat.dtype)
        else:
            rate = torch.full(seen.shape, self.centroid_momentum, dtype=z_hat.dtype, device=z_hat.device).masked_fill_(seen == 0, 1.0)
        self.centroids.index_copy_(0, classes, old + rate.unsqueeze(1) * (means - old))
        self.centroid_counts.index_add_(0, classes, counts)

    def distance(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Cosine distance ``1 − cos`` (spherical retrieval)."""
        return cosine_distance(x, y)

    def extra_repr_args(self) -> list[str]:
        momentum = "None" if self.centroid_momentum is None else f"{self.centroid_momentum:.4g}"
        return [f"m={self.margin:.4g}", f"mining={self.mining!r}", f"beta={float(self.beta.detach()):.4g}", f"centroid_momentum={momentum}"]
