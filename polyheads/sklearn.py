"""A scikit-learn estimator that fits any polyheads head on feature arrays (a linear probe with a
geometry): ``HeadClassifier(head="cosine")`` in a ``Pipeline``, ``GridSearchCV`` or
``cross_val_score``.

The model is the seed-000 head shape: a learnable embedding layer ``n_features -> dim``, then the
geometry's classifier ``dim -> n_classes`` (shared/DESIGN.md), trained with the head's own objective
(``head.loss``: cross-entropy, margins, the vMF bound, ...) by Adam on mini-batches, in float64 on
the CPU (or on ``device``). Features are used as given: put a ``StandardScaler`` in front for
features of very different scales, as for any linear model.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from .registry import create_head, get_head_class

__all__ = ["HeadClassifier"]

_PREDICT_CHUNK = 8192


class HeadClassifier(ClassifierMixin, TransformerMixin, BaseEstimator):
    """Fit a polyheads head (embedding layer + geometry classifier) on pre-extracted features.

    Args:
        head: a registered head name (``polyheads.list_heads()``): ``"cosine"``, ``"standard"``,
            ``"arcface"``, ``"vmf"``, ``"poincare"``, ...
        dim: embedding width; ``None`` -> ``min(n_features, 512)`` (fixed polytope heads derive it
            from the class count and take ``None``).
        epochs: passes over the training data.
        lr: Adam learning rate (every parameter group of the head, temperature included).
        batch_size: mini-batch size (the whole set when it is smaller).
        random_state: seed for the head's initialisation and the batch order (``None``: random).
        device: torch device the head is trained and evaluated on (``"cpu"``, ``"cuda"``).
        head_kwargs: extra keyword arguments for the head (``{"margin": 0.3}``, ``{"c": 0.1}``, ...).

    Attributes:
        classes_: the class labels (any type, sorted), ``n_features_in_``, ``head_`` (the fitted
        ``nn.Module``, float64), ``loss_curve_`` (mean training loss per epoch), ``n_iter_`` (epochs run).

    ``transform(X)`` returns the embeddings z̃ (for retrieval: ``polyheads.metrics.map_at_r``).

    Example:
        >>> from sklearn.datasets import load_iris
        >>> X, y = load_iris(return_X_y=True)
        >>> clf = HeadClassifier("cosine", epochs=100, random_state=0).fit(X, y)
        >>> clf.score(X, y) > 0.9
        True
    """

    def __init__(
        self,
        head: str = "cosine",
        dim: int | None = None,
        epochs: int = 30,
        lr: float = 0.02,
        batch_size: int = 64,
        random_state: int | None = None,
        device: str = "cpu",
        head_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.head = head
        self.dim = dim
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.random_state = random_state
        self.device = device
        self.head_kwargs = head_kwargs

    # ------------------------------------------------------------------ scikit-learn plumbing
    def _head_is_stochastic(self) -> bool:
        try:
            return bool(getattr(get_head_class(self.head), "stochastic", False))
        except (ValueError, TypeError):
            return False

    def __sklearn_tags__(self):  # type: ignore[no-untyped-def]
        from sklearn.utils import TransformerTags

        tags = super().__sklearn_tags__()
        tags.transformer_tags = TransformerTags(preserves_dtype=["float64"])
        tags.non_deterministic = self._head_is_stochastic()
        return tags

    def _check_params(self) -> None:
        if not isinstance(self.epochs, (int, np.integer)) or isinstance(self.epochs, bool) or self.epochs < 1:
            raise ValueError(f"epochs must be an integer >= 1, got {self.epochs!r}")
        if not isinstance(self.batch_size, (int, np.integer)) or isinstance(self.batch_size, bool) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float, np.floating)) or not self.lr > 0:
            raise ValueError(f"lr must be a number > 0, got {self.lr!r}")
        if self.head_kwargs is not None and not isinstance(self.head_kwargs, dict):
            raise TypeError(f"head_kwargs must be a dict or None, got {type(self.head_kwargs).__name__}")

    def _tensor(self, X: np.ndarray) -> torch.Tensor:
        X = np.array(X, dtype=np.float64, order="C", copy=not (X.dtype == np.float64 and X.flags.writeable and X.flags.c_contiguous))
        return torch.from_numpy(X).to(self.device)

    # ------------------------------------------------------------------ fit
    def fit(self, X: Any, y: Any) -> "HeadClassifier":
        """Train a fresh head on features ``X`` [n_samples, n_features] and labels ``y`` [n_samples]."""
        self._check_params()
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32])
        check_classification_targets(y)
        self.classes_, y_enc = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(
                f"HeadClassifier needs at least 2 classes in y; got 1 class ({self.classes_[0]!r})"
            )
        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        device = torch.device(self.device)
        xt = self._tensor(X)
        yt = torch.as_tensor(y_enc.reshape(-1), dtype=torch.long, device=device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            head = create_head(self.head, X.shape[1], len(self.classes_), dim=self.dim, **(self.head_kwargs or {}))
        head = head.to(device=device, dtype=torch.float64)
        head.init_from_data(xt)
        optimizer = self._optimizer(head)
        gen = torch.Generator(device="cpu").manual_seed(seed)
        n = xt.shape[0]
        bs = min(int(self.batch_size), n)
        curve = []
        head.train()
        for epoch in range(int(self.epochs)):
            head.on_epoch_start(epoch)
            order = torch.randperm(n, generator=gen).to(device)
            total = 0.0
            for s in range(0, n, bs):
                idx = order[s : s + bs]
                loss = head.loss(xt[idx], yt[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(idx)
            curve.append(total / n)
        head.eval()
        self.head_ = head
        self.loss_curve_ = curve
        self.n_iter_ = int(self.epochs)
        return self

    def _optimizer(self, head: torch.nn.Module) -> torch.optim.Optimizer:
        groups = head.param_groups()
        manifold = any(type(p).__name__ == "ManifoldParameter" for g in groups for p in g["params"])
        if manifold:  # the Poincaré head's offsets live on the ball: geoopt's Riemannian Adam
            import geoopt

            return geoopt.optim.RiemannianAdam(groups, lr=float(self.lr))
        return torch.optim.Adam(groups, lr=float(self.lr))

    # ------------------------------------------------------------------ inference
    def _validate(self, X: Any) -> torch.Tensor:
        check_is_fitted(self, "head_")
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        return self._tensor(X)

    def _logits(self, X: Any) -> torch.Tensor:
        xt = self._validate(X)
        self.head_.eval()
        with torch.no_grad():
            return torch.cat([self.head_(xt[s : s + _PREDICT_CHUNK]) for s in range(0, xt.shape[0], _PREDICT_CHUNK)])

    def decision_function(self, X: Any) -> np.ndarray:
        """Class logits [n_samples, n_classes] (binary: ``logit_1 - logit_0``, [n_samples]); for
        stochastic heads, the log predictive probabilities."""
        z = self._logits(X).cpu().numpy()
        return z[:, 1] - z[:, 0] if z.shape[1] == 2 else z

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities [n_samples, n_classes] (softmax of the head's logits), columns in ``classes_`` order."""
        return torch.softmax(self._logits(X), dim=1).cpu().numpy()

    def predict_log_proba(self, X: Any) -> np.ndarray:
        return torch.log_softmax(self._logits(X), dim=1).cpu().numpy()

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class of every row, as labels from ``classes_``."""
        best = self._logits(X).argmax(dim=1).cpu().numpy()
        return self.classes_[best]

    def transform(self, X: Any) -> np.ndarray:
        """The embeddings z̃ [n_samples, dim] of the fitted head (``head.embed``)."""
        xt = self._validate(X)
        with torch.no_grad():
            return torch.cat([self.head_.embed(xt[s : s + _PREDICT_CHUNK]) for s in range(0, xt.shape[0], _PREDICT_CHUNK)]).cpu().numpy()
