"""Ratios of modified Bessel functions and the vMF log-normaliser (seed 000 Eq. 5, 9-12).

The vMF density on S^{n-1} is ``C_n(κ) exp(κ μ^T x)`` with
``C_n(κ) = κ^{n/2-1} / ((2π)^{n/2} I_{n/2-1}(κ))`` (seed 000 Eq. 5). Everything the vMF loss needs
is the ratio

    A_n(κ) = I_{n/2}(κ) / I_{n/2-1}(κ) = -d/dκ log C_n(κ)          (seed 000 Eq. 11)

and differences of ``log C_n``. Seed 000 (App. C) replaces ``A_n`` by the mean of two bounds of
Ruiz-Antolín & Segura (seed 000 ref. [49]; Eq. 9-10) and integrates that mean in closed form
(Eq. 12, after Kumar & Tsvetkov, ref. [31]). With ``a = (n-1)/2``:

    h_n(κ) = κ / (a + sqrt(a^2 + κ^2))                  upper bound   (Eq. 9)
    g_n(κ) = κ / (a + sqrt((a+1)^2 + κ^2))              lower bound   (Eq. 9)
    A_n(κ) ≈ (g_n + h_n) / 2                                          (Eq. 10)
    log C_n(κ) ≈ Σ_{b ∈ {a, a+1}} (a/2) log(a + s_b) - s_b/2,   s_b = sqrt(b^2 + κ^2)   (Eq. 12, η = 0)

Derivation of Eq. 12 (checked against the seed's printed form, which writes d for n): with
``s = sqrt(b^2 + κ^2)``, ``s ds = κ dκ``, so ``∫ κ/(a + s) dκ = ∫ s/(a + s) ds = s - a log(a + s)``;
hence ``-∫ (g + h)/2 dκ = Σ_b (a/2) log(a + s_b) - s_b/2 + η``. ``a/2 = (n-1)/4`` is the seed's
``(d-1)/4`` and both square roots match, so the printed Eq. 12 is right.

Numerics. Every function here depends on κ only through ``κ^2`` and denominators ``a + s_b >= 2a > 0``,
so nothing is singular at κ = 0 (``A_n(κ)/κ`` is evaluated directly, never as 0/0) and nothing
overflows up to κ ~ 1e19 in float32. The loss needs ``log C_n(κ) - log C_n(κ')`` for κ, κ' of
order 1e5 whose difference is O(1): :func:`log_vmf_normalizer_difference` computes it from
``κ'^2 - κ^2`` without cancellation.

Exact mode (``exact=True``, n <= :data:`EXACT_MAX_DIM`): the true ratio, differentiable by autograd
and vectorised. Below a crossover κ_c(n) it runs the backward recurrence of the Gauss continued
fraction, ``A_ν/κ = 1 / (2(ν+1) + κ^2 A_{ν+1}/κ)`` in terms of ``Q = A/κ`` (a contraction in the
downward direction), for :data:`EXACT_RECURRENCE_STEPS` orders started from Eq. 10's value; above
κ_c it uses Hankel's large-argument expansion of ``I_ν`` (:data:`EXACT_HANKEL_TERMS` terms).
Accuracy against mpmath: relative error < 1e-14 in float64 (tests/test_bessel.py, docs/vmf.md).
"""
from __future__ import annotations

import numbers
from typing import Any

import torch
from torch.autograd.function import once_differentiable

from .._checks import check_finite, check_int, check_tensor, validation_enabled

__all__ = [
    "bessel_ratio_bounds",
    "bessel_ratio",
    "bessel_ratio_over_kappa",
    "log_vmf_normalizer",
    "log_vmf_normalizer_difference",
    "EXACT_MAX_DIM",
]

#: largest dimension n for which ``exact=True`` is offered (the Eq. 10 error is < 1.5e-3 above it)
EXACT_MAX_DIM = 64
#: downward-recurrence steps of the exact mode (below the crossover κ_c)
EXACT_RECURRENCE_STEPS = 64
#: terms of Hankel's expansion of the exact mode (above the crossover κ_c)
EXACT_HANKEL_TERMS = 20


