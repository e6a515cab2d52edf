"""Spherical margin heads: ARCFACE (seed 000 Eq. 4, App. E.3), CosFace, SphereFace (seed 001 A-Softmax).

All three are COSINE heads (unit class vectors ``w_j``, β = exp(τ) learned by default or fixed with
``scale=``) whose *training* objective penalises the target class:

=============  ==========================================  ======================================
head           target logit (training)                     other logits
=============  ==========================================  ======================================
``arcface``    β cos(θ_y + m)                              β cos θ_j
``cosface``    β (cos θ_y − m)                             β cos θ_j
``sphereface`` β ‖z‖ (λ cos θ_y + ψ_m(θ_y)) / (1 + λ)       β ‖z‖ cos θ_j
=============  ==========================================  ======================================

The margin is applied only in :meth:`loss` / :meth:`training_logits`; ``forward()`` returns the plain
logits (``β cos θ_j``, SphereFace ``β ‖z‖ cos θ_j``) used for accuracy and calibration, as seed 000
evaluates ARCFACE.

Margin warm-up (seed 000 App. E.3, the "m = 0 Epochs" column of Tables 5-11): with
``margin_warmup_epochs=E`` the margin is off (ArcFace/CosFace m = 0, SphereFace m = 1) while the
epoch given to :meth:`on_epoch_start` is < E. Epochs are 0-based; a head that has not been told an
epoch behaves as in epoch 0, so with E > 0 it starts without margin. The trainer calls the hook;
a hand-written loop calls ``head.on_epoch_start(epoch)`` itself.
"""
from __future__ import annotations

import functools
from typing import Callable

import torch

from .._checks import check_choice, check_float, check_int
from ..functional import l2_normalize
from ..functional.margins import (
    ANGULAR_FALLBACKS,
    additive_angular_margin,
    check_angular_multiplier,
    cosine_margin,
    margin_cross_entropy,
    margin_cross_entropy_from_logits,
    margin_logits,
    sphereface_lambda,
    sphereface_psi,
)
from ..registry import register_head
from .cosine import SphericalHead

__all__ = ["MarginHead", "ArcFaceHead", "CosFaceHead", "SphereFaceHead"]

TargetFn = Callable[[torch.Tensor], torch.Tensor]


def _identity(cos: torch.Tensor) -> torch.Tensor:
    return cos


