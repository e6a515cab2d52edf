"""The vMF sampler, loss and head (seed 000 §2.3.1, Eq. 5-8, 13; App. B-D) against independent
references: scipy.stats.vonmises_fisher (samples), closed-form CDFs, mpmath Bessel ratios, and Eq. 13
re-evaluated here in numpy from its printed form."""
import math
import warnings

import numpy as np
import pytest
import scipy.special
import scipy.stats as st
import torch
import torch.nn.functional as F

from polyheads import create_head
from polyheads.functional import (
    sample_vmf,
    vmf_bound_logits,
    vmf_bound_logsumexp,
    vmf_loss,
    vmf_mean,
    vmf_predictive_log_probs,
)
from polyheads.heads.vmf import target_concentration, weight_init_std

from _helpers import exact_ratio


def unit(n, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, generator=g, dtype=dtype)
    return v / v.norm()


# ---------------------------------------------------------------------------------------------- sampler
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_samples_are_unit_vectors_with_the_documented_shape_and_dtype(dtype):
    mu = torch.randn(2, 3, 5, dtype=dtype)
    kappa = torch.rand(2, 3, dtype=dtype) * 10
    x = sample_vmf(mu, kappa, 7)
    assert x.shape == (7, 2, 3, 5) and x.dtype == dtype and x.device == mu.device
    assert torch.allclose(x.norm(dim=-1), torch.ones((), dtype=dtype), atol=1e-6 if dtype == torch.float32 else 1e-14)
    assert sample_vmf(torch.randn(4, dtype=dtype), 2.0, 3).shape == (3, 4)  # one direction, κ a number
    assert sample_vmf(mu, torch.tensor(3.0, dtype=dtype), 2).shape == (2, 2, 3, 5)  # κ broadcast
    assert sample_vmf(mu.bfloat16(), kappa.bfloat16(), 2).dtype == torch.bfloat16


@pytest.mark.parametrize("n,kappa", [(3, 0.5), (3, 40.0), (16, 5.0), (64, 200.0), (512, 50.0), (512, 3000.0)])
def test_sample_mean_is_the_bessel_ratio_times_mu(n, kappa):
    mu = unit(n, seed=n)
    N = 4000
    x = sample_vmf(mu, kappa, N, generator=torch.Generator().manual_seed(1))
    t = x @ mu
    se = float(t.std()) / math.sqrt(N)
    assert abs(float(t.mean()) - exact_ratio(n, kappa)) <= 5 * se
    perp = (x - t[:, None] * mu).mean(0)  # E‖perp mean‖² = (1 - E t²)/N, a χ²_{n-1}/(n-1) multiple
    assert float(perp.pow(2).sum()) * N / float(1 - t.pow(2).mean()) <= 20.0


@pytest.mark.parametrize("n", [3, 16, 512])
@pytest.mark.parametrize("kappa", [0.5, 5.0, 50.0, 500.0])
def test_projection_on_mu_matches_scipy_vonmises_fisher(n, kappa):
    mu = unit(n, seed=7)
    N = 3000
    ours = (sample_vmf(mu, kappa, N, generator=torch.Generator().manual_seed(11)) @ mu).numpy()
    ref = st.vonmises_fisher(mu.numpy(), kappa).rvs(N, random_state=np.random.default_rng(12)) @ mu.numpy()
    assert st.ks_2samp(ours, ref).pvalue > 1e-3


@pytest.mark.parametrize("kappa", [0.3, 4.0, 60.0])
def test_n3_matches_the_closed_form_cdf(kappa):
    # on S², t = μ^T x has density ∝ e^{κt} on [-1, 1]: F(t) = (e^{κ(t+1)} - 1)/(e^{2κ} - 1)
    mu = unit(3, seed=3)
    t = (sample_vmf(mu, kappa, 4000, generator=torch.Generator().manual_seed(5)) @ mu).numpy()
    cdf = lambda v: np.expm1(kappa * (v + 1)) / np.expm1(2 * kappa)  # noqa: E731
    assert st.kstest(t, cdf).pvalue > 1e-3


