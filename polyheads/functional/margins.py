"""Margin functions on cosines and the face-recognition baselines' math, shared by every margin head.

One implementation each, all pure tensor functions:

- target-logit margins on ``cos θ_y``: :func:`additive_angular_margin` (ArcFace, seed 000 Eq. 4 /
  seed 002 Eq. 9), :func:`cosine_margin` (CosFace), :func:`sphereface_psi` (SphereFace's A-Softmax
  ψ, seed 001) and :func:`sphereface_lambda` (its λ-annealing schedule);
- :func:`margin_logits` / :func:`margin_cross_entropy`: normalised-softmax logits with the target
  column replaced by a margin function; the cross-entropy is one fused autograd function (the margin
  only touches the B target entries, not the whole [B, K] matrix);
- Center Loss (seed 001): :func:`center_loss` and the centre step :func:`center_delta`;
- FaceNet's triplet loss (seed 001): :func:`pairwise_squared_distances`, :func:`mine_triplets`
  (semi-hard / hard / all online mining) and :func:`triplet_loss`.

Numerics: nothing here calls ``arccos``. ArcFace expands ``cos(θ + m)``, SphereFace evaluates
``cos(mθ)`` as the Chebyshev polynomial ``T_m(cos θ)`` and finds its branch ``k`` by comparing
``cos θ`` with ``cos(jπ/m)``; every gradient is finite at ``cos θ = ±1``.
"""
from __future__ import annotations

import math
import numbers
from typing import Callable

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .._checks import check_choice, check_finite, check_float, check_target, check_tensor

__all__ = [
    "additive_angular_margin",
    "cosine_margin",
    "chebyshev_cos_multiple",
    "sphereface_psi",
    "sphereface_lambda",
    "check_angular_multiplier",
    "margin_logits",
    "margin_cross_entropy",
    "margin_cross_entropy_from_logits",
    "center_loss",
    "center_delta",
    "pairwise_squared_distances",
    "mine_triplets",
    "triplet_loss",
    "ANGULAR_FALLBACKS",
    "TRIPLET_MINING",
]

ANGULAR_FALLBACKS = ("standard", "easy", "none")
TRIPLET_MINING = ("semihard", "hard", "all")

TargetFn = Callable[[torch.Tensor], torch.Tensor]

_NO_TRIPLET_HINT = (
    "use an episodic N×K batch sampler (N classes × K >= 2 samples of each per batch, seed 000 App. E.2; "
    "polyheads.training.sampler.EpisodicBatchSampler) "
    "so that every anchor has a positive and a negative"
)


# ---------------------------------------------------------------------------------------------
# target-logit margins
# ---------------------------------------------------------------------------------------------
def additive_angular_margin(cos: torch.Tensor, margin: float, fallback: str = "standard", eps: float = 1e-7) -> torch.Tensor:
    """``cos(θ + m)`` from ``cos θ`` (seed 000 Eq. 4; seed 002 Eq. 9), elementwise.

    Expands ``cos(θ+m) = cos θ cos m - sin θ sin m`` with ``sin θ = sqrt(1 - cos²θ)``: no ``arccos``.
    The value is exact; the gradient of ``sin θ`` is taken through ``sqrt(max(1 - cos²θ, eps))``, so
    the derivative is finite (``cos m``) at cos θ = ±1 where d sin θ / d cos θ is infinite
    (pytorch-metric-learning differentiates ``arccos`` there; insightface's ``sqrt(1 - cos²)`` has the
    same infinity). Clamping the *value* instead would bend ``cos(θ + m)`` upwards near θ = 0 for
    m > π/2 (it would no longer decrease in θ).

    ``θ + m > π`` is degenerate: ``cos(θ+m)`` increases again, so the loss pushes embeddings to the
    far side of the sphere (seed 000 App. E.3). ``fallback`` chooses the remedy for ``θ > π - m``:

    - ``"standard"`` (default, as insightface and the ArcFace paper's code): ``cos θ - m sin m``, which
      keeps the target logit strictly decreasing in θ on [0, π] (with a downward step at π - m);
    - ``"easy"`` (``easy_margin``): apply the margin only where ``cos θ > 0``, else keep ``cos θ``;
    - ``"none"``: ``cos(θ + m)`` everywhere (the literal Eq. 4, non-monotonic past π - m).
    """
    check_tensor("cos", cos, floating=True)
    m = check_float("margin", margin, minimum=0.0, maximum=math.pi, max_inclusive=False)
    check_choice("fallback", fallback, ANGULAR_FALLBACKS)
    if m == 0.0:
        return cos
    sin = _sqrt_finite_grad(1.0 - cos * cos, eps)
    shifted = cos * math.cos(m) - sin * math.sin(m)
    if fallback == "none":
        return shifted
    if fallback == "easy":
        return torch.where(cos > 0, shifted, cos)
    threshold = math.cos(math.pi - m)  # θ > π - m  <=>  cos θ < cos(π - m)
    return torch.where(cos > threshold, shifted, cos - m * math.sin(m))


