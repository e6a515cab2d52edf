"""HYPERBOLIC: the Poincaré-ball softmax of seed 000 §2.2, Eq. 2 (Ganea et al. 2018, Khrulkov et al. 2020),
on geoopt.

Training needs a Riemannian optimiser for the class offsets ``p_y`` (``geoopt.ManifoldParameter``s);
geoopt's optimisers treat every other tensor as Euclidean, so one optimiser serves the whole model::

    optimizer = geoopt.optim.RiemannianSGD(model.parameters(), lr=0.01, momentum=0.9, stabilize=10)

(``polyheads.training.build_optimizer`` does this by itself when a model holds manifold parameters.)
A plain ``torch.optim.SGD`` moves the offsets along straight lines and out of the ball; the head then
refuses to run and says so.
"""
from __future__ import annotations

import math
import warnings
from typing import Any

import torch

with warnings.catch_warnings():  # geoopt decorates functions with the deprecated torch.jit.script at import
    warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
    import geoopt
from torch import nn

from .._checks import check_float
from ..functional.poincare import (
    clip_feature_norm,
    expmap0,
    poincare_distance,
    poincare_mlr_logits,
    stable_norm,
    transport_from_origin,
)
from ..registry import register_head
from .base import Head, _float32_math

__all__ = ["PoincareHead", "poincare_ball"]

#: geoopt clamps the tanh of ``expmap0`` at ``√c‖v‖ = 15``: clipping the tangent vector at ``15/√c`` changes
#: no value and keeps huge features from overflowing ``‖v‖`` (used when ``clip_r=None``).
_TANH_SATURATION = 15.0


def poincare_ball(c: float) -> geoopt.PoincareBall:
    """``geoopt.PoincareBall(c)`` whose curvature is ``c`` to the precision of its dtype.

    geoopt stores ``c`` as ``softplus⁻¹(c)`` and computes that inverse in the default dtype: in float32
    ``PoincareBall(1e-5).c`` is ``1.00135e-5`` (0.14 % off). Here the inverse is computed in float64 and
    rounded once (relative error ~1e-7 in float32).
    """
    c = check_float("c", c, minimum=0.0, min_inclusive=False)
    ball = geoopt.PoincareBall(c=c)
    with torch.no_grad():
        # softplus⁻¹(c) = log(e^c - 1) = c + log(1 - e^-c): no overflow for large c, no rounding for tiny c
        isp = c + math.log(-math.expm1(-c))
        ball.isp_c.copy_(torch.tensor(isp, dtype=torch.float64))
    return ball


