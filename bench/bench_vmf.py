"""The vMF head and sampler (issue 6): speed against references, peak memory, and the sampler's
reparameterisation bias, measured side by side in one run.

1. Sampler, 512-D: samples/s of ``polyheads.functional.sample_vmf`` (one mean direction, N samples;
   and the head's shape, 256 directions × 10 samples) vs ``scipy.stats.vonmises_fisher(mu, κ).rvs(N)``
   at κ = 1, κ* = 243.3 (App. D's initial concentration at n = 512, λ = 0.4) and 1e4. Goal >= 10x.
2. Head, loss forward + backward at B = 256, n = 512, K = 10 000, S = 10 samples of z: ``vmf`` built with
   ``embedding=False`` (the n -> K classifier part, after ``init_from_data``) vs ``nn.Linear(n, K,
   bias=False)`` + cross-entropy. Goal: vmf <= 1.3 × S × linear. Also the eval-mode Monte-Carlo
   prediction (S draws of z and of every w_j). Peak resident memory of one step of each (Linux).
3. Bias of the reparameterised gradient through the accepted proposal (g_rep, seed 000 / Davidson et
   al.): mean ∂(μ^T x)/∂κ over many samples vs the exact dA_n/dκ = 1 - A² - (n-1)A/κ, and the same
   with the score-function correction (``sample_vmf(..., return_score=True)``).

Timings are CPU time of this process (``time.process_time``; robust to other jobs on a shared machine)
and wall time, medians over repeats, cases interleaved round-robin.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_vmf.py [--repeats 7] [--device cpu]

Writes bench/results/vmf.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from polyheads import create_head
from polyheads.functional import bessel_ratio, sample_vmf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ScriptError, machine_info, peak_memory_bytes, round_robin, run_script, write_results  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "vmf.json"


def median_times(cases: dict[str, Callable[[], object]], device: torch.device, repeats: int, warmup: int = 1) -> dict[str, dict[str, float]]:
    """Median wall and CPU seconds per call of every case, timed round-robin."""
    timings = round_robin(cases, device, repeats, warmup)
    return {k: {"wall_s": t.median_wall, "cpu_s": t.median_cpu} for k, t in timings.items()}


# ---------------------------------------------------------------------------------------------- 1. sampler
def bench_sampler(device: torch.device, repeats: int, n: int = 512, count: int = 20000) -> dict:
    import scipy.stats as st

    rng = np.random.default_rng(0)
    mu_np = rng.standard_normal(n)
    mu_np /= np.linalg.norm(mu_np)
    mu = torch.tensor(mu_np, dtype=torch.float32, device=device)
    batch_mu = F.normalize(torch.randn(256, n, device=device), dim=1)
    rows = {}
    for kappa in (1.0, 0.4 * (n - 1) / (1 - 0.16), 1e4):
        batch_kappa = torch.full((256,), kappa, device=device)
        dist = st.vonmises_fisher(mu_np, kappa)
        cases = {
            "scipy": lambda: dist.rvs(count, random_state=rng),
            "polyheads": lambda: sample_vmf(mu, kappa, count),
            "polyheads_256x10": lambda: sample_vmf(batch_mu, batch_kappa, 10),
        }
        t = median_times(cases, device, repeats)
        per_s = {
            "scipy": count / t["scipy"]["cpu_s"],
            "polyheads": count / t["polyheads"]["cpu_s"],
            "polyheads_256x10": 2560 / t["polyheads_256x10"]["cpu_s"],
        }
        rows[f"{kappa:.4g}"] = {
            "samples_per_s": {k: round(v) for k, v in per_s.items()},
            "speedup_vs_scipy": round(per_s["polyheads"] / per_s["scipy"], 1),
            "speedup_vs_scipy_head_shape": round(per_s["polyheads_256x10"] / per_s["scipy"], 1),
        }
    return {"dim": n, "samples": count, "by_kappa": rows,
            "goal_met_10x": all(r["speedup_vs_scipy"] >= 10 for r in rows.values())}


# ---------------------------------------------------------------------------------------------- 2. head
def head_cases(device: torch.device, batch: int, dim: int, classes: int, samples: int) -> dict[str, Callable[[], None]]:
    """name -> one step: the loss forward+backward of linear+CE and vmf, and vmf's eval prediction."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, dim, generator=g).to(device).requires_grad_(True)
    y = torch.randint(0, classes, (batch,), generator=g).to(device)
    linear = nn.Linear(dim, classes, bias=False).to(device)
    head = create_head("vmf", dim, classes, embedding=False, num_samples=samples).to(device)
    head.init_from_data(torch.randn(4096, dim, generator=g).to(device))

    def zero() -> None:
        for t in (x, *linear.parameters(), *head.parameters()):
            t.grad = None

    def step_linear() -> None:
        zero()
        F.cross_entropy(linear(x), y).backward()

    def step_vmf() -> None:
        zero()
        head.train().loss(x, y).backward()

    def predict_vmf() -> None:
        with torch.no_grad():
            head.eval()(x)

    return {"linear+CE": step_linear, "vmf": step_vmf, "vmf eval predictive": predict_vmf}