def _sqrt_finite_grad(x: torch.Tensor, eps: float) -> torch.Tensor:
    """``sqrt(max(x, 0))`` whose gradient is that of ``sqrt(max(x, eps))`` (finite; zero where x < eps)."""
    soft = torch.sqrt(torch.clamp(x, min=eps))
    exact = torch.sqrt(torch.clamp(x.detach(), min=0.0))
    return exact + (soft - soft.detach())


def _clamp_value(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """``x`` clamped to [lo, hi] in value with the identity gradient (a rounding guard, e.g. a cosine
    computed as 1 + 1e-7, that must not zero the gradient at the boundary)."""
    return x + (x.detach().clamp(lo, hi) - x.detach())


def cosine_margin(cos: torch.Tensor, margin: float) -> torch.Tensor:
    """CosFace's additive cosine margin ``cos θ - m`` (Wang et al. 2018, seed 000 ref. [67]; AM-Softmax
    [65]), elementwise. ``margin >= 0``."""
    check_tensor("cos", cos, floating=True)
    m = check_float("margin", margin, minimum=0.0)
    return cos - m if m else cos


def check_angular_multiplier(value: object, name: str = "margin") -> int:
    """SphereFace's multiplicative angular margin ``m``: an integer >= 1 (seed 001, A-Softmax).

    Integral floats (``4.0``) are accepted; ``2.5`` raises ``ValueError``; non-numbers ``TypeError``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be an integer >= 1 (SphereFace's angular multiplier), got {type(value).__name__} {value!r}")
    as_float = float(value)
    if not math.isfinite(as_float) or not as_float.is_integer():
        raise ValueError(f"{name} must be an integer >= 1 (SphereFace's angular multiplier m in cos(mθ)), got {value!r}")
    m = int(as_float)
    if m < 1:
        raise ValueError(f"{name} must be an integer >= 1 (SphereFace's angular multiplier), got {m}")
    return m


def chebyshev_cos_multiple(cos: torch.Tensor, m: int) -> torch.Tensor:
    """``cos(mθ) = T_m(cos θ)``, the Chebyshev polynomial of the first kind, by the recurrence
    ``T_{n+1}(x) = 2x T_n(x) - T_{n-1}(x)``: a polynomial, so its gradient is finite everywhere."""
    m = check_angular_multiplier(m, "m")
    previous, current = torch.ones_like(cos), cos
    for _ in range(m - 1):
        previous, current = current, 2.0 * cos * current - previous
    return current


def sphereface_psi(cos: torch.Tensor, margin: int = 4) -> torch.Tensor:
    """SphereFace's target function ψ(θ) from ``cos θ`` (seed 001, A-Softmax loss), elementwise:

        ψ(θ) = (-1)^k cos(mθ) - 2k   for θ ∈ [kπ/m, (k+1)π/m],  k ∈ {0, …, m-1},

    continuous and strictly decreasing from ψ(0) = 1 to ψ(π) = 1 - 2m; ``m = 1`` gives ``cos θ``
    (the modified softmax). ``cos(mθ)`` is the Chebyshev polynomial ``T_m(cos θ)``; the branch ``k``
    counts the thresholds ``cos θ <= cos(jπ/m)``, j = 1..m-1 (piecewise constant, no gradient), so no
    ``arccos`` is needed and dψ/dcos θ = (-1)^k T_m'(cos θ) is finite at cos θ = ±1.
    """
    check_tensor("cos", cos, floating=True)
    m = check_angular_multiplier(margin)
    c = _clamp_value(cos, -1.0, 1.0)
    value = chebyshev_cos_multiple(c, m)
    if m == 1:
        return value
    with torch.no_grad():
        k = torch.zeros_like(c)
        for j in range(1, m):
            k += (c <= math.cos(j * math.pi / m)).to(c.dtype)
        sign = 1.0 - 2.0 * torch.remainder(k, 2.0)
    return sign * value - 2.0 * k


def sphereface_lambda(
    step: int | float | torch.Tensor,
    base: float = 1000.0,
    gamma: float = 0.12,
    power: float = 1.0,
    minimum: float = 5.0,
) -> float | torch.Tensor:
    """SphereFace's annealing weight ``λ = max(λ_min, base · (1 + γ t)^(-power))`` at step ``t``.

    The blended target logit is ``‖x‖ (λ cos θ_y + ψ(θ_y)) / (1 + λ)``: softmax-like early (λ large),
    A-Softmax later. Defaults are those of the SphereFace authors' training file
    (``margin_inner_product_param``: base 1000, gamma 0.12, power 1, lambda_min 5, one step per
    training iteration). ``base = minimum = 0`` gives pure ψ from the start. ``step`` may be a 0-d
    tensor (a step counter kept on the GPU): the result is then a tensor, computed without a sync.
    """
    base = check_float("lambda_base", base, minimum=0.0)
    gamma = check_float("lambda_gamma", gamma, minimum=0.0)
    power = check_float("lambda_power", power, minimum=0.0)
    minimum = check_float("lambda_min", minimum, minimum=0.0)
    if isinstance(step, torch.Tensor):
        check_tensor("step", step)
        t = step if step.is_floating_point() else step.to(torch.float32)
        return torch.clamp(base * (1.0 + gamma * t).pow(-power), min=minimum)
    t = check_float("step", step, minimum=0.0)
    return max(minimum, base * (1.0 + gamma * t) ** (-power))


# ---------------------------------------------------------------------------------------------
# margin softmax: logits and the fused cross-entropy
# ---------------------------------------------------------------------------------------------
def _check_margin_inputs(z: torch.Tensor, weight: torch.Tensor, target: torch.Tensor) -> None:
    check_tensor("z", z, floating=True, ndim=2)
    check_tensor("weight", weight, floating=True, ndim=2)
    if weight.shape[1] != z.shape[1]:
        raise ValueError(f"weight must have shape [num_classes, {z.shape[1]}] (the width of z), got {list(weight.shape)}")
    check_target(target, weight.shape[0], z.shape[0])


def _scale_tensor(scale: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if isinstance(scale, torch.Tensor):
        if scale.numel() != 1:
            raise ValueError(f"scale must be a number or a 1-element tensor, got shape {list(scale.shape)}")
        return scale.reshape(()).to(like.dtype)
    return torch.tensor(check_float("scale", scale, minimum=0.0, min_inclusive=False), dtype=like.dtype, device=like.device)


def margin_logits(
    z: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor,
    target_fn: TargetFn,
    scale: float | torch.Tensor,
    keep_norm: bool = False,
) -> torch.Tensor:
    """Label-aware margin-softmax logits [B, K] (seed 000 Eq. 4 and its CosFace/SphereFace variants).

    ``s_i cos θ_ij`` for j ≠ y_i and ``s_i target_fn(cos θ_iy)`` for the target, with ``cos θ_ij``
    between ``z_i`` and the class vector ``w_j`` (both normalised) and ``s_i = scale`` (β), or
    ``scale · ‖z_i‖`` when ``keep_norm`` (SphereFace keeps the feature norm). The plain-autograd
    reference of :func:`margin_cross_entropy`.
    """
    _check_margin_inputs(z, weight, target)
    cos = F.normalize(z, dim=1) @ F.normalize(weight, dim=1).t()
    column = target.unsqueeze(1)
    cos = cos.scatter(1, column, target_fn(cos.gather(1, column).squeeze(1)).unsqueeze(1))
    s = _scale_tensor(scale, z)
    if keep_norm:
        s = s * torch.linalg.vector_norm(z, dim=1, keepdim=True)
    return s * cos


class _MarginSoftmaxCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of ``logits_ij = r_i raw_ij c_j`` with the target entry replaced by
    ``r_i f(raw_iy c_y)``, where ``raw = ẑ Wᵀ`` [B, K] (ẑ the normalised embeddings, W the raw class
    vectors), ``c_j = 1 / max(‖w_j‖, eps)`` and ``r`` [] or [B] the row scale.

    Hand-written backward: the softmax gradient is formed once in place, the margin's derivative is
    applied to the B target entries only, the row and column scalings are folded into it, and the
    class-vector normalisation's gradient is added to ``W``'s in place (``∂c_j/∂w_j = -c_j³ w_j``):
    no [K, d] temporaries beyond ``W``'s gradient itself, about half the [B, K] passes of autograd
    through normalise, scatter, scale and cross_entropy.
    """

    @staticmethod
    def forward(ctx, z_hat, weight, row_scale, target, target_fn, eps):  # type: ignore[override]
        norm_w = torch.linalg.vector_norm(weight, dim=1)
        col_scale = norm_w.clamp_min(eps).reciprocal()
        raw = torch.mm(z_hat, weight.t())
        rows = torch.arange(raw.shape[0], device=raw.device)
        raw_y = raw[rows, target]
        cos_y = raw_y * col_scale[target]
        f_y = target_fn(cos_y)
        if row_scale.ndim == 0:
            logits = raw * (col_scale * row_scale)
        else:
            logits = (raw * col_scale).mul_(row_scale.unsqueeze(1))
        target_logit = row_scale * f_y
        logits[rows, target] = target_logit
        lse = torch.logsumexp(logits, dim=1)
        loss = (lse - target_logit).mean()
        prob = logits.sub_(lse.unsqueeze(1)).exp_()  # softmax, reusing the logits' memory
        ctx.target_fn = target_fn
        ctx.eps = eps
        ctx.save_for_backward(z_hat, weight, row_scale, target, norm_w, raw, raw_y, cos_y, f_y, prob)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        z_hat, weight, row_scale, target, norm_w, raw, raw_y, cos_y, f_y, prob = ctx.saved_tensors
        batch = raw.shape[0]
        rows = torch.arange(batch, device=raw.device)
        col_scale = norm_w.clamp_min(ctx.eps).reciprocal()
        with torch.enable_grad():
            c = cos_y.detach().requires_grad_(True)
            value = ctx.target_fn(c)
            df = torch.autograd.grad(value, c, torch.ones_like(value), allow_unused=True)[0] if value.requires_grad else None
        if df is None:
            df = torch.zeros_like(cos_y)
        scalar_rows = row_scale.ndim == 0
        g = grad / batch
        G = prob * g  # dL/dlogits = (softmax - onehot) / B
        G[rows, target] -= g
        G_y = G[rows, target]
        need_z, need_w, need_row = ctx.needs_input_grad[:3]
        grad_z = grad_w = grad_row = None
        grad_col = None
        if need_w or need_row:
            T = G * raw
            if need_row:
                # dL/dr_i = Σ_j G_ij cos'_ij, cos' = cos with the target entry replaced by f
                per_row = T @ col_scale + G_y * (f_y - cos_y)
                grad_row = per_row.sum() if scalar_rows else per_row
            if need_w:
                col = row_scale * T.sum(0) if scalar_rows else row_scale @ T
                grad_col = col.index_add(0, target, G_y * row_scale * raw_y * (df - 1.0))
            del T
        if need_z or need_w:
            if scalar_rows:
                grad_raw = G.mul_(col_scale * row_scale)
            else:
                grad_raw = G.mul_(col_scale).mul_(row_scale.unsqueeze(1))
            grad_raw[rows, target] = G_y * row_scale * df * col_scale[target]
            if need_z:
                grad_z = torch.mm(grad_raw, weight)
            if need_w:
                grad_w = torch.mm(grad_raw.t(), z_hat)
                # c_j = 1 / ‖w_j‖  =>  ∂c_j/∂w_j = -c_j³ w_j  (zero where the eps clamp is active)
                coef = torch.where(norm_w > ctx.eps, -grad_col * col_scale.pow(3), torch.zeros_like(grad_col))
                grad_w.addcmul_(weight, coef.unsqueeze(1))
        return grad_z, grad_w, grad_row, None, None, None


def margin_cross_entropy(
    z: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor,
    target_fn: TargetFn,
    scale: float | torch.Tensor,
    keep_norm: bool = False,
    eps: float = 1e-12,
) -> torch.Tensor:
    """Mean cross-entropy of :func:`margin_logits` (same arguments), fused and fast.

    ArcFace ``target_fn = additive_angular_margin`` (seed 000 Eq. 4), CosFace ``cosine_margin``,
    SphereFace the λ-blend of ``sphereface_psi`` with ``keep_norm=True`` (seed 001). ``target_fn``
    must be elementwise and differentiable; its derivative is taken by autograd on the B target
    cosines only. ``scale`` may be a tensor with gradient (the learned β = exp(τ)).
    """
    _check_margin_inputs(z, weight, target)
    if not callable(target_fn):
        raise TypeError(f"target_fn must be a callable mapping target cosines to target values, got {type(target_fn).__name__}")
    norm = torch.linalg.vector_norm(z, dim=1, keepdim=True).clamp_min(eps)
    z_hat = z / norm
    row_scale = _scale_tensor(scale, z)
    if keep_norm:
        row_scale = row_scale * norm.squeeze(1)
    return _MarginSoftmaxCrossEntropy.apply(z_hat, weight, row_scale, target, target_fn, eps)


def margin_cross_entropy_from_logits(
    logits: torch.Tensor,
    target: torch.Tensor,
    target_fn: TargetFn,
    scale: float | torch.Tensor,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Mean cross-entropy of the margin-softmax logits rebuilt from the plain logits ``s_i cos θ_ij`` [B, K]
    a head returned (seed 000 Eq. 4, seed 002 Eq. 9, and their CosFace/SphereFace variants): the target
    entry becomes ``s_i target_fn(cos θ_iy)`` with ``cos θ_iy = logits_iy / s_i``, every other entry is kept.

    ``scale`` is the row scale ``s``: β (a float or 0-d tensor, possibly learned) or a [B] tensor
    (SphereFace's ``β ‖z_i‖``). As a function of (β, z, W) this is exactly :func:`margin_cross_entropy`, so
    value and gradients agree; it needs no second pass over the class vectors. ``label_smoothing`` as
    ``torch.nn.functional.cross_entropy``.
    """
    check_tensor("logits", logits, floating=True, ndim=2)
    check_target(target, logits.shape[1], logits.shape[0])
    if not callable(target_fn):
        raise TypeError(f"target_fn must be a callable mapping target cosines to target values, got {type(target_fn).__name__}")
    if isinstance(scale, torch.Tensor) and scale.ndim == 1:
        if scale.shape[0] != logits.shape[0]:
            raise ValueError(f"scale must be a number, a 0-d tensor or one value per row [{logits.shape[0]}], got shape {list(scale.shape)}")
        s = scale.to(logits.dtype)
    else:
        s = _scale_tensor(scale, logits)
    column = target.unsqueeze(1)
    cos = logits.gather(1, column).squeeze(1) / s.clamp_min(torch.finfo(logits.dtype).tiny)
    margined = logits.scatter(1, column, (s * target_fn(cos)).unsqueeze(1))
    return F.cross_entropy(margined, target, label_smoothing=label_smoothing)


# ---------------------------------------------------------------------------------------------
# Center Loss (seed 001)
# ---------------------------------------------------------------------------------------------
def _check_rows(name: str, features: torch.Tensor, target: torch.Tensor) -> None:
    check_tensor(name, features, floating=True, ndim=2)
    check_tensor("target", target, floating=False, ndim=1)
    if target.shape[0] != features.shape[0]:
        raise ValueError(f"target has {target.shape[0]} entries but {name} has {features.shape[0]} rows")


def center_loss(features: torch.Tensor, centers: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Center Loss ``L_C = ½ Σ_i ‖x_i − c_{y_i}‖²`` (seed 001), divided by the batch size (a mean over
    the batch, like the mean softmax cross-entropy it is added to)."""
    _check_rows("features", features, target)
    check_tensor("centers", centers, floating=True, ndim=2)
    if centers.shape[1] != features.shape[1]:
        raise ValueError(f"centers must have shape [num_classes, {features.shape[1]}], got {list(centers.shape)}")
    check_target(target, centers.shape[0], features.shape[0])
    diff = features - centers.index_select(0, target)
    return 0.5 * diff.pow(2).sum(1).mean()


def center_delta(centers: torch.Tensor, features: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The Center Loss centre step of seed 001 for the classes present in the batch:

        Δc_j = Σ_i δ(y_i = j) (c_j − x_i) / (1 + Σ_i δ(y_i = j)),   then  c_j ← c_j − α Δc_j.

    Returns ``(classes, delta)``: the distinct labels [C] and their Δc_j [C, d] (Δc_j = 0 for absent
    classes, so they are left out). Apply with ``centers.index_add_(0, classes, delta, alpha=-α)``.
    Computed without gradient (centres are not learned by backpropagation).
    """
    _check_rows("features", features, target)
    check_tensor("centers", centers, floating=True, ndim=2)
    if centers.shape[1] != features.shape[1]:
        raise ValueError(f"centers must have shape [num_classes, {features.shape[1]}], got {list(centers.shape)}")
    check_target(target, centers.shape[0], features.shape[0])
    with torch.no_grad():
        x = features.detach().to(centers.dtype)
        classes, inverse, counts = torch.unique(target, return_inverse=True, return_counts=True)
        sums = torch.zeros(classes.shape[0], x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, inverse, x)
        n = counts.to(x.dtype).unsqueeze(1)
        delta = (n * centers.index_select(0, classes) - sums) / (1.0 + n)
    return classes, delta


# ---------------------------------------------------------------------------------------------
# FaceNet triplet loss with online mining (seed 001)
# ---------------------------------------------------------------------------------------------
def pairwise_squared_distances(x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """``‖x_i − y_j‖²`` [N, M] by ``‖x‖² + ‖y‖² − 2 x·y`` (clamped at 0; exact zeros on the diagonal
    when ``y`` is omitted)."""
    check_tensor("x", x, floating=True, ndim=2)
    same = y is None
    if y is None:
        y = x
    else:
        check_tensor("y", y, floating=True, ndim=2)
        if y.shape[1] != x.shape[1]:
            raise ValueError(f"y must have {x.shape[1]} columns (the width of x), got shape {list(y.shape)}")
    xx = x.pow(2).sum(1, keepdim=True)
    yy = xx.t() if same else y.pow(2).sum(1).unsqueeze(0)
    d = (xx + yy - 2.0 * (x @ y.t())).clamp_min(0.0)
    if same:
        d = d.masked_fill(torch.eye(x.shape[0], dtype=torch.bool, device=x.device), 0.0)
    return d


def mine_triplets(
    sq_dist: torch.Tensor, labels: torch.Tensor, margin: float = 0.2, mining: str = "semihard"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Online triplet selection inside a batch (FaceNet, seed 001 "Triplet Selection").

    ``sq_dist`` [N, N] squared distances, ``labels`` [N]. Returns index tensors ``(a, p, n)``:

    - ``"semihard"``: every anchor–positive pair (a ≠ p, same label) with the hardest semi-hard
      negative, i.e. the smallest ``d_an`` with ``d_ap < d_an < d_ap + margin``; when the pair has no
      semi-hard negative, the hardest negative ``argmin d_an``;
    - ``"hard"``: per anchor, the hardest positive ``argmax d_ap`` and hardest negative ``argmin d_an``;
    - ``"all"``: every valid triplet.

    A batch with no valid triplet (no class with two samples, or a single class) raises
    ``ValueError`` naming the N×K episodic sampler. Selection carries no gradient.
    """
    check_tensor("sq_dist", sq_dist, floating=True, ndim=2)
    if sq_dist.shape[0] != sq_dist.shape[1]:
        raise ValueError(f"sq_dist must be a square [N, N] matrix, got shape {list(sq_dist.shape)}")
    check_tensor("labels", labels, floating=False, ndim=1)
    if labels.shape[0] != sq_dist.shape[0]:
        raise ValueError(f"labels has {labels.shape[0]} entries but sq_dist is {list(sq_dist.shape)}")
    alpha = check_float("margin", margin, minimum=0.0)
    check_choice("mining", mining, TRIPLET_MINING)
    with torch.no_grad():
        d = sq_dist.detach()
        count = labels.shape[0]
        same = labels.unsqueeze(0) == labels.unsqueeze(1)
        positive = same & ~torch.eye(count, dtype=torch.bool, device=labels.device)
        negative = ~same
        has_negative = negative.any(1)
        inf = torch.tensor(float("inf"), dtype=d.dtype, device=d.device)
        if mining == "hard":
            anchors = torch.nonzero(positive.any(1) & has_negative).squeeze(1)
            positives = torch.where(positive[anchors], d[anchors], -inf).argmax(1)
            negatives = torch.where(negative[anchors], d[anchors], inf).argmin(1)
        else:
            anchors, positives = torch.nonzero(positive & has_negative.unsqueeze(1), as_tuple=True)
            neg = negative[anchors]  # [T, N]: the negatives of each pair's anchor
            if mining == "all":
                pair, negatives = torch.nonzero(neg, as_tuple=True)
                anchors, positives = anchors[pair], positives[pair]
            else:
                d_an = d[anchors]
                d_ap = d[anchors, positives].unsqueeze(1)
                band = neg & (d_an > d_ap) & (d_an < d_ap + alpha)
                semihard = torch.where(band, d_an, inf).argmin(1)
                hardest = torch.where(neg, d_an, inf).argmin(1)
                negatives = torch.where(band.any(1), semihard, hardest)
    if anchors.numel() == 0:
        raise ValueError(
            f"the batch of {count} samples with {int(torch.unique(labels).numel())} distinct labels has no valid "
            f"triplet (anchor, positive of the same class, negative of another class); {_NO_TRIPLET_HINT}"
        )
    return anchors, positives, negatives


def triplet_loss(embeddings: torch.Tensor, labels: torch.Tensor, margin: float = 0.2, mining: str = "semihard") -> torch.Tensor:
    """FaceNet's triplet loss (seed 001): ``[‖a − p‖² − ‖a − n‖² + α]_+`` averaged over the triplets
    :func:`mine_triplets` selects (``margin`` = α). FaceNet L2-normalises the embeddings first; pass
    normalised embeddings for that (the ``triplet`` head does)."""
    _check_rows("embeddings", embeddings, labels)
    check_finite("embeddings", embeddings)
    d = pairwise_squared_distances(embeddings)
    a, p, n = mine_triplets(d, labels, margin, mining)
    return F.relu(d[a, p] - d[a, n] + float(margin)).mean()