# ---------------------------------------------------------------------------------------------- inputs
def _check_dim(n: Any) -> int:
    return check_int("n", n, minimum=2)


def _as_kappa(name: str, kappa: Any, *, squared: bool = False) -> torch.Tensor:
    """κ (or κ²) as a floating tensor: Python numbers become default-dtype tensors; must be finite, >= 0."""
    if isinstance(kappa, numbers.Real) and not isinstance(kappa, bool):
        kappa = torch.tensor(float(kappa), dtype=torch.get_default_dtype())
    check_tensor(name, kappa, floating=True)
    check_finite(name, kappa)
    if validation_enabled() and kappa.numel() and bool((kappa < 0).any()):
        what = "squared concentrations κ^2" if squared else "concentrations κ"
        raise ValueError(f"{name} must hold non-negative {what}, got a minimum of {float(kappa.detach().min())}")
    return kappa


def _offsets(n: int) -> tuple[float, float, float]:
    """``a = (n-1)/2`` and the squared offsets ``a^2`` (upper bound h_n) and ``(a+1)^2`` (lower bound g_n)."""
    a = 0.5 * (n - 1)
    return a, a * a, (a + 1.0) * (a + 1.0)


# ---------------------------------------------------------------------------------------------- Eq. 9-10
def _ratio_over_kappa_bounds(n: int, kappa_sq: torch.Tensor) -> torch.Tensor:
    """(g_n + h_n) / (2κ) as a function of κ² -- Eq. 10 divided by κ; at κ = 0 it is
    (1/(n-1) + 1/n)/2 (the exact limit is 1/n)."""
    a, bh2, bg2 = _offsets(n)
    return 0.5 * ((a + (kappa_sq + bh2).sqrt()).reciprocal() + (a + (kappa_sq + bg2).sqrt()).reciprocal())


