"""Verification (seed 001: same/different by a thresholded similarity) against brute-force threshold
searches, geoopt's Poincaré distance and scikit-learn's cosine similarity."""
from __future__ import annotations

import math

import geoopt
import numpy as np
import pytest
import torch
from sklearn.metrics.pairwise import cosine_similarity

from polyheads.metrics import pair_scores, sample_pairs, tar_at_far, verification_accuracy, verification_roc


def separable(rng, n=600):
    same = np.arange(n) % 2 == 0
    scores = np.where(same, rng.uniform(0.6, 1.0, n), rng.uniform(-1.0, 0.4, n))
    return scores, same


def test_separable_scores_give_accuracy_one(rng):
    scores, same = separable(rng)
    assert verification_accuracy(scores, same) == 1.0
    mean, std = verification_accuracy(-scores, same, higher_is_same=False, return_std=True)
    assert (mean, std) == (1.0, 0.0)


def test_separable_pairs_of_embeddings_give_accuracy_one(rng):
    # two classes on opposite sides of the sphere: same-class pairs have cosine > 0.8, others < 0
    n = 400
    centres = np.array([[1.0, 0, 0], [-1.0, 0, 0]])
    cls_a = rng.integers(0, 2, n)
    same = rng.random(n) < 0.5
    cls_b = np.where(same, cls_a, 1 - cls_a)
    a = centres[cls_a] + 0.1 * rng.standard_normal((n, 3))
    b = centres[cls_b] + 0.1 * rng.standard_normal((n, 3))
    for metric in ("cosine", "euclidean"):
        assert verification_accuracy((a, b), same, metric=metric) == 1.0
    assert verification_accuracy(np.stack([a, b], axis=1), same) == 1.0


def test_random_scores_give_chance(rng):
    n = 6000
    assert abs(verification_accuracy(rng.random(n), rng.random(n) < 0.5) - 0.5) < 0.03


def brute_force_lfw(scores, same, n_folds):
    """Ten-fold LFW accuracy: every candidate threshold tried by a loop, first best kept."""
    folds = np.array_split(np.arange(len(scores)), n_folds)
    accs = []
    for i, test in enumerate(folds):
        train = np.concatenate([f for j, f in enumerate(folds) if j != i])
        u = np.unique(scores[train])
        candidates = [-np.inf] + [(u[j] + u[j + 1]) / 2 for j in range(len(u) - 1)] + [np.inf]
        best_t, best_acc = None, -1.0
        for t in candidates:
            acc = np.mean((scores[train] > t) == same[train])
            if acc > best_acc:
                best_t, best_acc = t, acc
        accs.append(np.mean((scores[test] > best_t) == same[test]))
    return np.mean(accs), np.std(accs)


def test_matches_brute_force_threshold_search(rng):
    n = 500
    same = rng.random(n) < 0.4
    scores = np.round(rng.normal(0, 1, n) + 1.2 * same, 1)  # overlapping classes, many ties
    mean, std = verification_accuracy(scores, same, return_std=True)
    ref_mean, ref_std = brute_force_lfw(scores, same, 10)
    assert mean == pytest.approx(ref_mean, abs=1e-12)
    assert std == pytest.approx(ref_std, abs=1e-12)
    assert 0.6 < mean < 0.9


def brute_force_tar(scores, same, far):
    best = 0.0
    for t in np.concatenate([np.unique(scores), [np.inf]]):
        accepted = scores >= t
        if accepted[~same].mean() <= far:
            best = max(best, accepted[same].mean())
    return best


def test_tar_at_far_matches_brute_force(rng):
    n = 3000
    same = rng.random(n) < 0.5
    scores = np.round(rng.normal(0, 1, n) + 2.0 * same, 2)
    for far in (1e-3, 1e-2, 0.1):
        assert tar_at_far(scores, same, far) == pytest.approx(brute_force_tar(scores, same, far), abs=1e-12)
    np.testing.assert_allclose(
        tar_at_far(scores, same, [1e-2, 0.1]), [brute_force_tar(scores, same, f) for f in (1e-2, 0.1)]
    )
    with pytest.warns(UserWarning, match="resolution"):
        tar_at_far(scores, same, 1e-5)


