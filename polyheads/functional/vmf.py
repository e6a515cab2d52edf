"""von Mises–Fisher sampling and the vMF loss (seed 000 §2.3.1, Eq. 5-8, 13; App. B-C).

- :func:`sample_vmf` -- reparameterised rejection sampler (Wood 1994, as used by Davidson et al. 2018,
  seed 000 ref. [11]), vectorised over batch × samples, stable for n in [2, 4096], κ in [0, 1e5+].
- :func:`vmf_mean` -- ``E[x] = A_n(κ) μ`` from the natural parameter ``θ = κμ``.
- :func:`vmf_bound_logits` / :func:`vmf_bound_logsumexp` -- the per-class terms of Eq. 13,
  ``log C_n(‖w̃_j‖) - log C_n(‖w̃_j + βz‖)``, and their log-sum-exp over classes (fused, memory-lean).
- :func:`vmf_loss` -- Eq. 13 estimated with given samples of z.
- :func:`vmf_predictive_log_probs` -- ``log E_{z,w}[softmax(β cos θ)]`` by Monte Carlo (§2.3.1 "At
  test time").

The sampler (Wood 1994, cancellation-free). For dimension n put ``m = n - 1`` and

    b  = m / (2κ + sqrt(4κ² + m²))                  (= (-2κ + sqrt(4κ² + m²))/m without cancellation)
    ε  ~ Beta(m/2, m/2),   D = 1 - (1-b)ε
    w  = (1 - (1+b)ε) / D                           (the component along μ)
    accept iff  log U <= 2κb(1-2ε)/((1+b)D) + m (log(1+b) - log 2 - log D)

The acceptance test is Wood's ``κw + m log(1 - x0 w) - c >= log U`` (x0 = (1-b)/(1+b),
c = κx0 + m log(1 - x0²)) with the large terms cancelled symbolically, and
``sqrt(1 - w²) = 2 sqrt(b) sqrt(ε(1-ε)) / D`` is exact where ``1 - w²`` would lose every digit at
large κ. At κ = 0, b = 1 and w = 1 - 2ε with acceptance 1: the uniform distribution, no special case.
The tangent direction is a normalised Gaussian in the n-1 remaining coordinates; the point
``(w, sqrt(1-w²) v)`` around ±e1 is mapped onto μ by the Householder reflection
``H = I - 2uu^T/‖u‖²``, ``u = μ + sign(μ_1) e1`` (the numerically stable choice: ‖u‖² >= 2, so the
reflection and its gradient in μ are well conditioned for every μ, including μ = ±e1).

Gradients flow through the accepted proposal (``w`` as a function of κ with ε fixed, and the
reflection as a function of μ): Davidson et al.'s ``g_rep``, what seed 000 and Davidson et al.'s
released code use. It is biased in κ (up to ~30 % at n = 3): the density of the accepted ε depends on
κ. ``sample_vmf(..., return_score=True)`` also returns a score surrogate whose gradient is that
density's score, which turns a per-sample objective into an unbiased one (g_rep + g_cor, Naesseth et
al. 2017); ``vmf_loss(..., score=...)`` and the head's ``score_correction=True`` use it.
"""
from __future__ import annotations

import math
import numbers
from typing import Any

import torch
from torch.autograd.function import once_differentiable

from .._checks import check_finite, check_int, check_target, check_tensor, validation_enabled
from .bessel import (
    EXACT_MAX_DIM,
    _check_exact,
    _LogNormalizerDifference,
    _normalizer_difference_terms,
    _ratio_over_kappa,
)

__all__ = [
    "sample_vmf",
    "vmf_mean",
    "vmf_bound_logits",
    "vmf_bound_logsumexp",
    "vmf_loss",
    "vmf_predictive_log_probs",
    "MAX_REJECTION_ROUNDS",
]

#: bound on the rejection rounds of :func:`sample_vmf`; every round accepts >= 65 % of its proposals
#: (measured for n in [2, 4096], κ in [0, 1e5]), so reaching it has probability < 0.35^64 ≈ 1e-29
MAX_REJECTION_ROUNDS = 64

