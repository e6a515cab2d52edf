"""Benchmark of the HYPERBOLIC head (issue 7): forward + backward of seed 000 Eq. 2 against ``nn.Linear`` +
cross-entropy at B = 256, d = 512, K = 10 000, and the peak memory of one step.

Goal: time <= 3x the linear classifier, memory O(B·K + K·d) (a B x K x d tensor would be 5.2 GB).

Variants (all on the same random features, one step = loss + backward):
  linear               nn.Linear(d, K, bias=False) + F.cross_entropy           (the baseline)
  poincare             create_head("poincare", d, K, embedding=False).loss     (clip + expmap0 + Eq. 2, checks on)
  poincare_nocheck     the same under polyheads.validation(False)              (no data-dependent checks)
  poincare_functional  poincare_mlr_logits(x, p, a, c) + F.cross_entropy       (Eq. 2 alone)

Time: median over interleaved repeats (the machine is shared). CPU peak memory: each variant runs in a fresh
process; after a warm-up step with gradients cleared, the rise of the resident set (VmHWM - VmRSS, with
glibc's mmap threshold at 64 KiB so that freed blocks go back to the OS) during one step. CUDA (when
present): ``torch.cuda.max_memory_allocated`` over one step.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_poincare.py            # writes bench/results/poincare.json
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import polyheads
from polyheads.functional import poincare_mlr_logits, poincare_distance

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import median_seconds, peak_memory_bytes, round_robin, run_script, write_json  # noqa: E402

VARIANTS = ("linear", "poincare", "poincare_nocheck", "poincare_functional")
RESULTS = Path(__file__).resolve().parent / "results" / "poincare.json"


def build(variant: str, B: int, d: int, K: int, device: str, seed: int = 0):
    """Inputs and a zero-argument closure running one loss + backward for ``variant``."""
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(B, d, generator=g).to(device)
    target = torch.randint(0, K, (B,), generator=g).to(device)
    if variant == "linear":
        module = torch.nn.Linear(d, K, bias=False).to(device)

        def step():
            module.zero_grad(set_to_none=True)
            F.cross_entropy(module(features), target).backward()

        return step, module
    if variant in ("poincare", "poincare_nocheck"):
        head = polyheads.create_head("poincare", d, K, embedding=False).to(device)
        check = variant == "poincare"

        def step():
            head.zero_grad(set_to_none=True)
            with polyheads.validation(check):
                head.loss(features, target).backward()

        return step, head
    if variant == "poincare_functional":
        c = 1e-5
        x = (features / features.norm(dim=1, keepdim=True) * 0.5 / c**0.5).requires_grad_(False)
        p = (torch.randn(K, d, generator=g) / d**0.5 * 0.5 / c**0.5 / 3).to(device).requires_grad_(True)
        a = (torch.randn(K, d, generator=g) / d**0.5).to(device).requires_grad_(True)

        def step():
            p.grad = a.grad = None
            F.cross_entropy(poincare_mlr_logits(x, p, a, c), target).backward()

        return step, (p, a)
    raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")


def time_variants(B: int, d: int, K: int, device: str, repeats: int, warmup: int) -> dict[str, float]:
    """Median seconds per step of every variant, repeats interleaved so drift hits all alike."""
    steps = {v: build(v, B, d, K, device)[0] for v in VARIANTS}
    timings = round_robin(steps, device, repeats, warmup, progress="timing")
    return {v: t.median_wall for v, t in timings.items()}


def peak_memory_here(variant: str, B: int, d: int, K: int, device: str) -> int:
    """Bytes the step needs beyond what was allocated before it (inputs, parameters)."""
    step, owner = build(variant, B, d, K, device)
    step()
    step()  # warm-up: lazy initialisation, kernels, allocator caches
    params = list(owner.parameters()) if isinstance(owner, torch.nn.Module) else list(owner)
    for prm in params:  # the measured step allocates its gradients afresh
        prm.grad = None
    peak = peak_memory_bytes(step, device)
    if peak is None:
        raise RuntimeError("peak memory needs CUDA or Linux's /proc/self/status")
    return peak


def peak_memory(variant: str, B: int, d: int, K: int, device: str) -> int:
    if device == "cuda":
        return peak_memory_here(variant, B, d, K, device)
    env = {"MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    return int(run_script(__file__, ["--measure-memory", variant, "--batch", B, "--dim", d, "--classes", K], env=env))


def time_distance(N: int, d: int, device: str, repeats: int) -> dict[str, float]:
    """Retrieval: pairwise Poincaré distance (float64 Gram) against torch.cdist on the same points."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N, d, generator=g)
    x = (x / x.norm(dim=1, keepdim=True) * torch.rand(N, 1, generator=g) * 0.9).to(device)
    return {name: median_seconds(fn, device, repeats, warmup=1)
            for name, fn in (("poincare_distance", lambda: poincare_distance(x, x, 1.0)),
                             ("torch_cdist", lambda: torch.cdist(x, x)))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--measure-memory", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    B, d, K, device = args.batch, args.dim, args.classes, args.device
    if args.measure_memory:
        print(peak_memory_here(args.measure_memory, B, d, K, device))
        return

    print(f"poincare vs linear: B={B} d={d} K={K} on {device} ({torch.get_num_threads()} thread(s)), "
          f"median of {args.repeats}")
    times = time_variants(B, d, K, device, args.repeats, args.warmup)
    memory = {v: peak_memory(v, B, d, K, device) for v in VARIANTS}
    distance = time_distance(2000, d, device, max(3, args.repeats // 3))
    bk, kd, bkd = B * K * 4, K * d * 4, B * K * d * 4
    rows = {}
    print(f"{'variant':<22}{'ms/step':>10}{'x linear':>10}{'peak MB':>10}{'x linear':>10}")
    for v in VARIANTS:
        rows[v] = {
            "ms_per_step": round(times[v] * 1e3, 3),
            "time_ratio_vs_linear": round(times[v] / times["linear"], 3),
            "peak_mb": round(memory[v] / 1e6, 2),
            "memory_ratio_vs_linear": round(memory[v] / memory["linear"], 3),
            "peak_in_units_of_BK_float32": round(memory[v] / bk, 2),
        }
        r = rows[v]
        print(f"{v:<22}{r['ms_per_step']:>10.2f}{r['time_ratio_vs_linear']:>10.2f}{r['peak_mb']:>10.1f}"
              f"{r['memory_ratio_vs_linear']:>10.2f}")
    print(f"B*K float32 = {bk / 1e6:.1f} MB, K*d float32 = {kd / 1e6:.1f} MB, a B*K*d tensor = {bkd / 1e9:.2f} GB")
    print(f"pairwise distance 2000x2000x{d}: poincare_distance {distance['poincare_distance'] * 1e3:.1f} ms, "
          f"torch.cdist {distance['torch_cdist'] * 1e3:.1f} ms")
    goal_time = rows["poincare"]["time_ratio_vs_linear"] <= 3.0
    goal_memory = memory["poincare"] < 8 * (bk + kd)
    print(f"goal time <= 3x linear: {'met' if goal_time else 'NOT met'}; "
          f"memory O(B*K + K*d) (< 8 (B*K + K*d) floats): {'met' if goal_memory else 'NOT met'}")
    result = {
        "benchmark": "bench/bench_poincare.py",
        "config": {"batch": B, "dim": d, "classes": K, "device": device, "threads": torch.get_num_threads(),
                   "repeats": args.repeats, "dtype": "float32", "c": 1e-5, "clip_r": 1.0},
        "environment": {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
                        "processor": platform.processor() or platform.machine(),
                        "date": time.strftime("%Y-%m-%d")},
        "variants": rows,
        "sizes_mb": {"BK_float32": bk / 1e6, "Kd_float32": kd / 1e6, "BKd_float32": bkd / 1e6},
        "pairwise_distance_2000x2000_ms": {k: round(v * 1e3, 2) for k, v in distance.items()},
        "goals": {"time_le_3x_linear": goal_time, "memory_O_BK_plus_Kd": goal_memory},
        "memory_method": ("cuda max_memory_allocated" if device == "cuda" else
                          "fresh process per variant; VmHWM - VmRSS over one step after warm-up; MALLOC_MMAP_THRESHOLD_=65536"),
    }
    write_json(args.output, result)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
