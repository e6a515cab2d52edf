"""Top-label ECE: polyheads vs netcal (same value, time side by side).

Random softmax outputs (N = 200 000, K = 100) whose accuracy is a wavy function of their confidence
(over-confident in some bins, under-confident in others, so the binning matters). Compared:

* equal-width bins (15): ``expected_calibration_error(..., strategy="uniform")`` vs netcal's
  ``ECE(bins=15)`` -- the same estimator; the values agree to rounding (netcal clips confidences to
  [eps, 1 - eps] and uses half-open [lo, hi) bins, polyheads (lo, hi]; no confidence here sits on an
  edge).
* equal-mass bins (15): netcal's ``ECE(bins=15, equal_intervals=False)`` puts the edges at
  ``np.quantile`` of the confidences, polyheads (like Kumar et al.'s ``calibration`` package that
  seed 000 cites) halfway between the neighbouring order statistics; with N = 200 000 the two
  binnings differ by a few predictions per edge and the values by ~1e-6 (7e-7 measured) -- reported, not hidden.

Writes bench/results/ece.json (``--output`` elsewhere).

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_ece.py [--output PATH]
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
from scipy.special import softmax

from polyheads.metrics import expected_calibration_error

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import median_seconds, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def timed(fn, repeats: int = 5) -> tuple[float, float]:
    """The value of the first call of ``fn`` and the median seconds of ``repeats`` calls (no warm-up)."""
    values = []
    seconds = median_seconds(lambda: values.append(fn()), None, repeats)
    return values[0], seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "ece.json")
    args = parser.parse_args()
    from netcal.metrics import ECE

    rng = np.random.default_rng(0)
    n, k = 200_000, 100
    logits = rng.normal(0.0, 3.0, (n, k)) * rng.uniform(0.3, 1.5, (n, 1))
    prob = softmax(logits, axis=1)
    conf, pred = prob.max(1), prob.argmax(1)
    # accuracy is a wavy function of confidence: under- and over-confident bins, so the binning matters
    p_correct = np.clip(conf + 0.15 * np.sin(8.0 * conf), 0.0, 1.0)
    correct = rng.random(n) < p_correct
    y = np.where(correct, pred, (pred + rng.integers(1, k, n)) % k)

    results = {"n": n, "classes": k, "bins": 15}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, strategy, equal_intervals in (("uniform", "uniform", True), ("quantile", "quantile", False)):
            ours, t_ours = timed(lambda: expected_calibration_error(y, prob, 15, strategy))
            theirs, t_theirs = timed(lambda: float(ECE(bins=15, equal_intervals=equal_intervals).measure(prob, y)))
            results[name] = {
                "polyheads": ours,
                "netcal": theirs,
                "abs_difference": abs(ours - theirs),
                "polyheads_seconds": t_ours,
                "netcal_seconds": t_theirs,
                "speedup": t_theirs / t_ours,
            }
            print(f"{name:>8}: polyheads {ours:.10f} ({t_ours * 1e3:6.1f} ms)  netcal {theirs:.10f} "
                  f"({t_theirs * 1e3:6.1f} ms)  |diff| {abs(ours - theirs):.1e}  speedup {t_theirs / t_ours:.1f}x")
    out = write_json(args.output, results)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
