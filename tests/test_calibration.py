"""Calibration (seed 000 Table 3), temperature scaling and the confidence AUROC (Table 1), against hand
computations, an independent loop-based numpy reference, scipy and a brute-force Mann-Whitney AUROC."""
from __future__ import annotations

import bisect
import struct

import numpy as np
import pytest
import torch
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from polyheads.metrics import (
    TemperatureScaler,
    calibration_bins,
    confidence_auroc,
    expected_calibration_error,
    fit_temperature,
)
from polyheads.plots import reliability_diagram

# six predictions over three classes: confidences .9 .7 .6 .4 .8 .5, correct 1 1 0 0 1 1
PROB = np.array(
    [
        [0.9, 0.05, 0.05],
        [0.2, 0.7, 0.1],
        [0.6, 0.3, 0.1],
        [0.3, 0.3, 0.4],
        [0.1, 0.1, 0.8],
        [0.5, 0.45, 0.05],
    ]
)
Y = np.array([0, 1, 1, 0, 2, 0])


def test_hand_computed_quantile():
    # 2 equal-mass bins: {.4 .5 .6} (acc 1/3, conf .5) and {.7 .8 .9} (acc 1, conf .8), edge at .65
    assert expected_calibration_error(Y, PROB, 2) == pytest.approx(0.5 * (1 / 6) + 0.5 * 0.2)
    assert expected_calibration_error(Y, PROB, 2, norm="l2") == pytest.approx(np.sqrt(0.5 / 36 + 0.5 * 0.04))
    # debiased: bin 1: 1/36 - (1/3)(2/3)/2 < 0, bin 2: .04 - 0  -> 0.5 (1/36 - 1/9) + 0.5 .04 < 0 -> clipped to 0
    assert expected_calibration_error(Y, PROB, 2, norm="l2", debias=True) == 0.0
    bins = calibration_bins(Y, PROB, 2)
    np.testing.assert_allclose(bins.edges, [0.0, 0.65, 1.0])
    np.testing.assert_array_equal(bins.count, [3, 3])


def test_hand_computed_uniform_edge_goes_to_lower_bin():
    # equal-width bins (0, .5] and (.5, 1]: the confidence .5 sits on the edge and belongs to the first
    # bin 1 = {.4 wrong, .5 right}: conf .45, acc .5;  bin 2 = {.6 .7 .8 .9}: conf .75, acc .75
    assert expected_calibration_error(Y, PROB, 2, "uniform") == pytest.approx((2 / 6) * 0.05)
    np.testing.assert_array_equal(calibration_bins(Y, PROB, 2, "uniform").count, [2, 4])


def reference_ece(y, prob, n_bins, strategy, p):
    """Kumar et al.'s procedure written out with Python loops (bisect_left, array_split)."""
    conf = [float(max(row)) for row in prob]
    correct = [float(int(np.argmax(row)) == int(t)) for row, t in zip(prob, y)]
    if strategy == "uniform":
        edges = [i / n_bins for i in range(1, n_bins + 1)]
    else:
        s = sorted(conf)
        groups = np.array_split(np.array(s), min(n_bins, len(s)))
        edges = [(groups[i][-1] + groups[i + 1][0]) / 2.0 for i in range(len(groups) - 1)] + [1.0]
        edges = sorted(set(edges))
    members = [[] for _ in edges]
    for c, a in zip(conf, correct):
        members[min(bisect.bisect_left(edges, c), len(edges) - 1)].append((c, a))
    total = 0.0
    for m in members:
        if m:
            gap = np.mean([a for _, a in m]) - np.mean([c for c, _ in m])
            total += len(m) / len(conf) * abs(gap) ** p
    return total ** (1.0 / p)


@pytest.mark.parametrize("strategy", ["quantile", "uniform"])
@pytest.mark.parametrize("n, n_bins", [(500, 15), (37, 15), (7, 15), (300, 4)])
def test_matches_independent_reference(rng, strategy, n, n_bins):
    logits = rng.normal(0.0, 2.0, (n, 5))
    prob = softmax(logits, axis=1)
    if n == 300:  # tied confidences straddling equal-mass boundaries
        prob = np.round(prob, 1)
        prob[:, -1] = 1.0 - prob[:, :-1].sum(1)
        prob = np.clip(prob, 0.0, 1.0)
        prob /= prob.sum(1, keepdims=True)
    y = rng.integers(0, 5, n)
    for norm, p in (("l1", 1), ("l2", 2)):
        got = expected_calibration_error(y, prob, n_bins, strategy, norm)
        assert got == pytest.approx(reference_ece(y, prob, n_bins, strategy, p), abs=1e-12)


def test_perfectly_calibrated_data_has_ece_near_zero(rng):
    n = 200_000
    prob = rng.dirichlet(np.full(4, 0.7), size=n)
    y = (rng.random(n)[:, None] > np.cumsum(prob, axis=1)).sum(1)  # y ~ Categorical(prob): calibrated
    y = np.minimum(y, 3)
    for strategy in ("quantile", "uniform"):
        assert expected_calibration_error(y, prob, strategy=strategy) < 0.006
        assert expected_calibration_error(y, prob, strategy=strategy, norm="l2", debias=True) < 0.006
    sharpened = softmax(3.0 * np.log(prob + 1e-12), axis=1)  # overconfident: clearly miscalibrated
    assert expected_calibration_error(y, sharpened) > 0.05