def bessel_ratio_bounds(n: int, kappa: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    """The bounds ``(g_n(κ), h_n(κ))`` with ``g_n <= I_{n/2}(κ)/I_{n/2-1}(κ) <= h_n`` -- seed 000 Eq. 9
    (Ruiz-Antolín & Segura, seed 000 ref. [49], Theorems 4 and 2).

    Args:
        n: the dimension of the ambient space (vMF on S^{n-1}), >= 2.
        kappa: concentrations κ >= 0 (tensor of any shape, or a number).
    """
    n = _check_dim(n)
    kappa = _as_kappa("kappa", kappa)
    a, bh2, bg2 = _offsets(n)
    lower = kappa / (a + torch.sqrt(kappa * kappa + bg2))
    upper = kappa / (a + torch.sqrt(kappa * kappa + bh2))
    return lower, upper


def bessel_ratio(n: int, kappa: torch.Tensor | float, *, exact: bool = False) -> torch.Tensor:
    """``A_n(κ) = I_{n/2}(κ) / I_{n/2-1}(κ)``, the mean resultant length of vMF(·, κ) on S^{n-1}.

    ``exact=False`` (default): the mean of the Eq. 9 bounds -- seed 000 Eq. 10, what the paper trains
    with. ``exact=True`` (n <= :data:`EXACT_MAX_DIM`): the exact ratio (see the module docstring).
    Differentiable in κ (autograd), any shape, float32 or float64, on any device.
    """
    n = _check_dim(n)
    kappa = _as_kappa("kappa", kappa)
    return kappa * _ratio_over_kappa(n, kappa * kappa, exact=_check_exact(n, exact), kappa=kappa)


def bessel_ratio_over_kappa(n: int, kappa_sq: torch.Tensor | float, *, exact: bool = False) -> torch.Tensor:
    """``A_n(κ) / κ`` as a function of ``κ²`` (smooth at κ = 0, where the exact value is ``1/n``).

    The mean of vMF(μ, κ) is ``A_n(κ) μ = (A_n(κ)/κ) · κμ``, so ``E[x] = bessel_ratio_over_kappa(n,
    ‖θ‖²) · θ`` for the natural parameter ``θ = κμ`` -- no division by ‖θ‖, finite gradients at θ = 0.
    ``exact`` as in :func:`bessel_ratio`.
    """
    n = _check_dim(n)
    kappa_sq = _as_kappa("kappa_sq", kappa_sq, squared=True)
    return _ratio_over_kappa(n, kappa_sq, exact=_check_exact(n, exact))


def _check_exact(n: int, exact: Any) -> bool:
    if not isinstance(exact, bool):
        raise TypeError(f"exact must be a bool, got {type(exact).__name__} {exact!r}")
    if exact and n > EXACT_MAX_DIM:
        raise ValueError(
            f"exact=True is implemented for n <= {EXACT_MAX_DIM}, got n={n}; above that Eq. 10's mean of "
            "bounds is within 1.5e-3 of the exact ratio (docs/vmf.md), use exact=False"
        )
    return exact


def _ratio_over_kappa(n: int, kappa_sq: torch.Tensor, *, exact: bool, kappa: torch.Tensor | None = None) -> torch.Tensor:
    """A_n(κ)/κ from κ² (internal, unchecked): Eq. 10 or the exact evaluation."""
    if not exact:
        return _ratio_over_kappa_bounds(n, kappa_sq)
    return _ratio_over_kappa_exact(n, kappa_sq, kappa)


# ---------------------------------------------------------------------------------------------- exact mode
def _exact_crossover(n: int) -> float:
    """κ_c(n): the downward recurrence is used below, Hankel's expansion above (both < 1e-14 relative
    error around κ_c for n <= 64 with 64 steps / 20 terms; measured in tests/test_bessel.py)."""
    return max(32.0, n * n / 15.0)


def _ratio_over_kappa_exact(n: int, kappa_sq: torch.Tensor, kappa: torch.Tensor | None) -> torch.Tensor:
    dtype = kappa_sq.dtype
    work = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    t = kappa_sq.to(work)
    crossover = _exact_crossover(n)
    # each branch sees only inputs in its own range, so the unused branch never yields inf/NaN gradients
    low = _recurrence_over_kappa(n, t.clamp(max=crossover * crossover))
    k_high = t.clamp(min=crossover * crossover).sqrt() if kappa is None else kappa.to(work).clamp(min=crossover)
    high = _hankel_ratio(n, k_high) / k_high
    return torch.where(t <= crossover * crossover, low, high).to(dtype)


def _recurrence_over_kappa(n: int, t: torch.Tensor) -> torch.Tensor:
    """Q_ν = A/κ at order ν = n/2-1 by ``Q_{μ-1} = 1 / (2μ + t Q_μ)`` (t = κ²), started at order
    ν + M from Eq. 10 evaluated for dimension n + 2M (errors shrink by A_μ² per step)."""
    steps = EXACT_RECURRENCE_STEPS
    q = _ratio_over_kappa_bounds(n + 2 * steps, t)
    nu = 0.5 * n - 1.0
    for j in range(steps, 0, -1):
        q = (2.0 * (nu + j) + t * q).reciprocal()
    return q


def _hankel_ratio(n: int, kappa: torch.Tensor) -> torch.Tensor:
    """I_{ν+1}(κ)/I_ν(κ) from Hankel's expansion ``I_ν(κ) ~ e^κ/sqrt(2πκ) Σ_k (-1)^k a_k(ν)/κ^k``,
    ``a_k(ν) = Π_{i<=k} (4ν² - (2i-1)²) / (k! 8^k)`` (Abramowitz & Stegun 9.7.1); for κ >= κ_c(n)."""
    nu = 0.5 * n - 1.0
    inv = (8.0 * kappa).reciprocal()

    def series(order: float) -> torch.Tensor:
        mu = 4.0 * order * order
        term = torch.ones_like(kappa)
        total = torch.ones_like(kappa)
        for k in range(1, EXACT_HANKEL_TERMS + 1):
            term = term * (-(mu - (2 * k - 1) ** 2) / k) * inv
            total = total + term
        return total

    return series(nu + 1.0) / series(nu)


# ---------------------------------------------------------------------------------------------- Eq. 11-12
def log_vmf_normalizer(n: int, kappa: torch.Tensor | float) -> torch.Tensor:
    """``log C_n(κ)`` up to the constant η -- seed 000 Eq. 12 (η = 0).

    ``Σ_{b ∈ {a, a+1}} (a/2) log(a + sqrt(b² + κ²)) - sqrt(b² + κ²)/2`` with ``a = (n-1)/2``; its
    derivative is ``-bessel_ratio(n, κ)`` exactly (Eq. 11 applied to Eq. 10). Only differences in κ at
    the same n are meaningful (η depends on n); the loss uses :func:`log_vmf_normalizer_difference`.
    """
    n = _check_dim(n)
    kappa = _as_kappa("kappa", kappa)
    a, bh2, bg2 = _offsets(n)
    t = kappa * kappa
    sh = (t + bh2).sqrt()
    sg = (t + bg2).sqrt()
    return 0.5 * a * (torch.log(a + sh) + torch.log(a + sg)) - 0.5 * (sh + sg)


def log_vmf_normalizer_difference(n: int, kappa_sq: torch.Tensor | float, delta: torch.Tensor | float) -> torch.Tensor:
    """``log C_n(κ) - log C_n(κ')`` with ``κ'² = κ² + δ``, by Eq. 12 and without cancellation.

    The vMF loss (seed 000 Eq. 13) needs ``log C_n(‖w̃_j‖) - log C_n(‖w̃_j + βz‖)`` where both norms
    may be ~1e5 while the difference is O(β). The caller forms ``δ = ‖w̃_j + βz‖² - ‖w̃_j‖² = 2β w̃_j^T z +
    β²‖z‖²`` directly; here, per bound offset b, ``s' - s = δ / (s + s')`` and
    ``(a/2) log((a+s')/(a+s)) = (a/2) log1p((s' - s)/(a + s))``.

    Args:
        n: dimension, >= 2.
        kappa_sq: κ² >= 0.
        delta: κ'² - κ² (broadcastable with ``kappa_sq``; κ² + δ must be >= 0).
    """
    n = _check_dim(n)
    kappa_sq = _as_kappa("kappa_sq", kappa_sq, squared=True)
    if isinstance(delta, numbers.Real) and not isinstance(delta, bool):
        delta = torch.tensor(float(delta), dtype=kappa_sq.dtype, device=kappa_sq.device)
    check_tensor("delta", delta, floating=True)
    check_finite("delta", delta)
    try:
        torch.broadcast_shapes(kappa_sq.shape, delta.shape)
    except RuntimeError:
        raise ValueError(
            f"kappa_sq {list(kappa_sq.shape)} and delta {list(delta.shape)} must be broadcastable"
        ) from None
    return _LogNormalizerDifference.apply(kappa_sq, delta, n)


class _LogNormalizerDifference(torch.autograd.Function):
    """v = log C_n(κ) - log C_n(κ') (Eq. 12), κ² = t, κ'² = t + δ, with the derivatives of Eq. 11:
    ∂v/∂δ = s1 = Σ_b 1/(4(a + s'_b)) and ∂v/∂t = s1 - s0, s0 = Σ_b 1/(4(a + s_b))."""

    @staticmethod
    def forward(ctx: Any, kappa_sq: torch.Tensor, delta: torch.Tensor, n: int) -> torch.Tensor:
        a, bh2, bg2 = _offsets(n)
        su, sl = (kappa_sq + bh2).sqrt(), (kappa_sq + bg2).sqrt()
        value, slope1 = _normalizer_difference_terms(n, su, sl, delta, slope=True)
        slope0 = 0.25 * ((a + su).reciprocal() + (a + sl).reciprocal())
        ctx.save_for_backward(slope1, slope0)
        ctx.shapes = (kappa_sq.shape, delta.shape)
        return value

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        slope1, slope0 = ctx.saved_tensors
        shape_t, shape_d = ctx.shapes
        grad_t = grad_d = None
        if ctx.needs_input_grad[0]:
            grad_t = _sum_to(grad * (slope1 - slope0), shape_t)
        if ctx.needs_input_grad[1]:
            grad_d = _sum_to(grad * slope1, shape_d)
        return grad_t, grad_d, None


def _sum_to(x: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Undo broadcasting: sum ``x`` down to ``shape``."""
    if x.shape == shape:
        return x
    lead = x.ndim - len(shape)
    dims = list(range(lead)) + [lead + i for i, s in enumerate(shape) if s == 1 and x.shape[lead + i] != 1]
    return x.sum(dim=dims, keepdim=True).reshape(shape) if dims else x.reshape(shape)


def _log1p(x: torch.Tensor) -> torch.Tensor:
    """log(1 + x) to full relative precision from the vectorised ``log`` (torch's CPU ``log1p`` is
    ~15x slower): with ``u = fl(1 + x)``, ``log(1 + x) = log(u) + log1p((1 + x - u)/u)`` and the
    rounding error ``1 + x - u = x - (u - 1)`` is exact, its log1p ≈ itself to O(eps²). No branch:
    ``u = 1`` gives ``x``. (In-place on a fresh temporary; no autograd.)"""
    u = x + 1.0
    correction = (u - 1.0).sub_(x).div_(u)  # (u - 1 - x)/u
    return u.log_().sub_(correction)


def _normalizer_difference_terms(
    n: int, s_upper: torch.Tensor, s_lower: torch.Tensor, delta: torch.Tensor, *, slope: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The one kernel behind :func:`log_vmf_normalizer_difference` and the fused vMF loss (no autograd:
    it works in place on its own temporaries; the callers are autograd Functions with Eq. 11's derivatives).

    Given ``s_b = sqrt(b² + κ²)`` for the two Eq. 9 offsets (``b = a``: ``s_upper``, ``b = a+1``:
    ``s_lower``, broadcastable against ``delta``) and ``δ = κ'² - κ²``, returns
    ``log C_n(κ) - log C_n(κ')`` (Eq. 12) and, if ``slope``, its derivative in δ,
    ``Σ_b 1/(4(a + s'_b)) = (A_n(κ')/κ')/2`` (Eq. 11 with dκ'/dδ = 1/(2κ')).
    Per offset ``s'_b - s_b = δ / (s_b + s'_b)``; the two logarithms are merged,
    ``log1p(x) + log1p(y) = log1p(x + y + xy)``.
    """
    a = 0.5 * (n - 1)
    with torch.no_grad():
        # κ'² = κ² + δ >= 0 (δ = ‖w̃ + βz‖² - ‖w̃‖² in the loss); rounding must not push s'_b below b
        s1u = torch.add(delta, s_upper * s_upper).clamp_min_(a * a).sqrt_()
        s1l = torch.add(delta, s_lower * s_lower).clamp_min_((a + 1.0) ** 2).sqrt_()
        du = torch.div(delta, s1u + s_upper)  # s'_u - s_u without cancellation
        dl = torch.div(delta, s1l + s_lower)
        xu = du * (a + s_upper).reciprocal()
        xl = dl * (a + s_lower).reciprocal()
        x = (xu * xl).add_(xu).add_(xl)
        value = _log1p(x).mul_(-0.5 * a).add_(du.add_(dl), alpha=0.5)
        if not slope:
            return value, None
        rate = s1u.add_(a).reciprocal_().add_(s1l.add_(a).reciprocal_()).mul_(0.25)
        return value, rate
