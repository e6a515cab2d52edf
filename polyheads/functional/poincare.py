"""Poincaré-ball math for the HYPERBOLIC head: seed 000 §2.2, Eq. 2 (Ganea et al. 2018's hyperbolic
multinomial logistic regression, as used by Khrulkov et al. 2020).

The ball is ``D^n_c = {z : c‖z‖² < 1}`` (radius ``1/√c``), conformal factor ``λ^c_z = 2 / (1 - c‖z‖²)``,
Möbius addition ``u ⊕_c v = ((1 + 2c⟨u,v⟩ + c‖v‖²) u + (1 - c‖u‖²) v) / (1 + 2c⟨u,v⟩ + c²‖u‖²‖v‖²)``.
Per-point operations (``expmap0``, projection, Möbius addition, distance of two aligned batches) are
geoopt's (``geoopt.PoincareBall``); this module adds what geoopt has no batched form of:

* :func:`poincare_mlr_logits` -- Eq. 2 for every (sample, class) pair from ONE ``B x K`` matrix product
  (never a ``B x K x d`` tensor; see the derivation in its docstring and docs/hyperbolic.md);
* :func:`poincare_distance` -- pairwise geodesic distances ``[N, M]`` for retrieval, memory ``O(N·M)``;
* :func:`clip_feature_norm` -- Guo et al. 2022's feature clipping, overflow-safe;
* :func:`transport_from_origin` -- Ganea et al.'s normals ``a_y = (λ_0 / λ_{p_y}) a'_y``;
* :func:`stable_norm` -- a Euclidean norm that does not overflow for huge float32 vectors.

Pure tensor math: no nn.Module, no state.
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Any, ContextManager, Union

import torch
from torch.autograd.function import once_differentiable

from .._checks import check_float, check_tensor, validation_enabled

__all__ = [
    "expmap0",
    "poincare_mlr_logits",
    "poincare_distance",
    "clip_feature_norm",
    "transport_from_origin",
    "stable_norm",
]

Scalar = Union[float, torch.Tensor]  # a Python number or a 0-d tensor (e.g. geoopt's PoincareBall.c)

# keeps 1 - c‖z‖² and 1 - c‖p‖² away from 0 when validation is off and a point sits on the boundary
_TINY = 1e-15


def _curvature(c: Scalar, like: torch.Tensor) -> torch.Tensor:
    """``c`` (a positive float, or a 0-d floating tensor, e.g. ``PoincareBall.c``) as a tensor of ``like``'s
    dtype and device. Tensors keep their autograd graph (no ``.item()``, no device sync)."""
    if isinstance(c, torch.Tensor):
        check_tensor("c", c, floating=True, ndim=0)
        return c.to(dtype=like.dtype, device=like.device)
    c = check_float("c", c, minimum=0.0, min_inclusive=False)
    return torch.tensor(c, dtype=like.dtype, device=like.device)


def stable_norm(v: torch.Tensor, dim: int = -1, keepdim: bool = False) -> torch.Tensor:
    """Euclidean norm of ``v`` along ``dim`` without overflow: ``m · ‖v / m‖`` with ``m = max|v_i|``.

    ``torch.linalg.vector_norm`` squares first, so a float32 vector with entries above ~1.8e19 has norm
    ``inf``. The scale ``m`` is detached: the norm is 1-homogeneous, so the gradient is exactly ``v/‖v‖``.
    """
    check_tensor("v", v, floating=True)
    m = v.detach().abs().amax(dim=dim, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)
    n = torch.linalg.vector_norm(v / m, dim=dim, keepdim=True) * m
    return n if keepdim else n.squeeze(dim)


def clip_feature_norm(v: torch.Tensor, r: Scalar) -> torch.Tensor:
    """Feature clipping of Guo et al. 2022 ("Clipped hyperbolic classifiers are super-hyperbolic
    classifiers", CVPR): ``min(1, r / ‖v‖) · v`` row-wise, applied to the Euclidean embedding
    before ``expmap0``.

    After clipping, ``expmap0`` lands at most at ``tanh(√c r) / √c`` from the origin (hyperbolic distance
    ``≤ 2r``), so points never reach the boundary and the gradient through ``expmap0`` does not vanish.
    ``r`` > 0 (float or 0-d tensor). Safe for huge ``v`` (see :func:`stable_norm`).
    """
    check_tensor("v", v, floating=True, ndim=2)
    if isinstance(r, torch.Tensor):
        check_tensor("r", r, floating=True, ndim=0)
    else:
        r = check_float("r", r, minimum=0.0, min_inclusive=False)
    norm = stable_norm(v, dim=1, keepdim=True)
    factor = (r / norm.clamp_min(torch.finfo(v.dtype).tiny)).clamp_max(1.0)
    return v * factor


#: geoopt's boundary margin of ``PoincareBall.projx``: points are kept at norm <= (1 - eps)/√c
_PROJECTION_EPS = {torch.float32: 4e-3, torch.float64: 1e-5}


def expmap0(v: torch.Tensor, c: Scalar) -> torch.Tensor:
    """``exp^c_0(v) = tanh(√c‖v‖) v / (√c‖v‖)`` row-wise, then projected into the ball (Ganea et al. 2018,
    Lemma 2; the map of seed 000 §2.2 from the tangent space at the origin to the Poincaré ball).

    The same numbers as geoopt's ``PoincareBall(c).expmap0(v)`` (tanh argument clamped at 15, ``‖v‖``
    floored at 1e-15, projection to norm ``(1 - eps)/√c`` with geoopt's eps: 4e-3 in float32, 1e-5 in
    float64), without geoopt's branch on the value of the curvature (``if torch.all(k == 0)``), which
    breaks ``torch.compile`` graphs and stops ``torch.export`` / ONNX export.
    """
    check_tensor("v", v, floating=True)
    c_t = _curvature(c, v)
    sqrt_c = (c_t.abs() + 1e-15).sqrt()  # geoopt's sabs(k).sqrt()
    norm = torch.linalg.vector_norm(v, dim=-1, keepdim=True).clamp_min(1e-15)
    point = (sqrt_c * norm).clamp(-15.0, 15.0).tanh() / sqrt_c * (v / norm)
    max_norm = (1.0 - _PROJECTION_EPS.get(v.dtype, 1e-5)) / sqrt_c
    point_norm = torch.linalg.vector_norm(point, dim=-1, keepdim=True).clamp_min(1e-15)
    return torch.where(point_norm > max_norm, point / point_norm * max_norm, point)


def transport_from_origin(p: torch.Tensor, a: torch.Tensor, c: Scalar) -> torch.Tensor:
    """Parallel transport of tangent vectors ``a`` [K, d] at the origin to the points ``p`` [K, d]:
    ``(λ^c_0 / λ^c_p) a = (1 - c‖p‖²) a`` (Ganea et al. 2018 §3.1, the parameterisation of the normals
    ``a_y ∈ T_{p_y} D^n_c`` of seed 000 Eq. 2 by Euclidean vectors ``a'_y``)."""
    check_tensor("p", p, floating=True, ndim=2)
    check_tensor("a", a, floating=True, ndim=2)
    if p.shape != a.shape:
        raise ValueError(f"p and a must have the same shape [K, d], got {list(p.shape)} and {list(a.shape)}")
    c_t = _curvature(c, p)
    return (1.0 - c_t * p.pow(2).sum(dim=1, keepdim=True)).clamp_min(_TINY) * a


def poincare_mlr_logits(
    x: torch.Tensor, p: torch.Tensor, a: torch.Tensor, c: Scalar, *, a_at_origin: bool = False
) -> torch.Tensor:
    r"""Seed 000 Eq. 2 (Ganea et al. 2018 §3.1): the hyperbolic softmax logits for every pair -> [B, K]

    ``ζ_y(x) = (λ^c_{p_y} ‖a_y‖ / √c) · asinh( 2√c ⟨-p_y ⊕_c x, a_y⟩ / ((1 - c‖-p_y ⊕_c x‖²) ‖a_y‖) )``

    with ``p(y|x) ∝ exp(ζ_y(x))``. Args: ``x`` [B, d] points in the ball, ``p`` [K, d] class offsets in the
    ball, ``a`` [K, d] normals (tangent vectors at ``p_y``), ``c`` > 0 (float or 0-d tensor).
    ``a_at_origin=True``: ``a`` holds Euclidean vectors ``a'_y`` at the origin and the normals are their
    transports ``a_y = (λ_0/λ_{p_y}) a'_y`` (Ganea et al.'s parameterisation; the same numbers as passing
    :func:`transport_from_origin` ``(p, a, c)``, without that extra ``K x d`` tensor).

    Evaluation without a ``B x K x d`` tensor. Write ``w = -p ⊕_c x``, ``β = 1 - c‖p‖²``,
    ``γ = 1 - c‖x‖²``, ``α = 1 - 2c⟨p,x⟩ + c‖x‖²`` and ``D = 1 - 2c⟨p,x⟩ + c²‖p‖²‖x‖²``. Then
    ``w = (β x - α p) / D`` and, by the Möbius gamma identity, ``1 - c‖w‖² = β γ / D``: the ``D`` cancels
    and the asinh argument is ``2√c (β⟨x,â⟩ - α⟨p,â⟩) / (β γ)`` with ``â = a/‖a‖``. Because α is affine
    in ``⟨p,x⟩``, the numerator is linear in ``x``:

    ``β⟨x,â⟩ - α⟨p,â⟩ = ⟨x, β â + 2c⟨p,â⟩ p⟩ - (1 + c‖x‖²)⟨p,â⟩``,

    so the argument is ``⟨R_b, C_y⟩ + r_b e_y`` with per-sample ``R = (2√c/γ) x``, ``r = -(2√c/γ)(1 + c‖x‖²)``
    and per-class ``C = â + (2c⟨p,â⟩/β) p``, ``e = ⟨p,â⟩/β``: ONE ``B x K`` matrix product, a rank-one
    update, one ``asinh`` and a column scale ``s = λ_p‖a‖/√c`` -- the cost of a linear layer plus an
    elementwise pass. Both the class-side map and the ``B x K`` part have hand-written backward passes
    (autograd would allocate a dozen ``K x d`` and ``B x K`` temporaries); ``x`` and ``c`` go through autograd.
    Computing ``1 - c‖w‖²`` as ``βγ/D`` also removes the cancellation that makes the textbook form lose all
    digits near the boundary in float32; ``asinh`` is ``torch.asinh`` (accurate for the tiny arguments
    ``c = 1e-5`` produces, and for negative ones -- ``log(x + sqrt(1 + x²))`` is neither).

    Limit ``c -> 0``: ``λ_p -> 2`` and ``asinh(u) ≈ u`` give ``ζ_y(x) -> 4⟨x - p_y, a_y⟩``.

    ``a_y = 0`` gives the logit 0 (the limit; its gradient there is taken as 0). With validation on, points
    on or outside the ball and non-finite inputs raise ``ValueError``. First derivatives only.
    """
    check_tensor("x", x, floating=True, ndim=2)
    check_tensor("p", p, floating=True, ndim=2)
    check_tensor("a", a, floating=True, ndim=2)
    if p.shape != a.shape:
        raise ValueError(f"p (offsets) and a (normals) must have the same shape [K, d], got {list(p.shape)} and {list(a.shape)}")
    if x.shape[1] != p.shape[1]:
        raise ValueError(f"x has {x.shape[1]} columns but the offsets p have dimension {p.shape[1]}")
    if x.dtype != p.dtype or x.dtype != a.dtype:
        raise TypeError(f"x, p and a must share one dtype, got {x.dtype}, {p.dtype}, {a.dtype}")
    c_t = _curvature(c, x)
    with _no_autocast(x.device.type):  # geometry in the inputs' precision, never in fp16/bf16
        x2 = x.pow(2).sum(dim=1)  # [B]
        if validation_enabled():
            _check_inputs(c_t, x2, p, a)
        gamma = (1.0 - c_t * x2).clamp_min(_TINY)  # 1 - c‖x‖²
        rho = 2.0 * c_t.sqrt() / gamma
        rows = x * rho[:, None]  # R [B, d]
        row_last = -(1.0 + c_t * x2) * rho  # r [B]
        cols, col_last, scale = _ClassSide.apply(p, a, c_t, bool(a_at_origin))
        return _AsinhLogits.apply(rows, row_last, cols, col_last, scale)


def _no_autocast(device_type: str) -> ContextManager[Any]:
    if device_type in ("cpu", "cuda", "xpu", "mps", "hpu"):
        return torch.autocast(device_type=device_type, enabled=False)
    return nullcontext()  # pragma: no cover - other backends


class _ClassSide(torch.autograd.Function):
    """Per-class terms of :func:`poincare_mlr_logits`: ``C = â + κ p`` [K, d], ``e = π/β`` [K] and the
    scale ``s = 2‖a‖/(β√c)`` [K] (``2‖a'‖/√c`` for normals given at the origin), where ``π = ⟨p, â⟩``,
    ``β = 1 - c‖p‖²``, ``κ = 2cπ/β``. Backward by hand: three ``K x d`` outputs, no other ``K x d``
    temporaries."""

    @staticmethod
    def forward(ctx, p: torch.Tensor, a: torch.Tensor, c: torch.Tensor, at_origin: bool):  # type: ignore[override]
        n = torch.linalg.vector_norm(a, dim=1)
        inv_n = torch.where(n > 0, 1.0 / n, torch.zeros_like(n))
        p2 = (p * p).sum(dim=1)
        pi = (p * a).sum(dim=1) * inv_n
        beta = (1.0 - c * p2).clamp_min(_TINY)
        kappa = 2.0 * c * pi / beta
        e = pi / beta
        scale = 2.0 * n / c.sqrt() if at_origin else 2.0 * n / (beta * c.sqrt())
        cols = (a * inv_n[:, None]).addcmul_(p, kappa[:, None])
        ctx.save_for_backward(p, a, c, n, inv_n, p2, pi, beta, kappa, e, scale)
        ctx.at_origin = at_origin
        return cols, e, scale

    @staticmethod
    @once_differentiable
    def backward(ctx, d_cols, d_e, d_scale):  # type: ignore[override]
        p, a, c, n, inv_n, p2, pi, beta, kappa, e, scale = ctx.saved_tensors
        zeros = torch.zeros_like(n)
        d_e = zeros if d_e is None else d_e
        d_scale = zeros if d_scale is None else d_scale
        if d_cols is None:
            d_kappa, d_cols_a = zeros, zeros
        else:
            d_kappa = (d_cols * p).sum(dim=1)  # ⟨dC, p⟩
            d_cols_a = (d_cols * a).sum(dim=1) * inv_n  # ⟨dC, â⟩
        d_pi = d_kappa * 2.0 * c / beta + d_e / beta
        d_beta = -(d_kappa * kappa + d_e * e) / beta
        if ctx.at_origin:
            d_n = d_scale * 2.0 / c.sqrt()
        else:
            d_n = d_scale * 2.0 / (beta * c.sqrt())
            d_beta = d_beta - d_scale * scale / beta
        d_beta = torch.where(beta > _TINY, d_beta, zeros)  # the clamp is flat
        d_p = d_a = d_c = None
        if ctx.needs_input_grad[0]:
            # κ dC + dπ â - 2c dβ p
            d_p = (p * (-2.0 * c * d_beta)[:, None]).addcmul_(a, (d_pi * inv_n)[:, None])
            if d_cols is not None:
                d_p.addcmul_(d_cols, kappa[:, None])
        if ctx.needs_input_grad[1]:
            # (dâ - ⟨dâ, â⟩ â)/‖a‖ + dn â with dâ = dC + dπ p
            d_hat_dot = d_cols_a + d_pi * pi
            d_a = (a * ((d_n - d_hat_dot * inv_n) * inv_n)[:, None]).addcmul_(p, (d_pi * inv_n)[:, None])
            if d_cols is not None:
                d_a.addcmul_(d_cols, inv_n[:, None])
        if ctx.needs_input_grad[2]:
            # c enters κ = 2cπ/β (directly ∝ c), β = 1 - c‖p‖², and s ∝ c^(-1/2)
            d_c = ((d_kappa * kappa - 0.5 * d_scale * scale) / c - d_beta * p2).sum()
        return d_p, d_a, d_c, None


class _AsinhLogits(torch.autograd.Function):
    """``logits = s ⊙ asinh(R Cᵀ + r eᵀ)`` [B, K] from rows ``R`` [B, d], ``r`` [B], columns ``C`` [K, d],
    ``e`` [K] and the column scale ``s`` [K]. Saves the argument and the output only (two ``B x K``)."""

    @staticmethod
    def forward(ctx, rows, row_last, cols, col_last, scale):  # type: ignore[override]
        arg = rows @ cols.t()
        arg.addr_(row_last, col_last)
        logits = torch.asinh(arg).mul_(scale)
        ctx.save_for_backward(rows, row_last, cols, col_last, scale, arg, logits)
        return logits

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        rows, row_last, cols, col_last, scale, arg, logits = ctx.saved_tensors
        d_scale = None
        if ctx.needs_input_grad[4]:
            # Σ_b g · asinh(arg) = Σ_b g · logits / s  (s = 0 only for a = 0, where asinh(arg) = 0)
            total = (grad * logits).sum(dim=0)
            positive = scale > 0
            d_scale = torch.where(positive, total / torch.where(positive, scale, torch.ones_like(scale)), 0.0)
        h = arg.square().add_(1.0).rsqrt_().mul_(grad).mul_(scale)  # g s / sqrt(1 + arg²)
        d_rows = h @ cols if ctx.needs_input_grad[0] else None
        d_row_last = h @ col_last if ctx.needs_input_grad[1] else None
        d_cols = h.t() @ rows if ctx.needs_input_grad[2] else None
        d_col_last = h.t() @ row_last if ctx.needs_input_grad[3] else None
        return d_rows, d_row_last, d_cols, d_col_last, d_scale


def _check_inputs(c: torch.Tensor, x2: torch.Tensor, p: torch.Tensor, a: torch.Tensor) -> None:
    """The data checks of :func:`poincare_mlr_logits` from [B]- and [K]-sized reductions, one device sync.
    A point strictly inside the ball is finite, so the ball test also catches NaN/inf in ``x`` and ``p``."""
    with torch.no_grad():
        p2 = (p * p).sum(dim=1)
        a2 = (a * a).sum(dim=1)
        flags = torch.stack(
            [
                c <= 0,
                ~(c * x2 < 1).all(),  # NaN compares False: caught here
                ~(c * p2 < 1).all(),
                ~torch.isfinite(a2).all(),
            ]
        ).tolist()
    if flags[0]:
        raise ValueError(f"c (the curvature) must be > 0, got {float(c.detach())}")
    radius = 1.0 / math.sqrt(float(c.detach()))
    if flags[1]:
        if not bool(torch.isfinite(x2).all()):
            raise ValueError("x contains NaN or inf")
        raise ValueError(
            f"x must lie inside the Poincaré ball of radius 1/sqrt(c) = {radius:.6g}; "
            f"a row has norm {float(x2.max().sqrt()):.6g}"
        )
    if flags[2]:
        if not bool(torch.isfinite(p2).all()):
            raise ValueError("p (class offsets) contains NaN or inf")
        raise ValueError(
            f"p (class offsets) must lie inside the Poincaré ball of radius 1/sqrt(c) = {radius:.6g}; a row has "
            f"norm {float(p2.max().sqrt()):.6g} (offsets leave the ball when updated by a Euclidean optimiser: "
            "use geoopt.optim.RiemannianSGD)"
        )
    if flags[3]:
        raise ValueError("a (normals) contains NaN or inf (or entries so large that ‖a‖² overflows)")


def poincare_distance(x: torch.Tensor, y: torch.Tensor, c: Scalar) -> torch.Tensor:
    """Pairwise Poincaré geodesic distances between the rows of ``x`` [N, d] and ``y`` [M, d] -> [N, M]
    (the retrieval metric of HYPERBOLIC, "Poincaré" in seed 000 Table 4).

    ``d_c(x, y) = (2/√c) artanh(√c ‖-x ⊕_c y‖) = (1/√c) arcosh(1 + 2c‖x - y‖² / ((1 - c‖x‖²)(1 - c‖y‖²)))``
    (Ganea et al. 2018 §2; Nickel & Kiela 2017), evaluated as ``log1p(t + sqrt(t(t + 2))) / √c`` which
    is accurate for near and far pairs alike. ``‖x - y‖²`` comes from one ``N x M`` Gram matrix, computed
    in float64 for lower-precision inputs so that near-duplicates do not lose their digits to the
    cancellation in ``‖x‖² + ‖y‖² - 2⟨x,y⟩``. Memory ``O(N·M)``, never ``N x M x d``.
    Limit ``c -> 0``: ``2‖x - y‖`` (the conformal factor ``λ_0 = 2``). Returned in ``x``'s dtype.
    """
    check_tensor("x", x, floating=True, ndim=2)
    check_tensor("y", y, floating=True, ndim=2)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same number of columns, got {list(x.shape)} and {list(y.shape)}")
    work = torch.float64 if torch.finfo(x.dtype).bits < 64 else x.dtype
    xw, yw = x.to(work), y.to(work)
    c_t = _curvature(c, xw)
    if validation_enabled():
        if not bool(c_t > 0):
            raise ValueError(f"c (the curvature) must be > 0, got {float(c_t.detach())}")
        for name, t in (("x", xw), ("y", yw)):
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"{name} contains NaN or inf")
            if bool((c_t * t.pow(2).sum(dim=1) >= 1).any()):
                radius = 1.0 / math.sqrt(float(c_t.detach()))
                raise ValueError(f"{name} must lie inside the Poincaré ball of radius 1/sqrt(c) = {radius:.6g}")
    x2 = xw.pow(2).sum(dim=1, keepdim=True)
    y2 = yw.pow(2).sum(dim=1, keepdim=True)
    sq = (x2 + y2.t() - 2.0 * (xw @ yw.t())).clamp_min(0.0)
    denom = (1.0 - c_t * x2).clamp_min(_TINY) * (1.0 - c_t * y2).clamp_min(_TINY).t()
    t = 2.0 * c_t * sq / denom
    dist = torch.log1p(t + torch.sqrt(t * (t + 2.0))) / c_t.sqrt()
    return dist.to(x.dtype)