# entries of the [rows, K] blocks of the fused log-sum-exp: one matrix product per ~16 MB block,
# the elementwise math per ~256 KB sub-block (kept in cache)
_MATMUL_BLOCK_ELEMENTS = 1 << 22
_BLOCK_ELEMENTS = 1 << 16
# elements of the [samples, K, n] class-weight draws the Monte-Carlo predictive holds at once
_PREDICTIVE_ELEMENTS = 1 << 24


# ---------------------------------------------------------------------------------------------- checks
def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """Half-precision inputs are computed in float32 (the head math never runs in fp16/bf16)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _check_mu_kappa(mu: Any, kappa: Any) -> tuple[torch.Tensor, torch.Tensor]:
    check_tensor("mu", mu, floating=True)
    if mu.ndim < 1 or mu.shape[-1] < 2:
        raise ValueError(f"mu must have shape [..., n] with n >= 2 (unit mean directions), got {list(mu.shape)}")
    check_finite("mu", mu)
    batch = mu.shape[:-1]
    if isinstance(kappa, numbers.Real) and not isinstance(kappa, bool):
        kappa = torch.tensor(float(kappa), dtype=mu.dtype, device=mu.device)
    check_tensor("kappa", kappa, floating=True)
    check_finite("kappa", kappa)
    try:
        torch.broadcast_shapes(kappa.shape, batch)
    except RuntimeError:
        raise ValueError(
            f"kappa must broadcast to mu's batch shape {list(batch)} (one κ per mean direction), "
            f"got shape {list(kappa.shape)}"
        ) from None
    if torch.broadcast_shapes(kappa.shape, batch) != batch:
        raise ValueError(f"kappa of shape {list(kappa.shape)} does not broadcast to mu's batch shape {list(batch)}")
    if kappa.device != mu.device:
        raise ValueError(f"kappa is on {kappa.device} but mu is on {mu.device}")
    if validation_enabled():
        if kappa.numel() and bool((kappa < 0).any()):
            raise ValueError(f"kappa must be >= 0, got a minimum of {float(kappa.detach().min())}")
        if mu.numel() and bool((mu.norm(dim=-1) == 0).any()):
            raise ValueError("mu holds a zero vector; mean directions must be non-zero (they are normalised)")
    return mu, kappa


def _check_beta(beta: Any, like: torch.Tensor) -> torch.Tensor:
    if isinstance(beta, numbers.Real) and not isinstance(beta, bool):
        if not (math.isfinite(beta) and beta > 0):
            raise ValueError(f"beta must be a finite number > 0, got {beta}")
        return torch.tensor(float(beta), dtype=like.dtype, device=like.device)
    check_tensor("beta", beta, floating=True)
    if beta.numel() != 1:
        raise ValueError(f"beta must be a scalar (the inverse temperature), got shape {list(beta.shape)}")
    if validation_enabled():
        value = float(beta.detach())
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"beta must be finite and > 0, got {value}")
    return beta.reshape(())


def _check_vectors(name: str, x: Any, n: int | None = None, ndim: int | None = None) -> torch.Tensor:
    check_tensor(name, x, floating=True)
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {list(x.shape)}")
    if x.ndim < 1 or (n is not None and x.shape[-1] != n):
        want = f"[..., {n}]" if n is not None else "[..., n]"
        raise ValueError(f"{name} must have shape {want}, got {list(x.shape)}")
    return check_finite(name, x)


# ---------------------------------------------------------------------------------------------- sampler
def sample_vmf(
    mu: torch.Tensor,
    kappa: torch.Tensor | float,
    num_samples: int,
    generator: torch.Generator | None = None,
    *,
    return_score: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Reparameterised samples of vMF(μ, κ) on S^{n-1} (seed 000 Eq. 5; Wood 1994 via seed 000 ref. [11]).

    Args:
        mu: mean directions [..., n] (normalised here; their norms are ignored), n >= 2.
        kappa: concentrations κ >= 0, broadcastable to ``mu.shape[:-1]`` (a number for all).
        num_samples: samples per mean direction, >= 1.
        generator: a ``torch.Generator`` on mu's device for reproducible draws (default: the global RNG).

    Returns:
        Unit vectors [num_samples, *mu.shape[:-1], n] with mu's dtype and device (torch.distributions'
        ``sample_shape + batch_shape + event_shape``), differentiable in ``mu`` and ``kappa`` through the
        accepted proposal (see the module docstring). Fully vectorised: one rejection round draws for all
        entries still rejected, at most :data:`MAX_REJECTION_ROUNDS` rounds.

        With ``return_score=True`` also the score surrogate [num_samples, *mu.shape[:-1]]: value 0,
        gradient ``∂ log π(ε; κ)/∂κ`` of the density of the accepted ε (Naesseth et al. 2017's g_cor,
        Davidson et al. 2018 §3.2). For a per-sample objective f, ``f + (f.detach() - baseline) * score``
        has the same value and an unbiased gradient in κ (g_rep + g_cor); without it the gradient in κ
        is biased by up to ~30 % at n = 3 (docs/vmf.md). ``log C_n``'s derivative in it is exact for
        n <= 64 and Eq. 10 above.
    """
    mu, kappa = _check_mu_kappa(mu, kappa)
    num_samples = check_int("num_samples", num_samples, minimum=1)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if not isinstance(return_score, bool):
        raise TypeError(f"return_score must be a bool, got {type(return_score).__name__}")
    return _sample_vmf(mu, kappa, num_samples, generator, score=return_score)


