"""Classifier memory per rank and step time for K = 10^5 and 10^6 classes (d = 512), 1 vs 2 ranks on CPU
(gloo), and the fixed cube head (seed 002) at K = 10^6 beside them (issue 10).

Every configuration runs in fresh processes (one per rank, ``OMP_NUM_THREADS=1`` each) so that the
peak resident memory belongs to it alone. A step is ``head.loss`` forward + backward (to the
features too, as inside a network) + SGD with momentum 0.9 over the head's parameters, on a global
batch of ``--batch`` synthetic 512-wide features (each of the 2 ranks holds half of it).

- ``arcface`` 1 rank: the unsharded head (its fused margin cross-entropy, the memory-lean path);
- ``sharded/arcface`` 2 ranks: ``ShardedHead`` -- each rank K/2 class weights, embeddings all-gathered,
  distributed log-sum-exp; also with PartialFC sampling ``sample_rate=0.1``;
- ``cube`` 1 rank: the fixed d-cube classifier, d = ceil(log2 K) = 20, vertices a buffer.

Reported per rank: ``state_mb`` -- the head's parameters + gradients + momentum + buffers, counted
from the tensors (exact); ``peak_mb`` -- the peak resident set size (``ru_maxrss``) above the
process's size just before the head is built (measured: includes the step's temporaries, the
all-gather buffers and allocator slack; ``build_peak_mb`` is the same right after construction);
``step_s`` -- median step time over ``--steps`` after one
warm-up step (the slowest rank). A configuration is skipped (and said so) when the machine's
available memory is below its expected need.

Writes bench/results/distributed.json and prints a Markdown table (docs/distributed.md quotes it).

    .venv/bin/python bench/bench_distributed.py            # K = 1e5 and 1e6 (a few minutes, ~8 GB peak)
    .venv/bin/python bench/bench_distributed.py --ks 100000 --steps 3
"""
from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import platform
import resource
import socket
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import median_seconds, rss_bytes, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
D = 512

CONFIGS = [  # (label, head name, head kwargs, ranks)
    ("arcface", "arcface", {"margin": 0.5, "scale": 64.0}, 1),
    ("sharded/arcface", "sharded", {"base": "arcface", "margin": 0.5, "scale": 64.0}, 2),
    ("sharded/arcface sample_rate=0.1", "sharded", {"base": "arcface", "margin": 0.5, "scale": 64.0, "sample_rate": 0.1}, 2),
    ("cube", "cube", {}, 1),
]


def _available_bytes() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, name: str, kwargs: dict, k: int, batch: int, steps: int, queue: Any) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch
    import torch.distributed as dist

    import polyheads

    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                timeout=timedelta(seconds=1800))
    try:
        gen = torch.Generator().manual_seed(rank)
        local = batch // world
        features = torch.randn(local, D, generator=gen, requires_grad=True)
        target = torch.randint(0, k, (local,), generator=gen)
        base = rss_bytes()
        torch.manual_seed(0)
        head = polyheads.create_head(name, D, k, **kwargs)
        optimizer = torch.optim.SGD(head.param_groups(), lr=0.01, momentum=0.9)
        built = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
        last: dict[str, torch.Tensor] = {}

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            features.grad = None
            last["loss"] = head.loss(features, target)
            last["loss"].backward()
            optimizer.step()

        # one untimed warm-up step; the ranks meet at a barrier (untimed) before every step
        step_s = median_seconds(step, None, steps, warmup=1, before=dist.barrier if world > 1 else None)
        loss = last["loss"]
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
        nbytes = lambda ts: sum(t.numel() * t.element_size() for t in ts)  # noqa: E731
        params = list(head.parameters())
        momentum = [s["momentum_buffer"] for s in optimizer.state.values() if s.get("momentum_buffer") is not None]
        state = {
            "weights_mb": nbytes(params) / 2**20,
            "grads_mb": nbytes([p.grad for p in params if p.grad is not None]) / 2**20,
            "momentum_mb": nbytes(momentum) / 2**20,
            "buffers_mb": nbytes(list(head.buffers())) / 2**20,
        }
        classifier = getattr(head, "local", head)
        queue.put({"rank": rank, "loss": float(loss.detach()), "step_s": step_s, "peak_mb": max(peak, 0) / 2**20,
                   "build_peak_mb": max(built, 0) / 2**20,
                   "state_mb": sum(state.values()), **state, "dim": head.dim,
                   "class_rows": int(classifier.weight.shape[0]) if hasattr(classifier, "weight") else 0})
    finally:
        if world > 1:
            dist.destroy_process_group()


