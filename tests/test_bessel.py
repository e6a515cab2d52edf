"""Bessel ratios and the vMF log-normaliser (seed 000 Eq. 9-12) against mpmath's exact I_ν.

The exact references use mpmath (arbitrary precision and exponent range): ``scipy.special.ive``
underflows for large orders at small κ (ive(255, 1e-3) == 0), so it cannot serve as the reference.
"""
import functools
import math

import mpmath
import numpy as np
import pytest
import torch

from polyheads.functional import (
    bessel_ratio,
    bessel_ratio_bounds,
    bessel_ratio_over_kappa,
    log_vmf_normalizer,
    log_vmf_normalizer_difference,
)
from polyheads.functional.bessel import EXACT_MAX_DIM, _exact_crossover

from _helpers import exact_ratio

KAPPAS = np.logspace(-6, 5, 23)
DIMS = [2, 3, 8, 64, 512, 2048]


@functools.lru_cache(maxsize=None)
def exact_log_c(n: int, kappa: float) -> mpmath.mpf:
    """log C_n(κ) of seed 000 Eq. 5, exactly (mpmath, 40 digits)."""
    with mpmath.workdps(40):
        nu = mpmath.mpf(n) / 2 - 1
        k = mpmath.mpf(kappa)
        return nu * mpmath.log(k) - (mpmath.mpf(n) / 2) * mpmath.log(2 * mpmath.pi) - mpmath.log(
            mpmath.besseli(nu, k, maxterms=10**6)
        )


def exact_array(n, kappas):
    return np.array([exact_ratio(n, float(k)) for k in kappas])


# ---------------------------------------------------------------------------------------------- Eq. 9-10
@pytest.mark.parametrize("n", DIMS)
def test_bounds_bracket_the_exact_ratio_and_eq10_lies_between(n):
    kappa = torch.tensor(KAPPAS, dtype=torch.float64)
    lower, upper = bessel_ratio_bounds(n, kappa)
    exact = torch.tensor(exact_array(n, KAPPAS), dtype=torch.float64)
    tol = 1e-13 * exact
    assert (lower <= exact + tol).all() and (exact <= upper + tol).all()
    mean = bessel_ratio(n, kappa)
    assert (lower <= mean).all() and (mean <= upper).all()
    assert torch.allclose(mean, 0.5 * (lower + upper), rtol=1e-15, atol=0)


def test_eq10_error_table_matches_the_issue_and_shrinks_with_n():
    kappa = torch.tensor(KAPPAS, dtype=torch.float64)
    errors = {}
    for n in [2, 3, 4, 8, 16, 32, 64, 512, 2048]:
        errors[n] = float((bessel_ratio(n, kappa) - torch.tensor(exact_array(n, KAPPAS))).abs().max())
    assert errors[2] <= 0.09  # "off by up to ~0.09 at n = 2"
    assert all(errors[n] <= 1e-2 for n in errors if n >= 16)
    ordered = [errors[n] for n in sorted(errors)]
    assert all(a > b for a, b in zip(ordered, ordered[1:]))


# ---------------------------------------------------------------------------------------------- exact mode
EXACT_DIMS = [2, 3, 5, 8, 16, 31, 48, 64]


@pytest.mark.parametrize("n", EXACT_DIMS)
def test_exact_mode_matches_mpmath_in_float64_and_float32(n):
    cross = _exact_crossover(n)
    kappas = np.concatenate([KAPPAS, [0.5 * cross, 0.999 * cross, cross, 1.001 * cross, 2 * cross]])
    reference = exact_array(n, kappas)
    got64 = bessel_ratio(n, torch.tensor(kappas, dtype=torch.float64), exact=True).numpy()
    got32 = bessel_ratio(n, torch.tensor(kappas, dtype=torch.float32), exact=True).double().numpy()
    assert np.max(np.abs(got64 - reference) / reference) < 1e-13
    assert np.max(np.abs(got32 - reference) / reference) < 2e-6