@torch.compiler.disable  # Wood's rejection loop has data-dependent shapes: run eagerly inside compiled graphs
def _sample_vmf(
    mu: torch.Tensor, kappa: torch.Tensor, num_samples: int, generator: torch.Generator | None, *, score: bool = False
) -> Any:
    """:func:`sample_vmf` without input checks (the heads call this on values they produced)."""
    dtype = mu.dtype
    work = _work_dtype(dtype)
    n = mu.shape[-1]
    batch = mu.shape[:-1]
    mu = mu.to(work).reshape(-1, n)
    norm = mu.norm(dim=-1, keepdim=True)
    # a zero direction (z̃ = 0: κ = 0, the uniform distribution) is replaced by e1
    e1 = torch.zeros_like(mu[:1]).index_fill_(1, torch.tensor([0], device=mu.device), 1.0)
    mu = torch.where(norm > 0, mu / norm.clamp_min(torch.finfo(work).tiny), e1)  # [P, n]
    kappa = kappa.to(work).expand(batch).reshape(-1)  # [P]
    num_points = mu.shape[0]
    kappa = kappa.unsqueeze(0).expand(num_samples, num_points)  # [S, P]
    m = n - 1
    eps = _accepted_beta_draws(kappa.detach(), m, generator)  # [S, P], no gradient

    # the accepted proposal as a differentiable function of κ (ε fixed)
    b = m / (2.0 * kappa + torch.sqrt(4.0 * kappa * kappa + m * m))
    denom = 1.0 - (1.0 - b) * eps
    w = (1.0 - (1.0 + b) * eps) / denom
    sin = 2.0 * b.sqrt() * (eps * (1.0 - eps)).sqrt() / denom

    # the tangent direction: a Gaussian in coordinates 2..n of the output buffer, normalised below
    out = torch.randn((num_samples, num_points, n), generator=generator, device=mu.device, dtype=work)
    g = out[..., 1:]
    if m == 1:  # S^0: a random sign (a normalised 1-D Gaussian, without the 0/0 at exactly zero)
        g.copy_(torch.where(g >= 0, 1.0, -1.0))
        g_norm = torch.ones_like(eps)
    else:
        g_norm = torch.linalg.vector_norm(g, dim=-1)  # [S, P]

    # Householder reflection mapping -σ e1 onto μ, σ = sign(μ_1) (σ = 1 when μ_1 = 0):
    # y = (-σw, sin·g/‖g‖), u = μ + σ e1, ‖u‖² = 2(1 + |μ_1|), x = y - 2 (u·y)/‖u‖² u
    mu1, mu_rest = mu[:, 0], mu[:, 1:]
    sigma = torch.where(mu1 >= 0, 1.0, -1.0).to(work)  # [P]
    scale = sin / g_norm  # [S, P]
    first = -sigma * w
    g_dot_mu = (g @ mu_rest[0]) if num_points == 1 else torch.einsum("spm,pm->sp", g, mu_rest)
    coef = ((mu1 + sigma) * first + scale * g_dot_mu) / (1.0 + mu1.abs())
    x_first = first - coef * (mu1 + sigma)
    if torch.is_grad_enabled() and (scale.requires_grad or coef.requires_grad):
        x_rest = torch.addcmul(-coef.unsqueeze(-1) * mu_rest, g, scale.unsqueeze(-1))
        x = torch.cat([x_first.unsqueeze(-1), x_rest], dim=-1)
    else:  # no autograd: assemble in place in the buffer of the Gaussian draws
        g.mul_(scale.unsqueeze(-1)).addcmul_(coef.unsqueeze(-1), mu_rest, value=-1.0)
        out[..., 0] = x_first
        x = out
    x = x.reshape(num_samples, *batch, n).to(dtype)
    if not score:
        return x
    # log π(ε; κ) = log q(w; κ) + log |∂w/∂ε| up to constants, with q ∝ C_n(κ) e^{κw} (1 - w²)^{(n-3)/2},
    # 1 - w² = 4bε(1-ε)/D² and ∂w/∂ε = -2b/D²: κw + (m/2) log b - m log D + log C_n(κ), where only
    # d log C_n/dκ = -A_n(κ) matters (Eq. 11)
    ratio = kappa.detach() * _ratio_over_kappa(n, kappa.detach().square(), exact=n <= EXACT_MAX_DIM)
    log_density = kappa * w + (0.5 * m) * torch.log(b) - m * torch.log(denom) - ratio * kappa
    return x, (log_density - log_density.detach()).reshape(num_samples, *batch).to(dtype)


