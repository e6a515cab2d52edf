"""polyheads.evaluate on a small timm model with a STANDARD and a COSINE head: every column equals an
independent computation (scikit-learn, pytorch-metric-learning, scipy) on the model's own outputs."""
from __future__ import annotations

import math

import numpy as np
import pytest
import timm
import torch
from pytorch_metric_learning.distances import CosineSimilarity, LpDistance
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from pytorch_metric_learning.utils.inference import CustomKNN
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

import polyheads
from polyheads.evaluation import RESULT_KEYS
from polyheads.heads import CosineHead, StandardHead
from polyheads.metrics import expected_calibration_error, retrieval_scores
from polyheads.training import build_optimizer, load_digits_images, pre_logits, train_one_epoch


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits_images()
    return x, y


def batches(x, y, size=200):
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


@pytest.fixture(scope="module", params=["standard", "cosine"])
def trained(request, digits):
    x, y = digits
    torch.manual_seed(0)
    model = timm.create_model("convnet_mnist", num_classes=10, img_size=8, head=request.param)
    opt = build_optimizer(model, lr=0.05, momentum=0.9)
    train = batches(x[:1000], y[:1000], 100)
    for epoch in range(3):
        train_one_epoch(model, train, opt, epoch=epoch)
    model.eval()
    return request.param, model


def pml_map_at_r(emb, labels, distance):
    calc = AccuracyCalculator(include=("mean_average_precision_at_r",), k="max_bin_count",
                              knn_func=CustomKNN(distance), device=torch.device("cpu"))
    return calc.get_accuracy(emb, labels)["mean_average_precision_at_r"]


def test_every_column_matches_independent_computation(trained, digits):
    name, model = trained
    x, y = digits
    test_x, test_y = x[1400:], y[1400:]
    val_x, val_y = x[1000:1400], y[1000:1400]
    res = polyheads.evaluate(model, batches(test_x, test_y), batches(val_x, val_y))
    assert set(res) == set(RESULT_KEYS)
    with torch.no_grad():
        feats = pre_logits(model, test_x)
        head = polyheads.get_head(model)
        logits = model(test_x).double().numpy()  # timm's own forward
        emb = head.embed(feats)
        val_logits = model(val_x).double().numpy()
    prob = np.exp(log_softmax(logits, axis=1))
    pred = logits.argmax(1)
    assert res["num_samples"] == len(test_y) and res["open_set"] is False
    assert res["accuracy"] == pytest.approx(accuracy_score(test_y, pred))
    assert 0.2 < res["accuracy"] < 1.0  # trained a little: neither chance nor perfect
    assert res["nll"] == pytest.approx(log_loss(test_y, prob, labels=range(10)), rel=1e-9)
    assert res["ece"] == pytest.approx(expected_calibration_error(test_y, prob), abs=1e-12)
    # Table 1: AUROC of ‖z‖ (the default confidence of both heads) for correct vs wrong
    assert res["confidence_auroc"] == pytest.approx(roc_auc_score(pred == test_y.numpy(), emb.norm(dim=1).numpy()))
    # Table 3 right: T minimises the validation NLL (scipy's bounded search as the reference)
    nll = lambda log_t: -log_softmax(val_logits / np.exp(log_t), axis=1)[np.arange(len(val_y)), val_y].mean()  # noqa: E731
    t_ref = math.exp(minimize_scalar(nll, bounds=(-4, 4), method="bounded", options={"xatol": 1e-10}).x)
    assert res["temperature"] == pytest.approx(t_ref, rel=1e-5)
    scaled = np.exp(log_softmax(logits / res["temperature"], axis=1))
    assert res["ece_temperature_scaled"] == pytest.approx(expected_calibration_error(test_y, scaled), abs=1e-12)
    # Table 4: mAP@R in the geometry's metric (Euclidean for STANDARD, cosine for COSINE), + cosine
    own = LpDistance(normalize_embeddings=False) if name == "standard" else CosineSimilarity()
    assert res["retrieval_metric"] == ("euclidean" if name == "standard" else "cosine")
    assert res["map_at_r"] == pytest.approx(pml_map_at_r(emb, test_y, own), abs=1e-9)
    assert res["map_at_r_cosine"] == pytest.approx(pml_map_at_r(emb, test_y, CosineSimilarity()), abs=1e-9)
    assert res["retrieval_samples"] == 0


