"""Controlled comparison of heads (seed 000 §3): the same backbone, data pipeline and budget for
every head, R replications each, mean ± standard error in the layout of seed 000 Tables 1-4.

    records = compare([load_config("configs/default.yaml")], ["standard", "cosine"], seeds=3, out_dir="runs/compare")
    print(format_tables(summarize(records)))

Per-head hyper-parameters: when ``configs/<dataset>/<head>.yaml`` exists (seed 000 Tables 5-11),
the head's own settings (:data:`HEAD_TUNED_KEYS`: LR, momentum, Nesterov, weight decay, TLR,
head arguments such as the margin or λ, embedding width) are taken from it; the data, backbone and
budget stay those of the base config, so the comparison is controlled.
"""
from __future__ import annotations

import math
import os
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ..registry import resolve_head_name
from .config import TrainConfig, apply_overrides, config_to_dict, load_config

__all__ = ["compare", "comparable_heads", "summarize", "format_tables", "write_tables", "HEAD_TUNED_KEYS", "METRICS", "head_config"]

#: the keys a per-head config (seed 000 Tables 5-11 columns) contributes to a comparison run
HEAD_TUNED_KEYS = ("head_kwargs", "lr", "momentum", "nesterov", "weight_decay", "temperature_lr", "temperature_momentum",
                   "embedding_dim")

#: metric -> (keys polyheads.evaluate may use, scale for the table, larger is better, column title)
METRICS: dict[str, tuple[tuple[str, ...], float, bool, str]] = {
    "accuracy": (("accuracy", "acc"), 100.0, True, "Accuracy (%)"),
    "ece": (("ece",), 100.0, False, "ECE (%)"),
    "ece_ts": (("ece_ts", "ece_temperature_scaled", "ece_after_ts", "ece_temperature"), 100.0, False,
               "ECE with temperature scaling (%)"),
    "auroc": (("auroc", "confidence_auroc", "auroc_confidence"), 1.0, True, "AUROC of the confidence"),
    "map_at_r": (("map_at_r",), 100.0, True, "mAP@R (%)"),
    "map_at_r_cosine": (("map_at_r_cosine", "map_at_r_cos"), 100.0, True, "mAP@R + cosine at test (%)"),
}


def head_config(base: TrainConfig, head: str, seed: int, head_configs_dir: str | os.PathLike | None,
                overrides: Sequence[str] = ()) -> TrainConfig:
    """The config of one comparison run: ``base`` with ``head``, ``seed`` and the head's tuned keys."""
    changes: dict[str, Any] = {"head": head, "seed": seed, "head_kwargs": {}}
    if head_configs_dir is not None:
        path = Path(head_configs_dir) / f"{resolve_head_name(head)}.yaml"
        if not path.is_file():
            path = Path(head_configs_dir) / f"{head}.yaml"
        if path.is_file():
            tuned = load_config(path)
            changes.update({k: getattr(tuned, k) for k in HEAD_TUNED_KEYS})
            changes["head"] = head
    config = apply_overrides(base, changes, source=f"comparison run {head}/seed{seed}")
    return apply_overrides(config, list(overrides)) if overrides else config


def _run_one(config: dict[str, Any], threads: int | None) -> dict[str, Any]:
    """Train one config (in a worker process when ``jobs > 1``); never raises."""
    import torch

    from .trainer import train

    if threads:
        torch.set_num_threads(threads)
    cfg = TrainConfig(**config)
    start, cpu_start = time.perf_counter(), time.process_time()
    record: dict[str, Any] = {"dataset": cfg.dataset, "head": cfg.head, "seed": cfg.seed, "run_dir": cfg.output_dir}
    try:
        result = train(cfg, overwrite=True, log=lambda _line: None)
        record.update(result.to_dict())
        record["run_dir"] = str(result.run_dir)
    except Exception as exc:  # one failing head must not sink the comparison
        record["error"] = f"{type(exc).__name__}: {exc}"
        record["traceback"] = traceback.format_exc()
    record["wall_time_s"] = time.perf_counter() - start
    record["cpu_time_s"] = time.process_time() - cpu_start
    return record


