#!/usr/bin/env python
"""Evaluate a trained checkpoint: the seed-000 Table 1-4 columns via ``polyheads.evaluate``.

    python tools/evaluate.py runs/fashion_mnist/vmf/seed0            # best.pt of that run
    python tools/evaluate.py runs/fashion_mnist/vmf/seed0/last.pt --device cpu
    python tools/evaluate.py runs/cub200/cosine/seed0 data_root=/data/CUB_200_2011/images

Accuracy, ECE (15 equal-mass bins), ECE after temperature scaling (temperature fitted on the run's
validation split), AUROC of the head's confidence, mAP@R in the geometry's metric and with cosine.
key=value overrides change the stored config (e.g. data_root when the data moved).
"""
from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="checkpoint file, or a run folder (its best.pt)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (data_root=..., ...)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N (default: cuda when available)")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")
    args = parser.parse_args(argv)

    import torch

    from polyheads import get_head
    from polyheads.training.checkpoint import find_checkpoint, load_checkpoint
    from polyheads.training.config import ConfigError, TrainConfig, apply_overrides
    from polyheads.training.datasets import build_data
    from polyheads.training.trainer import _loader, build_model, evaluate_model, resolve_device

    try:
        path = find_checkpoint(args.checkpoint, "best.pt")
        state = load_checkpoint(path)
        config = TrainConfig(**state["config"])
        config = apply_overrides(config, [*args.overrides, "pretrained_path=null"])
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    device = resolve_device(args.device)
    torch.manual_seed(config.seed)
    data = build_data(config)
    model = build_model(config, state.get("num_classes", data.num_classes), state.get("in_chans", data.in_chans))
    model.load_state_dict(state["model"])
    model.to(device)
    if data.test is None:
        print("error: this data set has no test split", file=sys.stderr)
        return 2
    test = _loader(data.test, config.eval_batch_size, config.num_workers, device)
    val = _loader(data.val, config.eval_batch_size, config.num_workers, device)
    metrics = evaluate_model(model, test, val, device=device, protocol=data.protocol, raw=True)
    if args.json:
        print(json.dumps({"checkpoint": str(path), "epoch": state["epoch"], **metrics}, indent=2, default=str))
        return 0
    print(f"{path}: epoch {state['epoch'] + 1}, {config.dataset} {data.protocol}-set test split "
          f"({data.info['test']} images, {data.info['test_classes']} classes)")
    try:
        from polyheads.evaluation import format_results
    except ImportError:
        for key, value in metrics.items():
            print(f"  {key:<12} {value:.4f}")
    else:
        print(format_results(metrics, get_head(model)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
