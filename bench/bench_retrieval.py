"""mAP@R at Stanford-Online-Products test size: polyheads vs pytorch-metric-learning, side by side.

N = 60 000 synthetic 512-D embeddings of 11 000 classes (2-12 images per class, like SOP's test split),
cosine metric, queries = references (self excluded). Both libraries compute the same N x N
similarities in float32 on the CPU; each run happens in a fresh subprocess that measures its own
wall time and its peak resident memory above the memory held before the call (a sampling thread
reads /proc/self/statm every 2 ms). Reports medians over repeats, the values, and the ratios;
writes bench/results/retrieval.json.

pytorch-metric-learning setup (its best on this machine): ``AccuracyCalculator(k="max_bin_count")``
with ``CustomKNN(CosineSimilarity(), batch_size=1024)`` (faiss is not installed; without
``batch_size`` PML's k-NN materialises the full 60 000 x 60 000 float32 matrix, 14.4 GB, too much for
this shared 24 GiB machine). polyheads: ``retrieval_scores(x, y, "cosine")`` with its default
``working_memory`` of 256 MiB.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_retrieval.py [--n 60000] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PeakRSS, run_script, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def make_data(n: int, n_classes: int, dim: int, seed: int = 0):
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    extra = n - 2 * n_classes
    # every class has 2 images; the rest go to classes unevenly (gamma weights), at most 12 per class
    counts = np.full(n_classes, 2)
    weights = rng.gamma(0.7, size=n_classes)
    while extra > 0:
        counts += rng.multinomial(extra, weights / weights.sum())
        overflow = np.maximum(counts - 12, 0)
        counts -= overflow
        extra = int(overflow.sum())
        weights[counts >= 12] = 0.0
    labels = np.repeat(np.arange(n_classes), counts)
    rng.shuffle(labels)
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_classes, dim, generator=g)
    x = 0.35 * centres[torch.from_numpy(labels)] + torch.randn(n, dim, generator=g) / dim**0.5 * 16.0
    return x.contiguous(), torch.from_numpy(labels)


def run_one(impl: str, n: int, n_classes: int, dim: int, pml_batch: int) -> dict:
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    x, y = make_data(n, n_classes, dim)
    if impl == "polyheads":
        from polyheads.metrics import retrieval_scores

        retrieval_scores(x[:2000], y[:2000], "cosine")  # warm-up (imports, allocator)
        with PeakRSS() as mem:
            t = time.perf_counter()
            value = retrieval_scores(x, y, "cosine")["map_at_r"]
            seconds = time.perf_counter() - t
    else:
        from pytorch_metric_learning.distances import CosineSimilarity
        from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
        from pytorch_metric_learning.utils.inference import CustomKNN

        calc = AccuracyCalculator(
            include=("mean_average_precision_at_r",),
            k="max_bin_count",
            knn_func=CustomKNN(CosineSimilarity(), batch_size=pml_batch),
            device=torch.device("cpu"),
        )
        calc.get_accuracy(x[:2000], y[:2000])  # warm-up
        with PeakRSS() as mem:
            t = time.perf_counter()
            value = calc.get_accuracy(x, y)["mean_average_precision_at_r"]
            seconds = time.perf_counter() - t
    return {"impl": impl, "map_at_r": value, "seconds": seconds, "peak_extra_mib": mem.extra_mib}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=60_000)
    parser.add_argument("--classes", type=int, default=11_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pml-batch", type=int, default=1024)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "retrieval.json")
    parser.add_argument("--child", nargs=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(args.child[0], args.n, args.classes, args.dim, args.pml_batch)))
        return

    runs: dict[str, list[dict]] = {"polyheads": [], "pml": []}
    for r in range(args.repeats):
        order = ["polyheads", "pml"] if r % 2 == 0 else ["pml", "polyheads"]
        for impl in order:
            child = ["--child", impl, "--n", args.n, "--classes", args.classes, "--dim", args.dim,
                     "--pml-batch", args.pml_batch]
            result = run_script(__file__, child, cwd=ROOT)
            runs[impl].append(result)
            print(f"repeat {r + 1}/{args.repeats} {impl:>9}: mAP@R = {result['map_at_r']:.8f}  "
                  f"{result['seconds']:7.2f} s  peak +{result['peak_extra_mib']:8.1f} MiB", flush=True)

    def med(impl: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[impl])

    summary = {
        "benchmark": "map_at_r, cosine, queries = references",
        "n": args.n,
        "classes": args.classes,
        "dim": args.dim,
        "repeats": args.repeats,
        "device": "cpu",
        "omp_num_threads": int(os.environ.get("OMP_NUM_THREADS", "0") or 0),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores shared",
        "polyheads": {
            "map_at_r": runs["polyheads"][0]["map_at_r"],
            "seconds_median": med("polyheads", "seconds"),
            "peak_extra_mib_median": med("polyheads", "peak_extra_mib"),
            "working_memory_mib": 256,
        },
        "pytorch_metric_learning": {
            "map_at_r": runs["pml"][0]["map_at_r"],
            "seconds_median": med("pml", "seconds"),
            "peak_extra_mib_median": med("pml", "peak_extra_mib"),
            "setup": f"AccuracyCalculator(k='max_bin_count', knn_func=CustomKNN(CosineSimilarity(), batch_size={args.pml_batch}))",
        },
        "runs": runs,
    }
    summary["abs_difference"] = abs(summary["polyheads"]["map_at_r"] - summary["pytorch_metric_learning"]["map_at_r"])
    summary["speedup"] = summary["pytorch_metric_learning"]["seconds_median"] / summary["polyheads"]["seconds_median"]
    summary["memory_ratio"] = summary["polyheads"]["peak_extra_mib_median"] / max(summary["pytorch_metric_learning"]["peak_extra_mib_median"], 1e-9)
    write_json(args.out, summary)
    print(
        f"\nmAP@R polyheads {summary['polyheads']['map_at_r']:.8f} vs PML {summary['pytorch_metric_learning']['map_at_r']:.8f} "
        f"(|diff| {summary['abs_difference']:.2e})\n"
        f"time   polyheads {summary['polyheads']['seconds_median']:.2f} s vs PML {summary['pytorch_metric_learning']['seconds_median']:.2f} s "
        f"-> {summary['speedup']:.2f}x faster\n"
        f"memory polyheads +{summary['polyheads']['peak_extra_mib_median']:.0f} MiB vs PML +{summary['pytorch_metric_learning']['peak_extra_mib_median']:.0f} MiB "
        f"-> {summary['memory_ratio']:.3f} of PML's peak\nwrote {args.out}"
    )


if __name__ == "__main__":
    main()
