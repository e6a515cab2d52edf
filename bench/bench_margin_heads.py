"""Forward + backward time of the margin heads' ``loss`` against a linear classifier (issue 4).

The classifier part only: features of width d go to each head built with ``embedding=False`` (so the
head is d -> K like the baseline ``nn.Linear(d, K, bias=False)`` + cross-entropy), at B = 256,
d = 512, K = 10 000. pytorch-metric-learning's ArcFaceLoss / CosFaceLoss / SphereFaceLoss run at the
same shapes. All cases are timed round-robin in one process (medians over repeats), so machine noise
hits them alike. Goal: arcface / cosface / sphereface <= 1.3x linear and not slower than PML.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_margin_heads.py [--device cuda] [--repeats 30]

Writes bench/results/margin_heads.json.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from polyheads import create_head

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, round_robin, write_results  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "margin_heads.json"


def build_cases(batch: int, dim: int, classes: int, device: torch.device) -> dict[str, tuple[Callable[[], torch.Tensor], list[torch.Tensor]]]:
    """name -> (a function returning the loss of one step, the tensors whose .grad to clear)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, dim, generator=g).to(device).requires_grad_(True)
    y = torch.randint(0, classes, (batch,), generator=g).to(device)
    # triplet needs an N×K batch: 32 classes × 8 samples (its cost does not depend on K)
    y_nk = torch.arange(32).repeat_interleave(batch // 32).to(device)

    cases: dict[str, tuple[Callable[[], torch.Tensor], list[torch.Tensor]]] = {}
    linear = nn.Linear(dim, classes, bias=False).to(device)
    cases["linear+CE"] = (lambda: F.cross_entropy(linear(x), y), [x, *linear.parameters()])
    for name in ("arcface", "cosface", "sphereface", "center", "triplet"):
        head = create_head(name, dim, classes, embedding=False).to(device).train()
        target = y_nk if name == "triplet" else y
        cases[f"polyheads {name}"] = ((lambda h=head, t=target: h.loss(x, t)), [x, *head.parameters()])
    try:
        from pytorch_metric_learning import losses
    except ImportError:  # pragma: no cover - bench-only extra
        print("pytorch-metric-learning not installed: skipping its losses")
        return cases
    for name, cls in (("arcface", losses.ArcFaceLoss), ("cosface", losses.CosFaceLoss), ("sphereface", losses.SphereFaceLoss)):
        loss_fn = cls(num_classes=classes, embedding_size=dim).to(device)
        cases[f"PML {name}"] = ((lambda f=loss_fn: f(x, y)), [x, *loss_fn.parameters()])
    return cases


def run(batch: int, dim: int, classes: int, device: torch.device, repeats: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per loss forward+backward of every case, timed round-robin (gradients cleared untimed)."""
    cases = build_cases(batch, dim, classes, device)
    tensors = [t for _, case_tensors in cases.values() for t in case_tensors]

    def clear_grads() -> None:
        for t in tensors:
            t.grad = None

    steps = {name: (lambda loss=loss: loss().backward()) for name, (loss, _) in cases.items()}
    timings = round_robin(steps, device, repeats, warmup, before=clear_grads)
    return {name: t.wall for name, t in timings.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    print(
        f"margin heads, loss forward+backward: B={args.batch}, d={args.dim}, K={args.classes}, device={device}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {args.repeats} repeats (median)\n"
        "heads are built with embedding=False: the d->K classifier part only, like the linear baseline; "
        "triplet uses an N×K batch (32 classes × 8) and has no K-way classifier"
    )
    times = run(args.batch, args.dim, args.classes, device, args.repeats, args.warmup)
    median = {name: statistics.median(v) * 1e3 for name, v in times.items()}
    base = median["linear+CE"]
    rows = {}
    print(f"\n{'case':<24}{'median ms':>11}{'x linear':>10}{'x PML':>8}")
    for name, ms in median.items():
        row = {"median_ms": round(ms, 3), "ratio_vs_linear": round(ms / base, 3)}
        head = name.split(" ", 1)[-1]
        pml = median.get(f"PML {head}")
        if name.startswith("polyheads") and pml is not None:
            row["ratio_vs_pml"] = round(ms / pml, 3)
        rows[name] = row
        vs_pml = f"{row['ratio_vs_pml']:>8.2f}" if "ratio_vs_pml" in row else f"{'':>8}"
        print(f"{name:<24}{ms:>11.2f}{ms / base:>10.2f}{vs_pml}")
    goal = {h: rows[f"polyheads {h}"]["ratio_vs_linear"] <= 1.3 for h in ("arcface", "cosface", "sphereface")}
    print(f"\ngoal <= 1.3x linear: {goal}")
    result = {
        "benchmark": "margin heads loss forward+backward vs nn.Linear(d, K, bias=False) + cross-entropy",
        "note": "heads built with embedding=False (the d->K classifier part only); triplet on an N×K batch (32×8); "
        "input validation on (the default)",
        "shapes": {"batch": args.batch, "dim": args.dim, "classes": args.classes},
        **machine_info(device),
        "repeats": args.repeats,
        "results": rows,
        "goal_met_1_3x_linear": goal,
    }
    write_results(args.output, device.type, result)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