def compare(
    bases: TrainConfig | Sequence[TrainConfig],
    heads: Sequence[str],
    seeds: int = 3,
    *,
    out_dir: str | os.PathLike = "runs/compare",
    head_configs_dirs: Sequence[str | os.PathLike | None] | None = None,
    overrides: Sequence[str] = (),
    jobs: int = 1,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Train every head ``seeds`` times on every base config; return one record per run.

    Replication ``r`` uses seed ``base.seed + r``. Runs go to ``out_dir/<dataset>/<head>/seed<r>``.
    ``jobs > 1`` trains that many runs at once in separate processes (one thread each unless
    ``OMP_NUM_THREADS`` says otherwise). A run that fails is recorded with its error.
    """
    bases = [bases] if isinstance(bases, TrainConfig) else list(bases)
    if not bases or not heads:
        raise ValueError("compare needs at least one base config and one head")
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    dirs = list(head_configs_dirs) if head_configs_dirs is not None else [None] * len(bases)
    if len(dirs) != len(bases):
        raise ValueError(f"{len(bases)} base configs but {len(dirs)} head-config folders")
    out_dir = Path(out_dir)
    configs = []
    for base, folder in zip(bases, dirs):
        for head in heads:
            for r in range(seeds):
                cfg = head_config(base, head, base.seed + r, folder, overrides)
                cfg = apply_overrides(cfg, {"output_dir": str(out_dir / cfg.dataset / head / f"seed{cfg.seed}"),
                                            "progress": False})
                configs.append(config_to_dict(cfg))
    threads = None
    if jobs > 1 and "OMP_NUM_THREADS" not in os.environ:
        threads = max(1, (os.cpu_count() or 1) // jobs)
    records: list[dict[str, Any]] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(configs), desc="runs", dynamic_ncols=True)

    def report(record: dict[str, Any]) -> None:
        records.append(record)
        if "error" in record:
            line = f"{record['head']} seed {record['seed']}: FAILED {record['error']}"
        else:
            test = record.get("test", {})
            shown = "  ".join(f"{m} {v:.4f}" for m in METRICS if (v := _metric_value(test, m)) is not None)
            line = (f"{record['head']} seed {record['seed']}: {shown}  (best epoch {record['best_epoch'] + 1}, "
                    f"{record['wall_time_s']:.0f}s wall, {record['cpu_time_s']:.0f}s CPU)")
        if bar is not None:
            bar.update(1)
            bar.write(f"[{len(records)}/{len(configs)}] {record['dataset']} {line}")
        else:
            log(f"[{len(records)}/{len(configs)}] {record['dataset']} {line}")

    if jobs <= 1:
        for config in configs:
            report(_run_one(config, threads))
    else:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(_run_one, config, threads) for config in configs]
            for future in as_completed(futures):
                report(future.result())
    if bar is not None:
        bar.close()
    order = {(c["dataset"], c["head"], c["seed"]): i for i, c in enumerate(configs)}
    records.sort(key=lambda r: order.get((r["dataset"], r["head"], r["seed"]), 0))
    return records


def _metric_value(test: dict[str, float], metric: str) -> float | None:
    for key in METRICS[metric][0]:
        if key in test and test[key] is not None and math.isfinite(test[key]):
            return float(test[key])
    return None


def summarize(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Mean and standard error (std with ddof=1 over replications / sqrt(R)) per data set, head and metric.

    Returns ``{"datasets": [...], "heads": [...], "cells": {(dataset, head, metric): (mean, se, n)},
    "failures": {(dataset, head): [errors]}}``; values are in table units (% or AUROC).
    """
    values: dict[tuple[str, str, str], list[float]] = {}
    failures: dict[tuple[str, str], list[str]] = {}
    datasets: list[str] = []
    heads: list[str] = []
    for record in records:
        ds, head = record["dataset"], record["head"]
        if ds not in datasets:
            datasets.append(ds)
        if head not in heads:
            heads.append(head)
        if "error" in record:
            failures.setdefault((ds, head), []).append(record["error"])
            continue
        for metric, (_, scale, _, _) in METRICS.items():
            value = _metric_value(record.get("test", {}), metric)
            if value is not None:
                values.setdefault((ds, head, metric), []).append(value * scale)
    cells = {}
    for key, vals in values.items():
        array = np.asarray(vals, dtype=np.float64)
        se = float(array.std(ddof=1) / math.sqrt(len(array))) if len(array) > 1 else math.nan
        cells[key] = (float(array.mean()), se, len(array))
    return {"datasets": datasets, "heads": heads, "cells": cells, "failures": failures}


def _best(summary: dict[str, Any], dataset: str, metric: str) -> set[str]:
    """Heads in bold: the best mean, and every head whose mean ± SE interval overlaps the best's."""
    larger = METRICS[metric][2]
    entries = {h: summary["cells"][(dataset, h, metric)] for h in summary["heads"] if (dataset, h, metric) in summary["cells"]}
    if not entries:
        return set()
    best_head = max(entries, key=lambda h: entries[h][0] if larger else -entries[h][0])
    mean_b, se_b, _ = entries[best_head]
    se_b = 0.0 if math.isnan(se_b) else se_b
    bold = set()
    for h, (mean, se, _) in entries.items():
        se = 0.0 if math.isnan(se) else se
        if (mean + se >= mean_b - se_b) if larger else (mean - se <= mean_b + se_b):
            bold.add(h)
    return bold


def _cell(summary: dict[str, Any], dataset: str, head: str, metric: str, bold: set[str], markdown: bool) -> str:
    key = (dataset, head, metric)
    if key not in summary["cells"]:
        return "failed" if (dataset, head) in summary["failures"] else "–"
    mean, se, _ = summary["cells"][key]
    digits = 3 if METRICS[metric][1] == 1.0 else 2
    text = f"{mean:.{digits}f}" + ("" if math.isnan(se) else f" ± {se:.{digits}f}")
    return f"**{text}**" if markdown and head in bold else text


def _table(summary: dict[str, Any], groups: list[tuple[str, str]], title: str) -> str:
    datasets = summary["datasets"]
    present = [(m, t) for m, t in groups if any((d, h, m) in summary["cells"] for d in datasets for h in summary["heads"])]
    if not present:
        return ""
    header = ["loss"] + [f"{t} {d}" if len(present) > 1 else d for m, t in present for d in datasets]
    lines = [f"**{title}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    bold = {(d, m): _best(summary, d, m) for m, _ in present for d in datasets}
    for head in summary["heads"]:
        cells = [_cell(summary, d, head, m, bold[(d, m)], True) for m, _ in present for d in datasets]
        lines.append(f"| {head} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_tables(summary: dict[str, Any]) -> str:
    """Markdown tables in the layout of seed 000 Tables 2, 3, 1 and 4 (rows: heads; columns: data
    sets; mean ± 1 standard error over replications; bold: the best and those within error)."""
    n = sorted({c[2] for c in summary["cells"].values()})
    reps = f"{n[0]}" if len(n) == 1 else f"{n[0]}–{n[-1]}" if n else "0"
    parts = [
        _table(summary, [("accuracy", "Accuracy")], f"Table 2 layout: mean classification accuracy (%) ± 1 s.e., {reps} replications"),
        _table(summary, [("ece", "ECE"), ("ece_ts", "ECE with TS")],
               "Table 3 layout: mean ECE (%, 15 equal-mass bins) before and after temperature scaling ± 1 s.e."),
        _table(summary, [("auroc", "AUROC")], "Table 1 layout: mean AUROC of the head's confidence (correct vs. incorrect) ± 1 s.e."),
        _table(summary, [("map_at_r", "mAP@R"), ("map_at_r_cosine", "+ cosine at test")],
               "Table 4 layout: mean mAP@R (%) ± 1 s.e."),
    ]
    if summary["failures"]:
        lines = ["**Failed runs**", ""]
        for (d, h), errors in summary["failures"].items():
            lines.append(f"- {d} / {h}: {len(errors)} run(s) failed: {errors[0]}")
        parts.append("\n".join(lines))
    return "\n\n".join(p for p in parts if p) + "\n"


def write_tables(records: Sequence[dict[str, Any]], out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``comparison.md`` (the tables), ``comparison.csv`` (one row per data set × head ×
    metric: mean, se, n, values) and ``runs.csv`` (one row per run) into ``out_dir``."""
    import csv
    import json

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(records)
    paths = {"markdown": out_dir / "comparison.md", "csv": out_dir / "comparison.csv", "runs": out_dir / "runs.csv"}
    paths["markdown"].write_text(format_tables(summary))
    with open(paths["csv"], "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["dataset", "head", "metric", "mean", "se", "n"])
        for (d, h, m), (mean, se, n) in summary["cells"].items():
            writer.writerow([d, h, m, f"{mean:.6g}", "" if math.isnan(se) else f"{se:.6g}", n])
    with open(paths["runs"], "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["dataset", "head", "seed", "best_epoch", "epochs_run", "wall_time_s", "cpu_time_s", "error",
                         "test"])
        for r in records:
            writer.writerow([r["dataset"], r["head"], r["seed"], r.get("best_epoch", ""), r.get("epochs_run", ""),
                             f"{r.get('wall_time_s', 0):.1f}", f"{r.get('cpu_time_s', 0):.1f}", r.get("error", ""),
                             json.dumps(r.get("test", {}))])
    return paths


def comparable_heads() -> list[str]:
    """Every registered head that is a geometry of its own (wrappers such as ``sharded`` left out):
    what ``tools/compare.py --heads all`` compares."""
    from ..registry import get_head_class, list_heads

    return [name for name in list_heads() if not get_head_class(name).wraps_head]