def _accepted_beta_draws(kappa: torch.Tensor, m: int, generator: torch.Generator | None) -> torch.Tensor:
    """The accepted ε ~ Beta(m/2, m/2) of Wood's rejection step for every entry of ``kappa`` [S, P]."""
    shape = kappa.shape
    kappa = kappa.reshape(-1)
    b = m / (2.0 * kappa + torch.sqrt(4.0 * kappa * kappa + m * m))
    log_1pb_half = torch.log1p(b) - math.log(2.0)
    eps = torch.empty_like(kappa)
    pending = torch.arange(kappa.numel(), device=kappa.device)
    half = torch.full((1,), 0.5 * m, dtype=kappa.dtype, device=kappa.device)
    for _ in range(MAX_REJECTION_ROUNDS):
        count = pending.numel()
        if count == 0:
            return eps.reshape(shape)
        gam = torch._standard_gamma(half.expand(2, count).contiguous(), generator=generator)
        e = gam[0] / (gam[0] + gam[1])  # Beta(m/2, m/2); 0/0 (both underflow) is NaN and rejected
        u = torch.rand(count, generator=generator, device=kappa.device, dtype=kappa.dtype)
        bb, kk = b[pending], kappa[pending]
        d = 1.0 - (1.0 - bb) * e
        log_accept = 2.0 * kk * bb * (1.0 - 2.0 * e) / ((1.0 + bb) * d) + m * (log_1pb_half[pending] - torch.log(d))
        accept = torch.log(u) <= log_accept
        eps[pending[accept]] = e[accept]
        pending = pending[~accept]
    if pending.numel() == 0:
        return eps.reshape(shape)
    raise RuntimeError(  # pragma: no cover - probability < 2^-64 for valid inputs
        f"sample_vmf: {pending.numel()} proposals still rejected after {MAX_REJECTION_ROUNDS} rounds"
    )


