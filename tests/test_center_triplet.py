"""Center Loss and FaceNet triplet heads (issue 4): seed 001's formulas against loops and brute force."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.spatial.distance import cdist

from polyheads import create_head
from polyheads.functional import center_delta, center_loss, mine_triplets, pairwise_squared_distances, triplet_loss
from polyheads.heads import CenterLossHead, TripletHead

from _helpers import gradcheck_head_loss, sgd_fit


# ================================================================================== Center Loss
def _seed001_center_step(centers: np.ndarray, x: np.ndarray, y: list[int], alpha: float) -> np.ndarray:
    """Seed 001, literally: Δc_j = Σ_i δ(y_i=j)(c_j − x_i) / (1 + Σ_i δ(y_i=j)); c_j ← c_j − α Δc_j."""
    out = centers.copy()
    for j in range(centers.shape[0]):
        numerator = np.zeros(centers.shape[1])
        count = 0
        for i in range(len(y)):
            if y[i] == j:
                numerator += centers[j] - x[i]
                count += 1
        out[j] = centers[j] - alpha * numerator / (1 + count)
    return out


def test_center_delta_equals_seed_formula():
    rng = np.random.default_rng(3)
    centers = rng.normal(size=(5, 3))
    x = rng.normal(size=(7, 3))
    y = [2, 0, 2, 2, 4, 0, 1]  # class 3 absent, classes 0 and 2 repeated
    classes, delta = center_delta(torch.tensor(centers), torch.tensor(x), torch.tensor(y))
    assert classes.tolist() == [0, 1, 2, 4]
    updated = torch.tensor(centers).index_add(0, classes, delta, alpha=-0.5).numpy()
    np.testing.assert_allclose(updated, _seed001_center_step(centers, x, y, 0.5), rtol=1e-12, atol=1e-12)


def test_center_head_updates_buffer_with_seed_rule_only_when_training():
    head = create_head("center", 4, 5, dim=3, lam=0.1, alpha=0.6).double()
    x = torch.randn(7, 4, dtype=torch.float64)
    y = torch.tensor([2, 0, 2, 2, 4, 0, 1])
    with torch.no_grad():
        head.centers.copy_(torch.randn(5, 3, dtype=torch.float64))
    # eval mode, and training mode under no_grad: centres untouched
    before = head.centers.clone()
    head.eval()
    head.loss(x, y)
    head.train()
    with torch.no_grad():
        head.loss(x, y)
    torch.testing.assert_close(head.centers, before, rtol=0, atol=0)
    # training step: centres move by the seed-001 rule, computed from the embeddings z
    z = head.embed(x).detach().numpy()
    head.loss(x, y).backward()
    np.testing.assert_allclose(head.centers.numpy(), _seed001_center_step(before.numpy(), z, y.tolist(), 0.6), rtol=1e-12, atol=1e-12)
    # centres are a buffer: saved, never a parameter, never optimised
    assert "centers" in head.state_dict()
    assert all(p is not head.centers for p in head.parameters())
    assert all(p is not head.centers for g in head.param_groups() for p in g["params"])
    assert not head.centers.requires_grad


def test_center_loss_closed_form():
    head = create_head("center", 3, 4, dim=2, lam=0.25).double().eval()
    with torch.no_grad():
        head.centers.copy_(torch.tensor([[0.0, 1.0], [2.0, -1.0], [0.5, 0.5], [-1.0, -1.0]], dtype=torch.float64))
    x = torch.randn(6, 3, dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 3, 2, 0])
    z = head.embed(x).detach().numpy()
    w = head.weight.detach().numpy()
    c = head.centers.numpy()
    logits = z @ w.T
    ce = np.mean([np.log(np.exp(logits[i]).sum()) - logits[i, y[i]] for i in range(6)])
    pull = 0.5 * np.mean([np.sum((z[i] - c[y[i]]) ** 2) for i in range(6)])
    np.testing.assert_allclose(head.loss(x, y).item(), ce + 0.25 * pull, rtol=1e-12)
    np.testing.assert_allclose(center_loss(torch.tensor(z), torch.tensor(c), y).item(), pull, rtol=1e-12)
    # forward: the STANDARD logits
    np.testing.assert_allclose(head(x).detach().numpy(), logits, rtol=1e-12)


def test_center_gradcheck_and_gradient_pull():
    head = create_head("center", 5, 4, dim=3, lam=0.5).eval()
    with torch.no_grad():
        head.centers.normal_()
    x = torch.randn(6, 5, dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 3, 2, 0])
    gradcheck_head_loss(head, x, y)
    # ∂(λ L_C)/∂z_i = λ (z_i − c_{y_i}) / B (seed 001, divided by the batch size)
    z = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    c = torch.randn(4, 3, dtype=torch.float64)
    (grad,) = torch.autograd.grad(center_loss(z, c, y), z)
    torch.testing.assert_close(grad, (z.detach() - c[y]) / 6)


def test_center_trains_and_centres_follow_class_means():
    torch.manual_seed(2)
    means = torch.randn(3, 6) * 2
    y = torch.arange(3).repeat(20)
    x = means[y] + 0.2 * torch.randn(60, 6)
    head = create_head("center", 6, 3, embedding=False, lam=0.1, alpha=0.5)
    for _ in range(40):
        head.loss(x, y)
    # with fixed features and repeated updates the centres converge to the class means of z = x
    for j in range(3):
        torch.testing.assert_close(head.centers[j], x[y == j].mean(0), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "kwargs, word", [({"lam": -0.1}, "lam"), ({"alpha": 1.5}, "alpha"), ({"alpha": -0.1}, "alpha")]
)
def test_center_bad_arguments(kwargs, word):
    with pytest.raises(ValueError, match=word):
        create_head("center", 4, 3, **kwargs)


def test_center_bad_call_inputs_and_repr():
    head = create_head("center", 4, 3, lam=0.01, alpha=0.3)
    with pytest.raises(ValueError, match="target"):
        head.loss(torch.randn(2, 4), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="features"):
        head.loss(torch.randn(2, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="centers"):
        center_loss(torch.randn(2, 3), torch.randn(3, 4), torch.tensor([0, 1]))
    text = repr(head)
    assert isinstance(head, CenterLossHead) and head.geometry == "euclidean"
    assert "lambda=0.01" in text and "alpha=0.3" in text


# ================================================================================== triplet
def _brute_force_triplets(d: np.ndarray, labels: list[int], margin: float, mining: str) -> set[tuple[int, int, int]]:
    """Enumerate every (a, p, n) and apply the selection rule by its definition."""
    n_items = len(labels)
    triplets = [
        (a, p, n)
        for a, p, n in itertools.product(range(n_items), repeat=3)
        if a != p and labels[a] == labels[p] and labels[n] != labels[a]
    ]
    if mining == "all":
        return set(triplets)
    if mining == "hard":
        chosen = set()
        for a in range(n_items):
            mine = [t for t in triplets if t[0] == a]
            if mine:
                p = max({t[1] for t in mine}, key=lambda q: d[a, q])
                n = min({t[2] for t in mine}, key=lambda q: d[a, q])
                chosen.add((a, p, n))
        return chosen
    chosen = set()
    for a, p in {(t[0], t[1]) for t in triplets}:
        negatives = [t[2] for t in triplets if t[0] == a and t[1] == p]
        semihard = [n for n in negatives if d[a, p] < d[a, n] < d[a, p] + margin]
        pool = semihard if semihard else negatives
        chosen.add((a, p, min(pool, key=lambda q: d[a, q])))
    return chosen


LABELS = [0, 1, 0, 2, 1, 0, 3, 2, 1, 0, 4]  # class 3 and 4 single: anchors without positive


@pytest.mark.parametrize("mining", ["semihard", "hard", "all"])
def test_mining_equals_brute_force(mining):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(len(LABELS), 3))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    margin = 0.6
    d = pairwise_squared_distances(torch.tensor(x))
    a, p, n = mine_triplets(d, torch.tensor(LABELS), margin, mining)
    got = list(zip(a.tolist(), p.tolist(), n.tolist()))
    assert len(got) == len(set(got))
    expected = _brute_force_triplets(cdist(x, x, "sqeuclidean"), LABELS, margin, mining)
    assert set(got) == expected
    if mining == "semihard":
        # both rules are exercised: pairs with a semi-hard negative and pairs falling back
        dd = cdist(x, x, "sqeuclidean")
        semi = [(a_, p_) for a_, p_, n_ in got if dd[a_, p_] < dd[a_, n_] < dd[a_, p_] + margin]
        assert 0 < len(semi) < len(got)
    # the loss is the mean hinge over exactly those triplets
    dd = cdist(x, x, "sqeuclidean")
    reference = np.mean([max(dd[i, j] - dd[i, k] + margin, 0.0) for i, j, k in expected])
    np.testing.assert_allclose(triplet_loss(torch.tensor(x), torch.tensor(LABELS), margin, mining).item(), reference, rtol=1e-10)


def test_pairwise_squared_distances_against_scipy():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(6, 4)), rng.normal(size=(5, 4))
    np.testing.assert_allclose(pairwise_squared_distances(torch.tensor(x), torch.tensor(y)).numpy(), cdist(x, y, "sqeuclidean"), rtol=1e-10, atol=1e-12)
    own = pairwise_squared_distances(torch.tensor(x)).numpy()
    np.testing.assert_allclose(own, cdist(x, x, "sqeuclidean"), rtol=1e-10, atol=1e-12)
    assert (np.diag(own) == 0).all()


@pytest.mark.parametrize("labels", [[0, 1, 2, 3], [5, 5, 5, 5]])
def test_no_valid_triplet_names_the_sampler(labels):
    head = create_head("triplet", 4, 6)
    with pytest.raises(ValueError, match="N×K"):
        head.loss(torch.randn(len(labels), 4), torch.tensor(labels))


@pytest.mark.parametrize("mining", ["semihard", "hard", "all"])
def test_triplet_head_loss_closed_form_and_gradcheck(mining):
    head = create_head("triplet", 5, 5, dim=3, margin=0.5, mining=mining).double().eval()
    x = torch.randn(len(LABELS[:10]), 5, dtype=torch.float64)
    y = torch.tensor(LABELS[:10])
    z = head.embed(x).detach().numpy()
    z /= np.linalg.norm(z, axis=1, keepdims=True)  # FaceNet: ‖f(x)‖ = 1
    dd = cdist(z, z, "sqeuclidean")
    triplets = _brute_force_triplets(dd, y.tolist(), 0.5, mining)
    reference = np.mean([max(dd[a, p] - dd[a, n] + 0.5, 0.0) for a, p, n in triplets])
    np.testing.assert_allclose(head.loss(x, y).item(), reference, rtol=1e-10)
    gradcheck_head_loss(head, x, y)


def test_triplet_centroids_running_mean_and_logits():
    head = create_head("triplet", 3, 4, embedding=False, scale=10.0).double()  # momentum 0.1
    x1 = torch.randn(6, 3, dtype=torch.float64)
    y1 = torch.tensor([0, 0, 1, 1, 2, 2])
    x2 = torch.randn(4, 3, dtype=torch.float64)
    y2 = torch.tensor([0, 0, 2, 2])
    unit = lambda v: v / v.norm(dim=1, keepdim=True)  # noqa: E731
    head.eval()
    head.loss(x1, y1)
    assert (head.centroids == 0).all() and (head.centroid_counts == 0).all()
    head.train()
    head.loss(x1, y1)
    first = {j: unit(x1[y1 == j]).mean(0) for j in (0, 1, 2)}
    for j in (0, 1, 2):  # a class's first batch sets its centroid
        torch.testing.assert_close(head.centroids[j], first[j])
    assert (head.centroids[3] == 0).all()
    with torch.no_grad():
        head.loss(x2, y2)  # no update without gradients
    head.loss(x2, y2)
    for j in (0, 2):
        torch.testing.assert_close(head.centroids[j], 0.9 * first[j] + 0.1 * unit(x2[y2 == j]).mean(0))
    torch.testing.assert_close(head.centroids[1], first[1])
    assert head.centroid_counts.tolist() == [4, 2, 4, 0]
    # forward: β cos to the centroids (β = the fixed scale), unseen class -> 0
    xq = torch.randn(5, 3, dtype=torch.float64)
    c = head.centroids
    cos = unit(xq) @ torch.nn.functional.normalize(c, dim=1).t()
    torch.testing.assert_close(head(xq), 10.0 * cos, rtol=1e-6, atol=1e-12)
    assert (head(xq)[:, 3] == 0).all()
    assert {"centroids", "centroid_counts"} <= set(head.state_dict())
    assert [n for n, _ in head.named_parameters()] == []


def test_triplet_cumulative_centroids():
    head = create_head("triplet", 3, 3, embedding=False, centroid_momentum=None).double().train()
    xs = [torch.randn(4, 3, dtype=torch.float64) for _ in range(3)]
    y = torch.tensor([0, 0, 1, 1])
    for x in xs:
        head.loss(x, y)
    allx = torch.cat(xs)
    ally = y.repeat(3)
    normed = F.normalize(allx, dim=1)
    for j in (0, 1):
        torch.testing.assert_close(head.centroids[j], normed[ally == j].mean(0))


def test_triplet_trains_and_contract():
    torch.manual_seed(4)
    means = torch.randn(4, 8) * 2
    y = torch.arange(4).repeat_interleave(6)
    x = means[y] + 0.5 * torch.randn(24, 8)
    head = create_head("triplet", 8, 4, dim=5, margin=0.2)
    first = sgd_fit(head, x, y, steps=40)
    assert head.loss(x, y).item() < 0.5 * first
    head.eval()
    assert (head(x).argmax(1) == y).float().mean() > 0.9
    assert isinstance(head, TripletHead) and head.geometry == "spherical" and head.retrieval_metric == "cosine"
    text = repr(head)
    assert "m=0.2" in text and "beta=16" in text and "mining='semihard'" in text
    e = torch.randn(3, 5)
    torch.testing.assert_close(head.distance(e, e).diagonal(), torch.zeros(3), atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "kwargs, word",
    [({"margin": -0.1}, "margin"), ({"mining": "batch_hard"}, "mining"), ({"centroid_momentum": 0.0}, "centroid_momentum"), ({"scale": -1.0}, "scale")],
)
def test_triplet_bad_arguments(kwargs, word):
    with pytest.raises(ValueError, match=word):
        create_head("triplet", 4, 3, **kwargs)


def test_triplet_functional_bad_inputs():
    d = torch.rand(4, 4)
    with pytest.raises(ValueError, match="sq_dist"):
        mine_triplets(torch.rand(4, 3), torch.tensor([0, 0, 1, 1]))
    with pytest.raises(ValueError, match="labels"):
        mine_triplets(d, torch.tensor([0, 0, 1]))
    with pytest.raises(TypeError, match="labels"):
        mine_triplets(d, torch.tensor([0.0, 0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="mining"):
        mine_triplets(d, torch.tensor([0, 0, 1, 1]), mining="hardest")
    with pytest.raises(ValueError, match="embeddings"):
        triplet_loss(torch.tensor([[0.0, math.nan], [1.0, 0.0]]), torch.tensor([0, 0]))
    head = create_head("triplet", 4, 3)
    with pytest.raises(ValueError, match="target"):
        head.loss(torch.randn(4, 4), torch.tensor([0, 0, 3, 3]))
