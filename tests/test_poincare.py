"""HYPERBOLIC head and Poincaré math (issue 7): seed 000 Eq. 2 against an independent float64 implementation
written here (its own Möbius addition -- neither geoopt's nor polyheads'), the c -> 0 limit, float32 stability
at the boundary, gradients, the Riemannian optimiser, checkpoints and input checks."""
import copy
import io
import math

import geoopt
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from polyheads import create_head, get_head_class
from polyheads.functional import (
    clip_feature_norm,
    poincare_distance,
    poincare_mlr_logits,
    stable_norm,
    transport_from_origin,
)
from polyheads.heads.poincare import PoincareHead, poincare_ball
from polyheads.training.engine import build_optimizer

D64 = torch.float64


# ------------------------------------------------------------------------------------ independent reference
def mobius_add(u, v, c):
    """u ⊕_c v (Ganea et al. 2018), broadcasting over leading dimensions, float64."""
    uv = (u * v).sum(-1, keepdim=True)
    u2 = (u * u).sum(-1, keepdim=True)
    v2 = (v * v).sum(-1, keepdim=True)
    return ((1 + 2 * c * uv + c * v2) * u + (1 - c * u2) * v) / (1 + 2 * c * uv + c * c * u2 * v2)


def eq2_reference(x, p, a, c):
    """Seed 000 Eq. 2 verbatim for every (sample, class): materialises -p_y ⊕ x as [B, K, d]."""
    x, p, a = x.to(D64), p.to(D64), a.to(D64)
    w = mobius_add(-p[None, :, :], x[:, None, :], c)  # -p_y ⊕_c x
    lam = 2.0 / (1.0 - c * (p * p).sum(-1))  # conformal factor λ^c_{p_y}
    a_norm = a.norm(dim=-1)
    inner = (w * a[None]).sum(-1)
    arg = 2.0 * math.sqrt(c) * inner / ((1.0 - c * (w * w).sum(-1)) * a_norm)
    return lam * a_norm / math.sqrt(c) * torch.asinh(arg)


def distance_reference(x, y, c):
    """d_c(x, y) = (2/√c) artanh(√c ‖-x ⊕_c y‖) for every pair, float64."""
    w = mobius_add(-x.to(D64)[:, None, :], y.to(D64)[None, :, :], c)
    return 2.0 / math.sqrt(c) * torch.atanh(math.sqrt(c) * w.norm(dim=-1))


def points_in_ball(n, d, c, max_fraction, generator, dtype=D64):
    """n random points with norms uniform in [0, max_fraction) of the radius 1/√c."""
    u = torch.randn(n, d, generator=generator, dtype=D64)
    r = torch.rand(n, 1, generator=generator, dtype=D64) * max_fraction / math.sqrt(c)
    return (u / u.norm(dim=1, keepdim=True) * r).to(dtype)


def points_at(n, d, c, fraction, generator, dtype=D64):
    u = torch.randn(n, d, generator=generator, dtype=D64)
    return (u / u.norm(dim=1, keepdim=True) * fraction / math.sqrt(c)).to(dtype)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------ Eq. 2
@pytest.mark.parametrize("c", [1e-5, 0.1, 1.0])
def test_logits_equal_independent_eq2(c):
    g = gen(1)
    x = points_in_ball(9, 6, c, 0.95, g)
    p = points_in_ball(7, 6, c, 0.95, g)
    a = torch.randn(7, 6, generator=g, dtype=D64)
    expected = eq2_reference(x, p, a, c)
    got = poincare_mlr_logits(x, p, a, c)
    assert got.shape == (9, 7)
    assert torch.allclose(got, expected, rtol=1e-9, atol=1e-9 * expected.abs().max())
    # c as a 0-d tensor (geoopt's PoincareBall.c) gives the same numbers
    assert torch.allclose(poincare_mlr_logits(x, p, a, torch.tensor(c, dtype=D64)), got, rtol=1e-12, atol=0)