@pytest.mark.parametrize("n", [2, 3, 16, 512])
def test_tiny_kappa_is_the_uniform_distribution(n):
    mu = unit(n, seed=2)
    N = 4000
    x = sample_vmf(mu, 1e-6, N, generator=torch.Generator().manual_seed(3))
    t = (x @ mu).numpy()
    # uniform on S^{n-1}: (t + 1)/2 ~ Beta((n-1)/2, (n-1)/2)
    assert st.kstest((t + 1) / 2, st.beta((n - 1) / 2, (n - 1) / 2).cdf).pvalue > 1e-3
    mean = x.mean(0)
    assert float(mean.pow(2).sum()) * N <= 20.0 * 1.0  # E‖mean‖² = 1/N for the uniform distribution
    exact_zero = sample_vmf(mu, 0.0, 10, generator=torch.Generator().manual_seed(3))
    assert torch.isfinite(exact_zero).all()


@pytest.mark.parametrize("n", [2, 512, 4096])
def test_large_kappa_is_accurate_in_float32(n):
    kappa = 1e5
    mu = unit(n, seed=4, dtype=torch.float32)
    N = 2000
    x = sample_vmf(mu, kappa, N, generator=torch.Generator().manual_seed(6))
    assert torch.isfinite(x).all()
    gap = 0.5 * (x - mu).pow(2).sum(-1).double()  # 1 - μ^T x without cancellation
    expected = 1.0 - scipy.special.ive(n / 2, kappa) / scipy.special.ive(n / 2 - 1, kappa)  # no underflow at κ=1e5
    se = float(gap.std()) / math.sqrt(N)
    assert abs(float(gap.mean()) - expected) <= 5 * se + 0.02 * expected


def test_gradients_are_finite_across_dims_and_kappas_in_float32():
    for n in (2, 3, 4096):
        for kappa in (0.0, 1e-6, 1.0, 1e3, 1e5):
            mu = torch.randn(3, n).requires_grad_(True)
            k = torch.full((3,), kappa, requires_grad=True)
            x = sample_vmf(mu, k, 4)
            (x * torch.randn_like(x)).sum().backward()
            assert torch.isfinite(mu.grad).all() and torch.isfinite(k.grad).all(), (n, kappa)


def test_reparameterised_gradients_with_fixed_draws_gradcheck():
    mu = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    kappa = torch.tensor([0.7, 12.0], dtype=torch.float64, requires_grad=True)

    def draw(m, k):
        return sample_vmf(m, k, 3, generator=torch.Generator().manual_seed(0))

    assert torch.autograd.gradcheck(draw, (mu, kappa))


def per_sample_kappa_gradients(n, kappa, count, corrected, seed=0):
    """∂/∂κ of μ^T x for each sample (one κ entry per sample), through the accepted proposal only or
    with the score-function correction f + (f - baseline)·score."""
    mu = torch.zeros(count, n, dtype=torch.float64)
    mu[:, 0] = 1.0
    k = torch.full((count,), kappa, dtype=torch.float64, requires_grad=True)
    x, score = sample_vmf(mu, k, 1, generator=torch.Generator().manual_seed(seed), return_score=True)
    t = x[0, :, 0]
    objective = t + (t.detach() - t.detach().mean()) * score[0] if corrected else t
    (grad,) = torch.autograd.grad(objective.sum(), k)
    return grad


@pytest.mark.parametrize("n,kappa", [(3, 3.0), (16, 20.0)])
def test_score_correction_makes_the_kappa_gradient_unbiased(n, kappa):
    a = exact_ratio(n, kappa)
    exact = 1 - a * a - (n - 1) * a / kappa  # dA_n/dκ = d E[μ^T x]/dκ
    count = 40000
    plain = per_sample_kappa_gradients(n, kappa, count, corrected=False)
    fixed = per_sample_kappa_gradients(n, kappa, count, corrected=True)
    se = float(fixed.std()) / math.sqrt(count)
    assert abs(float(fixed.mean()) - exact) <= 5 * se  # g_rep + g_cor: unbiased
    assert abs(float(plain.mean()) - exact) > 10 * float(plain.std()) / math.sqrt(count)  # g_rep alone: biased


