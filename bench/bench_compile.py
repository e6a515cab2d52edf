"""torch.compile and ONNX Runtime with polyheads heads on a timm model (issue 11, item 5).

Measures, side by side in one run on the same machine:

* graph breaks of ``torch.compile(model)`` for every registered head, train and eval mode
  (``torch._dynamo.explain``; vMF eval with its Monte-Carlo prediction and with ``prediction="mean"``);
* eval latency (median over repeats) of eager vs ``torch.compile`` (inductor) vs ONNX Runtime for a few
  heads, and the compiled outputs' largest deviation from eager;
* one training step (forward, ``HeadLoss``, backward) eager vs inductor for two heads.

Writes bench/results/compile.json (``--output`` elsewhere). CPU, one thread (the machines are shared:
medians of repeats).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")

import torch  # noqa: E402
import torch._dynamo as dynamo  # noqa: E402
from torch.export import Dim  # noqa: E402

import polyheads  # noqa: E402
import timm  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import median_seconds, write_json  # noqa: E402

ARCH, SIZE, BATCH, CLASSES = "resnet10t", 64, 32, 100
RESULTS = Path(__file__).resolve().parent / "results" / "compile.json"


def model_for(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(ARCH, num_classes=CLASSES, head=name, head_kwargs=kwargs)
    model.get_classifier().init_from_data(torch.rand(64, model.get_classifier().in_features))
    return model


def graph_breaks() -> dict[str, dict[str, int]]:
    x = torch.randn(4, 3, SIZE, SIZE)
    out: dict[str, dict[str, int]] = {}
    for name in polyheads.list_heads():
        row = {}
        cases = [("train", {}), ("eval", {})]
        if name == "vmf":
            cases.append(("eval_mean", {"prediction": "mean"}))
        for label, kwargs in cases:
            model = model_for(name, **kwargs).train(label == "train")
            dynamo.reset()
            with torch.no_grad():
                row[label] = dynamo.explain(model)(x).graph_break_count
        out[name] = row
        print(f"  {name:10s} graph breaks {row}", flush=True)
    return out


def onnx_session(model: torch.nn.Module, x: torch.Tensor):
    import onnxruntime as ort

    program = torch.onnx.export(model, (x,), dynamic_shapes=({0: Dim("batch")},), dynamo=True, verbose=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(program.model_proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda: session.run(None, {name: x.numpy()})[0]


def eval_latency(heads: list[tuple[str, dict]], repeats: int) -> dict[str, dict[str, float]]:
    x = torch.randn(BATCH, 3, SIZE, SIZE)
    out = {}
    for name, kwargs in heads:
        model = model_for(name, **kwargs).eval()
        with torch.no_grad():
            reference = model(x)
            eager = median_seconds(lambda: model(x), None, repeats, warmup=2)
            dynamo.reset()
            compiled = torch.compile(model)
            start = time.perf_counter()
            got = compiled(x)
            compile_s = time.perf_counter() - start
            inductor = median_seconds(lambda: compiled(x), None, repeats, warmup=2)
        run_onnx = onnx_session(model, x)
        onnx_out = torch.from_numpy(run_onnx())
        ort_s = median_seconds(run_onnx, None, repeats, warmup=2)
        label = name + ("(mean)" if kwargs else "")
        out[label] = {
            "eager_ms": 1e3 * eager,
            "inductor_ms": 1e3 * inductor,
            "onnxruntime_ms": 1e3 * ort_s,
            "inductor_speedup": eager / inductor,
            "onnxruntime_speedup": eager / ort_s,
            "inductor_compile_s": compile_s,
            "inductor_max_abs_diff": float((got - reference).abs().max()),
            "onnx_max_abs_diff": float((onnx_out - reference).abs().max()),
        }
        r = out[label]
        print(f"  {label:10s} eval eager {r['eager_ms']:.1f} ms | inductor {r['inductor_ms']:.1f} ms "
              f"(x{r['inductor_speedup']:.2f}, compile {compile_s:.0f} s, diff {r['inductor_max_abs_diff']:.1e}) | "
              f"onnxruntime {r['onnxruntime_ms']:.1f} ms (x{r['onnxruntime_speedup']:.2f}, diff {r['onnx_max_abs_diff']:.1e})",
              flush=True)
    return out


def train_step_latency(heads: list[str], repeats: int) -> dict[str, dict[str, float]]:
    x = torch.randn(BATCH, 3, SIZE, SIZE)
    y = torch.arange(BATCH) % CLASSES
    out = {}
    for name in heads:
        timings = {}
        for mode in ("eager", "inductor"):
            model = model_for(name).train()
            criterion = polyheads.HeadLoss(model)
            dynamo.reset()
            forward = torch.compile(model) if mode == "inductor" else model
            optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)

            def step():
                optimizer.zero_grad(set_to_none=True)
                loss = criterion(forward(x), y)
                loss.backward()
                optimizer.step()

            start = time.perf_counter()
            step()
            first = time.perf_counter() - start
            timings[mode] = median_seconds(step, None, repeats, warmup=1)
            if mode == "inductor":
                timings["compile_s"] = first
        out[name] = {
            "eager_ms": 1e3 * timings["eager"],
            "inductor_ms": 1e3 * timings["inductor"],
            "speedup": timings["eager"] / timings["inductor"],
            "inductor_first_step_s": timings["compile_s"],
        }
        r = out[name]
        print(f"  {name:10s} train step eager {r['eager_ms']:.1f} ms | inductor {r['inductor_ms']:.1f} ms "
              f"(x{r['speedup']:.2f}, first step {r['inductor_first_step_s']:.0f} s)", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="two heads, fewer repeats")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    logging.getLogger("torch._dynamo").setLevel(logging.ERROR)
    logging.getLogger("polyheads").setLevel(logging.WARNING)
    repeats = 5 if args.quick else args.repeats
    eval_heads = [("standard", {}), ("arcface", {}), ("poincare", {}), ("simplex", {}), ("vmf", {"prediction": "mean"})]
    train_heads = ["arcface", "vmf"]
    if args.quick:
        eval_heads, train_heads = eval_heads[:2], train_heads[:1]
    print(f"{ARCH} {SIZE}x{SIZE}, batch {BATCH}, {CLASSES} classes, torch {torch.__version__}, 1 thread")
    print("graph breaks of torch.compile(model) (torch._dynamo.explain):")
    breaks = graph_breaks()
    print("eval latency, medians of", repeats)
    evals = eval_latency(eval_heads, repeats)
    print("training step latency, medians of", repeats)
    trains = train_step_latency(train_heads, repeats)
    write_json(args.output, {
        "setup": {"arch": ARCH, "image_size": SIZE, "batch": BATCH, "num_classes": CLASSES, "threads": 1,
                  "torch": torch.__version__, "timm": timm.__version__, "repeats": repeats},
        "graph_breaks": breaks, "eval": evals, "train_step": trains,
    })
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
