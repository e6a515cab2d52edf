"""Center Loss (seed 001): softmax plus a pull of each embedding towards its class centre."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._checks import check_float
from ..distributed.comm import gather_rows_nograd, syncing_state
from ..functional.margins import center_delta, center_loss
from ..registry import register_head
from .standard import StandardHead

__all__ = ["CenterLossHead"]


@register_head("center")
class CenterLossHead(StandardHead):
    """Joint supervision of seed 001 (Wen et al. 2016), Euclidean geometry:

        L = L_S + λ L_C,   L_C = ½ Σ_i ‖z_i − c_{y_i}‖²,

    with ``L_S`` the softmax cross-entropy of the STANDARD logits ``w_j^T z`` (seed 000 Eq. 1; no bias,
    seed 000's head shape). Both terms are divided by the batch size (means over the batch; the
    seed writes sums), so λ keeps the seed's meaning relative to the softmax term.

    The centres ``c_j`` [K, dim] are a buffer (in the ``state_dict``, never a parameter, never in
    :meth:`param_groups`), initialised to zero and moved by seed 001's rule after each training
    :meth:`loss` (computed with the centres before the step):

        Δc_j = Σ_i δ(y_i = j)(c_j − z_i) / (1 + Σ_i δ(y_i = j)),   c_j ← c_j − α Δc_j,

    only when the head is in training mode *and* gradients are enabled (never inside
    ``torch.no_grad()`` evaluation).

    Args:
        lam: λ >= 0, the centre-loss weight (default 0.003, Wen et al.'s face setting).
        alpha: α in [0, 1], the centres' rate (default 0.5, Wen et al.).

    ``forward`` returns the STANDARD logits; confidence ‖z‖, Euclidean retrieval (seed 000 Table 1/4).
    With an initialised process group (DDP) the centre step uses every rank's batch (the embeddings
    and labels are all-gathered), so the centres stay equal on all ranks and equal to one process's
    step on the concatenated batch; ``polyheads.distributed.local_state()`` turns that off.
    """

    geometry = "euclidean"
    retrieval_metric = "euclidean"

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        dim: int | None = None,
        *,
        lam: float = 0.003,
        alpha: float = 0.5,
        embedding: bool = True,
    ) -> None:
        super().__init__(in_features, num_classes, dim, embedding=embedding)
        self.lam = check_float("lam", lam, minimum=0.0)
        self.alpha = check_float("alpha", alpha, minimum=0.0, maximum=1.0)
        self.register_buffer("centers", torch.zeros(self.num_classes, self.dim))

    def loss_from_embedding(self, z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``CE(w_j^T z) + λ · ½ mean_i ‖z_i − c_{y_i}‖²``, then the centre step in training mode."""
        centers = self.centers.to(z.dtype)
        value = F.cross_entropy(self.logits_from_embedding(z), target)
        if self.lam:
            value = value + self.lam * center_loss(z, centers, target)
        if self.training and torch.is_grad_enabled() and self.alpha:
            if syncing_state():  # seed 001's step over the global batch, identical on every rank
                z, target = gather_rows_nograd(z.detach()), gather_rows_nograd(target)
            classes, delta = center_delta(self.centers, z, target)
            self.centers.index_add_(0, classes, delta, alpha=-self.alpha)
        return value

    def extra_repr_args(self) -> list[str]:
        return [f"lambda={self.lam:.4g}", f"alpha={self.alpha:.4g}"]