def test_score_surrogate_has_zero_value_and_same_samples():
    mu, kappa = torch.randn(2, 5), torch.tensor([0.5, 30.0], requires_grad=True)
    x, score = sample_vmf(mu, kappa, 3, generator=torch.Generator().manual_seed(4), return_score=True)
    assert score.shape == (3, 2) and torch.equal(score, torch.zeros(3, 2))
    assert torch.equal(x, sample_vmf(mu, kappa, 3, generator=torch.Generator().manual_seed(4)))
    head = small_head(num_samples=4, score_correction=True)
    plain = small_head(num_samples=4)
    plain.load_state_dict(head.state_dict())
    x, y = torch.randn(3, 6, dtype=torch.float64), torch.tensor([0, 1, 2])
    corrected, reference = head.loss(x, y, generator=1), plain.loss(x, y, generator=1)
    assert float(corrected.detach()) == pytest.approx(float(reference.detach()), rel=1e-14)
    g1 = torch.autograd.grad(corrected, head.embedding.weight)[0]
    g2 = torch.autograd.grad(reference, plain.embedding.weight)[0]
    assert torch.isfinite(g1).all() and not torch.allclose(g1, g2)


def test_householder_is_stable_at_plus_and_minus_e1():
    for sign in (1.0, -1.0):
        mu = torch.zeros(6, dtype=torch.float64)
        mu[0] = sign
        mu.requires_grad_(True)
        x = sample_vmf(mu, 30.0, 2000, generator=torch.Generator().manual_seed(8))
        (x[:, 0] * sign).mean().backward()
        assert torch.isfinite(mu.grad).all()
        t = (x.detach() @ mu.detach()).numpy()
        assert abs(t.mean() - exact_ratio(6, 30.0)) <= 5 * t.std() / math.sqrt(2000)


def test_autograd_and_no_grad_paths_draw_the_same_samples():
    mu, kappa = torch.randn(3, 8, dtype=torch.float64), torch.rand(3, dtype=torch.float64) * 5
    plain = sample_vmf(mu, kappa, 4, generator=torch.Generator().manual_seed(9))
    tracked = sample_vmf(mu.requires_grad_(True), kappa, 4, generator=torch.Generator().manual_seed(9))
    assert tracked.requires_grad and torch.allclose(plain, tracked, rtol=0, atol=1e-14)


def test_generator_makes_draws_reproducible():
    mu, kappa = torch.randn(3, 8), torch.rand(3) * 5
    a = sample_vmf(mu, kappa, 4, generator=torch.Generator().manual_seed(1))
    b = sample_vmf(mu, kappa, 4, generator=torch.Generator().manual_seed(1))
    c = sample_vmf(mu, kappa, 4, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_sampler_inputs_are_checked():
    with pytest.raises(ValueError, match="mu"):
        sample_vmf(torch.randn(3, 1), 1.0, 2)
    with pytest.raises(ValueError, match="kappa"):
        sample_vmf(torch.randn(3, 4), torch.tensor([-1.0, 1.0, 1.0]), 2)
    with pytest.raises(ValueError, match="kappa"):
        sample_vmf(torch.randn(3, 4), torch.ones(4), 2)
    with pytest.raises(ValueError, match="NaN"):
        sample_vmf(torch.full((2, 4), float("nan")), 1.0, 2)
    with pytest.raises(ValueError, match="zero"):
        sample_vmf(torch.zeros(2, 4), 1.0, 2)
    with pytest.raises(ValueError, match="num_samples"):
        sample_vmf(torch.randn(2, 4), 1.0, 0)
    with pytest.raises(TypeError, match="generator"):
        sample_vmf(torch.randn(2, 4), 1.0, 2, generator=3)


def test_vmf_mean_is_ratio_times_direction_and_finite_at_zero():
    theta = torch.tensor([[0.0, 0.0, 0.0], [3.0, 4.0, 0.0]], dtype=torch.float64, requires_grad=True)
    mean = vmf_mean(theta, exact=True)
    assert torch.allclose(mean[0], torch.zeros(3, dtype=torch.float64))
    expected = exact_ratio(3, 5.0) * torch.tensor([0.6, 0.8, 0.0], dtype=torch.float64)
    assert torch.allclose(mean[1], expected, rtol=1e-12)
    mean.sum().backward()
    assert torch.isfinite(theta.grad).all()


# ---------------------------------------------------------------------------------------------- Eq. 13
def eq12_numpy(n, kappa):
    """log C_n(κ) by seed 000 Eq. 12 as printed (η = 0), in numpy."""
    a, b = (n - 1) / 2, (n + 1) / 2
    sa, sb = np.sqrt(a * a + kappa**2), np.sqrt(b * b + kappa**2)
    return (n - 1) / 4 * np.log(a + sa) - 0.5 * sa + (n - 1) / 4 * np.log(a + sb) - 0.5 * sb


def eq10_numpy(n, kappa):
    a, b = (n - 1) / 2, (n + 1) / 2
    return 0.5 * (kappa / (a + np.sqrt(b * b + kappa**2)) + kappa / (a + np.sqrt(a * a + kappa**2)))


def eq13_numpy(z_samples, theta, weight, beta, target, ratio):
    """Seed 000 Eq. 13 evaluated term by term from its printed form, on given samples of z."""
    S, B, n = z_samples.shape
    losses = []
    for b in range(B):
        lse = []
        for s in range(S):
            terms = [eq12_numpy(n, np.linalg.norm(w)) - eq12_numpy(n, np.linalg.norm(w + beta * z_samples[s, b])) for w in weight]
            m = max(terms)
            lse.append(m + math.log(sum(math.exp(v - m) for v in terms)))
        w_y = weight[target[b]]
        kz, kw = np.linalg.norm(theta[b]), np.linalg.norm(w_y)
        e_z, e_w = ratio(n, kz) * theta[b] / kz, ratio(n, kw) * w_y / kw
        losses.append(np.mean(lse) - beta * float(e_w @ e_z))
    return float(np.mean(losses))


def small_head(dim=5, classes=4, dtype=torch.float64, **kwargs):
    head = create_head("vmf", 6, classes, dim=dim, **kwargs).to(dtype)
    head.init_from_data(torch.randn(64, 6, dtype=dtype))
    return head


@pytest.mark.parametrize("init_tau", [0.0, 1.1])
def test_loss_equals_an_independent_evaluation_of_eq13_on_the_same_samples(init_tau):
    head = small_head(init_tau=init_tau, num_samples=3)
    x = torch.randn(3, 6, dtype=torch.float64)
    y = torch.tensor([0, 3, 1])
    loss = head.loss(x, y, generator=42)
    z = head.sample(x, generator=42).numpy()  # the draws the loss used (same generator seed)
    theta = head.embed(x).detach().numpy()
    beta = float(head.beta.detach())
    assert beta == pytest.approx(math.exp(init_tau), rel=1e-7)  # τ was created in float32
    expected = eq13_numpy(z, theta, head.weight.detach().numpy(), beta, y.numpy(), eq10_numpy)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-10)


