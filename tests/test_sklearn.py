"""HeadClassifier: scikit-learn's estimator checks, Pipeline / GridSearchCV / cross_val_score, any
label type, and its outputs against the fitted head's own forward/embed."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits, make_blobs
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from polyheads.sklearn import HeadClassifier


# Every check passes with the default (cosine) head, so nothing is listed as an expected failure.
@parametrize_with_checks([HeadClassifier()], expected_failed_checks=lambda estimator: {})
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(return_X_y=True)
    return StandardScaler().fit_transform(x[:600]), y[:600]


def test_string_labels_and_outputs_match_the_head(digits):
    x, y = digits
    names = np.array([f"digit-{d}" for d in range(10)])
    clf = HeadClassifier("cosine", random_state=0).fit(x, names[y])
    assert list(clf.classes_) == sorted(names)
    assert clf.n_features_in_ == 64
    assert clf.score(x, names[y]) > 0.95
    pred = clf.predict(x)
    assert pred.dtype.kind == "U" and set(pred) <= set(names)
    feats = torch.from_numpy(x)
    with torch.no_grad():
        logits = clf.head_(feats).numpy()
        emb = clf.head_.embed(feats).numpy()
    np.testing.assert_allclose(clf.decision_function(x), logits, atol=1e-12)
    np.testing.assert_allclose(clf.predict_proba(x), np.exp(logits) / np.exp(logits).sum(1, keepdims=True), atol=1e-12)
    np.testing.assert_array_equal(pred, clf.classes_[logits.argmax(1)])
    np.testing.assert_allclose(clf.transform(x), emb, atol=1e-12)
    assert clf.transform(x).shape == (600, 64)


def test_binary_decision_function_is_logit_difference():
    x, y = make_blobs(200, centers=2, random_state=1)
    y = np.where(y == 1, "yes", "no")
    clf = HeadClassifier("standard", random_state=0).fit(x, y)
    d = clf.decision_function(x)
    assert d.shape == (200,)
    np.testing.assert_array_equal(clf.predict(x), np.where(d > 0, clf.classes_[1], clf.classes_[0]))
    p = clf.predict_proba(x)
    np.testing.assert_allclose(p[:, 1], 1.0 / (1.0 + np.exp(-d)), atol=1e-12)


def test_random_state_reproducible(digits):
    x, y = digits
    a = HeadClassifier(random_state=3).fit(x, y).predict_proba(x)
    b = HeadClassifier(random_state=3).fit(x, y).predict_proba(x)
    c = HeadClassifier(random_state=4).fit(x, y).predict_proba(x)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_pipeline_gridsearch_and_cross_val_score():
    x, y = load_digits(return_X_y=True)
    x, y = x[:450], y[:450]
    pipe = make_pipeline(StandardScaler(), HeadClassifier(random_state=0))
    scores = cross_val_score(pipe, x, y, cv=3)
    assert scores.mean() > 0.85
    grid = GridSearchCV(
        pipe,
        {"headclassifier__head": ["cosine", "standard"], "headclassifier__dim": [8, None]},
        cv=2,
    )
    grid.fit(x, y)
    assert grid.best_params_["headclassifier__head"] in ("cosine", "standard")
    assert grid.best_score_ > 0.8
    assert grid.best_estimator_[-1].head_.dim == (grid.best_params_["headclassifier__dim"] or 64)


def test_invalid_parameters():
    x, y = make_blobs(30, random_state=0)
    with pytest.raises(ValueError, match="epochs"):
        HeadClassifier(epochs=0).fit(x, y)
    with pytest.raises(ValueError, match="lr"):
        HeadClassifier(lr=-1.0).fit(x, y)
    with pytest.raises(ValueError, match="Registered heads"):
        HeadClassifier(head="nope").fit(x, y)
    with pytest.raises(ValueError, match="1 class"):
        HeadClassifier().fit(x, np.zeros(30))