def memory_in_subprocess(name: str, device: torch.device, shapes: dict) -> float | None:
    """Peak memory of one step of case ``name`` in a fresh process (a warm allocator would hide it)."""
    args = ["--memory-case", name, "--device", str(device), "--shapes", json.dumps(shapes)]
    try:
        return run_script(__file__, args, env={"OMP_NUM_THREADS": "1"})["peak_mib"]
    except ScriptError as error:
        print(f"memory measurement of {name!r} failed: {error.stderr[-500:]}")
        return None


def bench_head(device: torch.device, repeats: int, batch: int = 256, dim: int = 512, classes: int = 10_000,
               samples: int = 10) -> dict:
    shapes = {"batch": batch, "dim": dim, "classes": classes, "samples": samples}
    cases = head_cases(device, **shapes)
    t = median_times(cases, device, repeats)
    memory = {name: memory_in_subprocess(name, device, shapes) for name in cases}
    base = t["linear+CE"]["cpu_s"]
    rows = {}
    for name, v in t.items():
        rows[name] = {
            "median_cpu_ms": round(v["cpu_s"] * 1e3, 2),
            "median_wall_ms": round(v["wall_s"] * 1e3, 2),
            "ratio_vs_linear": round(v["cpu_s"] / base, 3),
            "ratio_vs_S_x_linear": round(v["cpu_s"] / (samples * base), 3),
            "peak_memory_mib": None if memory[name] is None else round(memory[name], 1),
        }
    return {"shapes": shapes,
            "note": "vmf built with embedding=False (the n -> K part only, like the linear baseline); peak memory: "
                    "one step in a fresh process (resident-set high-water mark above the inputs, or the CUDA allocator peak)",
            "results": rows, "goal_met_1_3x_S_x_linear": rows["vmf"]["ratio_vs_S_x_linear"] <= 1.3}


# ---------------------------------------------------------------------------------------------- 3. g_rep bias
def reparameterisation_bias(count: int = 100_000) -> list[dict]:
    import mpmath

    rows = []
    for n in (3, 16, 64, 512):
        for kappa in (0.5, 3.0, 20.0, 200.0):
            with mpmath.workdps(30):
                nu = mpmath.mpf(n) / 2 - 1
                a = float(mpmath.besseli(nu + 1, kappa) / mpmath.besseli(nu, kappa))
            exact = 1 - a * a - (n - 1) * a / kappa
            mu = torch.zeros(n, dtype=torch.float64)
            mu[0] = 1.0
            k = torch.tensor(kappa, dtype=torch.float64, requires_grad=True)
            x, score = sample_vmf(mu, k, count, generator=torch.Generator().manual_seed(n), return_score=True)
            t = x[:, 0]
            (grad,) = torch.autograd.grad(t.sum(), k, retain_graph=True)
            estimate = float(grad) / count
            value = t.detach()
            baseline = (value.sum() - value) / (count - 1)  # leave-one-out
            (corrected,) = torch.autograd.grad((t + (value - baseline) * score).sum(), k)
            fixed = float(corrected) / count
            rows.append({"n": n, "kappa": kappa, "exact_dA_dkappa": exact, "mean_g_rep": estimate,
                         "relative_bias": estimate / exact - 1, "mean_g_rep_plus_g_cor": fixed,
                         "relative_error_corrected": fixed / exact - 1})
    return rows