def test_exact_ratio_option_changes_only_the_expectation_term():
    head = small_head(dim=3, exact_ratio=True, num_samples=2)
    x, y = torch.randn(2, 6, dtype=torch.float64), torch.tensor([1, 2])
    loss = head.loss(x, y, generator=3)
    z = head.sample(x, generator=3).numpy()
    ratio = lambda n, k: 1.0 / math.tanh(k) - 1.0 / k  # noqa: E731  (A_3 is the Langevin function)
    expected = eq13_numpy(z, head.embed(x).detach().numpy(), head.weight.detach().numpy(), 1.0, y.numpy(), ratio)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-10)
    with pytest.raises(ValueError, match="exact_ratio"):
        create_head("vmf", 6, 4, dim=128, exact_ratio=True)


def test_fused_logsumexp_equals_plain_autograd():
    g = torch.Generator().manual_seed(0)
    z = F.normalize(torch.randn(2, 3, 7, generator=g, dtype=torch.float64), dim=-1).requires_grad_(True)
    w = (torch.randn(9, 7, generator=g, dtype=torch.float64) * 4).requires_grad_(True)
    beta = torch.tensor(1.7, dtype=torch.float64, requires_grad=True)
    plain = vmf_bound_logits(z, w, beta).logsumexp(-1)
    fused = vmf_bound_logsumexp(z, w, beta)
    assert torch.allclose(plain, fused, rtol=1e-13)
    upstream = torch.randn(2, 3, dtype=torch.float64)
    for a, b in zip(torch.autograd.grad(plain, (z, w, beta), upstream), torch.autograd.grad(fused, (z, w, beta), upstream)):
        assert torch.allclose(a, b, rtol=1e-11, atol=1e-13)
    assert torch.autograd.gradcheck(vmf_bound_logsumexp, (z, w, beta))