@pytest.mark.parametrize("c", [1e-5, 0.1, 1.0])
def test_signs_hyperplane_and_orientation(c):
    """-p ⊕ (p ⊕ u) = u (left cancellation): points p ⊕ u with u ⟂ a lie on the gyroplane (logit 0) and
    the logit of p ⊕ t·â grows with t and has its sign -- the sign conventions of Eq. 2."""
    g = gen(2)
    d = 5
    p = points_in_ball(1, d, c, 0.6, g)
    a = torch.randn(1, d, generator=g, dtype=D64)
    a_hat = a / a.norm()
    u = torch.randn(6, d, generator=g, dtype=D64)
    u = u - (u @ a_hat.t()) * a_hat  # ⟂ a
    u = u / u.norm(dim=1, keepdim=True) * (0.3 / math.sqrt(c))
    on_plane = mobius_add(p, u, c)
    assert poincare_mlr_logits(on_plane, p, a, c).abs().max() < 1e-9 * (2 * a.norm() / math.sqrt(c))
    t = torch.linspace(-0.8, 0.8, 8, dtype=D64)[:, None] / math.sqrt(c)  # 0 excluded
    along = mobius_add(p.expand(8, d), t * a_hat, c)
    logits = poincare_mlr_logits(along, p, a, c)[:, 0]
    assert (torch.sign(logits) == torch.sign(t[:, 0])).all()
    assert (logits.diff() > 0).all()


def test_c_to_zero_limit_is_four_times_the_euclidean_logit():
    """λ_p -> 2 and asinh(u) ~ u give ζ -> 4⟨x - p, a⟩; the error shrinks like c."""
    g = gen(3)
    x = torch.randn(8, 5, generator=g, dtype=D64)
    p = torch.randn(6, 5, generator=g, dtype=D64)
    a = torch.randn(6, 5, generator=g, dtype=D64)
    limit = 4.0 * ((x[:, None, :] - p[None, :, :]) * a[None, :, :]).sum(-1)
    errors = []
    for c in (1e-3, 1e-5, 1e-7):
        errors.append(float((poincare_mlr_logits(x, p, a, c) - limit).abs().max() / limit.abs().max()))
    assert errors[-1] < 1e-5
    for big, small in zip(errors, errors[1:]):
        assert 50 < big / small < 200  # first order in c
    # the constant is 4, not the 2 of λ_0 alone: 2⟨x - p, a⟩ would be off by a factor 2
    assert not torch.allclose(poincare_mlr_logits(x, p, a, 1e-7), limit / 2, rtol=0.1)


def test_curvature_is_a_scale_of_the_unit_ball():
    """ζ_c(x, p, a) = c^(-1/2) ζ_1(√c x, √c p, a): why a learned c adds nothing (docs/hyperbolic.md)."""
    g = gen(18)
    c = 0.37
    x = points_in_ball(5, 4, c, 0.9, g)
    p = points_in_ball(3, 4, c, 0.9, g)
    a = torch.randn(3, 4, generator=g, dtype=D64)
    scaled = poincare_mlr_logits(math.sqrt(c) * x, math.sqrt(c) * p, a, 1.0) / math.sqrt(c)
    assert torch.allclose(poincare_mlr_logits(x, p, a, c), scaled, rtol=1e-10)


def test_head_logits_use_transported_normals():
    """The head's a_y = (λ_0/λ_{p_y}) a'_y (Ganea et al.): λ_{p_y}‖a_y‖ = 2‖a'_y‖, logits = Eq. 2 of (z, p, a)."""
    c = 0.3
    head = create_head("poincare", 10, 4, dim=6, c=c, clip_r=2.0).double()
    with torch.no_grad():
        head.offsets.copy_(points_in_ball(4, 6, c, 0.9, gen(4)))
    feats = torch.randn(5, 10, generator=gen(5), dtype=D64)
    z = head.embed(feats)
    p, a_prime = head.offsets.detach(), head.normals.detach()
    a = (1.0 - c * (p * p).sum(1, keepdim=True)) * a_prime
    lam = 2.0 / (1.0 - c * (p * p).sum(1))
    assert torch.allclose(lam * a.norm(dim=1), 2.0 * a_prime.norm(dim=1), rtol=1e-12)
    assert torch.allclose(head.normals_at_offsets(), a, rtol=1e-12)
    assert torch.allclose(poincare_mlr_logits(z, p, a_prime, c, a_at_origin=True), eq2_reference(z, p, a, c), rtol=1e-9)
    # rtol: the ball stores c as softplus⁻¹(c) in the dtype the head was built in (float32)
    assert torch.allclose(head(feats), eq2_reference(z, p, a, c), rtol=1e-6, atol=1e-6)
    # the embedding: expmap0 of the clipped z̃ (closed form tanh(√c‖v‖) v / (√c‖v‖))
    v = feats @ head.embedding.weight.t() + head.embedding.bias
    v = v * torch.clamp(2.0 / v.norm(dim=1, keepdim=True), max=1.0)
    n = v.norm(dim=1, keepdim=True)
    assert torch.allclose(z, torch.tanh(math.sqrt(c) * n) * v / (math.sqrt(c) * n), rtol=1e-10)