class MarginHead(SphericalHead):
    """Shared base of the margin heads: the warm-up hook, label-aware logits and the fused loss.

    Subclasses implement :meth:`margin_function` (the target cosine's map, elementwise) and set
    ``keep_norm`` when the row scale includes ‖z‖ (SphereFace).
    """

    keep_norm = False
    #: the margin value that means "no margin" (ArcFace/CosFace 0, SphereFace 1)
    no_margin: float = 0.0

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        dim: int | None = None,
        *,
        margin: float,
        margin_warmup_epochs: int = 0,
        init_tau: float = 0.0,
        scale: float | None = None,
        embedding: bool = True,
    ) -> None:
        super().__init__(in_features, num_classes, dim, init_tau=init_tau, scale=scale, embedding=embedding)
        self.margin = self.check_margin(margin)
        self.margin_warmup_epochs = check_int("margin_warmup_epochs", margin_warmup_epochs, minimum=0)
        self.epoch = 0

    # ------------------------------------------------------------------ to implement
    @staticmethod
    def check_margin(margin: float) -> float:
        """Validate the constructor's ``margin`` (``ValueError`` naming it)."""
        return check_float("margin", margin, minimum=0.0)

    def margin_function(self) -> TargetFn:
        """The map ``cos θ_y -> target value`` with the margin on (before the row scale)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ warm-up
    def on_epoch_start(self, epoch: int) -> None:
        """Record the (0-based) epoch; the margin is off while ``epoch < margin_warmup_epochs``."""
        self.epoch = check_int("epoch", epoch, minimum=0)

    @property
    def margin_active(self) -> bool:
        """Whether the margin is applied now (False during the warm-up epochs)."""
        return self.epoch >= self.margin_warmup_epochs

    @property
    def current_margin(self) -> float:
        """The margin in effect now: ``margin``, or the no-margin value during warm-up."""
        return self.margin if self.margin_active else self.no_margin

    def target_function(self) -> TargetFn:
        """The target map in effect now (identity during the warm-up)."""
        return self.margin_function() if self.margin_active else _identity

    # ------------------------------------------------------------------ logits and loss
    def training_logits(self, z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Label-aware logits [B, K]: the margin on the target entry (see the module table)."""
        return margin_logits(z, self.weight, target, self.target_function(), self.beta, keep_norm=self.keep_norm)

    def loss_from_embedding(self, z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of :meth:`training_logits` (fused: ``functional.margin_cross_entropy``)."""
        return margin_cross_entropy(z, self.weight, target, self.target_function(), self.beta, keep_norm=self.keep_norm)

    # ------------------------------------------------------------------ the objective from returned logits (HeadLoss)
    @property
    def loss_needs_embedding(self) -> bool:
        """Only when the row scale holds ‖z‖ (SphereFace): β cos θ alone gives cos θ_y = logit_y / β."""
        return self.keep_norm

    def loss_from_logits(
        self,
        logits: torch.Tensor,
        target: torch.Tensor,
        embedding: torch.Tensor | None = None,
        *,
        label_smoothing: float = 0.0,
    ) -> torch.Tensor:
        """The margin applied to the logits ``forward`` returned: cos θ_y = logit_y / s with s = β (β ‖z‖ for
        SphereFace), target logit s f(cos θ_y) -- the value and gradients of :meth:`loss_from_embedding`."""
        scale = self.beta
        if self.keep_norm:
            if embedding is None:
                raise ValueError(f"{type(self).__name__}.loss_from_logits needs the embedding z of the forward (its ‖z‖)")
            scale = scale * torch.linalg.vector_norm(embedding, dim=1)
        return margin_cross_entropy_from_logits(logits, target, self.target_function(), scale, label_smoothing)

    def soft_target_refusal(self) -> str | None:
        return "the margin acts on the one target class's logit (cos θ_y -> f(cos θ_y)); a probability target has no single y"

    def label_smoothing_refusal(self) -> str | None:
        return None

    def extra_repr_args(self) -> list[str]:
        parts = [f"m={self.margin:.4g}", *super().extra_repr_args()]
        if self.margin_warmup_epochs:
            parts.append(f"margin_warmup_epochs={self.margin_warmup_epochs}")
        return parts


@register_head("arcface")
class ArcFaceHead(MarginHead):
    """ARCFACE -- seed 000 Eq. 4: ``p(y|z) ∝ exp(β cos(θ_y + m))`` against ``exp(β cos θ_j)``.

    Args:
        margin: additive angular margin m in [0, π) (default 0.5: ArcFace paper, seed 000 Tables 5-6;
            0.3-0.4 in Tables 7-11).
        margin_warmup_epochs: epochs with m = 0 first (seed 000 App. E.3: 20-100 on the fixed-set
            data, 0 on open-set); default 0.
        fallback: remedy for θ_y > π − m where cos(θ + m) turns up again: ``"standard"`` (default,
            ``cos θ − m sin m`` as insightface), ``"easy"`` (margin only where cos θ > 0) or
            ``"none"`` (literal Eq. 4). See :func:`polyheads.functional.additive_angular_margin`.
        init_tau: initial τ of the learned β = exp(τ) (seed 000 App. F; 0.0, or 2.773 / 3.466 for
            open-set in Tables 9-11). ``scale``: a fixed β instead (ArcFace paper: 64).

    ``cos(θ + m)`` is computed without ``arccos`` (finite gradient at cos θ = ±1).
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        dim: int | None = None,
        *,
        margin: float = 0.5,
        margin_warmup_epochs: int = 0,
        fallback: str = "standard",
        init_tau: float = 0.0,
        scale: float | None = None,
        embedding: bool = True,
    ) -> None:
        fallback = check_choice("fallback", fallback, ANGULAR_FALLBACKS)
        super().__init__(
            in_features,
            num_classes,
            dim,
            margin=margin,
            margin_warmup_epochs=margin_warmup_epochs,
            init_tau=init_tau,
            scale=scale,
            embedding=embedding,
        )
        self.fallback = fallback

    @staticmethod
    def check_margin(margin: float) -> float:
        return check_float("margin", margin, minimum=0.0, maximum=torch.pi, max_inclusive=False)

    def margin_function(self) -> TargetFn:
        return functools.partial(additive_angular_margin, margin=self.margin, fallback=self.fallback)

    def extra_repr_args(self) -> list[str]:
        parts = super().extra_repr_args()
        if self.fallback != "standard":
            parts.append(f"fallback={self.fallback!r}")
        return parts