def test_fused_logsumexp_in_blocks_equals_one_block(monkeypatch):
    import polyheads.functional.vmf as vmf_module

    z = F.normalize(torch.randn(37, 6, dtype=torch.float64), dim=-1).requires_grad_(True)
    w = (torch.randn(11, 6, dtype=torch.float64) * 3).requires_grad_(True)
    one = vmf_bound_logsumexp(z, w, 2.0)
    g_one = torch.autograd.grad(one.sum(), (z, w))
    monkeypatch.setattr(vmf_module, "_MATMUL_BLOCK_ELEMENTS", 50)
    monkeypatch.setattr(vmf_module, "_BLOCK_ELEMENTS", 20)
    many = vmf_bound_logsumexp(z, w, 2.0)
    g_many = torch.autograd.grad(many.sum(), (z, w))
    assert torch.allclose(one, many, rtol=1e-14)
    assert all(torch.allclose(a, b, rtol=1e-12) for a, b in zip(g_one, g_many))


def test_uniform_backward_equals_the_general_one_and_refuses_unequal_weights():
    from polyheads.functional.vmf import _bound_logsumexp

    z = F.normalize(torch.randn(4, 5, 6, dtype=torch.float64), dim=-1).requires_grad_(True)
    w = (torch.randn(7, 6, dtype=torch.float64) * 3).requires_grad_(True)
    beta = torch.tensor(1.4, dtype=torch.float64, requires_grad=True)
    general = torch.autograd.grad(_bound_logsumexp(z, w, beta).mean(), (z, w, beta))
    light = torch.autograd.grad(_bound_logsumexp(z, w, beta, uniform=True).mean(), (z, w, beta))
    assert all(torch.allclose(a, b, rtol=1e-13, atol=1e-15) for a, b in zip(general, light))
    with pytest.raises(RuntimeError, match="unequal"):
        (_bound_logsumexp(z, w, beta, uniform=True) * torch.rand(4, 5, dtype=torch.float64)).sum().backward()


def test_functional_loss_gradcheck_with_fixed_samples():
    g = torch.Generator().manual_seed(1)
    z = F.normalize(torch.randn(2, 3, 4, generator=g, dtype=torch.float64), dim=-1).requires_grad_(True)
    theta = torch.randn(3, 4, generator=g, dtype=torch.float64).requires_grad_(True)
    w = (torch.randn(5, 4, generator=g, dtype=torch.float64) * 2).requires_grad_(True)
    beta = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 4, 2])
    assert torch.autograd.gradcheck(lambda *a: vmf_loss(*a, y), (z, theta, w, beta))


def test_head_loss_gradcheck_in_float64_with_fixed_samples():
    head = small_head(num_samples=2)
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([2, 0, 1])
    assert torch.autograd.gradcheck(lambda inp: head.loss(inp, y, generator=7), (x,))


def test_float32_loss_is_accurate_at_large_concentrations():
    # ‖w̃_j‖ = κ_z = 1e5: a naive difference of two Eq. 12 values would lose ~3 digits in float32
    g = torch.Generator().manual_seed(3)
    n, K, B, S = 64, 7, 4, 3
    weight = F.normalize(torch.randn(K, n, generator=g, dtype=torch.float64), dim=1) * 1e5
    theta = F.normalize(torch.randn(B, n, generator=g, dtype=torch.float64), dim=1) * 1e5
    z = sample_vmf(theta, theta.norm(dim=1), S, generator=g)
    y = torch.tensor([0, 3, 6, 2])
    for beta in (1.0, 30.0):
        l64 = float(vmf_loss(z, theta, weight, beta, y))
        l32 = float(vmf_loss(z.float(), theta.float(), weight.float(), beta, y))
        assert abs(l32 - l64) < 1e-5 * max(1.0, abs(l64))  # measured ~1e-7; the naive form errs by ~1e-2


def test_loss_approaches_cosine_as_concentrations_grow():
    head = create_head("vmf", 16, 5, dim=8).double()
    x = torch.randn(4, 16, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3])
    direction = F.normalize(head.weight.detach(), dim=1)
    raw = float(head.embedding(x).detach().norm(dim=1).mean())
    gaps = {}
    for kappa in (1.0, 1e5):
        with torch.no_grad():
            head.weight.copy_(direction * kappa)
            head.alpha.fill_(kappa / raw)
            head.alpha_from_data.fill_(True)
        cosine = F.cross_entropy(head.beta * F.normalize(head.embed(x), dim=1) @ direction.t(), y)
        gaps[kappa] = abs(float(head.loss(x, y, generator=0).detach()) - float(cosine.detach()))
    assert gaps[1e5] < 1e-3 < 0.05 < gaps[1.0]