def expected_bytes(name: str, kwargs: dict, k: int, world: int, batch: int) -> float:
    """What a configuration needs per rank, roughly: class weights x 3 (weights, gradient, momentum)
    plus a few [B, K] temporaries; the cube head: its K x 20 vertex buffer and the [B, K] logits."""
    if name == "cube":
        return k * 20 * 4 + 6 * batch * k * 4
    rows = k / world
    return 3 * rows * D * 4 + 8 * batch * rows * 4


def run_config(label: str, name: str, kwargs: dict, world: int, k: int, batch: int, steps: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, world, port, name, kwargs, k, batch, steps, queue)) for r in range(world)]
    for p in procs:
        p.start()
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join()
        if p.exitcode:
            raise RuntimeError(f"{label} K={k}: a rank exited with {p.exitcode}")
    results.sort(key=lambda r: r["rank"])
    losses = {round(r["loss"], 4) for r in results}
    return {
        "head": label, "K": k, "ranks": world, "batch_global": batch, "batch_per_rank": batch // world,
        "dim": results[0]["dim"], "class_rows_per_rank": [r["class_rows"] for r in results],
        "state_mb_per_rank": max(r["state_mb"] for r in results),
        "weights_mb": max(r["weights_mb"] for r in results), "grads_mb": max(r["grads_mb"] for r in results),
        "momentum_mb": max(r["momentum_mb"] for r in results), "buffers_mb": max(r["buffers_mb"] for r in results),
        "peak_mb_per_rank": max(r["peak_mb"] for r in results),
        "build_peak_mb_per_rank": max(r["build_peak_mb"] for r in results),
        "step_s": max(r["step_s"] for r in results),
        "loss_same_on_every_rank": len(losses) == 1,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ks", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--batch", type=int, default=64, help="global batch (2 ranks: half each)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "distributed.json"))
    args = parser.parse_args()

    rows, skipped = [], []
    for k in args.ks:
        for label, name, kwargs, world in CONFIGS:
            need = expected_bytes(name, kwargs, k, world, args.batch // world) * world
            available = _available_bytes()
            if need > 0.8 * available:
                skipped.append({"head": label, "K": k, "ranks": world, "needs_gb": need / 2**30,
                                "available_gb": available / 2**30})
                print(f"skipped {label} K={k}: needs ~{need / 2**30:.1f} GB, {available / 2**30:.1f} GB available")
                continue
            t0 = time.perf_counter()
            row = run_config(label, name, kwargs, world, k, args.batch, args.steps)
            rows.append(row)
            print(f"{label:34s} K={k:>9,d} ranks={world}  state {row['state_mb_per_rank']:9.1f} MB/rank  "
                  f"peak {row['peak_mb_per_rank']:9.1f} MB/rank  step {row['step_s']:.3f} s  ({time.perf_counter() - t0:.0f} s)",
                  flush=True)

    print("\n| head | K | ranks | class rows / rank | weights + grads + momentum + buffers (MB / rank) | peak RSS above base (MB / rank) | step (s) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['head']} | {r['K']:,} | {r['ranks']} | {max(r['class_rows_per_rank']):,} | "
              f"{r['state_mb_per_rank']:,.1f} | {r['peak_mb_per_rank']:,.0f} | {r['step_s']:.3f} |")
    import torch

    import polyheads

    out = write_json(args.out, {
        "machine": f"{platform.machine()} CPU ({os.cpu_count()} cores), torch {torch.__version__}, 1 thread per rank, gloo",
        "polyheads": polyheads.__version__, "dim": D, "steps": args.steps,
        "step": "head.loss forward + backward (features too) + SGD(momentum 0.9); median over steps, slowest rank",
        "memory": "state_mb: parameters + gradients + momentum + buffers of the head (exact); peak_mb: ru_maxrss above "
                  "the RSS just before the head is built (measured)",
        "rows": rows, "skipped": skipped,
    })
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