def test_roc_points_with_distances(rng):
    n = 200
    same = rng.random(n) < 0.5
    dist = np.round(rng.random(n) + 0.5 * ~same, 2)
    far, tar, thr = verification_roc(dist, same, higher_is_same=False)
    assert np.all(np.diff(far) >= 0) and np.all(np.diff(tar) >= 0)
    for f, t, th in zip(far[1:], tar[1:], thr[1:]):  # accept when distance <= threshold
        assert f == pytest.approx(np.mean(dist[~same] <= th))
        assert t == pytest.approx(np.mean(dist[same] <= th))


def test_pair_scores_against_references(rng):
    a = rng.standard_normal((50, 4)) * 0.12  # inside the ball of radius 1/sqrt(2)
    b = rng.standard_normal((50, 4)) * 0.12
    np.testing.assert_allclose(pair_scores((a, b)), np.diag(cosine_similarity(a, b)), atol=1e-12)
    np.testing.assert_allclose(pair_scores((a, b), "euclidean"), -np.linalg.norm(a - b, axis=1), atol=1e-12)
    for c in (0.5, 2.0):
        ball = geoopt.PoincareBall(c=torch.tensor(c, dtype=torch.float64))  # a float c is stored in float32
        ref = ball.dist(torch.from_numpy(a), torch.from_numpy(b)).numpy()
        np.testing.assert_allclose(pair_scores((a, b), "poincare", c=c), -ref, rtol=1e-9)
    pairwise = lambda x, y: torch.cdist(x, y, p=1.0)  # noqa: E731  [P, P]: the diagonal is used
    per_pair = lambda x, y: (x - y).abs().sum(1)  # noqa: E731  [P]
    expected = -np.abs(a - b).sum(1)
    np.testing.assert_allclose(pair_scores((a, b), pairwise), expected, atol=1e-12)
    np.testing.assert_allclose(pair_scores((a, b), per_pair), expected, atol=1e-12)


def test_sample_pairs(rng):
    labels = np.repeat(["a", "b", "c", "d"], [1, 2, 5, 12])
    first, second, same = sample_pairs(labels, 1000, random_state=3)
    assert same.sum() == 500
    assert np.array_equal(labels[first] == labels[second], same)
    assert np.all(first != second)
    assert not np.any(labels[first[same]] == "a")  # a class of one cannot give a genuine pair
    again = sample_pairs(labels, 1000, random_state=3)
    assert all(np.array_equal(x, y) for x, y in zip((first, second, same), again))
    # genuine partners are uniform over the class's other members
    big = first[same & (labels[first] == "d")]
    partners = second[same & (labels[first] == "d")]
    assert len(np.unique(partners)) == 12 and len(big) > 100
    with pytest.raises(ValueError, match="single class"):
        sample_pairs(["x", "x"], 10)


def test_invalid_inputs(rng):
    scores, same = separable(rng, 100)
    with pytest.raises(ValueError, match="single class"):
        verification_accuracy(scores, np.ones(100, bool))
    with pytest.raises(ValueError, match="inconsistent"):
        verification_accuracy(scores[:50], same)
    with pytest.raises(ValueError, match="NaN"):
        verification_accuracy(np.full(100, math.nan), same)
    with pytest.raises(ValueError, match="n_folds"):
        verification_accuracy(scores, same, n_folds=101)
    with pytest.raises(ValueError, match="boolean"):
        verification_accuracy(scores, np.arange(100) % 3)
    with pytest.raises(ValueError, match="pairs"):
        verification_accuracy((np.zeros((5, 3)), np.zeros((6, 3))), same[:5])
    with pytest.raises(ValueError, match="far"):
        tar_at_far(scores, same, 2.0)