# ---------------------------------------------------------------------------------------------- App. D
@pytest.mark.parametrize("n", [8, 64, 512])
def test_init_from_data_meets_eq14_and_eq19(n):
    lam = 0.4
    head = create_head("vmf", 48, 20, dim=n, lam=lam)
    feats = torch.relu(torch.randn(1200, 48) + 0.5)  # post-ReLU, non-centred: ordinary backbone features
    head.init_from_data(feats[:600])
    target = lam * (n - 1) / (1 - lam * lam)
    assert head.kappa_target == pytest.approx(target) == target_concentration(n, lam)
    kappa_z = head.confidence(feats[600:]).detach()  # held-out features of the same distribution
    assert abs(float(kappa_z.mean()) / target - 1) < 0.10
    # A_n(κ) ≈ λ for n >= 8: Eq. 14 inverts the upper bound h_n, so the exact ratio at κ* is below λ
    # by 7.6 % at n = 8, 0.8 % at n = 64, 0.1 % at n = 512 (docs/vmf.md)
    ratio_error = abs(exact_ratio(n, float(kappa_z.mean())) / lam - 1)
    assert ratio_error < (0.10 if n < 64 else 0.02)
    kappa_w = head.weight.detach().norm(dim=1)
    assert abs(float(kappa_w.mean()) / target - 1) < 0.10  # Eq. 19
    assert float(head.weight.detach().std()) == pytest.approx(weight_init_std(n, lam), rel=0.1)
    # Eq. 16 read literally (α = κ*/(√n · mean|z̃_i|)) overshoots Eq. 14's target by ~25 %
    raw = head.embedding(feats[:600]).detach()
    literal = target / (math.sqrt(n) * float(raw.abs().mean()))
    overshoot = float((literal * raw).norm(dim=1).mean()) / target - 1
    assert 0.15 < overshoot < 0.35


def test_init_from_data_accepts_batches_and_loader_tuples():
    head = create_head("vmf", 10, 3, dim=4)
    feats = torch.randn(90, 10)
    head.init_from_data(feats)
    alpha = float(head.alpha)
    head.alpha.fill_(1.0)
    head.init_from_data([(feats[i : i + 30], torch.zeros(30)) for i in range(0, 90, 30)])
    assert float(head.alpha) == pytest.approx(alpha, rel=1e-6)
    head.init_from_data(iter([feats[:45], feats[45:]]))
    assert float(head.alpha) == pytest.approx(alpha, rel=1e-6)
    with pytest.raises(ValueError, match="empty"):
        head.init_from_data([])
    with pytest.raises(ValueError, match="norm"):
        create_head("vmf", 10, 3, embedding=False).init_from_data(torch.zeros(5, 10))
    with pytest.raises(ValueError, match="features"):
        head.init_from_data(torch.randn(5, 11))