# ------------------------------------------------------------------------------------ float32 stability
@pytest.mark.parametrize("c", [1.0, 1e-5])
def test_float32_at_the_boundary_is_finite_and_accurate(c):
    g = gen(6)
    x = points_at(32, 16, c, 0.999, g, torch.float32).requires_grad_(True)
    p = points_at(10, 16, c, 0.999, g, torch.float32).requires_grad_(True)
    a = torch.randn(10, 16, generator=g).requires_grad_(True)
    logits = poincare_mlr_logits(x, p, a, c)
    assert torch.isfinite(logits).all()
    # against Eq. 2 in float64 at the same (float32-rounded) points
    expected = eq2_reference(x.detach(), p.detach(), a.detach(), c)
    rel = ((logits.double() - expected).abs() / expected.abs().clamp_min(1.0)).max()
    assert rel < 2e-3, rel
    loss = F.cross_entropy(logits, torch.arange(32) % 10)
    loss.backward()
    for t in (x, p, a):
        assert torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


def test_zero_normal_gives_zero_logit_and_finite_gradients():
    g = gen(16)
    x = points_in_ball(4, 3, 1.0, 0.9, g).requires_grad_(True)
    p = points_in_ball(3, 3, 1.0, 0.9, g).requires_grad_(True)
    a = torch.randn(3, 3, generator=g, dtype=D64)
    a[1] = 0.0
    a.requires_grad_(True)
    for at_origin in (False, True):
        logits = poincare_mlr_logits(x, p, a, 1.0, a_at_origin=at_origin)
        normals = (1.0 - (p * p).sum(1, keepdim=True)) * a if at_origin else a
        assert (logits[:, 1] == 0).all()
        assert torch.allclose(logits[:, [0, 2]], eq2_reference(x, p[[0, 2]], normals[[0, 2]], 1.0), rtol=1e-9)
        grads = torch.autograd.grad(logits.sum(), (x, p, a))
        assert all(torch.isfinite(t).all() for t in grads)