# ---------------------------------------------------------------------------------------------- moments
def vmf_mean(theta: torch.Tensor, *, exact: bool = False) -> torch.Tensor:
    """``E[x] = A_n(κ) μ`` of vMF(μ = θ/‖θ‖, κ = ‖θ‖) for natural parameters θ [..., n] (seed 000
    Eq. 8: ``E[z] = (I_{n/2}(κ)/I_{n/2-1}(κ)) μ_z``), with A_n by Eq. 10 or exactly (``exact=True``).
    Computed as ``(A_n(κ)/κ) θ``: finite, with finite gradients, at θ = 0 (where E[x] = 0)."""
    theta = _check_vectors("theta", theta)
    n = theta.shape[-1]
    exact = _check_exact(n, exact)
    return _ratio_over_kappa(n, theta.pow(2).sum(-1), exact=exact).unsqueeze(-1) * theta


# ---------------------------------------------------------------------------------------------- Eq. 13 terms
def vmf_bound_logits(z: torch.Tensor, weight: torch.Tensor, beta: torch.Tensor | float) -> torch.Tensor:
    """The per-class terms of seed 000 Eq. 13, ``log C_n(‖w̃_j‖) - log C_n(‖w̃_j + βz‖)`` -> [..., K].

    ``z`` [..., n] are samples of the embedding (unit vectors), ``weight`` [K, n] the class parameters
    w̃_j (``κ_wj = ‖w̃_j‖``), ``beta`` the inverse temperature. ``‖w̃_j + βz‖²`` is never formed: the
    difference of the two log-normalisers is taken from ``δ = 2β w̃_j^T z + β²‖z‖²`` (one matrix
    product) without cancellation (:func:`~polyheads.functional.log_vmf_normalizer_difference`).
    Plain autograd; :func:`vmf_bound_logsumexp` is the fused form the loss uses.
    """
    z = _check_vectors("z", z)
    weight = _check_vectors("weight", weight, n=z.shape[-1], ndim=2)
    beta = _check_beta(beta, z)
    delta = 2.0 * beta * (z @ weight.t()) + (beta * beta) * z.pow(2).sum(-1, keepdim=True)
    return _LogNormalizerDifference.apply(weight.pow(2).sum(-1), delta, z.shape[-1])


def vmf_bound_logsumexp(z: torch.Tensor, weight: torch.Tensor, beta: torch.Tensor | float) -> torch.Tensor:
    """``log Σ_j exp(log C_n(‖w̃_j‖) - log C_n(‖w̃_j + βz‖))`` -> [...] (the first term of seed 000 Eq. 13
    for each sample of z), equal to ``vmf_bound_logits(...).logsumexp(-1)``.

    Fused: one (rows × n) @ (n × K) product, then the elementwise math and the log-sum-exp in
    cache-sized row blocks with a hand-written backward that keeps two [rows, K] tensors (the softmax
    and its product with ∂/∂δ) instead of autograd's dozen.
    """
    z = _check_vectors("z", z)
    weight = _check_vectors("weight", weight, n=z.shape[-1], ndim=2)
    beta = _check_beta(beta, z)
    return _bound_logsumexp(z, weight, beta)


def _bound_logsumexp(z: torch.Tensor, weight: torch.Tensor, beta: torch.Tensor, uniform: bool = False) -> torch.Tensor:
    lead, n = z.shape[:-1], z.shape[-1]
    flat = z.reshape(-1, n)
    out = _BoundLogSumExp.apply(flat, weight, weight.pow(2).sum(-1), flat.pow(2).sum(-1), beta, uniform)
    return out.reshape(lead)