def test_default_alpha_before_init_warns_once_and_is_restored_from_state_dict():
    head = create_head("vmf", 32, 5, dim=16)
    # documented default: the App. D rule for standardised features (E‖Wx‖ ≈ ‖W‖_F)
    x = torch.randn(4000, 32)
    assert float(head.confidence(x).detach().mean()) == pytest.approx(head.kappa_target, rel=0.1)
    y = torch.randint(0, 5, (4,))
    with pytest.warns(UserWarning, match="init_from_data"):
        head.loss(x[:4], y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        head.loss(x[:4], y)  # once
        fresh = create_head("vmf", 32, 5, dim=16)
        fresh.init_from_data(x)
        fresh.loss(x[:4], y)
        clone = create_head("vmf", 32, 5, dim=16)
        clone.load_state_dict(fresh.state_dict())
        assert bool(clone.alpha_from_data) and float(clone.alpha) == float(fresh.alpha)
        clone.loss(x[:4], y)


# ---------------------------------------------------------------------------------------------- head API
def test_eval_forward_is_the_monte_carlo_predictive():
    head = small_head(dim=5, classes=4, num_samples=4000).eval()
    with torch.no_grad():
        head.weight.mul_(2.0)
    x = torch.randn(3, 6, dtype=torch.float64)
    with torch.no_grad():
        log_p = head(x, generator=5)
    assert torch.allclose(log_p.logsumexp(1), torch.zeros(3, dtype=torch.float64), atol=1e-12)
    # independent Monte Carlo with scipy's sampler
    theta = head.embed(x).detach().numpy()
    weight = head.weight.detach().numpy()
    rng = np.random.default_rng(0)
    S = 4000
    w = np.stack([st.vonmises_fisher(v / np.linalg.norm(v), np.linalg.norm(v)).rvs(S, random_state=rng) for v in weight], 1)
    for b in range(3):
        z = st.vonmises_fisher(theta[b] / np.linalg.norm(theta[b]), np.linalg.norm(theta[b])).rvs(S, random_state=rng)
        logits = float(head.beta.detach()) * np.einsum("sn,skn->sk", z, w)
        p = np.exp(logits - logits.max(1, keepdims=True))
        p = (p / p.sum(1, keepdims=True)).mean(0)
        assert np.allclose(np.exp(log_p[b].numpy()), p, atol=0.02)


def test_forward_modes_reproducibility_and_contract_members():
    head = small_head(dim=5, classes=4, num_samples=8)
    x = torch.randn(3, 6, dtype=torch.float64)
    theta = head.embed(x)
    cosine = head.beta * F.normalize(theta, dim=1) @ F.normalize(head.weight, dim=1).t()
    assert torch.allclose(head.train()(x), cosine)  # train mode: logits from the means
    head.eval()
    assert torch.equal(head(x, generator=3), head(x, generator=torch.Generator().manual_seed(3)))
    assert not torch.equal(head(x, generator=3), head(x, generator=4))
    assert head(x, num_samples=2).shape == (3, 4)
    mean_head = small_head(dim=5, classes=4, prediction="mean").eval()
    assert torch.allclose(mean_head(x), mean_head.train()(x))
    # z̃ = α(Wx + b); confidence = κ_z = ‖z̃‖
    assert torch.allclose(theta, head.alpha * head.embedding(x))
    assert torch.allclose(head.confidence(x), theta.norm(dim=1))
    samples = head.sample(x, 6, generator=1)
    assert samples.shape == (6, 3, 5) and torch.allclose(samples.norm(dim=-1), torch.ones(6, 3, dtype=torch.float64))
    assert head.stochastic and head.geometry == "spherical" and head.retrieval_metric == "cosine"
    assert "lam=0.4" in repr(head) and "alpha=" in repr(head)
    groups = {g["name"]: g for g in head.param_groups(temperature_lr=0.01)}
    assert groups["temperature"]["params"][0] is head.temperature.tau
    assert all(p is not head.alpha for g in groups.values() for p in g["params"])


def test_predictive_function_checks_and_normalises():
    theta, weight = torch.randn(2, 4), torch.randn(3, 4) * 3
    out = vmf_predictive_log_probs(theta, weight, 2.0, 5, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 3) and torch.allclose(out.exp().sum(1), torch.ones(2), atol=1e-5)
    with pytest.raises(ValueError, match="beta"):
        vmf_predictive_log_probs(theta, weight, -1.0, 5)
    with pytest.raises(ValueError, match="weight"):
        vmf_predictive_log_probs(theta, torch.randn(3, 5), 1.0, 5)


def test_head_arguments_are_checked():
    with pytest.raises(ValueError, match="lam"):
        create_head("vmf", 8, 3, lam=1.0)
    with pytest.raises(ValueError, match="dim"):
        create_head("vmf", 8, 3, dim=1)
    with pytest.raises(ValueError, match="prediction"):
        create_head("vmf", 8, 3, prediction="mode")
    with pytest.raises(ValueError, match="num_samples"):
        create_head("vmf", 8, 3, num_samples=0)


# ---------------------------------------------------------------------------------------------- robustness
@pytest.mark.parametrize("n", [2, 512, 4096])
@pytest.mark.parametrize("kappa", [1e-6, 1.0, 1e5])
def test_no_nan_or_inf_across_kappa_in_float32_and_bf16_autocast(n, kappa):
    head = create_head("vmf", 12, 6, dim=n, num_samples=3)
    x = torch.randn(4, 12)
    y = torch.tensor([0, 1, 2, 5])
    with torch.no_grad():
        head.weight.copy_(F.normalize(head.weight, dim=1) * kappa)
        head.alpha.fill_(kappa / float(head.embedding(x).norm(dim=1).mean()))
        head.alpha_from_data.fill_(True)
    for autocast in (False, True):
        head.zero_grad()
        feats = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = head.train().loss(feats, y)
            log_p = head.eval()(feats)
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        assert torch.isfinite(log_p).all()
        loss.backward()
        assert torch.isfinite(feats.grad).all()
        for name, p in head.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert head.weight.dtype == torch.float32
