"""ArcFace, CosFace, SphereFace heads and their margin functions (issue 4).

References are written here independently of the code under test: Python ``math`` on the angles
(seed 000 Eq. 4, CosFace, seed 001's piecewise ψ), finite differences (gradcheck), and the
plain-autograd logits for the fused loss.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from polyheads import create_head
from polyheads.functional import (
    additive_angular_margin,
    cosine_margin,
    margin_cross_entropy,
    margin_logits,
    sphereface_lambda,
    sphereface_psi,
)
from polyheads.heads import ArcFaceHead, CosFaceHead, SphereFaceHead

from _helpers import gradcheck_head_loss, sgd_fit

# class directions (angles) and deliberately non-unit norms: the heads must normalise them
PHI = [0.0, 2.2, -2.0]
W_NORMS = [2.0, 0.5, 3.0]


def _planar_head(name: str, **kwargs) -> nn.Module:
    """A float64 head on 2-D features without embedding layer, class j at angle PHI[j]."""
    head = create_head(name, 2, 3, embedding=False, **kwargs).double()
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[r * math.cos(p), r * math.sin(p)] for p, r in zip(PHI, W_NORMS)], dtype=torch.float64))
    return head


def _beta(head) -> float:
    """β = exp(τ) from the stored τ (a fixed ``scale`` is kept as τ = log(scale) in float32)."""
    return math.exp(float(head.temperature.tau.detach()))


def _features(angles: list[float], norms: list[float]) -> torch.Tensor:
    return torch.tensor([[r * math.cos(a), r * math.sin(a)] for a, r in zip(angles, norms)], dtype=torch.float64)


def _angle(a: float, b: float) -> float:
    """The angle in [0, π] between directions a and b."""
    d = abs((a - b + math.pi) % (2 * math.pi) - math.pi)
    return d


def _reference_logits(angles, norms, target, target_value, beta, keep_norm=False):
    rows = []
    for a, r, y in zip(angles, norms, target):
        s = beta * (r if keep_norm else 1.0)
        rows.append([s * (target_value(_angle(a, p)) if j == y else math.cos(_angle(a, p))) for j, p in enumerate(PHI)])
    return np.array(rows)


def _reference_ce(logits: np.ndarray, target) -> float:
    lse = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
    return float(np.mean(lse - logits[np.arange(len(target)), target]))


def _ref_psi(theta: float, m: int) -> float:
    """Seed 001: ψ(θ) = (-1)^k cos(mθ) - 2k, θ ∈ [kπ/m, (k+1)π/m], k ∈ [0, m-1]."""
    k = min(int(math.floor(theta * m / math.pi)), m - 1)
    return (-1) ** k * math.cos(m * theta) - 2 * k


# angles of the samples; target 0 is the class at angle 0, so θ_y = |angle| for those rows.
# 0.3 and 1.4 are below π - 0.5; 2.9 is above it (the θ > π - m branch of ArcFace).
ANGLES = [0.3, 1.4, 2.9, -2.75, 0.1]
NORMS = [1.5, 0.7, 2.0, 1.1, 3.0]
TARGET = [0, 0, 0, 0, 2]


# ------------------------------------------------------------------------------------------ closed forms
@pytest.mark.parametrize("scale", [None, 30.0])
def test_arcface_closed_form_both_branches(scale):
    m = 0.5
    kwargs = {"init_tau": 0.7} if scale is None else {"scale": scale}
    head = _planar_head("arcface", margin=m, **kwargs).train()
    beta = _beta(head)
    assert beta == pytest.approx(math.exp(0.7) if scale is None else scale, rel=1e-6)
    x, y = _features(ANGLES, NORMS), torch.tensor(TARGET)

    def target_value(theta):
        return math.cos(theta + m) if theta <= math.pi - m else math.cos(theta) - m * math.sin(m)

    # row 2 has θ_y = 2.9 > π - m: the fallback branch is really exercised
    assert _angle(ANGLES[2], PHI[0]) > math.pi - m
    ref = _reference_logits(ANGLES, NORMS, TARGET, target_value, beta)
    z = head.embed(x)
    np.testing.assert_allclose(head.training_logits(z, y).detach().numpy(), ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(head.loss(x, y).item(), _reference_ce(ref, TARGET), rtol=1e-12)
    # forward() is the plain β cos θ (evaluation logits), margin or not
    plain = _reference_logits(ANGLES, NORMS, TARGET, math.cos, beta)
    np.testing.assert_allclose(head(x).detach().numpy(), plain, rtol=1e-12, atol=1e-12)


def test_arcface_easy_and_literal_fallbacks():
    m = 0.5
    x, y = _features(ANGLES, NORMS), torch.tensor(TARGET)
    easy = _planar_head("arcface", margin=m, fallback="easy", scale=2.0)
    ref = _reference_logits(ANGLES, NORMS, TARGET, lambda t: math.cos(t + m) if math.cos(t) > 0 else math.cos(t), _beta(easy))
    np.testing.assert_allclose(easy.loss(x, y).item(), _reference_ce(ref, TARGET), rtol=1e-12)
    literal = _planar_head("arcface", margin=m, fallback="none", scale=2.0)
    ref = _reference_logits(ANGLES, NORMS, TARGET, lambda t: math.cos(t + m), _beta(literal))
    np.testing.assert_allclose(literal.loss(x, y).item(), _reference_ce(ref, TARGET), rtol=1e-12)


def test_arcface_warmup_switches_on_at_epoch_E():
    m, E = 0.4, 2
    head = _planar_head("arcface", margin=m, margin_warmup_epochs=E, scale=10.0).train()
    x, y = _features(ANGLES, NORMS), torch.tensor(TARGET)
    beta = _beta(head)
    no_margin = _reference_ce(_reference_logits(ANGLES, NORMS, TARGET, math.cos, beta), TARGET)
    with_margin = _reference_ce(
        _reference_logits(ANGLES, NORMS, TARGET, lambda t: math.cos(t + m) if t <= math.pi - m else math.cos(t) - m * math.sin(m), beta),
        TARGET,
    )
    assert abs(no_margin - with_margin) > 0.1
    # never told an epoch: behaves as epoch 0, i.e. without margin
    assert not head.margin_active and head.current_margin == 0.0
    np.testing.assert_allclose(head.loss(x, y).item(), no_margin, rtol=1e-12)
    for epoch in range(E):
        head.on_epoch_start(epoch)
        np.testing.assert_allclose(head.loss(x, y).item(), no_margin, rtol=1e-12)
    head.on_epoch_start(E)
    assert head.margin_active and head.current_margin == m
    np.testing.assert_allclose(head.loss(x, y).item(), with_margin, rtol=1e-12)
    head.on_epoch_start(E + 5)
    np.testing.assert_allclose(head.loss(x, y).item(), with_margin, rtol=1e-12)


def test_cosface_closed_form_and_warmup():
    m = 0.35
    head = _planar_head("cosface", margin=m, init_tau=1.2, margin_warmup_epochs=1)
    x, y = _features(ANGLES, NORMS), torch.tensor(TARGET)
    beta = _beta(head)
    np.testing.assert_allclose(
        head.loss(x, y).item(), _reference_ce(_reference_logits(ANGLES, NORMS, TARGET, math.cos, beta), TARGET), rtol=1e-12
    )
    head.on_epoch_start(1)
    ref = _reference_logits(ANGLES, NORMS, TARGET, lambda t: math.cos(t) - m, beta)
    np.testing.assert_allclose(head.training_logits(head.embed(x), torch.tensor(TARGET)).detach().numpy(), ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(head.loss(x, y).item(), _reference_ce(ref, TARGET), rtol=1e-12)


@pytest.mark.parametrize("m", [1, 2, 3, 4])
def test_sphereface_closed_form_keeps_feature_norm(m):
    lam_kwargs = dict(lambda_base=50.0, lambda_gamma=0.5, lambda_power=2.0, lambda_min=0.25)
    head = _planar_head("sphereface", margin=m, **lam_kwargs).train()
    x, y = _features(ANGLES, NORMS), torch.tensor(TARGET)
    for step in range(3):
        lam = max(0.25, 50.0 * (1 + 0.5 * step) ** -2.0)
        ref = _reference_logits(
            ANGLES, NORMS, TARGET, lambda t: (lam * math.cos(t) + _ref_psi(t, m)) / (1 + lam), 1.0, keep_norm=True
        )
        np.testing.assert_allclose(head.training_logits(head.embed(x), y).detach().numpy(), ref, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(head.loss(x, y).item(), _reference_ce(ref, TARGET), rtol=1e-12)  # one step
        assert int(head.num_steps) == step + 1
    # forward: the modified-softmax logits ‖x‖ cos θ_j
    plain = _reference_logits(ANGLES, NORMS, TARGET, math.cos, 1.0, keep_norm=True)
    np.testing.assert_allclose(head(x).detach().numpy(), plain, rtol=1e-12, atol=1e-12)


def test_sphereface_m1_is_modified_softmax_and_pure_psi():
    x, y = _features(ANGLES, NORMS), torch.tensor(TARGET)
    head = _planar_head("sphereface", margin=1)
    np.testing.assert_allclose(head.training_logits(head.embed(x), y).detach().numpy(), head(x).detach().numpy(), rtol=1e-12)
    pure = _planar_head("sphereface", margin=3, lambda_base=0.0, lambda_min=0.0, scale=2.0)
    ref = _reference_logits(ANGLES, NORMS, TARGET, lambda t: _ref_psi(t, 3), _beta(pure), keep_norm=True)
    np.testing.assert_allclose(pure.loss(x, y).item(), _reference_ce(ref, TARGET), rtol=1e-12)


def test_sphereface_lambda_schedule_counts_training_steps_only():
    head = create_head("sphereface", 6, 4, dim=3)
    x, y = torch.randn(5, 6), torch.tensor([0, 1, 2, 3, 0])
    assert float(head.current_lambda) == pytest.approx(1000.0)
    head.train()
    for _ in range(3):
        head.loss(x, y).backward()
    assert int(head.num_steps) == 3
    assert float(head.current_lambda) == pytest.approx(max(5.0, 1000.0 / (1 + 0.12 * 3)), rel=1e-6)
    with torch.no_grad():
        head.loss(x, y)
    head.eval()
    head.loss(x, y)
    assert int(head.num_steps) == 3
    assert "num_steps" in head.state_dict()
    # the λ floor after many steps; the epoch schedule follows on_epoch_start
    assert sphereface_lambda(10**6) == 5.0
    by_epoch = create_head("sphereface", 6, 4, lambda_schedule="epoch", lambda_gamma=1.0, lambda_min=0.0)
    by_epoch.on_epoch_start(4)
    assert float(by_epoch.current_lambda) == pytest.approx(1000.0 / 5.0)


def test_sphereface_warmup_means_m_equal_1():
    head = _planar_head("sphereface", margin=4, margin_warmup_epochs=3, lambda_base=0.0, lambda_min=0.0)
    x, y = _features(ANGLES, NORMS), torch.tensor(TARGET)
    np.testing.assert_allclose(head.training_logits(head.embed(x), y).detach().numpy(), head(x).detach().numpy(), rtol=1e-12)
    head.on_epoch_start(3)
    ref = _reference_logits(ANGLES, NORMS, TARGET, lambda t: _ref_psi(t, 4), 1.0, keep_norm=True)
    np.testing.assert_allclose(head.loss(x, y).item(), _reference_ce(ref, TARGET), rtol=1e-12)


# ------------------------------------------------------------------------------------------ gradients
@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("arcface", {}),
        ("arcface", {"scale": 8.0, "fallback": "easy"}),
        ("cosface", {"init_tau": 0.5}),
        ("sphereface", {"margin": 4, "lambda_base": 2.0, "lambda_min": 0.5}),
        ("sphereface", {"margin": 3, "scale": None, "lambda_base": 0.0, "lambda_min": 0.0}),
    ],
)
def test_gradcheck_margin_losses(name, kwargs):
    head = create_head(name, 5, 4, dim=3, **kwargs).eval()  # eval: the λ step counter stays put
    x = torch.randn(7, 5, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 1, 2, 0])
    gradcheck_head_loss(head, x, y)


def test_gradcheck_arcface_fallback_branch():
    """Rows whose target angle exceeds π - m go through cos θ - m sin m; check that branch too."""
    head = _planar_head("arcface", margin=0.5, init_tau=0.3)
    x, y = _features(ANGLES, NORMS), torch.tensor(TARGET)
    gradcheck_head_loss(head, x, y)


@pytest.mark.parametrize("name", ["arcface", "cosface", "sphereface"])
def test_fused_loss_matches_autograd_reference(name):
    """The hand-written backward of margin_cross_entropy equals autograd through margin_logits."""
    head = create_head(name, 6, 50, dim=8, scale=None, init_tau=1.0).double()
    if name == "sphereface":
        head.lambda_base = head.lambda_min = 0.0
    x = torch.randn(16, 6, dtype=torch.float64)
    y = torch.randint(0, 50, (16,))
    z = head.embed(x)
    fn = head.target_function()
    fused = margin_cross_entropy(z, head.weight, y, fn, head.beta, keep_norm=head.keep_norm)
    reference = F.cross_entropy(margin_logits(z, head.weight, y, fn, head.beta, keep_norm=head.keep_norm), y)
    params = [p for p in head.parameters()]
    g_fused = torch.autograd.grad(fused, params, retain_graph=True)
    g_ref = torch.autograd.grad(reference, params)
    torch.testing.assert_close(fused, reference, rtol=1e-12, atol=1e-12)
    for a, b in zip(g_fused, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_margin_functions_have_finite_gradients_at_cos_pm1(dtype):
    cos = torch.tensor([-1.0, 1.0], dtype=dtype, requires_grad=True)
    fns = [
        lambda c: additive_angular_margin(c, 0.5),
        lambda c: additive_angular_margin(c, 0.5, fallback="none"),
        lambda c: cosine_margin(c, 0.35),
        *[(lambda c, m=m: sphereface_psi(c, m)) for m in (1, 2, 3, 4)],
    ]
    for fn in fns:
        (grad,) = torch.autograd.grad(fn(cos).sum(), cos)
        assert torch.isfinite(grad).all(), grad
    # ψ'(cos) = (-1)^k T_m'(cos); T_m'(1) = m², and at cos = -1 (k = m-1): (-1)^(m-1) · (-1)^(m-1) m² = m²
    for m in (1, 2, 3, 4):
        (grad,) = torch.autograd.grad(sphereface_psi(cos, m).sum(), cos)
        torch.testing.assert_close(grad, torch.tensor([m * m, m * m], dtype=dtype))
    # the arccos route the test guards against is not finite there
    (naive,) = torch.autograd.grad(torch.cos(torch.acos(cos) + 0.5).sum(), cos)
    assert not torch.isfinite(naive).all()


@pytest.mark.parametrize("name", ["arcface", "cosface", "sphereface"])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_head_gradients_finite_when_embedding_hits_class_vector(name, sign):
    head = create_head(name, 4, 3, embedding=False)
    y = torch.tensor([0, 1, 2])
    x = (sign * head.weight.detach().clone() * 3.0).requires_grad_(True)  # cos θ_y = ±1 exactly
    loss = head.loss(x, y)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(x.grad).all() and torch.isfinite(head.weight.grad).all()


# ------------------------------------------------------------------------------------------ shapes of ψ and margins
@pytest.mark.parametrize("m", [1, 2, 3, 4])
def test_sphereface_psi_matches_seed_and_is_continuous_decreasing(m):
    theta = np.linspace(0.0, math.pi, 20001)
    psi = sphereface_psi(torch.tensor(np.cos(theta)), m).numpy()
    reference = np.array([_ref_psi(t, m) for t in theta])
    np.testing.assert_allclose(psi, reference, atol=1e-9)
    steps = np.diff(psi)
    assert (steps < 0).all()  # strictly decreasing
    # continuous: |dψ/dθ| <= m, so no step between neighbours exceeds m Δθ (a jump of the branch
    # constant 2k would be ~2)
    assert np.abs(steps).max() <= m * (theta[1] - theta[0]) * (1 + 1e-6)
    assert psi[0] == pytest.approx(1.0) and psi[-1] == pytest.approx(1.0 - 2.0 * m)


def test_arcface_target_logit_monotone_on_0_pi():
    theta = torch.linspace(0.0, math.pi, 20001, dtype=torch.float64)
    for m in (0.1, 0.5, 1.0, 2.0):
        standard = additive_angular_margin(torch.cos(theta), m)
        assert (standard.diff() < 0).all()
        # literal Eq. 4 turns up again past π - m: what the fallback exists for
        literal = additive_angular_margin(torch.cos(theta), m, fallback="none")
        assert (literal.diff() > 0).any()


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "name, kwargs, word",
    [
        ("arcface", {"margin": -0.1}, "margin"),
        ("arcface", {"margin": math.pi}, "margin"),
        ("arcface", {"margin": 4.0}, "margin"),
        ("cosface", {"margin": -0.35}, "margin"),
        ("sphereface", {"margin": 2.5}, "margin"),
        ("sphereface", {"margin": 0}, "margin"),
        ("sphereface", {"margin": -2}, "margin"),
        ("arcface", {"fallback": "easy_margin"}, "fallback"),
        ("arcface", {"margin_warmup_epochs": -1}, "margin_warmup_epochs"),
        ("sphereface", {"lambda_schedule": "iteration"}, "lambda_schedule"),
        ("sphereface", {"lambda_min": -1.0}, "lambda_min"),
        ("cosface", {"scale": 0.0}, "scale"),
    ],
)
def test_bad_constructor_arguments(name, kwargs, word):
    with pytest.raises(ValueError, match=word):
        create_head(name, 8, 4, **kwargs)


@pytest.mark.parametrize("name", ["arcface", "cosface", "sphereface"])
def test_bad_call_inputs(name):
    head = create_head(name, 8, 4)
    x = torch.randn(3, 8)
    with pytest.raises(ValueError, match="target"):
        head.loss(x, torch.tensor([0, 1, 4]))
    with pytest.raises(ValueError, match="target"):
        head.loss(x, torch.tensor([0, -1, 2]))
    with pytest.raises(ValueError, match="features"):
        head.loss(torch.randn(3, 7), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="features"):
        head(torch.randn(3, 9))
    with pytest.raises(ValueError, match="epoch"):
        head.on_epoch_start(-1)


def test_functional_bad_inputs():
    cos = torch.rand(4)
    with pytest.raises(ValueError, match="margin"):
        additive_angular_margin(cos, -0.2)
    with pytest.raises(ValueError, match="margin"):
        cosine_margin(cos, -0.2)
    with pytest.raises(ValueError, match="margin"):
        sphereface_psi(cos, 1.5)
    with pytest.raises(TypeError, match="margin"):
        sphereface_psi(cos, "4")
    z, w = torch.randn(3, 5), torch.randn(4, 5)
    with pytest.raises(ValueError, match="weight"):
        margin_cross_entropy(z, torch.randn(4, 6), torch.tensor([0, 1, 2]), lambda c: c, 1.0)
    with pytest.raises(ValueError, match="target"):
        margin_cross_entropy(z, w, torch.tensor([0, 1, 7]), lambda c: c, 1.0)


# ------------------------------------------------------------------------------------------ contract
def test_registry_repr_and_param_groups():
    arc = create_head("arcface", 16, 5, margin=0.3)
    assert isinstance(arc, ArcFaceHead) and arc.geometry == "spherical" and arc.retrieval_metric == "cosine"
    assert isinstance(create_head("cosface", 16, 5), CosFaceHead)
    sphere = create_head("sphereface", 16, 5)
    assert isinstance(sphere, SphereFaceHead) and sphere.margin == 4
    text = repr(arc)
    assert "m=0.3" in text and "beta=1" in text
    assert "m=4" in repr(sphere) and "lambda=1000" in repr(sphere) and "beta=1" in repr(sphere)
    assert [g["name"] for g in arc.param_groups(temperature_lr=1e-3)] == ["head", "temperature"]
    fixed = create_head("arcface", 16, 5, scale=64.0)
    assert [g["name"] for g in fixed.param_groups()] == ["head"]
    assert float(fixed.beta) == pytest.approx(64.0)


def test_autocast_keeps_head_math_in_float32():
    head = create_head("arcface", 8, 4, margin=0.5)
    x, y = torch.randn(6, 8), torch.tensor([0, 1, 2, 3, 0, 1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = head.loss(x.bfloat16(), y)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, head.loss(x.bfloat16().float(), y))
    assert head.weight.dtype == torch.float32


def test_arcface_trains_on_separable_data():
    """A few SGD steps with the margin lower the loss and fit a separable toy problem."""
    torch.manual_seed(1)
    centres = torch.randn(4, 10) * 3
    y = torch.arange(4).repeat(16)
    x = centres[y] + 0.3 * torch.randn(64, 10)
    head = create_head("arcface", 10, 4, dim=6, margin=0.3, scale=16.0)
    first = sgd_fit(head, x, y, steps=60)
    assert head.loss(x, y).item() < 0.25 * first
    assert (head(x).argmax(1) == y).float().mean() == 1.0


@pytest.mark.parametrize("name", ["arcface", "cosface", "sphereface", "center", "triplet"])
def test_timm_model_with_head_trains_one_step(name):
    """``timm.create_model(..., head=name)`` (seed-000 MNIST ConvNet): forward logits, one loss step."""
    import timm

    model = timm.create_model("convnet_mnist", pretrained=False, num_classes=4, head=name, head_kwargs={"dim": 3})
    head = model.get_classifier()
    assert head.head_name == name and head.dim == 3 and head.num_classes == 4
    images = torch.randn(8, 1, 28, 28)
    y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    feats = model.forward_head(model.forward_features(images), pre_logits=True)
    loss = head.loss(feats, y)
    loss.backward()
    assert torch.isfinite(loss) and model(images).shape == (8, 4)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
