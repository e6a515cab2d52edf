"""Helpers that several test files share (imported as ``from _helpers import ...``; pytest puts this
folder on ``sys.path``).

* ``exact_ratio``: the reference Bessel ratio A_n(κ), at 30 digits with mpmath (test_bessel, test_vmf);
* ``gradcheck_head_loss``: ``torch.autograd.gradcheck`` of a head's ``loss`` w.r.t. the features and every
  parameter (test_margin_heads, test_center_triplet);
* ``sgd_fit``: a few SGD steps on a head's ``loss`` over a toy batch (test_margin_heads, test_center_triplet).
"""
from __future__ import annotations

import functools

import torch
from torch import nn
from torch.autograd import gradcheck


@functools.lru_cache(maxsize=None)
def exact_ratio(n: int, kappa: float) -> float:
    """A_n(κ) = I_{n/2}(κ)/I_{n/2-1}(κ) with mpmath at 30 digits."""
    import mpmath

    with mpmath.workdps(30):
        nu = mpmath.mpf(n) / 2 - 1
        k = mpmath.mpf(kappa)
        return float(mpmath.besseli(nu + 1, k, maxterms=10**6) / mpmath.besseli(nu, k, maxterms=10**6))


class _LossOf(nn.Module):
    def __init__(self, head):
        super().__init__()
        self.head = head

    def forward(self, x, y):
        return self.head.loss(x, y)


def gradcheck_head_loss(head: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """gradcheck of ``head.loss`` w.r.t. the features and every parameter (float64)."""
    wrapper = _LossOf(head.double())
    names = [n for n, _ in wrapper.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for _, p in wrapper.named_parameters())

    def fn(features, *ps):
        return torch.func.functional_call(wrapper, dict(zip(names, ps)), (features, y))

    assert gradcheck(fn, (x.double().requires_grad_(True), *params), eps=1e-6, atol=1e-6, rtol=1e-4)


def sgd_fit(head: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    """``steps`` SGD steps (lr 0.1, momentum 0.9) on ``head.loss(x, y)``; returns the loss before the first."""
    opt = torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9)
    first = head.loss(x, y).item()
    for _ in range(steps):
        opt.zero_grad()
        head.loss(x, y).backward()
        opt.step()
    return first
