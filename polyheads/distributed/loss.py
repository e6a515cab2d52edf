"""Softmax cross-entropy over classes split across ranks: a distributed max / log-sum-exp.

Rank r holds the logits of its classes, ``l_r`` [N, K_r], for the N embeddings of the *global*
batch. The cross-entropy of seed 000 Eq. 1/3/4 needs ``log Σ_j exp(l_j)`` over all K classes. Each
rank reduces its own block first, ``lse_r = log Σ_{j in r} exp(l_rj)`` (``torch.logsumexp``, or a
fused kernel such as the vMF bound's), then

    m   = max_r lse_r                          (all-reduce MAX; a constant for the gradient)
    lse = m + log Σ_r exp(lse_r - m)           (all-reduce SUM)

which is the log-sum-exp over all K classes, shifted by a distributed max so nothing overflows.
The target logit is held by the one rank that owns the class (:func:`~polyheads.distributed.comm.
reduce_partials`). ``∂lse/∂l_rj = exp(l_rj - lse)`` needs nothing from the other ranks, so the
backward pass is local. The gradient convention is that of :mod:`polyheads.distributed.comm`
(shares summed over the ranks). Two all-reduces of N floats per step, whatever K is.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from .._checks import check_tensor
from .comm import is_distributed, reduce_partials

__all__ = ["combine_logsumexp", "sharded_logsumexp", "scaled_cosines", "sharded_cross_entropy", "owned_targets"]


class _CombineLogSumExp(torch.autograd.Function):
    """lse = log Σ_r exp(lse_r) over the ranks, with the distributed max m = max_r lse_r subtracted
    first; ∂lse/∂lse_r = exp(lse_r - lse), local."""

    @staticmethod
    def forward(ctx: Any, local: torch.Tensor, group: Any) -> torch.Tensor:  # type: ignore[override]
        top = local.detach().clone()
        dist.all_reduce(top, op=dist.ReduceOp.MAX, group=group)
        top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))  # rows with no finite part
        total = torch.exp(local.detach() - top)
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
        out = top + total.log()
        ctx.save_for_backward(local, out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        local, out = ctx.saved_tensors
        return grad * torch.exp(local - out), None


def combine_logsumexp(local: torch.Tensor, group: Any = None) -> torch.Tensor:
    """``log Σ_r exp(local_r)``: the log-sum-exp over all classes from each rank's log-sum-exp over
    its own classes (``local`` [...], the same shape on every rank), with a distributed max
    (all-reduce MAX) for stability and an all-reduce SUM. Differentiable; the backward pass is local.
    The identity without a process group."""
    check_tensor("local", local, floating=True)
    if not is_distributed(group):
        return local
    return _CombineLogSumExp.apply(local, group)


def sharded_logsumexp(logits: torch.Tensor, group: Any = None) -> torch.Tensor:
    """``log Σ_j exp(logits_j)`` over the last dimension, whose entries are split across the ranks of
    ``group`` (each rank passes its own [..., K_r] block; every rank gets the same [...] result):
    :func:`combine_logsumexp` of the ranks' ``torch.logsumexp``. ``torch.logsumexp(logits, -1)``
    without a process group.
    """
    check_tensor("logits", logits, floating=True)
    if logits.ndim == 0 or logits.shape[-1] == 0:
        raise ValueError(f"logits must have a non-empty last (class) dimension, got shape {list(logits.shape)}")
    return combine_logsumexp(torch.logsumexp(logits, dim=-1), group)


class _ScaledCosines(torch.autograd.Function):
    """cos_ij = ẑ_i · w_j c_j with c_j = 1 / max(‖w_j‖, eps): the cosines of seed 000 Eq. 3 for unit
    rows ẑ, without forming the normalised [K, d] copy of W (nor its gradient): the backward pass
    folds ∂c_j/∂w_j = -c_j³ w_j into W's gradient in place, as functional.margin_cross_entropy does."""

    @staticmethod
    def forward(ctx: Any, z_hat: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:  # type: ignore[override]
        norm = torch.linalg.vector_norm(weight.detach(), dim=1)
        scale = norm.clamp_min(eps).reciprocal()
        out = torch.mm(z_hat.detach(), weight.detach().t()).mul_(scale)
        ctx.eps = eps
        ctx.save_for_backward(z_hat, weight, norm, out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:  # type: ignore[override]
        z_hat, weight, norm, out = ctx.saved_tensors
        scale = norm.clamp_min(ctx.eps).reciprocal()
        grad_raw = grad * scale  # ∂L/∂(ẑ·w_j)
        grad_z = torch.mm(grad_raw, weight) if ctx.needs_input_grad[0] else None
        grad_w = None
        if ctx.needs_input_grad[1]:
            grad_w = torch.mm(grad_raw.t(), z_hat)
            # ∂L/∂c_j = Σ_i grad_ij (ẑ_i·w_j) = Σ_i grad_ij out_ij / c_j;  ∂c_j/∂w_j = -c_j³ w_j
            grad_scale = (grad * out).sum(0) / scale
            coef = torch.where(norm > ctx.eps, -grad_scale * scale.pow(3), torch.zeros_like(grad_scale))
            grad_w.addcmul_(weight, coef.unsqueeze(1))
        return grad_z, grad_w, None


def scaled_cosines(z_hat: torch.Tensor, weight: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``cos θ_ij = ẑ_i^T w_j / ‖w_j‖`` [N, K] for unit rows ``z_hat`` [N, d] and class vectors
    ``weight`` [K, d] (seed 000 Eq. 3 before β; :func:`polyheads.functional.cosine_logits` after
    normalising z), memory-lean in W: no [K, d] temporary besides W's own gradient."""
    check_tensor("z_hat", z_hat, floating=True, ndim=2)
    check_tensor("weight", weight, floating=True, ndim=2)
    if weight.shape[1] != z_hat.shape[1]:
        raise ValueError(f"weight must have shape [num_classes, {z_hat.shape[1]}], got {list(weight.shape)}")
    return _ScaledCosines.apply(z_hat, weight, eps)


def owned_targets(target: torch.Tensor, start: int, end: int, columns: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows whose class lies in this rank's ``[start, end)`` and the class's column in the rank's
    logits: ``(rows, cols)``. ``columns`` (sorted local class indices, PartialFC sampling) maps a
    local class to its position among the sampled columns; every owned target must be sampled."""
    mask = (target >= start) & (target < end)
    rows = torch.nonzero(mask).squeeze(1)
    cols = target[rows] - start
    if columns is not None:
        cols = torch.searchsorted(columns, cols)
    return rows, cols


def sharded_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, start: int, end: int, columns: torch.Tensor | None = None,
    group: Any = None,
) -> torch.Tensor:
    """Mean softmax cross-entropy ``mean_i (lse_i - logits_{i, y_i})`` of logits whose classes are
    split across ranks: ``logits`` [N, K_r] holds classes ``[start, end)`` (or the sorted subset
    ``columns`` of them), ``target`` [N] global class indices. Equal to ``F.cross_entropy`` of the
    concatenated logits; every rank gets the same value."""
    check_tensor("logits", logits, floating=True, ndim=2)
    check_tensor("target", target, floating=False, ndim=1)
    if target.shape[0] != logits.shape[0]:
        raise ValueError(f"target has {target.shape[0]} entries but logits has {logits.shape[0]} rows")
    lse = sharded_logsumexp(logits, group)
    rows, cols = owned_targets(target, start, end, columns)
    picked = torch.zeros_like(lse).index_put((rows,), logits[rows, cols])
    return (lse - reduce_partials(picked, group)).mean()
