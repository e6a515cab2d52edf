"""Fixed polytope heads vs STANDARD: parameters and train-step time at K = 10 ... 100 000 (seed 002 §5:
"a significant reduction in the number of model parameters [and] the feature size").

Every head receives the same pre-logit features (B = 128 rows of width 512, a ResNet-18's pooled
width) and is timed for one training step: ``head.loss`` forward, backward (to the features too, as
inside a network), and an SGD step with momentum over its parameter groups. STANDARD uses d = 512;
simplex / orthoplex / cube / hadamard take d from seed 002 Eq. 7 (Hadamard: 2^⌈log₂ K⌉). Reported:
trainable parameters (embedding + classifier), the fixed vertex buffer (floats), the median step time
over repeats, and the ratio to STANDARD measured side by side in the same run. A head whose vertex
buffer would exceed ``--max-buffer-gb`` is not built (its K x d floats are reported instead).

Also measured: building the K = 10^6 cube head (d = 20) and the K = 10 000 simplex (d = 9 999).

Writes bench/results/polytope.json and prints a Markdown table (docs/polytopes.md quotes it).

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_polytope.py
"""
from __future__ import annotations

import argparse
import platform
import sys
import warnings
from pathlib import Path

import torch

import polyheads
from polyheads import create_head
from polyheads.functional import polytope_dim

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import median_seconds, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HEADS = ("standard", "simplex", "orthoplex", "cube", "hadamard")
IN_FEATURES, BATCH, STANDARD_DIM = 512, 128, 512


def head_dim(name: str, k: int) -> int:
    return STANDARD_DIM if name == "standard" else max(polytope_dim(name, k), 2)


def step_time(head: torch.nn.Module, repeats: int) -> float:
    features = torch.randn(BATCH, IN_FEATURES, requires_grad=True)
    target = torch.randint(0, head.num_classes, (BATCH,))
    optimizer = torch.optim.SGD(head.param_groups(), lr=0.01, momentum=0.9)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        features.grad = None
        head.loss(features, target).backward()
        optimizer.step()

    # the first step (allocations, momentum buffers) is not counted
    return median_seconds(step, None, repeats, warmup=1)


def build_time(name: str, k: int, repeats: int = 3) -> float:
    built: list[torch.nn.Module] = []  # the head is freed before the next build, outside the timed call
    return median_seconds(lambda: built.append(create_head(name, IN_FEATURES, k)), None, repeats, before=built.clear)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, nargs="+", default=[10, 100, 1000, 100_000])
    parser.add_argument("--repeats", type=int, default=7, help="timed steps per head (median); 3 at K >= 10^5")
    parser.add_argument("--max-buffer-gb", type=float, default=2.0)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "polytope.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    for k in args.classes:
        repeats = args.repeats if k < 100_000 else 3
        for name in HEADS:
            d = head_dim(name, k)
            buffer = 0 if name == "standard" else k * d
            params = IN_FEATURES * d + d + (k * d if name == "standard" else 0)
            row = {"K": k, "head": name, "dim": d, "trainable_params": params,
                   "classifier_params": k * d if name == "standard" else 0, "buffer_floats": buffer}
            if buffer * 4 > args.max_buffer_gb * 1e9:
                row["step_ms"] = None
                row["note"] = f"not built: a {k} x {d} vertex buffer is {buffer * 4 / 1e9:.0f} GB in float32"
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    head = create_head(name, IN_FEATURES, k, dim=d)
                assert sum(p.numel() for p in head.parameters() if p.requires_grad) == params
                row["step_ms"] = 1e3 * step_time(head, repeats)
                del head
            rows.append(row)
            print(f"K={k:>6} {name:>9}: d={d:>6} params={params:>11,} buffer={buffer:>11,} "
                  f"step={'-' if row['step_ms'] is None else format(row['step_ms'], '.2f') + ' ms'}", flush=True)
    standard = {r["K"]: r for r in rows if r["head"] == "standard"}
    for r in rows:
        base = standard[r["K"]]
        r["params_vs_standard"] = r["trainable_params"] / base["trainable_params"]
        r["step_vs_standard"] = r["step_ms"] / base["step_ms"] if r["step_ms"] and base["step_ms"] else None

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scale = {
            "cube_1e6_build_s": build_time("cube", 10**6),
            "simplex_1e4_build_s": build_time("simplex", 10**4, repeats=1),
            "simplex_1e4_buffer_MB": 10**4 * 9999 * 4 / 1e6,
            "cube_1e6_buffer_MB": 10**6 * 20 * 4 / 1e6,
        }
    result = {
        "machine": f"{platform.machine()} CPU, torch {torch.__version__}, {torch.get_num_threads()} thread(s)",
        "polyheads": polyheads.__version__,
        "in_features": IN_FEATURES, "batch": BATCH, "standard_dim": STANDARD_DIM,
        "step": "head.loss forward + backward (features too) + SGD(momentum) step; median over repeats",
        "rows": rows, "scale": scale,
    }
    out = write_json(args.out, result)

    print("\n| K | head | d | trainable params | vs standard | vertex buffer (floats) | step (ms) | vs standard |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        step = "not built" if r["step_ms"] is None else f"{r['step_ms']:.2f}"
        ratio = "" if r["step_vs_standard"] is None else f"{r['step_vs_standard']:.2f}x"
        print(f"| {r['K']:,} | {r['head']} | {r['dim']:,} | {r['trainable_params']:,} | {r['params_vs_standard']:.3g}x "
              f"| {r['buffer_floats']:,} | {step} | {ratio} |")
    print(f"\ncube K = 10^6 (d = 20) builds in {scale['cube_1e6_build_s']:.3f} s (buffer {scale['cube_1e6_buffer_MB']:.0f} MB); "
          f"simplex K = 10^4 (d = 9 999) in {scale['simplex_1e4_build_s']:.3f} s (buffer {scale['simplex_1e4_buffer_MB']:.0f} MB)")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