@register_head("cosface")
class CosFaceHead(MarginHead):
    """CosFace / AM-Softmax (seed 000 refs. [67], [65]): target logit ``β (cos θ_y − m)``.

    Args: ``margin`` m >= 0 (default 0.35, the CosFace paper), ``margin_warmup_epochs``,
    ``init_tau`` / ``scale`` as for ``arcface`` (CosFace paper: fixed scale 64).
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        dim: int | None = None,
        *,
        margin: float = 0.35,
        margin_warmup_epochs: int = 0,
        init_tau: float = 0.0,
        scale: float | None = None,
        embedding: bool = True,
    ) -> None:
        super().__init__(
            in_features,
            num_classes,
            dim,
            margin=margin,
            margin_warmup_epochs=margin_warmup_epochs,
            init_tau=init_tau,
            scale=scale,
            embedding=embedding,
        )

    def margin_function(self) -> TargetFn:
        return functools.partial(cosine_margin, margin=self.margin)


LAMBDA_SCHEDULES = ("step", "epoch")


@register_head("sphereface")
class SphereFaceHead(MarginHead):
    """SphereFace's A-Softmax (seed 001): weights normalised, the feature norm kept.

    Training target logit ``β ‖z‖ (λ cos θ_y + ψ_m(θ_y)) / (1 + λ)``, others ``β ‖z‖ cos θ_j``, with
    ``ψ_m(θ) = (−1)^k cos(mθ) − 2k`` on θ ∈ [kπ/m, (k+1)π/m] (:func:`~polyheads.functional.sphereface_psi`).
    ``m = 1`` is the modified softmax.

    Args:
        margin: the integer angular multiplier m >= 1 (default 4, the SphereFace paper).
        scale: fixed β (default 1.0: the paper has none, ‖z‖ is the scale); ``scale=None`` learns
            β = exp(τ) from ``init_tau``.
        lambda_base, lambda_gamma, lambda_power, lambda_min: the λ annealing
            ``λ = max(λ_min, base (1 + γ t)^(−power))`` (:func:`~polyheads.functional.sphereface_lambda`);
            defaults 1000, 0.12, 1, 5 are the SphereFace authors' training settings, with t counted in
            optimisation steps. ``lambda_base=0, lambda_min=0`` gives pure A-Softmax.
        lambda_schedule: ``"step"`` (default): t = number of :meth:`loss` calls in training mode with
            gradients enabled (a buffer, saved in the ``state_dict``); ``"epoch"``: t = the epoch given to
            :meth:`on_epoch_start` (choose ``lambda_gamma`` per epoch then).
        margin_warmup_epochs: epochs with m = 1 (no margin) first; default 0.
    """

    keep_norm = True
    no_margin = 1

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        dim: int | None = None,
        *,
        margin: int = 4,
        margin_warmup_epochs: int = 0,
        init_tau: float = 0.0,
        scale: float | None = 1.0,
        lambda_base: float = 1000.0,
        lambda_gamma: float = 0.12,
        lambda_power: float = 1.0,
        lambda_min: float = 5.0,
        lambda_schedule: str = "step",
        embedding: bool = True,
    ) -> None:
        super().__init__(
            in_features,
            num_classes,
            dim,
            margin=margin,
            margin_warmup_epochs=margin_warmup_epochs,
            init_tau=init_tau,
            scale=scale,
            embedding=embedding,
        )
        self.lambda_base = check_float("lambda_base", lambda_base, minimum=0.0)
        self.lambda_gamma = check_float("lambda_gamma", lambda_gamma, minimum=0.0)
        self.lambda_power = check_float("lambda_power", lambda_power, minimum=0.0)
        self.lambda_min = check_float("lambda_min", lambda_min, minimum=0.0)
        self.lambda_schedule = check_choice("lambda_schedule", lambda_schedule, LAMBDA_SCHEDULES)
        self.register_buffer("num_steps", torch.zeros((), dtype=torch.long))

    @staticmethod
    def check_margin(margin: float) -> int:  # type: ignore[override]
        return check_angular_multiplier(margin, "margin")

    @property
    def current_lambda(self) -> float | torch.Tensor:
        """λ now: from the step buffer (a 0-d tensor, no device sync) or the epoch."""
        t: int | torch.Tensor = self.epoch if self.lambda_schedule == "epoch" else self.num_steps.to(self.weight.dtype)
        return sphereface_lambda(t, self.lambda_base, self.lambda_gamma, self.lambda_power, self.lambda_min)

    def margin_function(self) -> TargetFn:
        lam = self.current_lambda
        m = int(self.margin)

        def blended(cos: torch.Tensor) -> torch.Tensor:
            return (lam * cos + sphereface_psi(cos, m)) / (1.0 + lam)

        return blended

    def logits_from_embedding(self, z: torch.Tensor) -> torch.Tensor:
        """``β ‖z‖ cos θ_j`` (the modified-softmax logits, seed 001)."""
        return self.beta * (z @ l2_normalize(self.weight).t())

    def loss_from_embedding(self, z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        value = super().loss_from_embedding(z, target)
        self._count_step()
        return value

    def loss_from_logits(
        self,
        logits: torch.Tensor,
        target: torch.Tensor,
        embedding: torch.Tensor | None = None,
        *,
        label_smoothing: float = 0.0,
    ) -> torch.Tensor:
        value = super().loss_from_logits(logits, target, embedding, label_smoothing=label_smoothing)
        self._count_step()
        return value

    def _count_step(self) -> None:
        """One optimisation step of the λ schedule: a loss in training mode with gradients enabled."""
        if self.training and torch.is_grad_enabled():
            self.num_steps.add_(1)

    def extra_repr_args(self) -> list[str]:
        parts = super().extra_repr_args()
        parts[0] = f"m={int(self.margin)}"
        parts.append(f"lambda={float(self.current_lambda):.4g}")
        return parts