def test_open_set_reports_only_retrieval(trained, digits):
    _, model = trained
    x, y = digits
    closed = polyheads.evaluate(model, batches(x[1400:], y[1400:]))
    # classes renamed to ids the head never saw (disjoint from its 10 training classes)
    opened = polyheads.evaluate(model, batches(x[1400:], y[1400:] * 7 + 100), open_set=True)
    for key in ("accuracy", "nll", "ece", "temperature", "ece_temperature_scaled", "confidence_auroc"):
        assert opened[key] is None
    for key in ("map_at_r", "r_precision", "precision_at_1", "map_at_r_cosine"):
        assert opened[key] == pytest.approx(closed[key], abs=1e-12)
    with pytest.raises(ValueError, match="open_set=True"):
        polyheads.evaluate(model, batches(x[1400:], y[1400:] + 100))
    with pytest.raises(ValueError, match="retrieval=False"):
        polyheads.evaluate(model, batches(x[1400:], y[1400:]), open_set=True, retrieval=False)


def test_bare_head_on_feature_loader_equals_timm_model(trained, digits):
    _, model = trained
    x, y = digits
    head = polyheads.get_head(model)
    with torch.no_grad():
        feats = pre_logits(model, x[1400:])
    from_model = polyheads.evaluate(model, batches(x[1400:], y[1400:]), batches(x[1000:1400], y[1000:1400]))
    with torch.no_grad():
        val_feats = pre_logits(model, x[1000:1400])
    from_head = polyheads.evaluate(head, batches(feats, y[1400:]), batches(val_feats, y[1000:1400]))
    for key in RESULT_KEYS:
        if isinstance(from_model[key], float):
            assert from_head[key] == pytest.approx(from_model[key], rel=1e-6), key
        else:
            assert from_head[key] == from_model[key], key


def test_printed_table(trained, digits, capsys):
    _, model = trained
    x, y = digits
    res = polyheads.evaluate(model, batches(x[1400:], y[1400:]), print_table=True)
    out = capsys.readouterr().out
    assert f"{100 * res['accuracy']:6.2f} %" in out
    assert f"{100 * res['map_at_r']:6.2f} %" in out
    assert "+ cosine at test" in out
    assert model.training is False


class _NoisyCosine(CosineHead):
    """A stochastic stand-in: S embedding samples = z̃ plus fixed offsets (sample_embeddings hook)."""

    stochastic = True

    def sample_embeddings(self, features, num_samples):
        z = self.embed(features)
        offsets = torch.stack([torch.full_like(z, 0.3 * s) * torch.arange(z.shape[1]) for s in range(num_samples)])
        return z[None] + offsets


def test_stochastic_head_retrieval_is_expectation_over_samples():
    torch.manual_seed(0)
    feats = torch.randn(120, 6)
    labels = torch.arange(120) % 7
    head = _NoisyCosine(6, 7, dim=4).eval()
    res = polyheads.evaluate(head, batches(feats, labels, 50), retrieval_samples=3)
    with torch.no_grad():
        samples = head.sample_embeddings(feats, 3)
    per_sample = [retrieval_scores(samples[s], labels, "cosine")["map_at_r"] for s in range(3)]
    assert res["retrieval_samples"] == 3
    assert res["map_at_r"] == pytest.approx(np.mean(per_sample), abs=1e-12)
    assert polyheads.evaluate(head, batches(feats, labels, 50))["retrieval_samples"] == 10  # the default S
    with pytest.raises(ValueError, match="sample"):
        polyheads.evaluate(StandardHead(6, 7), batches(feats, labels, 50), retrieval_samples=2)


class _BallHead(StandardHead):
    """A stand-in for a hyperbolic head: embeddings inside the Poincaré ball of curvature c."""

    retrieval_metric = "poincare"
    c = 0.5

    def embedding_from_features(self, x):
        z = self.embedding(x)
        return torch.tanh(z.norm(dim=1, keepdim=True)) * torch.nn.functional.normalize(z, dim=1) / math.sqrt(self.c) * 0.99


def test_poincare_head_uses_its_curvature():
    torch.manual_seed(1)
    feats = torch.randn(150, 5)
    labels = torch.arange(150) % 6
    head = _BallHead(5, 6, dim=3).eval()
    res = polyheads.evaluate(head, batches(feats, labels, 64), open_set=True)
    with torch.no_grad():
        emb = head.embed(feats)
    assert res["retrieval_metric"] == "poincare (c=0.5)"
    assert res["map_at_r"] == pytest.approx(retrieval_scores(emb, labels, "poincare", c=0.5)["map_at_r"], abs=1e-12)
    assert res["map_at_r"] != pytest.approx(retrieval_scores(emb, labels, "euclidean")["map_at_r"], abs=1e-6)
    assert res["map_at_r_cosine"] == pytest.approx(retrieval_scores(emb, labels, "cosine")["map_at_r"], abs=1e-12)