def bench_bessel(device: torch.device, repeats: int) -> dict:
    kappa = torch.logspace(-6, 5, 100_000, device=device).requires_grad_(True)

    def run(exact: bool) -> None:
        kappa.grad = None
        bessel_ratio(16, kappa, exact=exact).sum().backward()

    t = median_times({"eq10": lambda: run(False), "exact": lambda: run(True)}, device, repeats)
    return {"n": 16, "count": kappa.numel(), "fwd_bwd_cpu_ms": {k: round(v["cpu_s"] * 1e3, 2) for k, v in t.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--skip-bias", action="store_true", help="skip the (slower) g_rep bias table")
    parser.add_argument("--memory-case", default=None, help=argparse.SUPPRESS)  # internal: one case, fresh process
    parser.add_argument("--shapes", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.memory_case is not None:
        step = head_cases(device, **json.loads(args.shapes))[args.memory_case]
        peak = peak_memory_bytes(step, device)
        print(json.dumps({"peak_mib": None if peak is None else peak / 2**20}))
        return
    torch.manual_seed(0)
    print(f"vMF benchmark: device={device}, torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"{args.repeats} repeats (median of CPU time)")

    sampler = bench_sampler(device, args.repeats)
    print(f"\n1. sampler, {sampler['dim']}-D, samples/s (scipy.stats.vonmises_fisher vs sample_vmf)")
    print(f"{'kappa':>8}{'scipy':>12}{'polyheads':>12}{'x scipy':>9}{'256x10':>12}{'x scipy':>9}")
    for kappa, r in sampler["by_kappa"].items():
        s = r["samples_per_s"]
        print(f"{kappa:>8}{s['scipy']:>12,}{s['polyheads']:>12,}{r['speedup_vs_scipy']:>9}"
              f"{s['polyheads_256x10']:>12,}{r['speedup_vs_scipy_head_shape']:>9}")
    print(f"goal >= 10x scipy: {sampler['goal_met_10x']}")

    head = bench_head(device, args.repeats)
    sh = head["shapes"]
    print(f"\n2. head loss forward+backward, B={sh['batch']}, n={sh['dim']}, K={sh['classes']}, S={sh['samples']}")
    print(f"{'case':<22}{'cpu ms':>10}{'wall ms':>10}{'x linear':>10}{'x S*lin':>9}{'peak MiB':>10}")
    for name, r in head["results"].items():
        mem = "-" if r["peak_memory_mib"] is None else f"{r['peak_memory_mib']:.0f}"
        print(f"{name:<22}{r['median_cpu_ms']:>10.1f}{r['median_wall_ms']:>10.1f}{r['ratio_vs_linear']:>10.2f}"
              f"{r['ratio_vs_S_x_linear']:>9.2f}{mem:>10}")
    print(f"goal vmf <= 1.3 x S x linear: {head['goal_met_1_3x_S_x_linear']}")

    bessel = bench_bessel(device, args.repeats)
    print(f"\n3. bessel_ratio(16, κ) fwd+bwd on {bessel['count']:,} values, ms: {bessel['fwd_bwd_cpu_ms']}")

    result = {
        "benchmark": "vMF sampler vs scipy; vMF head loss vs nn.Linear + cross-entropy; g_rep bias",
        **machine_info(device),
        "repeats": args.repeats,
        "timing": "median CPU time of the process (time.process_time); wall time alongside",
        "sampler": sampler,
        "head": head,
        "bessel_ratio": bessel,
    }
    if not args.skip_bias and device.type == "cpu":
        bias = reparameterisation_bias()
        print("\n4. mean ∂(μ^T x)/∂κ over 1e5 samples vs dA_n/dκ: g_rep alone (the seed's) and with the score "
              "correction (return_score=True)")
        print(f"{'n':>5}{'kappa':>8}{'exact':>12}{'g_rep':>12}{'rel bias':>10}{'+g_cor':>12}{'rel err':>10}")
        for r in bias:
            print(f"{r['n']:>5}{r['kappa']:>8g}{r['exact_dA_dkappa']:>12.4e}{r['mean_g_rep']:>12.4e}{r['relative_bias']:>+10.2%}"
                  f"{r['mean_g_rep_plus_g_cor']:>12.4e}{r['relative_error_corrected']:>+10.2%}")
        result["reparameterisation_bias"] = bias
    write_results(args.output, device.type, result)
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
