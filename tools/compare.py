#!/usr/bin/env python
"""Compare heads the way seed 000 does: same backbone, data and budget; R replications; mean ± s.e.

    python tools/compare.py                                   # every registered head, bundled Fashion-MNIST
    python tools/compare.py --heads standard cosine vmf --seeds 5 --jobs 2
    python tools/compare.py --config configs/cifar10/standard.yaml --heads standard cosine data_root=~/data

The base config (default configs/default.yaml: Fashion-MNIST, the App. E.1 conv net, a short CPU
budget) fixes data, backbone and budget; each head's own hyper-parameters (LR, momentum, TLR, margin,
λ, embedding width) come from configs/<dataset>/<head>.yaml when that file exists (seed 000
Tables 5-11). Prints Markdown tables in the layout of seed 000 Tables 2, 3, 1 (and 4 for open-set)
and writes comparison.md, comparison.csv and runs.csv to --out.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="overrides for every run (epochs=5, ...)")
    parser.add_argument("--config", action="append", help="base config(s); one table column per config")
    parser.add_argument("--heads", nargs="+", default=["all"], help="heads to compare (default: every registered geometry; wrappers such as sharded left out)")
    parser.add_argument("--seeds", type=int, default=1, help="replications per head (seed 000: 5)")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once (processes)")
    parser.add_argument("--out", default="runs/compare", help="output folder")
    parser.add_argument("--head-configs", help="folder of per-head configs (default: configs/<dataset>/)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    import polyheads
    from polyheads.training import ConfigError, load_config
    from polyheads.training.compare import comparable_heads, compare, format_tables, summarize, write_tables

    configs = args.config or [str(CONFIGS / "default.yaml") if (CONFIGS / "default.yaml").is_file() else None]
    try:
        bases = [load_config(c) for c in configs]
        names = comparable_heads() if args.heads == ["all"] else args.heads
        heads = list(dict.fromkeys(polyheads.registry.resolve_head_name(h) for h in names))  # aliases once
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    folders = []
    for base, path in zip(bases, configs):
        if args.head_configs:
            folders.append(args.head_configs)
        else:
            root = Path(path).resolve().parent if path else CONFIGS
            candidates = [root / base.dataset, root.parent / base.dataset, root]
            folders.append(next((str(c) for c in candidates if c.is_dir() and any(c.glob("*.yaml"))), None))
    print(f"comparing {len(heads)} heads x {args.seeds} replications on {[b.dataset for b in bases]}: {heads}")
    start = time.perf_counter()
    try:
        records = compare(bases, heads, args.seeds, out_dir=args.out, head_configs_dirs=folders,
                          overrides=args.overrides, jobs=args.jobs, progress=not args.no_progress)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    wall = time.perf_counter() - start
    paths = write_tables(records, args.out)
    print()
    print(format_tables(summarize(records)))
    print(f"{len(records)} runs in {wall:.0f}s wall; tables in {paths['markdown']} and {paths['csv']}")
    return 1 if all("error" in r for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