@register_head("poincare", aliases=("hyperbolic",))
class PoincareHead(Head):
    """HYPERBOLIC -- seed 000 Eq. 2: ``p(y|z) ∝ exp((λ^c_{p_y}‖a_y‖/√c) asinh(2√c⟨-p_y ⊕_c z, a_y⟩ /
    ((1 - c‖-p_y ⊕_c z‖²)‖a_y‖)))``.

    Pipeline: features -> learnable embedding ``z̃ = W x + b`` (``in_features -> dim``) -> clip ``‖z̃‖`` to
    ``clip_r`` (Guo et al. 2022) -> ``z = expmap0_c(z̃)`` (geoopt, projected into the ball) -> Eq. 2.

    Args:
        c: curvature ``c > 0`` of the ball ``{c‖z‖² < 1}``; default ``1e-5``, the value of every
            HYPERBOLIC row of seed 000 Tables 5-11.
        clip_r: feature-clipping radius ``r > 0`` for ``z̃`` (Guo et al. 2022, "Clipped hyperbolic
            classifiers are super-hyperbolic classifiers"). ``z`` then stays within hyperbolic distance ``2r``
            of the origin, at Euclidean norm ``≤ tanh(√c r)/√c`` -- strictly inside the ball for every ``c``.
            Default ``1.0``: at ``c = 1`` it keeps ``1 - c‖z‖² ≥ 1 - tanh²(1) = 0.42`` (no vanishing gradient,
            no float32 trouble); at ``c = 1e-5`` it only bounds the feature norm (docs/hyperbolic.md).
            ``None`` disables clipping (seed 000 / Khrulkov et al.: geoopt's projection only).
        learn_c: only ``False``; a learned curvature is redundant and unstable here (docs/hyperbolic.md).

    Parameters: ``offsets`` ``p_y`` [K, dim] as ``geoopt.ManifoldParameter`` on ``self.ball``
    (initialised like Khrulkov et al.'s ``HyperbolicMLR``: ``expmap0`` of a Kaiming-uniform draw), and
    ``normals`` ``a'_y`` [K, dim], Euclidean tangent vectors at the origin, transported to ``p_y`` as
    ``a_y = (λ_0/λ_{p_y}) a'_y`` (Ganea et al. 2018 §3.1) -- so ``λ_{p_y}‖a_y‖ = 2‖a'_y‖``.

    ``embed`` returns ``z`` (the point in the ball); ``confidence`` returns ``‖z̃‖`` before clipping (the
    "‖z‖ prior to the projection step" of seed 000 Table 1 / Fig. 4); ``distance`` is the Poincaré geodesic
    distance (retrieval default, seed 000 Table 4; "+ cosine at test" is ``metric="cosine"`` on ``embed``,
    which equals the cosine of ``z̃`` since clipping and ``expmap0`` keep directions).
    """

    geometry = "hyperbolic"
    retrieval_metric = "poincare"

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        dim: int | None = None,
        *,
        c: float = 1e-5,
        clip_r: float | None = 1.0,
        learn_c: bool = False,
        embedding: bool = True,
    ) -> None:
        super().__init__(in_features, num_classes, dim, embedding=embedding)
        c = check_float("c", c, minimum=0.0, min_inclusive=False)
        if clip_r is not None:
            clip_r = check_float("clip_r", clip_r, minimum=0.0, min_inclusive=False)
        if learn_c:
            raise ValueError(
                "learn_c=True is not supported: the logits at curvature c equal c^(-1/2) times the logits at c=1 of "
                "the points scaled by sqrt(c), so a learned c only duplicates the embedding's scale and the normals' "
                "norms, and raising c moves the ball's boundary inward past the stored offsets p_y (NaN logits). "
                "Pick c by validation, as seed 000 does (Tables 5-11); see docs/hyperbolic.md"
            )
        self.clip_r = clip_r
        self.ball = poincare_ball(c)
        bound = 1.0 / math.sqrt(self.dim)  # kaiming_uniform_(a=sqrt(5)) of a [K, dim] matrix
        with torch.no_grad():
            start = self.ball.expmap0(torch.empty(self.num_classes, self.dim).uniform_(-bound, bound))
        self.offsets = geoopt.ManifoldParameter(start, manifold=self.ball)
        self.normals = nn.Parameter(torch.empty(self.num_classes, self.dim).uniform_(-bound, bound))

    # ------------------------------------------------------------------ attributes
    @property
    def c(self) -> float:
        """The curvature ``c`` (read from ``self.ball``, so a loaded checkpoint's curvature is the one used)."""
        return float(self.ball.c.detach())

    def normals_at_offsets(self) -> torch.Tensor:
        """``a_y = (λ_0/λ_{p_y}) a'_y = (1 - c‖p_y‖²) a'_y`` [K, dim] (Ganea et al. 2018 §3.1)."""
        return transport_from_origin(self.offsets, self.normals, self.ball.c)

    # ------------------------------------------------------------------ geometry
    def embedding_from_features(self, x: torch.Tensor) -> torch.Tensor:
        """``z = expmap0_c(clip_r(W x + b))``: the point in the Poincaré ball [B, dim]."""
        v = self.embedding(x)
        c = self.ball.c.to(v.dtype)
        radius = _TANH_SATURATION / c.sqrt() if self.clip_r is None else self.clip_r
        return expmap0(clip_feature_norm(v, radius), c)  # = self.ball.expmap0, without geoopt's branch on c

    def logits_from_embedding(self, z: torch.Tensor) -> torch.Tensor:
        """Seed 000 Eq. 2 for every class -> [B, K] (:func:`polyheads.functional.poincare_mlr_logits` with the
        normals transported from the origin). Offsets outside the ball (a Euclidean optimiser moved them)
        raise ``ValueError`` naming ``geoopt.optim.RiemannianSGD``."""
        return poincare_mlr_logits(z, self.offsets, self.normals, self.ball.c, a_at_origin=True)

    # ------------------------------------------------------------------ contract
    def confidence(self, features: torch.Tensor) -> torch.Tensor:
        """``‖z̃‖`` of the embedding before clipping and ``expmap0`` -- the norm seed 000 Table 1 scores for
        HYPERBOLIC (its Fig. 4 shows HYPERBOLIC embeddings "prior to the projection step").

        The distance of ``embed(x)`` to the origin is ``2 min(‖z̃‖, clip_r)`` (``d_c(0, expmap0(v)) = 2‖v‖``):
        the same ranking below ``clip_r``, but every clipped sample ties at ``2 clip_r``, so it would lose
        the signal exactly for the confident samples.
        """
        x = self._prepare(features)
        with _float32_math(x.device.type):
            return stable_norm(self.embedding(x), dim=1)

    def distance(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Pairwise Poincaré geodesic distances [N, M] between points of the ball (``embed`` outputs)."""
        return poincare_distance(x, y, self.ball.c.detach())

    def param_groups(self, temperature_lr: float | None = None) -> list[dict[str, Any]]:
        """The base groups with the manifold parameters (the offsets ``p_y``) in their own group
        ``{"name": "manifold", "riemannian": True}``: a model holding any must be optimised by
        ``geoopt.optim.RiemannianSGD``/``RiemannianAdam`` (which the engine's ``build_optimizer`` picks)."""
        manifold = [p for p in self.parameters() if isinstance(p, geoopt.ManifoldParameter) and p.requires_grad]
        ids = {id(p) for p in manifold}
        groups: list[dict[str, Any]] = []
        for group in super().param_groups(temperature_lr=temperature_lr):
            rest = [p for p in group["params"] if id(p) not in ids]
            if rest:
                groups.append({**group, "params": rest})
        if manifold:
            groups.append({"params": manifold, "name": "manifold", "riemannian": True})
        return groups

    def extra_repr_args(self) -> list[str]:
        return [f"c={self.c:.6g}", f"clip_r={self.clip_r}"]
