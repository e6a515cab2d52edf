"""``polyheads.evaluate``: the columns of seed 000 Tables 1-4 for one model, in one call.

Signature (stable; ``tools/evaluate.py`` relies on it)::

    evaluate(model, loader, val_loader=None, *, device="cpu", open_set=False, retrieval=True,
             metric=None, retrieval_samples=None, n_bins=15, strategy="quantile", norm="l1",
             working_memory=None, print_table=False, progress=False, seed=0) -> dict

Example::

    import polyheads, timm
    model = timm.create_model("convnet_mnist", num_classes=10, head="cosine")
    ...  # train
    results = polyheads.evaluate(model, test_loader, val_loader, print_table=True)
    results["ece"], results["map_at_r"]
"""
from __future__ import annotations

import math
from typing import Any, Iterable

import torch
from torch import nn

from .heads.base import Head
from .metrics.calibration import confidence_auroc, expected_calibration_error, fit_temperature
from .metrics.retrieval import METRICS, retrieval_scores
from .timm import get_head, pre_logits

__all__ = ["evaluate", "RESULT_KEYS"]

#: every key of the dict :func:`evaluate` returns (a value is ``None`` where it does not apply)
RESULT_KEYS = (
    "num_samples",
    "open_set",
    "accuracy",
    "nll",
    "ece",
    "temperature",
    "ece_temperature_scaled",
    "confidence_auroc",
    "retrieval_metric",
    "map_at_r",
    "r_precision",
    "precision_at_1",
    "map_at_r_cosine",
    "retrieval_samples",
)


def _curvature(head: nn.Module) -> float | None:
    """The Poincaré head's curvature c (``head.c``, ``head.curvature`` or ``head.manifold.c``)."""
    for owner, name in ((head, "c"), (head, "curvature"), (getattr(head, "manifold", None), "c"), (getattr(head, "ball", None), "c")):
        value = getattr(owner, name, None) if owner is not None else None
        if value is None:
            continue
        if callable(value) and not isinstance(value, torch.Tensor):
            value = value()
        try:
            return float(value)
        except (TypeError, ValueError):
            continue
    return None


def _retrieval_metric(head: Head, metric: Any) -> tuple[Any, float, str]:
    """(metric for retrieval_scores, curvature, display name) -- the geometry's own metric by default."""
    name = metric if metric is not None else getattr(head, "retrieval_metric", "euclidean")
    if callable(name):
        return name, 1.0, getattr(name, "__name__", "callable")
    if name == "poincare":
        c = _curvature(head)
        if c is not None:
            return "poincare", c, f"poincare (c={c:g})"
        return head.distance, 1.0, "poincare (head.distance)"
    if name in METRICS:
        return name, 1.0, name
    return head.distance, 1.0, f"{name} (head.distance)"


@torch.no_grad()
def _collect(
    model: nn.Module,
    head: Head,
    loader: Iterable[Any],
    device: torch.device,
    *,
    classify: bool,
    embed: bool,
    retrieval_samples: int,
    progress: bool,
    desc: str,
) -> dict[str, Any]:
    batches: Iterable[Any] = loader
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(loader, desc=desc, leave=False)
    logits, confidence, labels, embeddings = [], [], [], []
    for batch in batches:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise TypeError(f"the loader must yield (inputs, labels) pairs, got {type(batch).__name__}")
        inputs, target = batch[0], batch[1]
        inputs = inputs.to(device)
        feats = inputs if model is head else pre_logits(model, inputs)
        labels.append(torch.as_tensor(target).reshape(-1).cpu())
        if classify:
            logits.append(head(feats).double().cpu())
            confidence.append(head.confidence(feats).double().cpu())
        if embed:
            if retrieval_samples:
                embeddings.append(_sampler(head)(feats, retrieval_samples).float())
            else:
                embeddings.append(head.embed(feats).float())
    if not labels:
        raise ValueError("the loader yielded no batches")
    out: dict[str, Any] = {"labels": torch.cat(labels)}
    if classify:
        out["logits"] = torch.cat(logits)
        out["confidence"] = torch.cat(confidence)
    if embed:
        out["embeddings"] = torch.cat(embeddings, dim=1 if retrieval_samples else 0)
    return out


def _sampler(head: nn.Module) -> Any:
    """The head's embedding sampler ``f(features, S) -> [S, B, dim]``: ``sample_embeddings`` or
    ``sample`` (the vMF head's), or ``None``."""
    for name in ("sample_embeddings", "sample"):
        fn = getattr(head, name, None)
        if callable(fn):
            return fn
    return None


def _check_closed_set_labels(labels: torch.Tensor, num_classes: int, what: str) -> torch.Tensor:
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"{what} labels must be integer class indices, got dtype {labels.dtype}")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(
            f"{what} labels lie in [{lo}, {hi}] but the head has {num_classes} classes: for test classes "
            "disjoint from the training classes pass open_set=True (then only retrieval metrics apply)"
        )
    return labels.long()