@pytest.mark.parametrize("n", [2, 3, 16, 64])
def test_exact_mode_derivative_is_the_bessel_ratio_identity(n):
    # d/dκ A_n(κ) = 1 - A² - (n-1) A / κ for A = I_{n/2}/I_{n/2-1} (from I'_ν = I_{ν+1} + ν/κ I_ν)
    kappas = np.array([1e-4, 0.3, 2.0, 17.0, 0.9 * _exact_crossover(n), 1.1 * _exact_crossover(n), 3e3, 8e4])
    kappa = torch.tensor(kappas, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(bessel_ratio(n, kappa, exact=True).sum(), kappa)
    a = exact_array(n, kappas)
    expected = 1 - a**2 - (n - 1) * a / kappas
    assert np.allclose(grad.numpy(), expected, rtol=1e-7, atol=1e-13)


def test_exact_mode_gradcheck_and_limits():
    kappa = torch.tensor([1e-3, 0.7, 5.0, 40.0, 300.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda k: bessel_ratio(3, k, exact=True), (kappa,))
    assert torch.autograd.gradcheck(lambda k: bessel_ratio(64, k, exact=True), (kappa,))
    zero = torch.zeros(1, dtype=torch.float64)
    for n in (2, 7, 64):
        assert float(bessel_ratio_over_kappa(n, zero, exact=True)) == pytest.approx(1.0 / n, rel=1e-14)
    with pytest.raises(ValueError, match="n <= 64"):
        bessel_ratio(EXACT_MAX_DIM + 1, 1.0, exact=True)
    with pytest.raises(TypeError, match="exact"):
        bessel_ratio(3, 1.0, exact="yes")


def test_exact_mode_is_cheap():
    # differentiable and fast: 64 recurrence steps + 20 Hankel terms on a vector of κ
    kappa = torch.logspace(-6, 5, 4096, dtype=torch.float32, requires_grad=True)
    import time

    start = time.perf_counter()
    for _ in range(5):
        bessel_ratio(16, kappa, exact=True).sum().backward()
    assert (time.perf_counter() - start) / 5 < 0.5
    assert torch.isfinite(kappa.grad).all()


# ---------------------------------------------------------------------------------------------- Eq. 11-12
@pytest.mark.parametrize("n", DIMS + [4096])
def test_log_normalizer_derivative_is_minus_bessel_ratio(n):
    kappa = torch.tensor(np.concatenate([[0.0], KAPPAS]), dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(log_vmf_normalizer(n, kappa).sum(), kappa)
    assert torch.allclose(grad, -bessel_ratio(n, kappa.detach()), rtol=1e-12, atol=1e-15)


def test_eq12_is_the_seeds_printed_form():
    # seed 000 Eq. 12 exactly as printed (d = n), η = 0
    def printed(d, k):
        a, b = (d - 1) / 2, (d + 1) / 2
        return (
            (d - 1) / 4 * math.log(a + math.sqrt(a * a + k * k))
            - 0.5 * math.sqrt(a * a + k * k)
            + (d - 1) / 4 * math.log(a + math.sqrt(b * b + k * k))
            - 0.5 * math.sqrt(b * b + k * k)
        )

    for d in (2, 3, 16, 512):
        for k in (0.0, 1e-3, 1.0, 37.0, 1e4):
            assert float(log_vmf_normalizer(d, torch.tensor(k, dtype=torch.float64))) == pytest.approx(printed(d, k), rel=1e-14, abs=1e-14)


@pytest.mark.parametrize("n", [2, 3, 8, 16, 64, 512, 2048])
def test_log_normalizer_differences_against_exact(n):
    """Eq. 12 differences vs the exact log C_n: the relative error is at most 1/(2(n-1)), reached as
    κ -> 0 where Eq. 10's slope is (2n-1)/(2n(n-1)) instead of 1/n; hence within 1 % for n >= 51
    (and 3.3 % at n = 16, the issue's "1 % for n >= 16" does not hold for κ << n; docs/vmf.md)."""
    kappas = np.logspace(-6, 5, 12)
    exact = [exact_log_c(n, float(k)) for k in kappas]
    worst = 0.0
    for i in range(len(kappas)):
        for j in range(i + 1, len(kappas)):
            t = torch.tensor(kappas[i] ** 2, dtype=torch.float64)
            delta = torch.tensor(kappas[j] ** 2 - kappas[i] ** 2, dtype=torch.float64)
            approx = float(log_vmf_normalizer_difference(n, t, delta))
            true = float(exact[i] - exact[j])
            worst = max(worst, abs(approx - true) / abs(true))
    bound = 1.0 / (2 * (n - 1))
    assert worst <= bound * (1 + 1e-6)
    assert worst >= 0.9 * bound  # the bound is attained: the table in docs/vmf.md is this number
    if n >= 64:
        assert worst < 0.01


def test_difference_equals_eq12_difference_and_has_no_cancellation():
    n = 512
    kappa = torch.tensor([0.0, 1e-3, 3.0, 250.0, 1e5], dtype=torch.float64)
    delta = torch.tensor([2.0, -1e-6, 5.0, -300.0, 2.5e3], dtype=torch.float64)
    direct = log_vmf_normalizer(n, kappa) - log_vmf_normalizer(n, (kappa**2 + delta).sqrt())
    diff = log_vmf_normalizer_difference(n, kappa**2, delta)
    assert torch.allclose(diff, direct, rtol=1e-9, atol=1e-12)
    # float32 at κ = 1e5: the direct difference of two ~1e5 numbers keeps ~3 digits, ours ~7
    k32, d32 = torch.tensor(1e5), torch.tensor(2.5e3)
    ours = float(log_vmf_normalizer_difference(n, k32**2, d32))
    reference = float(log_vmf_normalizer_difference(n, torch.tensor(1e10, dtype=torch.float64), d32.double()))
    assert abs(ours - reference) <= 1e-6 * abs(reference)


def test_difference_gradients_and_broadcasting():
    t = torch.tensor([1e-3, 0.5, 30.0, 1e3], dtype=torch.float64, requires_grad=True)
    delta = (torch.randn(3, 4, dtype=torch.float64) * 2 + 5).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: log_vmf_normalizer_difference(5, a, b), (t, delta))
    scalar = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: log_vmf_normalizer_difference(64, a, b), (scalar, delta))


# ---------------------------------------------------------------------------------------------- numerics, API
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [2, 3, 512, 4096])
def test_finite_values_and_gradients_across_the_kappa_range(n, dtype):
    kappa = torch.cat([torch.zeros(1), torch.logspace(-6, 5, 50)]).to(dtype).requires_grad_(True)
    outputs = [bessel_ratio(n, kappa), log_vmf_normalizer(n, kappa), bessel_ratio_over_kappa(n, kappa**2)]
    outputs.append(log_vmf_normalizer_difference(n, kappa**2, 3.0 * kappa + 1.0))
    if n <= EXACT_MAX_DIM:
        outputs.append(bessel_ratio(n, kappa, exact=True))
    for out in outputs:
        assert out.dtype == dtype and torch.isfinite(out).all()
        (grad,) = torch.autograd.grad(out.sum(), kappa)
        assert torch.isfinite(grad).all()
    ratio = bessel_ratio(n, kappa.detach())
    assert (ratio >= 0).all() and (ratio < 1).all()


