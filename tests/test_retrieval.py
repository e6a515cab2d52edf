"""Retrieval metrics (seed 000 §3.2, Table 4) against pytorch-metric-learning's AccuracyCalculator,
brute-force neighbour searches and hand-worked cases."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pytorch_metric_learning.distances import CosineSimilarity, LpDistance
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from pytorch_metric_learning.utils.inference import CustomKNN

from polyheads.metrics import map_at_r, nearest_neighbors, precision_at_1, r_precision, retrieval_scores
from polyheads.metrics import retrieval as retrieval_module

PML_KEYS = {"map_at_r": "mean_average_precision_at_r", "r_precision": "r_precision", "precision_at_1": "precision_at_1"}


def pml(query, labels, reference=None, reference_labels=None, *, distance=None, knn_func=None, avg_of_avgs=False):
    calc = AccuracyCalculator(
        include=tuple(PML_KEYS.values()),
        k="max_bin_count",
        avg_of_avgs=avg_of_avgs,
        knn_func=knn_func or CustomKNN(distance),
        device=torch.device("cpu"),
    )
    out = calc.get_accuracy(query, labels, reference, reference_labels)
    return {ours: out[theirs] for ours, theirs in PML_KEYS.items()}


def stable_knn(exact_dist):
    """A PML knn_func ranking by exact float64 distances, ties by reference index (numpy, stable)."""

    def knn(query, k, reference, ref_includes_query=False):
        d = exact_dist(query.double().numpy(), reference.double().numpy())
        if ref_includes_query:
            np.fill_diagonal(d, np.inf)
        order = np.argsort(d, axis=1, kind="stable")[:, :k]
        return torch.from_numpy(np.take_along_axis(d, order, 1)), torch.from_numpy(order)

    return knn


def sq_euclidean(a, b):
    return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)


def skewed_labels(rng, n, n_classes):
    """Uneven class sizes, including singleton classes (lone queries)."""
    weights = rng.pareto(1.2, n_classes) + 0.05
    labels = rng.choice(n_classes, size=n, p=weights / weights.sum())
    labels[rng.integers(n)] = n_classes  # a class of one
    return torch.from_numpy(labels)


# ---------------------------------------------------------------------------------------------
# hand-worked cases
# ---------------------------------------------------------------------------------------------
def test_hand_worked_line():
    # points on a line: 0:A@0, 1:B@1, 2:A@3, 3:B@4, 4:A@10   (R_A = 2, R_B = 1)
    # q0 neighbours 1(B) 2(A) -> AP = (0 + 1/2)/2 = .25, Rp = 1/2, P@1 = 0
    # q1 neighbour 0(A) -> 0;  q2: 3(B) 1(B) -> 0;  q3: 2(A) -> 0;  q4: 3(B) 2(A) -> AP .25, Rp 1/2
    x = torch.tensor([[0.0], [1.0], [3.0], [4.0], [10.0]])
    y = ["A", "B", "A", "B", "A"]
    s = retrieval_scores(x, y, "euclidean")
    assert s["map_at_r"] == pytest.approx(0.5 / 5)
    assert s["r_precision"] == pytest.approx(1.0 / 5)
    assert s["precision_at_1"] == 0.0
    assert map_at_r(x, y, "euclidean") == s["map_at_r"]
    assert r_precision(x, y, "euclidean") == s["r_precision"]
    assert precision_at_1(x, y, "euclidean") == s["precision_at_1"]


def test_hand_worked_perfect_and_half():
    # two tight clusters: every neighbour list is perfect
    x = torch.tensor([[0.0, 0.0], [0.0, 0.1], [0.0, 0.2], [5.0, 5.0], [5.0, 5.1]])
    assert map_at_r(x, [0, 0, 0, 1, 1], "euclidean") == 1.0
    # query 0 (class 0, R = 2) sees class 1 first, then class 0: AP = (0 + 1/2)/2
    x = torch.tensor([[0.0], [3.0], [1.0], [10.0]])
    s = retrieval_scores(x[:1], [0], "euclidean", reference_embeddings=x[1:], reference_labels=[0, 1, 0])
    assert s["map_at_r"] == pytest.approx(0.25)
    assert s["r_precision"] == pytest.approx(0.5)


def test_ties_broken_by_reference_index():
    # q0 at 0 has reference 1 (B) and 2 (A) both at distance 1: the smaller index (B) comes first
    x = torch.tensor([[0.0], [1.0], [-1.0], [2.0]])
    y = ["A", "B", "A", "A"]
    knn = nearest_neighbors(x, 3, "euclidean")
    assert knn[0].tolist() == [1, 2, 3]
    # so q0's AP@R is (0 + 1/2)/2, not (1 + 1)/2; repeated runs give the same answer
    per_query_ap0 = 0.25
    # q1 (B, R = 0) is left out; q2 (A@-1): 0(A,1) 1(B,2) -> AP = 1/2; q3 (A@2): 1(B,1) 0(A,2) -> 1/4
    expected = (per_query_ap0 + 0.5 + 0.25) / 3
    for _ in range(3):
        assert map_at_r(x, y, "euclidean") == pytest.approx(expected)


# ---------------------------------------------------------------------------------------------
# pytorch-metric-learning's AccuracyCalculator on random data
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("working_memory", [None, 1])  # 1 MiB forces the blocked symmetric search
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_matches_pml_random_uneven(rng, metric, working_memory):
    n = 640
    y = skewed_labels(rng, n, 60)
    if metric == "cosine":  # PML's own search: the same float32 arithmetic as ours
        x = torch.from_numpy(rng.standard_normal((n, 12)).astype(np.float32))
        search = {"distance": CosineSimilarity()}
    else:  # float32 cdist and our matrix-product form round near-ties differently: compare in float64
        x = torch.from_numpy(rng.standard_normal((n, 12)).astype(np.float32).astype(np.float64))  # PML casts to float32
        search = {"knn_func": stable_knn(sq_euclidean)}
    ours = retrieval_scores(x, y, metric, working_memory=working_memory)
    theirs = pml(x, y, **search)
    for key in PML_KEYS:
        assert ours[key] == pytest.approx(theirs[key], abs=1e-12), key
    ours_c = retrieval_scores(x, y, metric, average="class", working_memory=working_memory)
    theirs_c = pml(x, y, avg_of_avgs=True, **search)
    for key in PML_KEYS:
        assert ours_c[key] == pytest.approx(theirs_c[key], abs=1e-12), key


@pytest.mark.parametrize("working_memory", [None, 1])
def test_matches_pml_with_many_ties(rng, working_memory):
    # integer coordinates in {0, 1, 2}^3: exact distances, many equidistant references of other classes
    n = 600
    x = torch.from_numpy(rng.integers(0, 3, (n, 3)).astype(np.float32))
    y = skewed_labels(rng, n, 25)
    theirs = pml(x, y, knn_func=stable_knn(sq_euclidean))
    ours = retrieval_scores(x, y, "euclidean", working_memory=working_memory)
    for key in PML_KEYS:
        assert ours[key] == pytest.approx(theirs[key], abs=1e-12), key


def test_matches_pml_cosine_duplicates(rng):
    # exact duplicates carrying different labels tie exactly under cosine
    base = rng.standard_normal((40, 8)).astype(np.float32)
    pick = rng.integers(0, 40, 500)
    x = torch.from_numpy(base[pick])
    y = skewed_labels(rng, 500, 20)

    def cos_dist(a, b):
        a = torch.nn.functional.normalize(torch.from_numpy(a).float(), dim=1)
        b = torch.nn.functional.normalize(torch.from_numpy(b).float(), dim=1)
        return (-(a @ b.t())).double().numpy()

    theirs = pml(x, y, knn_func=stable_knn(cos_dist))
    for wm in (None, 1):
        ours = retrieval_scores(x, y, "cosine", working_memory=wm)
        for key in PML_KEYS:
            assert ours[key] == pytest.approx(theirs[key], abs=1e-12), key


def test_separate_query_and_reference_sets_match_pml(rng):
    q = torch.from_numpy(rng.standard_normal((150, 6)).astype(np.float32).astype(np.float64))  # PML casts to float32
    r = torch.from_numpy(rng.standard_normal((400, 6)).astype(np.float32).astype(np.float64))
    yq = skewed_labels(rng, 150, 30)
    yr = skewed_labels(rng, 400, 30)
    ours = retrieval_scores(q, yq, "euclidean", reference_embeddings=r, reference_labels=yr)
    theirs = pml(q, yq, r, yr, knn_func=stable_knn(sq_euclidean))
    for key in PML_KEYS:
        assert ours[key] == pytest.approx(theirs[key], abs=1e-12), key


def test_callable_metric_matches_pml_l1(rng):
    x = torch.from_numpy(rng.standard_normal((300, 5)).astype(np.float32))
    y = skewed_labels(rng, 300, 20)
    ours = retrieval_scores(x, y, lambda a, b: torch.cdist(a, b, p=1.0))
    theirs = pml(x, y, distance=LpDistance(p=1, normalize_embeddings=False))
    for key in PML_KEYS:
        assert ours[key] == pytest.approx(theirs[key], abs=1e-12), key


def poincare_dist(c):
    def dist(a, b):
        num = 2.0 * c * sq_euclidean(a, b)
        den = (1.0 - c * (a**2).sum(1))[:, None] * (1.0 - c * (b**2).sum(1))[None, :]
        return np.arccosh(1.0 + num / den) / math.sqrt(c)

    return dist


@pytest.mark.parametrize("c", [0.1, 1.0])
def test_poincare_matches_brute_force_geodesic(rng, c):
    n = 500
    direction = rng.standard_normal((n, 4))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    radius = rng.uniform(0.0, 0.97, (n, 1)) / math.sqrt(c)  # up to 97 % of the ball's radius
    x = torch.from_numpy(direction * radius)  # float64
    y = skewed_labels(rng, n, 30)
    theirs = pml(x.double(), y, knn_func=stable_knn(poincare_dist(c)))
    for wm in (None, 1):
        ours = retrieval_scores(x, y, "poincare", c=c, working_memory=wm)
        for key in PML_KEYS:
            assert ours[key] == pytest.approx(theirs[key], abs=1e-12), key


def test_stochastic_samples_average_over_samples(rng):
    s, n = 3, 200
    x = torch.from_numpy(rng.standard_normal((s, n, 6)).astype(np.float32).astype(np.float64))

    def cos_dist(a, b):
        a = a / np.linalg.norm(a, axis=1, keepdims=True)
        b = b / np.linalg.norm(b, axis=1, keepdims=True)
        return -(a @ b.T)

    y = skewed_labels(rng, n, 15)
    per_sample = [pml(x[i], y, knn_func=stable_knn(cos_dist))["map_at_r"] for i in range(s)]
    assert map_at_r(x, y, "cosine") == pytest.approx(np.mean(per_sample), abs=1e-12)


# ---------------------------------------------------------------------------------------------
# the neighbour search itself
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("working_memory", [None, 1])
def test_nearest_neighbors_equal_stable_brute_force(rng, working_memory):
    x = torch.from_numpy(rng.integers(0, 4, (700, 3)).astype(np.float32))
    d = sq_euclidean(x.double().numpy(), x.double().numpy())
    np.fill_diagonal(d, np.inf)
    expected = np.argsort(d, axis=1, kind="stable")[:, :20]
    got = nearest_neighbors(x, 20, "euclidean", working_memory=working_memory)
    assert np.array_equal(got.numpy(), expected)


def test_symmetric_search_visits_each_pair_once_and_respects_memory(rng, monkeypatch):
    n, wm = 900, 1
    x = torch.from_numpy(rng.standard_normal((n, 8)))
    shapes = []
    original = retrieval_module._Key.block

    def recording(self, a, b):
        out = original(self, a, b)
        shapes.append(tuple(out.shape))
        return out

    monkeypatch.setattr(retrieval_module._Key, "block", recording)
    got = nearest_neighbors(x, 10, "cosine", working_memory=wm)
    assert sum(r * c for r, c in shapes) <= 0.65 * n * n  # each pair once: ~n²/2 plus the diagonal blocks
    assert max(r * c for r, c in shapes) * 8 <= wm * 2**20
    shapes.clear()
    got_rows = nearest_neighbors(x, 300, "cosine", working_memory=wm)  # k too large: row-by-row search
    assert max(r * c for r, c in shapes) * 8 <= wm * 2**20
    xn = torch.nn.functional.normalize(x.double(), dim=1)
    sim = (xn @ xn.t()).numpy()
    np.fill_diagonal(sim, -np.inf)
    assert np.array_equal(got.numpy(), np.argsort(-sim, axis=1, kind="stable")[:, :10])
    assert np.array_equal(got_rows.numpy(), np.argsort(-sim, axis=1, kind="stable")[:, :300])


def test_numpy_and_torch_inputs_agree(rng):
    x = rng.standard_normal((120, 4))
    y = rng.integers(0, 8, 120)
    assert map_at_r(x, y) == pytest.approx(map_at_r(torch.from_numpy(x), torch.from_numpy(y)), abs=1e-12)


# ---------------------------------------------------------------------------------------------
# input validation
# ---------------------------------------------------------------------------------------------
def test_invalid_inputs():
    x = torch.randn(10, 3)
    y = torch.arange(10) % 3
    with pytest.raises(ValueError, match="NaN"):
        map_at_r(torch.full((10, 3), float("nan")), y)
    with pytest.raises(ValueError, match="labels has 9 entries"):
        map_at_r(x, y[:9])
    with pytest.raises(ValueError, match="single class"):
        map_at_r(x, torch.zeros(10, dtype=torch.long))
    with pytest.raises(ValueError, match="R = 0 for every query"):
        map_at_r(x, torch.arange(10))
    with pytest.raises(ValueError, match="did you mean 'cosine'"):
        map_at_r(x, y, metric="cosin")
    with pytest.raises(ValueError, match="must be"):
        map_at_r(torch.randn(2, 10, 3, 1), y)
    with pytest.raises(ValueError, match="inside the Poincaré ball"):
        map_at_r(x * 10, y, metric="poincare", c=1.0)
    with pytest.raises(ValueError, match="c must be >"):
        map_at_r(x * 0.01, y, metric="poincare", c=0.0)
    with pytest.raises(ValueError, match="together"):
        map_at_r(x, y, reference_embeddings=x)
    with pytest.raises(ValueError, match="callable must return"):
        map_at_r(x, y, metric=lambda a, b: a @ b.t()[:, :2])
