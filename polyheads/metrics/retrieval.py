"""Open-set retrieval metrics: mAP@R, R-precision, precision@1 (seed 000 §3.2, Table 4).

Definitions (identical to pytorch-metric-learning's ``AccuracyCalculator``, Musgrave et al. 2020,
seed 000 ref. [39]). For a query q with label y_q, let R_q be the number of references of class y_q
other than q itself, and rel_q(i) = 1 if its i-th nearest reference has label y_q:

    P@1        = rel_q(1)
    R-precision = (1/R_q) * sum_{i<=R_q} rel_q(i)
    mAP@R      = (1/R_q) * sum_{i<=R_q} rel_q(i) * P_q(i),   P_q(i) = (1/i) * sum_{j<=i} rel_q(j)

averaged over the queries with R_q >= 1 (queries whose class has no other reference are left out,
as pytorch-metric-learning does). ``average="class"`` averages per class first (its
``avg_of_avgs``).

Neighbours are exact: a k-nearest-neighbour search in torch with k = max_q R_q, in the embeddings'
own device (CUDA tensors stay on the GPU) and precision (float64 stays float64; fp16/bf16 are
widened to float32). Ties are broken deterministically: references are ranked by (distance,
reference index), so among equidistant references the one with the smaller index comes first.

Memory is bounded by ``working_memory`` (MiB, default 256): distances are computed in chunks of at
most that size and never as a full N x N matrix. The temporaries around a chunk (top-k lists, the
stable re-sort of tied rows, candidate lists) stay within about 1-2 x working_memory, 4 x in the worst
case (every entry of a block a candidate); add one prepared copy of the embeddings (N x d, e.g.
normalised for cosine) and the neighbour lists (N x k x 12 bytes in the symmetric search). Measured at
N = 60 000, d = 512, 11 000 classes: +202 MiB in total (bench/bench_retrieval.py).

When queries are the references (the default) and the metric is a built-in one, the search visits
each pair once: the distance block (i, j) serves the queries of block i *and*, transposed, those of
block j -- half the matrix products of a row-by-row search -- and a running k-th-distance threshold
per query lets only the few references that can still enter a query's list through.

Stochastic embeddings [S, N, d] (S samples of every embedding, e.g. vMF, seed 000 §3.2): the metric
is computed on each sample and averaged -- E_z[mAP@R(z_1:N, y_1:N)].
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterator, Union

import numpy as np
import torch
from sklearn.utils import check_array

from .._checks import check_choice, check_float, check_int
from ._validation import to_numpy

__all__ = ["map_at_r", "r_precision", "precision_at_1", "retrieval_scores", "nearest_neighbors", "METRICS"]

METRICS = ("cosine", "euclidean", "poincare")
Metric = Union[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]

DEFAULT_WORKING_MEMORY_MIB = 256
_SYM_BLOCK = 2048  # rows per block of the symmetric search (a 16 MiB float32 block)


# ---------------------------------------------------------------------------------------------
# input handling
# ---------------------------------------------------------------------------------------------
def _as_embeddings(x: Any, name: str) -> torch.Tensor:
    """[N, d] or [S, N, d] floating tensor (numpy/lists converted; fp16/bf16 widened), finite."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
        if not (t.is_floating_point()):
            t = t.float()
    else:
        arr = check_array(x, ensure_2d=False, allow_nd=True, dtype="numeric", input_name=name)
        t = torch.from_numpy(np.ascontiguousarray(arr))
        if t.dtype != torch.float64:
            t = t.float()
    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.float()
    if t.ndim not in (2, 3):
        raise ValueError(f"{name} must be [n_samples, dim] or stochastic samples [S, n_samples, dim], got shape {list(t.shape)}")
    if t.shape[-1] == 0 or t.shape[-2] == 0 or (t.ndim == 3 and t.shape[0] == 0):
        raise ValueError(f"{name} is empty (shape {list(t.shape)})")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or inf")
    return t