def test_autocast_does_not_lower_the_precision():
    g = gen(17)
    x = points_in_ball(5, 8, 1.0, 0.99, g, torch.float32)
    p = points_in_ball(4, 8, 1.0, 0.99, g, torch.float32)
    a = torch.randn(4, 8, generator=g)
    plain = poincare_mlr_logits(x, p, a, 1.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = poincare_mlr_logits(x, p, a, 1.0)
    assert inside.dtype == torch.float32 and torch.equal(inside, plain)


@pytest.mark.parametrize("clip_r", [1.0, None])
def test_huge_features_stay_finite_and_inside(clip_r):
    c = 1.0
    head = create_head("poincare", 8, 5, dim=8, c=c, clip_r=clip_r)
    feats = (torch.randn(6, 8, generator=gen(7)) * 1e30).requires_grad_(True)
    z = head.embed(feats)
    assert torch.isfinite(z).all() and (c * z.pow(2).sum(1) < 1).all()
    if clip_r is not None:  # expmap0 of a tangent vector of norm r: ‖z‖ = tanh(√c r)/√c
        assert torch.allclose(z.norm(dim=1), torch.full((6,), math.tanh(clip_r)), rtol=1e-5)
    loss = head.loss(feats, torch.arange(6) % 5)
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(feats.grad).all()
    for name, prm in head.named_parameters():
        if prm.requires_grad:
            assert torch.isfinite(prm.grad).all(), name
    conf = head.confidence(feats.detach())
    assert torch.isfinite(conf).all() and (conf > 1e29).all()


def test_stable_norm_and_clipping():
    v = torch.tensor([[3e30, 4e30], [3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
    assert torch.allclose(stable_norm(v, dim=1), torch.tensor([5e30, 5.0, 0.5, 0.0]), rtol=1e-6)
    clipped = clip_feature_norm(v, 1.0)
    assert torch.allclose(clipped[:2], torch.tensor([[0.6, 0.8], [0.6, 0.8]]), rtol=1e-6)
    assert torch.equal(clipped[2:], v[2:])  # inside the radius: untouched
    with pytest.raises(ValueError, match="r"):
        clip_feature_norm(v, 0.0)


# ------------------------------------------------------------------------------------ gradients
@pytest.mark.parametrize("c", [0.1, 1.0])
def test_gradcheck_float64(c):
    g = gen(8)
    x = points_in_ball(3, 4, c, 0.9, g).requires_grad_(True)
    p = points_in_ball(5, 4, c, 0.9, g).requires_grad_(True)
    a = torch.randn(5, 4, generator=g, dtype=D64).requires_grad_(True)
    ct = torch.tensor(c, dtype=D64, requires_grad=True)
    assert torch.autograd.gradcheck(poincare_mlr_logits, (x, p, a, ct), eps=1e-7, atol=1e-6, rtol=1e-5)
    at_origin = lambda *args: poincare_mlr_logits(*args, a_at_origin=True)  # noqa: E731
    assert torch.autograd.gradcheck(at_origin, (x, p, a, ct), eps=1e-7, atol=1e-6, rtol=1e-5)
    y = points_in_ball(4, 4, c, 0.9, g).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda u, v: poincare_distance(u, v, c), (x, y), eps=1e-7, atol=1e-6)


def test_head_gradcheck_through_clip_and_expmap0():
    head = create_head("poincare", 6, 3, dim=4, c=1.0, clip_r=0.8).double()
    feats = torch.randn(5, 6, generator=gen(9), dtype=D64).requires_grad_(True)
    target = torch.tensor([0, 1, 2, 0, 1])
    assert torch.autograd.gradcheck(lambda f: head.loss(f, target), (feats,), eps=1e-7, atol=1e-6)


class _LargestTensor(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_never_materialises_a_batch_by_class_by_dim_tensor():
    B, K, d = 6, 7, 50
    g = gen(10)
    x = points_in_ball(B, d, 1.0, 0.9, g, torch.float32).requires_grad_(True)
    p = points_in_ball(K, d, 1.0, 0.9, g, torch.float32).requires_grad_(True)
    a = torch.randn(K, d, generator=g).requires_grad_(True)
    with _LargestTensor() as mode:
        F.cross_entropy(poincare_mlr_logits(x, p, a, 1.0), torch.arange(B) % K).backward()
        poincare_distance(x.detach(), p.detach(), 1.0)
    assert mode.largest <= max(B, K) * (d + 1) < B * K * d


# ------------------------------------------------------------------------------------ optimiser
def _head_with_offsets_near_the_boundary(c=1.0):
    head = create_head("poincare", 8, 6, dim=8, c=c, clip_r=3.0)
    with torch.no_grad():
        head.offsets.copy_(points_at(6, 8, c, 0.995, gen(11), torch.float32))
    return head


def _one_step(head, optimizer_cls, lr):
    feats = torch.randn(24, 8, generator=gen(12)) * 3
    target = torch.arange(24) % 6
    opt = optimizer_cls(head.parameters(), lr=lr)
    opt.zero_grad()
    head.loss(feats, target).backward()
    opt.step()
    return head


def test_riemannian_sgd_step_keeps_offsets_strictly_inside():
    lr = 30.0
    head = _one_step(_head_with_offsets_near_the_boundary(), geoopt.optim.RiemannianSGD, lr)
    sq = head.c * head.offsets.detach().pow(2).sum(1)
    assert torch.isfinite(head.offsets).all() and (sq < 1).all()
    # the same step taken by a Euclidean optimiser leaves the ball -- and the head says what to do
    euclid = _one_step(_head_with_offsets_near_the_boundary(), torch.optim.SGD, lr)
    assert (euclid.c * euclid.offsets.detach().pow(2).sum(1) >= 1).any()
    with pytest.raises(ValueError, match="RiemannianSGD"):
        euclid(torch.randn(2, 8))


def test_param_groups_mark_the_manifold_and_the_engine_goes_riemannian():
    head = create_head("hyperbolic", 8, 6, dim=4)
    groups = {g["name"]: g for g in head.param_groups()}
    assert [p is head.offsets for p in groups["manifold"]["params"]] == [True]
    assert groups["manifold"]["riemannian"] is True
    assert all(not isinstance(p, geoopt.ManifoldParameter) for p in groups["head"]["params"])
    opt = build_optimizer(torch.nn.Sequential(torch.nn.Linear(3, 8), head), lr=0.1, momentum=0.9)
    assert isinstance(opt, geoopt.optim.RiemannianSGD)


# ------------------------------------------------------------------------------------ checkpoints
def test_state_dict_round_trip_restores_manifold_parameters():
    head = _one_step(create_head("poincare", 8, 6, dim=5, c=0.1, clip_r=0.7), geoopt.optim.RiemannianSGD, 0.5)
    buffer = io.BytesIO()
    torch.save(head.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(123)
    clone = create_head("poincare", 8, 6, dim=5, c=0.1, clip_r=0.7)
    clone.load_state_dict(torch.load(buffer, weights_only=True))
    assert isinstance(clone.offsets, geoopt.ManifoldParameter)
    assert clone.offsets.manifold is clone.ball and isinstance(clone.ball, geoopt.PoincareBall)
    assert clone.c == pytest.approx(0.1, rel=1e-6)
    assert torch.equal(clone.offsets, head.offsets) and torch.equal(clone.normals, head.normals)
    feats = torch.randn(4, 8)
    assert torch.equal(clone(feats), head(feats))
    # the restored parameter still steps on the manifold, identically
    for h in (head, clone):
        _one_step(h, geoopt.optim.RiemannianSGD, 0.5)
    assert torch.allclose(clone.offsets, head.offsets, atol=1e-6)
    # dtype conversion and deepcopy keep the manifold too
    for other in (copy.deepcopy(head), create_head("poincare", 8, 6, dim=5).double()):
        assert isinstance(other.offsets, geoopt.ManifoldParameter) and other.offsets.manifold is other.ball


def test_ball_curvature_is_exact():
    # geoopt's PoincareBall(1e-5) computes softplus⁻¹(c) in float32 and is 0.14 % off
    for c in (1e-5, 0.1, 1.0, 30.0):
        assert float(poincare_ball(c).c) == pytest.approx(c, rel=1e-6)
    assert create_head("poincare", 4, 3).c == pytest.approx(1e-5, rel=1e-6)  # seed 000 Tables 5-11


# ------------------------------------------------------------------------------------ embed, confidence, distance
def test_embed_confidence_and_origin_distance():
    c, r = 1.0, 1.5
    head = create_head("poincare", 7, 3, dim=5, c=c, clip_r=r).double()
    feats = torch.randn(40, 7, generator=gen(13), dtype=D64) * torch.logspace(-2, 1, 40, dtype=D64)[:, None]
    z = head.embed(feats)
    assert (c * z.pow(2).sum(1) < 1).all()
    v = feats @ head.embedding.weight.t() + head.embedding.bias
    conf = head.confidence(feats)
    assert torch.allclose(conf, v.norm(dim=1), rtol=1e-12)  # ‖z̃‖ before clipping (seed 000 Table 1)
    dist0 = 2.0 / math.sqrt(c) * torch.atanh(math.sqrt(c) * z.norm(dim=1))
    assert torch.allclose(dist0, 2.0 * conf.clamp(max=r), rtol=1e-9)  # d(0, expmap0(v)) = 2‖v‖
    assert (conf > r).any() and (conf < r).any()  # both regimes were exercised


@pytest.mark.parametrize("c", [1e-5, 0.1, 1.0])
def test_pairwise_distance_equals_reference(c):
    g = gen(14)
    x = points_in_ball(6, 5, c, 0.95, g)
    y = points_in_ball(4, 5, c, 0.95, g)
    assert torch.allclose(poincare_distance(x, y, c), distance_reference(x, y, c), rtol=1e-8)
    head = create_head("poincare", 5, 3, dim=5, c=c).double()
    assert torch.allclose(head.distance(x, y), distance_reference(x, y, c), rtol=1e-5)


def test_distance_float32_near_duplicates_and_small_c_limit():
    c = 1.0
    g = gen(15)
    x = points_in_ball(50, 32, c, 0.8, g, torch.float32)
    y = x + 1e-4 * torch.randn(50, 32, generator=g)
    expected = distance_reference(x, y, c).diagonal()
    got = poincare_distance(x, y, c).diagonal()
    assert torch.allclose(got.double(), expected, rtol=1e-3)
    assert poincare_distance(x, x, c).diagonal().abs().max() < 1e-6  # a float32 Gram gives ~2e-3
    u = torch.randn(5, 4, generator=g, dtype=D64)
    w = torch.randn(3, 4, generator=g, dtype=D64)
    assert torch.allclose(poincare_distance(u, w, 1e-12), 2.0 * torch.cdist(u, w), rtol=1e-8)


def test_registration_and_attributes():
    assert get_head_class("hyperbolic") is PoincareHead is get_head_class("poincare")
    head = create_head("hyperbolic", 16, 4, c=0.5, clip_r=2.0)
    assert head.geometry == "hyperbolic" and head.retrieval_metric == "poincare"
    assert "c=0.5" in repr(head) and "clip_r=2.0" in repr(head)
    assert torch.allclose(transport_from_origin(torch.zeros(2, 3), torch.ones(2, 3), 0.5), torch.ones(2, 3))


# ------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("kwargs,word", [
    ({"c": 0.0}, "c"), ({"c": -1.0}, "c"), ({"c": float("nan")}, "c"),
    ({"clip_r": 0.0}, "clip_r"), ({"clip_r": -2.0}, "clip_r"), ({"learn_c": True}, "learn_c"),
])
def test_bad_head_arguments(kwargs, word):
    with pytest.raises(ValueError, match=word):
        create_head("poincare", 8, 4, **kwargs)


def test_bad_functional_inputs():
    x, p, a = torch.zeros(3, 4), torch.zeros(5, 4), torch.ones(5, 4)
    cases = [
        (lambda: poincare_mlr_logits(x, p, a, 0.0), ValueError, "c"),
        (lambda: poincare_mlr_logits(x, p, a, -0.5), ValueError, "c"),
        (lambda: poincare_mlr_logits(x, p, a, torch.tensor(-1.0)), ValueError, "c"),
        (lambda: poincare_mlr_logits(torch.full((3, 4), 0.6), p, a, 1.0), ValueError, "x must lie inside"),
        (lambda: poincare_mlr_logits(x, torch.full((5, 4), 0.6), a, 1.0), ValueError, "p .*RiemannianSGD"),
        (lambda: poincare_mlr_logits(x, p, a[:4], 1.0), ValueError, "same shape"),
        (lambda: poincare_mlr_logits(x[:, :3], p, a, 1.0), ValueError, "columns"),
        (lambda: poincare_mlr_logits(x[0], p, a, 1.0), ValueError, "x"),
        (lambda: poincare_mlr_logits(x.double(), p, a, 1.0), TypeError, "dtype"),
        (lambda: poincare_mlr_logits(torch.full((3, 4), float("nan")), p, a, 1.0), ValueError, "x contains NaN"),
        (lambda: poincare_mlr_logits(x, p, a.long(), 1.0), TypeError, "a"),
        (lambda: poincare_distance(x, torch.full((2, 4), 0.6), 1.0), ValueError, "y must lie inside"),
        (lambda: poincare_distance(x, p[:, :3], 1.0), ValueError, "columns"),
        (lambda: poincare_distance(x, p, 0.0), ValueError, "c"),
    ]
    for call, error, pattern in cases:
        with pytest.raises(error, match=pattern):
            call()
