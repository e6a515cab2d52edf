#!/usr/bin/env python
"""Seed 000 Figure 2 (the Bessel ratio against κ with the initialiser's points) and the error tables
of the vMF approximations, measured against mpmath.

    python tools/plot_bessel_ratio.py                      # -> docs/images/bessel_ratio.png
    python tools/plot_bessel_ratio.py --lam 0.7 --out runs/fig2_lam07.png
    python tools/plot_bessel_ratio.py --table --json runs/bessel_errors.json

``--table`` prints (and ``--json`` writes) for each dimension n:
- Eq. 10 (mean of the Eq. 9 bounds) vs the exact I_{n/2}/I_{n/2-1}: the largest absolute and relative
  error over κ in [1e-6, 1e5] and where it occurs;
- Eq. 12 differences log C_n(κ1) - log C_n(κ2) vs exact: the largest relative error over pairs;
- the exact mode (n <= 64): the largest relative error in float64 and float32;
- the initialiser: A_n(κ*)/λ - 1 at Eq. 14's κ* for λ = 0.4 and 0.7.
The figure takes a second; the tables ~30 s (mpmath evaluates the references, n up to 4096).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TABLE_DIMS = (2, 3, 4, 8, 16, 32, 64, 128, 512, 2048, 4096)


def _exact(n: int, kappa: float, dps: int = 30) -> tuple[float, object]:
    """(A_n(κ), log C_n(κ)) with mpmath."""
    import mpmath

    with mpmath.workdps(dps):
        nu = mpmath.mpf(n) / 2 - 1
        k = mpmath.mpf(kappa)
        i_nu = mpmath.besseli(nu, k, maxterms=10**6)
        ratio = mpmath.besseli(nu + 1, k, maxterms=10**6) / i_nu
        log_c = nu * mpmath.log(k) - mpmath.log(i_nu)  # up to the n-dependent constant
        return float(ratio), log_c


def error_tables(dims=TABLE_DIMS, points: int = 56, progress: bool = True) -> list[dict]:
    import numpy as np
    import torch

    from polyheads.functional import bessel_ratio, log_vmf_normalizer_difference
    from polyheads.functional.bessel import EXACT_MAX_DIM

    kappas = np.logspace(-6, 5, points)
    rows = []
    iterator = dims
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(dims, desc="mpmath references", leave=False)
    for n in iterator:
        exact = [_exact(n, float(k)) for k in kappas]
        ratio = np.array([e[0] for e in exact])
        approx = bessel_ratio(n, torch.tensor(kappas, dtype=torch.float64)).numpy()
        abs_err = np.abs(approx - ratio)
        rel_err = abs_err / ratio
        row = {
            "n": n,
            "eq10_max_abs_error": float(abs_err.max()),
            "eq10_kappa_at_max_abs": float(kappas[abs_err.argmax()]),
            "eq10_max_rel_error": float(rel_err.max()),
        }
        sub = range(0, points, 5)
        worst = 0.0
        for i in sub:
            for j in sub:
                if j <= i:
                    continue
                true = float(exact[i][1] - exact[j][1])
                t = torch.tensor(kappas[i] ** 2, dtype=torch.float64)
                d = torch.tensor(kappas[j] ** 2 - kappas[i] ** 2, dtype=torch.float64)
                worst = max(worst, abs(float(log_vmf_normalizer_difference(n, t, d)) - true) / abs(true))
        row["eq12_difference_max_rel_error"] = worst
        row["eq12_bound_1_over_2(n-1)"] = 1.0 / (2 * (n - 1))
        if n <= EXACT_MAX_DIM:
            for dtype, key in ((torch.float64, "exact_mode_max_rel_error_float64"), (torch.float32, "exact_mode_max_rel_error_float32")):
                got = bessel_ratio(n, torch.tensor(kappas, dtype=dtype), exact=True).double().numpy()
                row[key] = float((np.abs(got - ratio) / ratio).max())
        for lam in (0.4, 0.7):
            target = lam * (n - 1) / (1 - lam * lam)
            row[f"init_ratio_error_lam{lam}"] = _exact(n, target)[0] / lam - 1
        rows.append(row)
    return rows


def print_tables(rows: list[dict]) -> None:
    print("Eq. 10 (mean of the Eq. 9 bounds) vs exact A_n(κ), κ in [1e-6, 1e5]")
    print(f"{'n':>5} {'max |err|':>10} {'at κ':>9} {'max rel':>9} | {'Eq.12 diff rel':>14} {'1/(2(n-1))':>10} |"
          f" {'exact f64':>9} {'exact f32':>9} | {'A(κ*)/λ-1 λ=.4':>15} {'λ=.7':>8}")
    for r in rows:
        e64 = f"{r['exact_mode_max_rel_error_float64']:.1e}" if "exact_mode_max_rel_error_float64" in r else "-"
        e32 = f"{r['exact_mode_max_rel_error_float32']:.1e}" if "exact_mode_max_rel_error_float32" in r else "-"
        print(f"{r['n']:>5} {r['eq10_max_abs_error']:>10.2e} {r['eq10_kappa_at_max_abs']:>9.3g} {r['eq10_max_rel_error']:>9.2e} |"
              f" {r['eq12_difference_max_rel_error']:>14.2e} {r['eq12_bound_1_over_2(n-1)']:>10.2e} |"
              f" {e64:>9} {e32:>9} | {r['init_ratio_error_lam0.4']:>+15.2%} {r['init_ratio_error_lam0.7']:>+8.2%}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "docs" / "images" / "bessel_ratio.png"), help="PNG to write")
    parser.add_argument("--lam", type=float, default=0.4, help="λ of the initialiser (App. D; default 0.4)")
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 4, 8, 16, 32, 64, 128, 256, 512],
                        help="dimensions n drawn (default 2 4 ... 512)")
    parser.add_argument("--classes", type=int, default=1000, help="class weights drawn per n for the points")
    parser.add_argument("--table", action="store_true", help="print the error tables (mpmath references)")
    parser.add_argument("--json", default=None, help="write the error tables to this JSON file")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if not 0 < args.lam < 1:
        parser.error("--lam must lie in (0, 1)")
    if any(d < 2 for d in args.dims):
        parser.error("--dims must be >= 2")

    from polyheads.plots import bessel_ratio_figure
    from polyheads.plots.bessel import initializer_points

    out = bessel_ratio_figure(args.out, args.dims, args.lam, num_classes=args.classes)
    print(f"wrote {out}")
    print(f"initialiser points at λ = {args.lam:g}:  n  mean‖w̃_j‖ (Eq. 19)  κ* (Eq. 14)")
    for n in args.dims:
        mean_w, target = initializer_points(n, args.lam, args.classes)
        print(f"  {n:>5} {mean_w:>12.4g} {target:>12.4g}")
    if args.table or args.json:
        rows = error_tables(progress=not args.no_progress)
        print_tables(rows)
        if args.json:
            path = Path(args.json)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(rows, indent=2) + "\n")
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