def _label_codes(labels: Any, reference_labels: Any | None, n: int, n_ref: int | None) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """Integer class codes (shared between queries and references) for labels of any type."""
    def as_array(v: Any, name: str, length: int) -> Any:
        if isinstance(v, torch.Tensor):
            if v.ndim != 1:
                raise ValueError(f"{name} must be 1-D, got shape {list(v.shape)}")
            if v.is_floating_point() and not bool(torch.isfinite(v).all()):
                raise ValueError(f"{name} contains NaN or inf")
        else:
            v = np.asarray(v)
            if v.ndim != 1:
                raise ValueError(f"{name} must be 1-D, got shape {v.shape}")
            if v.dtype.kind == "f" and not np.all(np.isfinite(v)):
                raise ValueError(f"{name} contains NaN or inf")
        if len(v) != length:
            raise ValueError(f"{name} has {len(v)} entries but the embeddings have {length} rows")
        return v

    labels = as_array(labels, "labels", n)
    if reference_labels is not None:
        reference_labels = as_array(reference_labels, "reference_labels", n_ref)
    both_tensors = isinstance(labels, torch.Tensor) and (reference_labels is None or isinstance(reference_labels, torch.Tensor))
    if both_tensors:
        allv = labels if reference_labels is None else torch.cat([labels, reference_labels.to(labels.device)])
        uniq, inv = torch.unique(allv, return_inverse=True)
        n_classes = len(uniq)
    else:
        a = to_numpy(labels)
        allv = a if reference_labels is None else np.concatenate([a, to_numpy(reference_labels)])
        uniq, inv_np = np.unique(allv, return_inverse=True)
        inv = torch.from_numpy(inv_np.reshape(-1).astype(np.int64))
        n_classes = len(uniq)
    inv = inv.long()
    if reference_labels is None:
        return inv, None, n_classes
    return inv[:n], inv[n:], n_classes