class _BoundLogSumExp(torch.autograd.Function):
    """lse_r = logsumexp_j v_rj, v = log C_n(√q_j) - log C_n(√(q_j + δ_rj)), δ = 2β z_r·w_j + β² zz_r.

    Inputs: z [R, n], w [K, n], q [K] (= ‖w‖², a separate input so autograd adds its 2w path),
    zz [R] (= ‖z‖²), β (0-d), ``uniform``. With p = softmax_j(v), s1 = ∂v/∂δ = Σ_b 1/(4(a + s'_b)) and
    s0 = Σ_b 1/(4(a + s_b)) (Eq. 11), for d = z·w: ∂lse/∂d = 2β p s1, ∂lse/∂q = p (s1 - s0),
    ∂lse/∂zz = β² Σ_j p s1, ∂lse/∂β = Σ_j p s1 (2d + 2β zz).

    The [R, K] matrix of dot products d and its gradient never exist whole: rows are processed in
    blocks of ~4M entries (one matrix product each, in the last-level cache), the elementwise math in
    sub-blocks of ~64K entries. Kept for the backward pass: p·s1 [R, K] and p [R, K] -- or, with
    ``uniform=True`` (the caller reduces lse with equal weights, as the loss's mean does), only p·s1 and
    the column sums of p and p·s1, which is all ∂lse/∂q needs then (checked in the backward pass).
    """

    @staticmethod
    def forward(
        ctx: Any, z: torch.Tensor, w: torch.Tensor, q: torch.Tensor, zz: torch.Tensor, beta: torch.Tensor, uniform: bool
    ) -> torch.Tensor:
        n = z.shape[1]
        a = 0.5 * (n - 1)
        su = (q + a * a).sqrt()
        sl = (q + (a + 1.0) ** 2).sqrt()
        rows_total, k = z.shape[0], w.shape[0]
        need_grad = any(ctx.needs_input_grad[:5])
        keep_prob = need_grad and not uniform
        lse = z.new_empty(rows_total)
        if need_grad:
            weighted = z.new_empty(rows_total, k)
            prob = z.new_empty(rows_total, k) if keep_prob else None
            col_prob = z.new_zeros(k)
            col_weighted = z.new_zeros(k)
            row_weighted = z.new_empty(rows_total)
            row_weighted_d = z.new_empty(rows_total)
        two_beta = 2.0 * beta
        beta_sq_zz = (beta * beta) * zz
        w_t = w.t()
        mm_rows = max(1, _MATMUL_BLOCK_ELEMENTS // max(k, 1))
        rows = max(1, _BLOCK_ELEMENTS // max(k, 1))
        d_block = z.new_empty(min(mm_rows, rows_total), k)
        scratch = z.new_empty(min(rows, rows_total), k)
        for m0 in range(0, rows_total, mm_rows):
            m1 = min(m0 + mm_rows, rows_total)
            d_all = torch.mm(z[m0:m1], w_t, out=d_block[: m1 - m0])
            for r0 in range(m0, m1, rows):
                r1 = min(r0 + rows, m1)
                block = d_all[r0 - m0 : r1 - m0]
                delta = torch.addcmul(beta_sq_zz[r0:r1, None], block, two_beta, out=scratch[: r1 - r0])
                value, slope = _normalizer_difference_terms(n, su, sl, delta, slope=need_grad)
                top = value.amax(dim=1, keepdim=True)
                p = torch.exp(value.sub_(top), out=prob[r0:r1] if keep_prob else value)
                total = p.sum(dim=1, keepdim=True)
                lse[r0:r1] = (top + total.log()).squeeze(1)
                if need_grad:
                    p.div_(total)
                    pw = torch.mul(slope, p, out=weighted[r0:r1])
                    row_weighted[r0:r1] = pw.sum(dim=1)
                    if uniform:
                        col_prob += p.sum(dim=0)
                        col_weighted += pw.sum(dim=0)
                    row_weighted_d[r0:r1] = slope.mul_(block).mul_(p).sum(dim=1)
        if need_grad:
            slope0 = 0.25 * ((a + su).reciprocal() + (a + sl).reciprocal())
            ctx.uniform = uniform
            saved_prob = prob if keep_prob else col_prob
            ctx.save_for_backward(saved_prob, weighted, col_weighted, row_weighted, row_weighted_d, z, w, zz, beta, slope0)
        return lse

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        prob, weighted, col_weighted, row_weighted, row_weighted_d, z, w, zz, beta, slope0 = ctx.saved_tensors
        if ctx.uniform and grad.numel() and not bool((grad == grad[0]).all()):
            raise RuntimeError(
                "vmf_bound_logsumexp(uniform=True) was reduced with unequal weights; use uniform=False"
            )
        grad_z = grad_w = grad_q = grad_zz = grad_beta = None
        need_z, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if need_z or need_w:
            scale = (2.0 * beta) * grad  # ∂lse/∂d = 2β p s1, times the incoming gradient
            grad_z = torch.empty_like(z) if need_z else None
            grad_w = torch.zeros_like(w) if need_w else None
            rows_total, k = weighted.shape
            mm_rows = max(1, _MATMUL_BLOCK_ELEMENTS // max(k, 1))
            g_block = weighted.new_empty(min(mm_rows, rows_total), k)
            for m0 in range(0, rows_total, mm_rows):
                m1 = min(m0 + mm_rows, rows_total)
                g = torch.mul(weighted[m0:m1], scale[m0:m1, None], out=g_block[: m1 - m0])
                if grad_z is not None:
                    torch.mm(g, w, out=grad_z[m0:m1])
                if grad_w is not None:
                    grad_w.addmm_(g.t(), z[m0:m1])
        if ctx.needs_input_grad[2]:
            if ctx.uniform:  # every row has the gradient grad[0]
                grad_q = grad[0] * (col_weighted - prob * slope0) if grad.numel() else torch.zeros_like(slope0)
            else:
                grad_q = grad @ weighted - (grad @ prob) * slope0
        if ctx.needs_input_grad[3]:
            grad_zz = (beta * beta) * grad * row_weighted
        if ctx.needs_input_grad[4]:
            grad_beta = (grad * (2.0 * row_weighted_d + 2.0 * beta * zz * row_weighted)).sum()
        return grad_z, grad_w, grad_q, grad_zz, grad_beta, None


# ---------------------------------------------------------------------------------------------- the loss
def vmf_loss(
    z_samples: torch.Tensor,
    theta_z: torch.Tensor,
    weight: torch.Tensor,
    beta: torch.Tensor | float,
    target: torch.Tensor,
    *,
    exact_ratio: bool = False,
    score: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """The vMF loss, seed 000 Eq. 13 (the Jensen upper bound of Eq. 7-8, derived in App. B):

        E_z[log Σ_j exp(log C_n(‖w̃_j‖) - log C_n(‖w̃_j + βz‖))] - β E[w_y]^T E[z]

    with the expectation over z estimated by the given samples, ``E[z] = A_n(κ_z) μ_z`` and
    ``E[w_y] = A_n(κ_wy) μ_wy`` (Eq. 8).

    Args:
        z_samples: samples of z ~ vMF(μ_z, κ_z), unit vectors [S, B, n] (:func:`sample_vmf`).
        theta_z: the embedding's natural parameters z̃ = κ_z μ_z [B, n].
        weight: class parameters w̃_j [K, n] (κ_wj = ‖w̃_j‖).
        beta: inverse temperature β > 0.
        target: class indices [B].
        exact_ratio: use the exact A_n in the E[w_y]^T E[z] term (n <= 64) instead of Eq. 10.
        score: the score surrogate [S, B] of the samples (``sample_vmf(..., return_score=True)``): adds
            the rejection sampler's gradient correction in κ_z with a leave-one-out baseline over the S
            samples (value unchanged). ``None`` (the seed's choice): gradients through the samples only.
        reduction: ``"mean"`` (a scalar) or ``"none"`` (per-instance losses [B]).
    """
    z_samples = _check_vectors("z_samples", z_samples, ndim=3)
    n = z_samples.shape[-1]
    theta_z = _check_vectors("theta_z", theta_z, n=n, ndim=2)
    weight = _check_vectors("weight", weight, n=n, ndim=2)
    if z_samples.shape[1] != theta_z.shape[0]:
        raise ValueError(
            f"z_samples [S, B, n] and theta_z [B, n] disagree on B: {list(z_samples.shape)} vs {list(theta_z.shape)}"
        )
    beta = _check_beta(beta, theta_z)
    target = check_target(target, weight.shape[0], theta_z.shape[0])
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    if score is not None:
        check_tensor("score", score, floating=True)
        if score.shape != z_samples.shape[:2]:
            raise ValueError(f"score must have shape [S, B] = {list(z_samples.shape[:2])}, got {list(score.shape)}")
    mean = reduction == "mean"
    per_instance = _vmf_loss(z_samples, theta_z, weight, beta, target, _check_exact(n, exact_ratio), score, uniform=mean)
    return per_instance.mean() if mean else per_instance


def _vmf_loss(
    z_samples: torch.Tensor,
    theta_z: torch.Tensor,
    weight: torch.Tensor,
    beta: torch.Tensor,
    target: torch.Tensor,
    exact_ratio: bool,
    score: torch.Tensor | None = None,
    uniform: bool = False,
) -> torch.Tensor:
    """Per-instance Eq. 13 [B] (unchecked). ``uniform=True``: the caller averages the result (lighter
    backward pass, see :class:`_BoundLogSumExp`)."""
    n = theta_z.shape[-1]
    lse = _bound_logsumexp(z_samples, weight, beta, uniform=uniform)  # [S, B]
    if score is not None:  # score-function correction with a leave-one-out baseline (value unchanged)
        value = lse.detach()
        count = value.shape[0]
        baseline = (value.sum(0, keepdim=True) - value) / (count - 1) if count > 1 else torch.zeros_like(value)
        lse = lse + (value - baseline) * score
    first = lse.mean(0)  # E_z[log Σ_j ...], [B]
    w_y = weight[target]
    rho_w = _ratio_over_kappa(n, w_y.pow(2).sum(-1), exact=exact_ratio)
    rho_z = _ratio_over_kappa(n, theta_z.pow(2).sum(-1), exact=exact_ratio)
    second = beta * rho_w * rho_z * (w_y * theta_z).sum(-1)  # β E[w_y]^T E[z]
    return first - second


# ---------------------------------------------------------------------------------------------- prediction
def vmf_predictive_log_probs(
    theta_z: torch.Tensor,
    weight: torch.Tensor,
    beta: torch.Tensor | float,
    num_samples: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``log E_{z, w_1:K}[softmax_j(β cos θ_j)]`` by Monte Carlo -> [B, K] (seed 000 §2.3.1: "At test
    time, vMF approximates E_{z,w}[p(y|z,w)] using Monte Carlo samples from each of z and {w_j}").

    ``num_samples`` joint draws of z ~ vMF(θ_z) for every row and of every w_j ~ vMF(w̃_j); draw s
    shares its class weights across the batch. Class-weight draws are made in chunks so that at most
    ~16M weight coordinates are held at once. ``softmax`` of the result is the predictive distribution.
    """
    theta_z = _check_vectors("theta_z", theta_z, ndim=2)
    weight = _check_vectors("weight", weight, n=theta_z.shape[-1], ndim=2)
    beta = _check_beta(beta, theta_z)
    num_samples = check_int("num_samples", num_samples, minimum=1)
    return _predictive_log_probs(theta_z, weight, beta, num_samples, generator)


def _predictive_log_probs(
    theta_z: torch.Tensor, weight: torch.Tensor, beta: torch.Tensor, num_samples: int, generator: torch.Generator | None
) -> torch.Tensor:
    kappa_z = theta_z.norm(dim=-1)
    kappa_w = weight.norm(dim=-1)
    chunk = max(1, min(num_samples, _PREDICTIVE_ELEMENTS // max(1, weight.numel())))
    total: torch.Tensor | None = None
    for s0 in range(0, num_samples, chunk):
        c = min(chunk, num_samples - s0)
        z = _sample_vmf(theta_z, kappa_z, c, generator)  # [c, B, n]
        w = _sample_vmf(weight, kappa_w, c, generator)  # [c, K, n]
        log_p = torch.log_softmax(beta * torch.bmm(z, w.transpose(1, 2)), dim=-1).logsumexp(0)  # [B, K]
        total = log_p if total is None else torch.logaddexp(total, log_p)
    assert total is not None
    return total - math.log(num_samples)