def test_string_labels_via_labels_argument():
    names = np.array(["cat", "dog", "eel"])
    assert expected_calibration_error(names[Y], PROB, 2, labels=names) == expected_calibration_error(Y, PROB, 2)
    # columns listed in another order map to the right classes
    perm = [2, 0, 1]
    assert expected_calibration_error(names[Y], PROB[:, perm], 2, labels=names[perm]) == pytest.approx(
        expected_calibration_error(Y, PROB, 2)
    )


def test_binary_one_dimensional_probabilities():
    p1 = np.array([0.9, 0.2, 0.6, 0.45])
    y = np.array([1, 0, 0, 1])
    two = np.stack([1 - p1, p1], axis=1)
    assert expected_calibration_error(y, p1, 3) == expected_calibration_error(y, two, 3)


def test_invalid_inputs():
    with pytest.raises(ValueError, match="NaN"):
        expected_calibration_error(Y, np.where(PROB > 0.85, np.nan, PROB))
    with pytest.raises(ValueError, match="sum to 1"):
        expected_calibration_error(Y, PROB * 0.9)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        expected_calibration_error(Y, PROB * 3 - 1)
    with pytest.raises(ValueError, match="single class column"):
        expected_calibration_error(Y, np.ones((6, 1)))
    with pytest.raises(ValueError, match="2-D"):
        expected_calibration_error(Y, PROB[None])
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        expected_calibration_error(Y[:5], PROB)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        expected_calibration_error(Y + 1, PROB)
    with pytest.raises(ValueError, match="labels="):
        expected_calibration_error(np.array(["a"] * 6), PROB)
    with pytest.raises(ValueError, match="did you mean 'quantile'"):
        expected_calibration_error(Y, PROB, strategy="quantiles")
    with pytest.raises(ValueError, match="norm"):
        expected_calibration_error(Y, PROB, norm="l3")
    with pytest.raises(ValueError, match="debias"):
        expected_calibration_error(Y, PROB, debias=True)
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error(Y, PROB, n_bins=0)


# ---------------------------------------------------------------------------------------------
# temperature scaling
# ---------------------------------------------------------------------------------------------
def synthetic_logits(rng, t_true, n=20_000, k=10):
    logits = rng.normal(0.0, 3.0, (n, k))
    p = softmax(logits / t_true, axis=1)
    y = (rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(1)
    return logits, np.minimum(y, k - 1)


@pytest.mark.parametrize("t_true", [0.5, 2.5])
def test_temperature_recovered(rng, t_true):
    logits, y = synthetic_logits(rng, t_true)
    t = fit_temperature(logits, y)
    assert abs(t - t_true) / t_true < 0.02
    # the same minimiser as scipy's bounded scalar search on the NLL
    nll = lambda log_t: -log_softmax(logits / np.exp(log_t), axis=1)[np.arange(len(y)), y].mean()  # noqa: E731
    ref = np.exp(minimize_scalar(nll, bounds=(-5, 5), method="bounded", options={"xatol": 1e-10}).x)
    assert t == pytest.approx(ref, rel=1e-5)


def test_temperature_scaler(rng):
    logits, y = synthetic_logits(rng, 2.0, n=5000)
    scaler = TemperatureScaler().fit(torch.from_numpy(logits), torch.from_numpy(y))
    assert scaler.temperature_ == pytest.approx(fit_temperature(logits, y))
    out = scaler.predict_proba(torch.from_numpy(logits))
    assert isinstance(out, torch.Tensor)
    np.testing.assert_allclose(out.numpy(), softmax(logits / scaler.temperature_, axis=1), atol=1e-12)
    np.testing.assert_allclose(scaler.transform(logits), logits / scaler.temperature_)
    with pytest.raises(ValueError, match="at least 2 class columns"):
        fit_temperature(logits[:, :1], y)


# ---------------------------------------------------------------------------------------------
# confidence AUROC (Table 1)
# ---------------------------------------------------------------------------------------------
def test_confidence_auroc_equals_mann_whitney(rng):
    n = 400
    prob = softmax(rng.normal(0, 1, (n, 4)), axis=1)
    y = rng.integers(0, 4, n)
    conf = np.round(rng.normal(0, 1, n), 1)  # ties count one half
    correct = prob.argmax(1) == y
    pos, neg = conf[correct], conf[~correct]
    mann_whitney = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (len(pos) * len(neg))
    assert confidence_auroc(y, prob, conf) == pytest.approx(mann_whitney, abs=1e-12)


def test_confidence_auroc_perfect_signal_and_errors():
    conf = PROB.max(1)
    correct = PROB.argmax(1) == Y
    signal = correct.astype(float) + 0.01 * conf
    assert confidence_auroc(Y, PROB, signal) == 1.0
    with pytest.raises(ValueError, match="every prediction is correct"):
        confidence_auroc(PROB.argmax(1), PROB, conf)
    with pytest.raises(ValueError, match="inconsistent"):
        confidence_auroc(Y, PROB, conf[:4])


# ---------------------------------------------------------------------------------------------
# reliability diagram
# ---------------------------------------------------------------------------------------------
def test_reliability_diagram_writes_png(tmp_path, rng):
    prob = softmax(rng.normal(0, 2, (300, 5)), axis=1)
    y = rng.integers(0, 5, 300)
    out = reliability_diagram(y, prob, tmp_path / "sub" / "rel.png", dpi=50)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (250, 300)  # 5 x 6 inches at 50 dpi