# ---------------------------------------------------------------------------------------------
# metrics as ranking keys (smaller = closer), computed block-wise
# ---------------------------------------------------------------------------------------------
class _Key:
    """A metric as a ranking key: per-point statistics prepared once, then blocks of keys by one
    matrix product. The key is a monotone transform of the distance for every query (that is all
    ranking needs) and is symmetric for the built-in metrics."""

    symmetric = True

    def __init__(self, metric: Metric, c: float) -> None:
        self.metric = metric
        self.c = c

    def prepare(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.metric == "cosine":
            return (torch.nn.functional.normalize(x, dim=1),)
        sq = (x * x).sum(dim=1)
        if self.metric == "euclidean":
            return (x, sq)
        # Poincaré ball: d(x, y) = arcosh(1 + 2c‖x−y‖² / ((1−c‖x‖²)(1−c‖y‖²))) / √c; the argument of
        # arcosh is monotone in ‖x−y‖²/((1−c‖x‖²)(1−c‖y‖²)). The conformal factors are computed in
        # float64 (1 − c‖x‖² cancels near the boundary).
        den = 1.0 - self.c * (x.double() * x.double()).sum(dim=1)
        return (x, sq, (1.0 / den).to(x.dtype))

    def block(self, a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> torch.Tensor:
        if self.metric == "cosine":
            return torch.mm(a[0], b[0].t()).neg_()  # -cos: smaller is closer
        key = torch.mm(a[0], b[0].t()).mul_(-2.0).add_(a[1][:, None]).add_(b[1][None, :])  # ‖x−y‖²
        if self.metric == "poincare":
            key.clamp_(min=0.0).mul_(a[2][:, None]).mul_(b[2][None, :])
        return key


class _CallableKey(_Key):
    """A user metric ``f(x [n, d], y [m, d]) -> distances [n, m]`` (smaller = closer)."""

    symmetric = False

    def prepare(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (x,)

    def block(self, a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> torch.Tensor:
        out = self.metric(a[0], b[0])
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (a[0].shape[0], b[0].shape[0]):
            got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"metric callable must return a tensor [{a[0].shape[0]}, {b[0].shape[0]}] of distances, got {got}")
        out = out.to(device=a[0].device)
        if not out.is_floating_point():
            out = out.to(a[0].dtype)
        if not bool(torch.isfinite(out).all()):
            raise ValueError("metric callable returned NaN or inf distances")
        return out


def _make_key(metric: Metric, c: float) -> _Key:
    if callable(metric):
        return _CallableKey(metric, c)
    check_choice("metric", metric, METRICS)
    return _Key(metric, c)


def _check_poincare(x: torch.Tensor, c: float, name: str) -> None:
    radius2 = 1.0 / c
    sq = (x.double() ** 2).sum(dim=-1)
    worst = float(sq.max())
    if worst >= radius2:
        raise ValueError(
            f"{name} must lie inside the Poincaré ball of curvature c={c:g} (norm < 1/sqrt(c) = {math.sqrt(radius2):.6g}), "
            f"got a point of norm {math.sqrt(worst):.6g}; pass the head's embed() output (points in the ball)"
        )


# ---------------------------------------------------------------------------------------------
# exact k-NN under the total order (key, index)
# ---------------------------------------------------------------------------------------------
def _order_by_key_then_index(vals: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort every row by (value, index): by index first, then stably by value."""
    o = torch.argsort(idx, dim=1)
    vals, idx = torch.gather(vals, 1, o), torch.gather(idx, 1, o)
    o = torch.sort(vals, dim=1, stable=True).indices
    return torch.gather(vals, 1, o), torch.gather(idx, 1, o)


def _exact_topk(key: torch.Tensor, k: int, col_offset: int = 0, rows_per_sort: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The k smallest entries of every row of ``key`` under the order (value, column), sorted.

    ``topk`` picks an arbitrary subset among values tied with the k-th; rows where the (k+1)-th value
    equals the k-th are therefore redone with a stable full sort (rare for real-valued embeddings).
    """
    n_cols = key.shape[1]
    kk = min(k + 1, n_cols)
    vals, idx = torch.topk(key, kk, dim=1, largest=False, sorted=True)
    if kk == k + 1:
        tied = torch.nonzero(vals[:, k] == vals[:, k - 1]).flatten()
        if tied.numel():
            step = rows_per_sort or tied.numel()
            for s in range(0, tied.numel(), step):
                rows = tied[s : s + step]
                sv, si = torch.sort(key[rows], dim=1, stable=True)
                vals[rows], idx[rows] = sv[:, :kk], si[:, :kk]
        vals, idx = vals[:, :k], idx[:, :k]
    vals, idx = _order_by_key_then_index(vals, idx)
    return vals, idx + col_offset


def _merge_candidates(
    run_val: torch.Tensor, run_idx: torch.Tensor, rows: torch.Tensor, vals: torch.Tensor, idx: torch.Tensor, sentinel: int
) -> None:
    """Merge candidate (row, value, index) triples into the per-row sorted top-k lists, in place."""
    if rows.numel() == 0:
        return
    k = run_val.shape[1]
    order = torch.argsort(rows, stable=True)
    rows, vals, idx = rows[order], vals[order], idx[order]
    uniq, counts = torch.unique_consecutive(rows, return_counts=True)
    u, m = uniq.numel(), int(counts.max())
    seg = torch.repeat_interleave(torch.arange(u, device=rows.device), counts)
    starts = torch.cumsum(counts, 0) - counts
    pos = torch.arange(rows.numel(), device=rows.device) - torch.repeat_interleave(starts, counts)
    cand_val = torch.full((u, m), math.inf, dtype=run_val.dtype, device=run_val.device)
    cand_idx = torch.full((u, m), sentinel, dtype=torch.long, device=run_val.device)
    cand_val[seg, pos] = vals
    cand_idx[seg, pos] = idx
    all_val = torch.cat([run_val[uniq], cand_val], dim=1)
    all_idx = torch.cat([run_idx[uniq], cand_idx], dim=1)
    all_val, all_idx = _order_by_key_then_index(all_val, all_idx)
    run_val[uniq] = all_val[:, :k]
    run_idx[uniq] = all_idx[:, :k]


def _block_bounds(n: int, block: int) -> list[tuple[int, int]]:
    """Near-equal blocks of at most ``block`` rows (no small remainder block)."""
    n_blocks = max(1, math.ceil(n / block))
    edges = np.linspace(0, n, n_blocks + 1).round().astype(int)
    return [(int(edges[i]), int(edges[i + 1])) for i in range(n_blocks)]


def _symmetric_knn(x: tuple[torch.Tensor, ...], n: int, k: int, key: _Key, exclude_self: bool, block: int) -> torch.Tensor:
    """k-NN of every point among all points (queries = references), visiting each pair once."""
    bounds = _block_bounds(n, block)
    device, dtype = x[0].device, x[0].dtype
    run_val = torch.empty((n, k), dtype=dtype, device=device)
    run_idx = torch.empty((n, k), dtype=torch.long, device=device)
    parts = [tuple(t[s:e] for t in x) for s, e in bounds]
    # 1) diagonal blocks: exact top-k of every row within its own block (fills the lists)
    for (s, e), p in zip(bounds, parts):
        kb = key.block(p, p)
        if exclude_self:
            kb.fill_diagonal_(math.inf)
        run_val[s:e], run_idx[s:e] = _exact_topk(kb, k, s)
    # 2) off-diagonal blocks: only entries <= a row's current k-th value can enter its list
    for i, (si, ei) in enumerate(bounds):
        for j in range(i + 1, len(bounds)):
            sj, ej = bounds[j]
            kb = key.block(parts[i], parts[j])
            thr_i = run_val[si:ei, k - 1]
            thr_j = run_val[sj:ej, k - 1]
            r, cc = torch.nonzero(kb <= thr_i[:, None], as_tuple=True)
            r2, c2 = torch.nonzero(kb <= thr_j[None, :], as_tuple=True)
            rows = torch.cat([r + si, c2 + sj])
            vals = torch.cat([kb[r, cc], kb[r2, c2]])
            idx = torch.cat([cc + sj, r2 + si])
            _merge_candidates(run_val, run_idx, rows, vals, idx, sentinel=n)
    return run_idx


def _row_knn_chunks(
    q: tuple[torch.Tensor, ...],
    ref: tuple[torch.Tensor, ...],
    k: int,
    key: _Key,
    exclude_self: bool,
    rows_per_chunk: int,
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """k-NN of query chunks against all references: yields (start, end, neighbour indices [end-start, k])."""
    n_q = q[0].shape[0]
    for s in range(0, n_q, rows_per_chunk):
        e = min(s + rows_per_chunk, n_q)
        kb = key.block(tuple(t[s:e] for t in q), ref)
        if exclude_self:
            kb = kb.contiguous()
            r = torch.arange(e - s, device=kb.device)
            kb[r, r + s] = math.inf
        _, idx = _exact_topk(kb, k, rows_per_sort=max(1, (e - s) // 3))
        yield s, e, idx


def _plan(n_q: int, n_ref: int, k: int, dtype: torch.dtype, working_memory: int, symmetric_ok: bool) -> tuple[str, int]:
    """Choose the search: ("symmetric", block rows) or ("rows", rows per chunk)."""
    itemsize = torch.finfo(dtype).bits // 8
    budget = working_memory * 2**20
    if symmetric_ok:
        block = min(_SYM_BLOCK, max(64, int(math.isqrt(budget // (4 * itemsize)))))
        smallest = min(e - s for s, e in _block_bounds(n_q, block))
        lists = n_q * k * (itemsize + 8)
        if n_q > block and 4 * k <= smallest and lists <= budget:
            return "symmetric", block
    # a chunk holds its keys [rows, n_ref] and, per row, about 40 bytes per neighbour (top-k values and
    # indices, their re-ordering, the relevance and precision arrays of the scores)
    rows = max(1, budget // (n_ref * itemsize + 40 * (k + 1)))
    return "rows", int(min(rows, n_q))


# ---------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------
def _resolve(
    embeddings: Any,
    reference_embeddings: Any | None,
    metric: Metric,
    c: float,
) -> tuple[torch.Tensor, torch.Tensor | None, _Key]:
    if not callable(metric):
        check_choice("metric", metric, METRICS)
    c = check_float("c", c, minimum=0.0, min_inclusive=False)
    q = _as_embeddings(embeddings, "embeddings")
    ref = None
    if reference_embeddings is not None:
        ref = _as_embeddings(reference_embeddings, "reference_embeddings")
        if ref.ndim != q.ndim or ref.shape[-1] != q.shape[-1] or (q.ndim == 3 and ref.shape[0] != q.shape[0]):
            raise ValueError(
                f"reference_embeddings {list(ref.shape)} must match embeddings {list(q.shape)} in dim (and samples S)"
            )
        ref = ref.to(device=q.device, dtype=q.dtype)
    if metric == "poincare":
        _check_poincare(q, c, "embeddings")
        if ref is not None:
            _check_poincare(ref, c, "reference_embeddings")
    return q, ref, _make_key(metric, c)


def nearest_neighbors(
    embeddings: Any,
    k: int,
    metric: Metric = "cosine",
    *,
    reference_embeddings: Any | None = None,
    exclude_self: bool | None = None,
    c: float = 1.0,
    working_memory: int | None = None,
) -> torch.Tensor:
    """Exact k nearest references of every query, as indices [N, k] sorted nearest first.

    Ties are broken by reference index (smaller first). ``reference_embeddings=None`` searches the
    queries themselves, excluding each query's own index unless ``exclude_self=False``.
    Memory: chunks of at most ``working_memory`` MiB (default 256), plus the [N, k] result.
    """
    q, ref, key = _resolve(embeddings, reference_embeddings, metric, c)
    if q.ndim != 2:
        raise ValueError(f"nearest_neighbors takes embeddings [N, dim], got shape {list(q.shape)}")
    self_search = ref is None
    exclude = self_search if exclude_self is None else bool(exclude_self)
    if exclude and not self_search:
        raise ValueError("exclude_self=True needs reference_embeddings=None (queries are the references)")
    n_ref = q.shape[0] if self_search else ref.shape[0]
    k = check_int("k", k, minimum=1, maximum=n_ref - int(exclude))
    with torch.no_grad():
        return _knn_all(q, ref, k, key, exclude, _working_memory(working_memory))


def _working_memory(value: int | None) -> int:
    return DEFAULT_WORKING_MEMORY_MIB if value is None else check_int("working_memory", value, minimum=1)


def _knn_all(q: torch.Tensor, ref: torch.Tensor | None, k: int, key: _Key, exclude: bool, wm: int) -> torch.Tensor:
    pq = key.prepare(q)
    pr = pq if ref is None else key.prepare(ref)
    n_ref = pr[0].shape[0]
    mode, size = _plan(q.shape[0], n_ref, k, q.dtype, wm, symmetric_ok=ref is None and key.symmetric)
    if mode == "symmetric":
        return _symmetric_knn(pq, q.shape[0], k, key, exclude, size)
    out = torch.empty((q.shape[0], k), dtype=torch.long, device=q.device)
    for s, e, idx in _row_knn_chunks(pq, pr, k, key, exclude, size):
        out[s:e] = idx
    return out


def _per_query_scores(
    knn: torch.Tensor, q_codes: torch.Tensor, ref_codes: torch.Tensor, r: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """AP@R, R-precision and P@1 of each query (rows with r >= 1), float64."""
    k = knn.shape[1]
    rel = ref_codes[knn] == q_codes[:, None]
    within = torch.arange(1, k + 1, device=knn.device)[None, :] <= r[:, None]
    hit = rel & within
    cum = torch.cumsum(hit, dim=1).double()
    ranks = torch.arange(1, k + 1, device=knn.device, dtype=torch.float64)[None, :]
    rd = r.double()
    ap = (cum / ranks * hit).sum(dim=1) / rd
    rp = hit.sum(dim=1).double() / rd
    p1 = rel[:, 0].double()
    return ap, rp, p1


def _average(values: torch.Tensor, codes: torch.Tensor, average: str, n_classes: int) -> float:
    if average == "query":
        return float(values.mean())
    sums = torch.zeros(n_classes, dtype=torch.float64, device=values.device).index_add_(0, codes, values)
    counts = torch.bincount(codes, minlength=n_classes)
    present = counts > 0
    return float((sums[present] / counts[present]).mean())


def retrieval_scores(
    embeddings: Any,
    labels: Any,
    metric: Metric = "cosine",
    *,
    reference_embeddings: Any | None = None,
    reference_labels: Any | None = None,
    c: float = 1.0,
    average: str = "query",
    working_memory: int | None = None,
) -> dict[str, float]:
    """mAP@R, R-precision and precision@1 from one neighbour search (module docstring).

    Args:
        embeddings: queries [N, d], or S stochastic samples [S, N, d] (the result is the mean over
            samples, seed 000 §3.2). numpy arrays or torch tensors (CUDA tensors are searched on the GPU).
        labels: [N] class labels of any type (ints, strings, ...).
        metric: ``"cosine"``, ``"euclidean"``, ``"poincare"`` (curvature ``c``; points inside the
            ball of radius 1/√c) or a callable ``f(x [n, d], y [m, d]) -> distances [n, m]``.
        reference_embeddings, reference_labels: a separate reference (gallery) set; default: the
            queries themselves, each query excluded from its own results.
        c: curvature of the Poincaré ball (``metric="poincare"`` only).
        average: ``"query"`` (mean over queries, the papers') or ``"class"`` (mean of per-class means).
        working_memory: MiB for one chunk of distances (default 256).

    Returns:
        ``{"map_at_r": ..., "r_precision": ..., "precision_at_1": ...}`` as fractions in [0, 1].
    """
    check_choice("average", average, ("query", "class"))
    wm = _working_memory(working_memory)
    q, ref, key = _resolve(embeddings, reference_embeddings, metric, c)
    if (reference_embeddings is None) != (reference_labels is None):
        raise ValueError("pass reference_embeddings and reference_labels together (or neither)")
    n = q.shape[-2]
    n_ref = None if ref is None else ref.shape[-2]
    q_codes, ref_codes, n_classes = _label_codes(labels, reference_labels, n, n_ref)
    self_search = ref is None
    if self_search:
        ref_codes = q_codes
    q_codes, ref_codes = q_codes.to(q.device), ref_codes.to(q.device)
    if n_classes < 2:
        raise ValueError("labels hold a single class: every neighbour is relevant, so retrieval metrics are trivially 1")
    counts = torch.bincount(ref_codes, minlength=n_classes)
    r = counts[q_codes] - int(self_search)
    valid = r >= 1
    if not bool(valid.any()):
        raise ValueError(
            "no query has another reference of its class (R = 0 for every query): retrieval metrics are undefined"
        )
    k = int(r.max())
    samples = [q] if q.ndim == 2 else list(q.unbind(0))
    ref_samples = [None] * len(samples) if ref is None else ([ref] if ref.ndim == 2 else list(ref.unbind(0)))
    totals = {"map_at_r": 0.0, "r_precision": 0.0, "precision_at_1": 0.0}
    with torch.no_grad():
        for qs, rs in zip(samples, ref_samples):
            _accumulate(totals, qs, rs, key, n, k, q_codes, ref_codes, r, valid, self_search, average, n_classes, wm)
    return {name: v / len(samples) for name, v in totals.items()}


def _accumulate(
    totals: dict[str, float],
    qs: torch.Tensor,
    rs: torch.Tensor | None,
    key: _Key,
    n: int,
    k: int,
    q_codes: torch.Tensor,
    ref_codes: torch.Tensor,
    r: torch.Tensor,
    valid: torch.Tensor,
    self_search: bool,
    average: str,
    n_classes: int,
    wm: int,
) -> None:
    """Add one sample's scores to ``totals``."""
    pq = key.prepare(qs)
    pr = pq if rs is None else key.prepare(rs)
    mode, size = _plan(n, pr[0].shape[0], k, qs.dtype, wm, symmetric_ok=self_search and key.symmetric)
    if mode == "symmetric":
        chunks: Iterator[tuple[int, int, torch.Tensor]] = iter([(0, n, _symmetric_knn(pq, n, k, key, True, size))])
    else:
        chunks = _row_knn_chunks(pq, pr, k, key, self_search, size)
    ap_all = torch.empty(n, dtype=torch.float64, device=qs.device)
    rp_all = torch.empty_like(ap_all)
    p1_all = torch.empty_like(ap_all)
    for s, e, idx in chunks:
        ap_all[s:e], rp_all[s:e], p1_all[s:e] = _per_query_scores(idx, q_codes[s:e], ref_codes, r[s:e].clamp(min=1))
    for name, v in (("map_at_r", ap_all), ("r_precision", rp_all), ("precision_at_1", p1_all)):
        totals[name] += _average(v[valid], q_codes[valid], average, n_classes)


def _one(name: str) -> Callable[..., float]:
    def metric_fn(
        embeddings: Any,
        labels: Any,
        metric: Metric = "cosine",
        *,
        reference_embeddings: Any | None = None,
        reference_labels: Any | None = None,
        c: float = 1.0,
        average: str = "query",
        working_memory: int | None = None,
    ) -> float:
        return retrieval_scores(
            embeddings,
            labels,
            metric,
            reference_embeddings=reference_embeddings,
            reference_labels=reference_labels,
            c=c,
            average=average,
            working_memory=working_memory,
        )[name]

    return metric_fn


map_at_r = _one("map_at_r")
map_at_r.__name__ = map_at_r.__qualname__ = "map_at_r"
map_at_r.__doc__ = """Mean average precision at R (Musgrave et al. 2020; seed 000 Table 4).

``map_at_r(embeddings [N, d] or [S, N, d], labels [N], metric="cosine", *, reference_embeddings=None,
reference_labels=None, c=1.0, average="query", working_memory=None) -> float``; arguments as in
:func:`retrieval_scores`. Example::

    >>> import torch
    >>> x = torch.tensor([[0.0], [1.0], [10.0], [11.0]])
    >>> map_at_r(x, [0, 0, 1, 1], metric="euclidean")
    1.0
"""

r_precision = _one("r_precision")
r_precision.__name__ = r_precision.__qualname__ = "r_precision"
r_precision.__doc__ = """R-precision: the fraction of a query's R nearest references that share its class.
Arguments as in :func:`retrieval_scores`."""

precision_at_1 = _one("precision_at_1")
precision_at_1.__name__ = precision_at_1.__qualname__ = "precision_at_1"
precision_at_1.__doc__ = """Precision@1 (Recall@1): whether a query's nearest reference shares its class,
averaged over queries with at least one other reference of their class. Arguments as in
:func:`retrieval_scores`."""