def test_ratio_over_kappa_at_zero_and_mean_consistency():
    zero = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    value = bessel_ratio_over_kappa(10, zero)
    assert torch.allclose(value, torch.full((3,), 0.5 * (1 / 9 + 1 / 10), dtype=torch.float64))
    (grad,) = torch.autograd.grad(value.sum(), zero)
    assert torch.isfinite(grad).all()
    kappa = torch.tensor([0.1, 2.0, 700.0], dtype=torch.float64)
    assert torch.allclose(bessel_ratio_over_kappa(10, kappa**2) * kappa, bessel_ratio(10, kappa), rtol=1e-14)


def test_inputs_are_checked():
    with pytest.raises(ValueError, match="n"):
        bessel_ratio(1, 1.0)
    with pytest.raises(TypeError, match="n"):
        bessel_ratio(3.0, 1.0)
    with pytest.raises(ValueError, match="kappa"):
        bessel_ratio(3, torch.tensor([-1.0]))
    with pytest.raises(ValueError, match="NaN"):
        log_vmf_normalizer(3, torch.tensor([float("nan")]))
    with pytest.raises(TypeError, match="kappa"):
        bessel_ratio_bounds(3, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="kappa_sq"):
        log_vmf_normalizer_difference(3, torch.tensor([-2.0]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="broadcast"):
        log_vmf_normalizer_difference(3, torch.ones(3), torch.ones(4))
    assert bessel_ratio(3, 2.0).dtype == torch.get_default_dtype()


# ---------------------------------------------------------------------------------------------- Figure 2
def test_figure2_initializer_points_and_png(tmp_path):
    from PIL import Image

    from polyheads.plots import bessel_ratio_figure
    from polyheads.plots.bessel import initializer_points

    for n in (8, 64, 512):
        mean_w, target = initializer_points(n, 0.4, num_classes=2000)
        assert target == pytest.approx(0.4 * (n - 1) / 0.84)
        assert abs(mean_w / target - 1) < 0.05  # Eq. 19's norms land on Eq. 14's κ*
    path = bessel_ratio_figure(tmp_path / "fig" / "fig2.png", dims=(2, 8, 128), lam=0.7, num_classes=50)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 300 and image.size[1] > 200
    with pytest.raises(ValueError, match="dims"):
        bessel_ratio_figure(tmp_path / "x.png", dims=(1,))
    with pytest.raises(ValueError, match="lam"):
        bessel_ratio_figure(tmp_path / "x.png", lam=1.0)


def test_plot_tool_writes_the_figure(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("plot_bessel_ratio", Path(__file__).parents[1] / "tools" / "plot_bessel_ratio.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = tmp_path / "bessel.png"
    assert tool.main(["--out", str(out), "--dims", "2", "16", "--classes", "20"]) == 0
    assert out.stat().st_size > 0 and "wrote" in capsys.readouterr().out
