#!/usr/bin/env python
"""Train any timm model with any polyheads head by seed 000's protocol (App. E).

    python tools/train.py --config configs/fashion_mnist/vmf.yaml
    python tools/train.py --config configs/cifar10/cosine.yaml data_root=~/data epochs=300 --device cuda
    python tools/train.py --resume runs/fashion_mnist/vmf/seed0          # continue exactly
    python tools/train.py --config configs/default.yaml --print-config  # the resolved settings

Data-parallel on N processes (GPUs: nccl, one per process; CPU: gloo) with PyTorch's launcher:

    torchrun --nproc_per_node=4 tools/train.py --config configs/cifar100/arcface.yaml
    torchrun --nproc_per_node=8 tools/train.py head=sharded 'head_kwargs={base: arcface, sample_rate: 0.1}'
    torchrun --nproc_per_node=2 tools/train.py --resume runs/...   # any number of ranks resumes any run

Only rank 0 prints and writes the run folder (docs/distributed.md).

Every key of the config (configs/default.yaml lists them) can be overridden as key=value; values
are YAML (head_kwargs.margin=0.3, nesterov=true, head_kwargs={dim: 3}).
"""
from __future__ import annotations

import argparse
import sys

import yaml


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    parser.add_argument("--config", help="YAML config (default: the built-in defaults = configs/default.yaml)")
    parser.add_argument("--resume", metavar="RUN", help="run folder or checkpoint to continue (its config is used)")
    parser.add_argument("--overwrite", action="store_true", help="start afresh in an output folder that holds a run")
    parser.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda when available)")
    parser.add_argument("--amp", choices=["auto", "none", "bf16", "fp16"], help="mixed precision of the backbone")
    parser.add_argument("--compile", action="store_true", help="torch.compile the backbone")
    parser.add_argument("--pretrained-path", help="local backbone checkpoint (no hub); its classifier is skipped")
    parser.add_argument("--output-dir", help="run folder (default runs/<dataset>/<head>/seed<seed>)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    args = parser.parse_args(argv)

    from polyheads.training import ConfigError, load_config
    from polyheads.training.checkpoint import find_checkpoint, load_checkpoint
    from polyheads.training.config import TrainConfig, apply_overrides
    from polyheads.training.trainer import RunFolderExists, Trainer

    overrides = list(args.overrides)
    for flag, key in (("device", "device"), ("amp", "amp"), ("pretrained_path", "pretrained_path"),
                      ("output_dir", "output_dir")):
        if getattr(args, flag) is not None:
            overrides.append(f"{key}={getattr(args, flag)}")
    if args.compile:
        overrides.append("compile=true")
    try:
        if args.resume:
            state = load_checkpoint(find_checkpoint(args.resume))
            config = apply_overrides(TrainConfig(**state["config"]), overrides) if overrides else TrainConfig(**state["config"])
            if args.config:
                print(f"note: --resume uses the checkpoint's config; --config {args.config} is ignored", file=sys.stderr)
        else:
            config = load_config(args.config, overrides)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
        return 0
    from polyheads.distributed import destroy_distributed, init_distributed

    info = init_distributed(device=config.device)  # torchrun's environment; rank 0 of 1 without it
    try:
        result = Trainer(config, resume=args.resume, overwrite=args.overwrite).fit()
    except RunFolderExists as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        destroy_distributed()
    if info.is_main:
        ranks = f" on {info.world_size} ranks" if info.distributed else ""
        print(f"best epoch {result.best_epoch + 1}: {result.val_metric} {result.best_val:.4f}; "
              f"{result.epochs_run} epochs in {result.wall_time_s:.1f}s{ranks}; run folder {result.run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