def evaluate(
    model: nn.Module,
    loader: Iterable[Any],
    val_loader: Iterable[Any] | None = None,
    *,
    device: str | torch.device = "cpu",
    open_set: bool = False,
    retrieval: bool = True,
    metric: Any = None,
    retrieval_samples: int | None = None,
    n_bins: int = 15,
    strategy: str = "quantile",
    norm: str = "l1",
    working_memory: int | None = None,
    print_table: bool = False,
    progress: bool = False,
    seed: int | None = 0,
) -> dict[str, Any]:
    """Evaluate one model the way seed 000 does (Tables 1-4): a dict of metrics, fractions in [0, 1].

    Args:
        model: a timm model with a polyheads head (``timm.create_model(..., head="cosine")``; its
            first head is evaluated on the pre-logit features ``forward_head(forward_features(x),
            pre_logits=True)``), or a bare head (``polyheads.create_head(...)``), in which case the
            loaders yield pre-extracted features.
        loader: the test data, an iterable of ``(inputs, labels)`` batches.
        val_loader: validation data for temperature scaling (closed set only). Without it,
            ``temperature`` and ``ece_temperature_scaled`` are ``None`` (fitting T on the test set
            would flatter the result).
        device: where the model runs; embeddings stay there for the neighbour search (a CUDA device
            searches on the GPU).
        open_set: ``True`` when the test classes are disjoint from the training classes (seed 000
            §3.2, seed 001's open-set protocol): labels are then arbitrary class ids, only retrieval
            metrics apply and the classification keys are ``None``. With ``False`` (closed set) labels
            must be indices into the head's classes; an out-of-range label raises ``ValueError``
            pointing here.
        retrieval: compute mAP@R / R-precision / P@1 (queries = the whole test set, each query
            excluded from its own results). Default ``True``; the search costs O(N² · dim).
        metric: retrieval metric; ``None`` -> the head's ``retrieval_metric`` (``"euclidean"`` for
            STANDARD, ``"cosine"`` for the spherical heads, ``"poincare"`` with the head's curvature
            ``c`` for the hyperbolic head; any other name uses ``head.distance``). A callable
            ``f(x, y) -> distances`` is accepted too.
        retrieval_samples: for stochastic heads (``head.stochastic``) with an embedding sampler
            ``head.sample_embeddings(features, S)`` or ``head.sample(features, S)`` (the vMF head's)
            returning [S, B, dim], retrieval is the expectation over S sampled embedding sets
            (seed 000 §3.2: E_z[mAP@R(z_1:N, y_1:N)]); ``None`` -> 10 for such heads, 0 otherwise
            (0 = the deterministic ``embed()``, for vMF the mean direction).
        n_bins, strategy, norm: ECE settings (:func:`polyheads.metrics.expected_calibration_error`;
            15 equal-mass bins as seed 000 Table 3).
        working_memory: MiB per distance chunk of the neighbour search (default 256).
        print_table: print the results as the paper's columns (percentages).
        progress: tqdm progress bars over the loaders.
        seed: seeds torch's generators for the evaluation (stochastic heads' Monte-Carlo predictions
            and embedding samples) without touching the caller's random state; ``None`` leaves the
            global generators as they are.

    Returns:
        A dict with every key of :data:`RESULT_KEYS`:
        ``num_samples``, ``open_set``; ``accuracy`` (Table 2), ``nll``, ``ece`` (Table 3 left),
        ``temperature`` and ``ece_temperature_scaled`` (Table 3 right), ``confidence_auroc`` (Table 1:
        AUROC of ``head.confidence()`` -- ‖z‖, κ_z -- for correct vs incorrect predictions; NaN when
        every prediction is right, or every one wrong);
        ``retrieval_metric``, ``map_at_r``, ``r_precision``, ``precision_at_1`` (Table 4, the
        geometry's own metric) and ``map_at_r_cosine`` ("+ cosine at test"; equal to ``map_at_r`` for
        cosine-metric heads); ``retrieval_samples`` (S used, 0 = deterministic). Keys that do not
        apply are ``None``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module (a timm model with a polyheads head, or a head), got {type(model).__name__}")
    head = model if isinstance(model, Head) else get_head(model)
    device = torch.device(device)
    stochastic = bool(getattr(head, "stochastic", False))
    if retrieval_samples is None:
        retrieval_samples = 10 if stochastic and _sampler(head) is not None else 0
    if isinstance(retrieval_samples, bool) or not isinstance(retrieval_samples, int) or retrieval_samples < 0:
        raise ValueError(f"retrieval_samples must be an integer >= 0, got {retrieval_samples!r}")
    if retrieval_samples and _sampler(head) is None:
        raise ValueError(
            f"retrieval_samples={retrieval_samples} needs a head with sample_embeddings(features, S) or sample(features, S); "
            f"{type(head).__name__} has none (use retrieval_samples=0 for its deterministic embed())"
        )
    if open_set and not retrieval:
        raise ValueError("open_set=True leaves only retrieval metrics: retrieval=False would compute nothing")

    results: dict[str, Any] = {key: None for key in RESULT_KEYS}
    results["open_set"] = bool(open_set)
    was_training = model.training
    model.eval()
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        try:
            _evaluate_into(results, model, head, loader, val_loader, device, open_set, retrieval, metric,
                           retrieval_samples, n_bins, strategy, norm, working_memory, progress)
        finally:
            model.train(was_training)
    if print_table:
        print(format_results(results, head))
    return results


def _evaluate_into(
    results: dict[str, Any],
    model: nn.Module,
    head: Head,
    loader: Iterable[Any],
    val_loader: Iterable[Any] | None,
    device: torch.device,
    open_set: bool,
    retrieval: bool,
    metric: Any,
    retrieval_samples: int,
    n_bins: int,
    strategy: str,
    norm: str,
    working_memory: int | None,
    progress: bool,
) -> None:
    data = _collect(model, head, loader, device, classify=not open_set, embed=retrieval,
                    retrieval_samples=retrieval_samples, progress=progress, desc="evaluate")
    labels = data["labels"]
    results["num_samples"] = int(labels.numel())
    if not open_set:
        y = _check_closed_set_labels(labels, head.num_classes, "test")
        logits = data["logits"]
        prob = torch.softmax(logits, dim=1)
        results["accuracy"] = float((logits.argmax(dim=1) == y).double().mean())
        results["nll"] = float(torch.nn.functional.cross_entropy(logits, y))
        results["ece"] = expected_calibration_error(y.numpy(), prob.numpy(), n_bins, strategy, norm)
        try:
            results["confidence_auroc"] = confidence_auroc(y.numpy(), prob.numpy(), data["confidence"].numpy())
        except ValueError:  # every prediction right (or wrong): AUROC undefined
            results["confidence_auroc"] = math.nan
        if val_loader is not None:
            val = _collect(model, head, val_loader, device, classify=True, embed=False,
                           retrieval_samples=0, progress=progress, desc="validation")
            yv = _check_closed_set_labels(val["labels"], head.num_classes, "validation")
            t = fit_temperature(val["logits"].numpy(), yv.numpy())
            scaled = torch.softmax(logits / t, dim=1)
            results["temperature"] = t
            results["ece_temperature_scaled"] = expected_calibration_error(y.numpy(), scaled.numpy(), n_bins, strategy, norm)
    if retrieval:
        emb = data["embeddings"]
        m, c, shown = _retrieval_metric(head, metric)
        scores = retrieval_scores(emb, labels.to(emb.device), m, c=c, working_memory=working_memory)
        results.update(scores)
        results["retrieval_metric"] = shown
        results["retrieval_samples"] = retrieval_samples
        if m == "cosine":
            results["map_at_r_cosine"] = scores["map_at_r"]
        else:
            results["map_at_r_cosine"] = retrieval_scores(emb, labels.to(emb.device), "cosine", working_memory=working_memory)["map_at_r"]


def format_results(results: dict[str, Any], head: nn.Module | None = None) -> str:
    """The results as a small table in the paper's units (percent; AUROC as a fraction)."""
    def pct(v: Any) -> str:
        return "n/a" if v is None else f"{100.0 * v:6.2f} %"

    name = "model" if head is None else (getattr(head, "head_name", "") or type(head).__name__)
    setting = "open set" if results.get("open_set") else "closed set"
    rows = [f"polyheads.evaluate: {name} head, {results.get('num_samples')} samples ({setting})"]
    if not results.get("open_set"):
        t = results.get("temperature")
        auroc = results.get("confidence_auroc")
        rows += [
            f"  {'accuracy (Table 2)':<40}{pct(results.get('accuracy'))}",
            f"  {'ECE (Table 3)':<40}{pct(results.get('ece'))}",
            f"  {'ECE after temperature scaling':<40}{pct(results.get('ece_temperature_scaled'))}"
            + ("" if t is None else f"  (T = {t:.4g})"),
            f"  {'AUROC of confidence() (Table 1)':<40}{'n/a' if auroc is None else f'{auroc:6.4f}'}",
        ]
    if results.get("map_at_r") is not None:
        if results.get("retrieval_samples"):
            rows.append(f"  retrieval: mean over {results['retrieval_samples']} sampled embedding sets (seed 000 §3.2)")
        rows += [
            f"  {'mAP@R, ' + str(results.get('retrieval_metric')) + ' (Table 4)':<40}{pct(results.get('map_at_r'))}",
            f"  {'mAP@R, + cosine at test':<40}{pct(results.get('map_at_r_cosine'))}",
            f"  {'R-precision':<40}{pct(results.get('r_precision'))}",
            f"  {'precision@1':<40}{pct(results.get('precision_at_1'))}",
        ]
    return "\n".join(rows)
