#!/usr/bin/env python
"""Training-step throughput of every registered head vs the plain timm model with its linear classifier.

Goal (issue 9, item 8): on a GPU the head costs <= 5 % of a training step of a CIFAR-shaped run
(ResNet-50 with the 3 x 3 stem, 32 x 32 inputs, N x K = 10 x 26 = 260 images per step, bf16
autocast). On a CPU the default is the seed's small conv net on 28 x 28 inputs (N x K = 10 x 13),
where the backbone is tiny and the head's share is as large as it gets.

    python bench/bench_training.py                       # cpu: convnet_mnist, B = 130
    python bench/bench_training.py --device cuda         # resnet50_cifar, B = 260, bf16

Every head and the baseline run the same step -- forward, loss, backward, SGD step -- on the same
synthetic batch, interleaved over ``--repeats`` rounds; the median time per step is reported with
images/s and the ratio to the baseline. Results go to bench/results/training.json.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

import polyheads
from polyheads.training.engine import build_optimizer, head_loss, pre_logits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import round_robin, write_json  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", default=None)
    parser.add_argument("--batch-classes", type=int, default=10)
    parser.add_argument("--batch-instances", type=int, default=None)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--dim", type=int, default=None, help="embedding width (default: 3 on CPU, 128 on GPU)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per round")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--heads", nargs="*", default=None)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "training.json"))
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    gpu = device.type == "cuda"
    model_name = args.model or ("resnet50_cifar" if gpu else "convnet_mnist")
    k = args.batch_instances or (26 if gpu else 13)
    batch = args.batch_classes * k
    dim = args.dim or (128 if gpu else 3)
    steps = args.steps or (20 if gpu else 10)
    amp = torch.bfloat16 if gpu else None
    shape = (3, 32, 32) if "cifar" in model_name else (1, 28, 28)
    heads = args.heads or polyheads.list_heads()
    torch.manual_seed(0)
    x = torch.randn(batch, *shape, device=device)
    y = torch.arange(args.classes, device=device).repeat_interleave(k)[:batch] % args.classes

    def make(head: str | None) -> tuple[torch.nn.Module, torch.optim.Optimizer, callable]:
        torch.manual_seed(0)
        if head is None:
            model = polyheads.create_model(model_name, num_classes=args.classes, in_chans=shape[0]).to(device)
            opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

            def step() -> None:
                with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                    loss = F.cross_entropy(model(x).float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        else:
            kwargs = {"dim": dim}
            try:
                model = polyheads.create_model(model_name, num_classes=args.classes, in_chans=shape[0], head=head,
                                               head_kwargs=kwargs).to(device)
            except ValueError:  # fixed polytopes take their dimension from the class count
                model = polyheads.create_model(model_name, num_classes=args.classes, in_chans=shape[0], head=head).to(device)
            opt = build_optimizer(model, lr=1e-3, momentum=0.9, temperature_lr=1e-3)
            with torch.no_grad():
                for h in polyheads.get_heads(model):
                    h.init_from_data(pre_logits(model.eval(), x).float())
            model.train()

            def step() -> None:
                with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                    feats = pre_logits(model, x)
                loss = head_loss(model, feats, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        model.train()
        return model, opt, step

    runners = {"timm linear": make(None)[2]}
    for head in heads:
        runners[head] = make(head)[2]
    # 3 warm-up steps each (allocator, cuDNN autotune, lazy inits); a sample is the mean of `steps` steps
    timings = round_robin(runners, device, args.repeats, warmup=3, number=steps)
    times = {name: t.wall for name, t in timings.items()}
    base = statistics.median(times["timm linear"])
    rows = []
    print(f"{model_name} on {device} ({torch.cuda.get_device_name(device) if gpu else platform.processor() or 'cpu'}), "
          f"batch {batch} = {args.batch_classes} x {k}, {args.classes} classes, dim {dim}, amp {amp}, "
          f"median of {args.repeats} x {steps} steps")
    print(f"{'':14s} {'ms/step':>9s} {'images/s':>10s} {'vs linear':>10s}")
    for name, values in times.items():
        median = statistics.median(values)
        rows.append({"name": name, "ms_per_step": 1e3 * median, "images_per_s": batch / median, "ratio": median / base})
        print(f"{name:14s} {1e3 * median:9.2f} {batch / median:10.0f} {median / base:9.3f}x")
    result = {"model": model_name, "device": str(device), "batch": batch, "classes": args.classes, "dim": dim,
              "amp": str(amp), "repeats": args.repeats, "steps": steps, "torch": torch.__version__,
              "machine": platform.platform(), "rows": rows}
    out = write_json(args.out, result)
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
