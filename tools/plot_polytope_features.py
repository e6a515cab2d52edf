#!/usr/bin/env python
"""Train fixed Regular Polytope heads on the bundled Fashion-MNIST and draw their features (seed 002 Fig. 2/4).

    python tools/plot_polytope_features.py                        # simplex, orthoplex, cube -> docs/images/
    python tools/plot_polytope_features.py --head cube --epochs 3 --margin 0.0
    python tools/plot_polytope_features.py --head simplex hadamard --normalized --out runs/pictures

For each head: the seed-000 conv net (``timm.create_model("convnet_mnist", num_classes=10, head=...)``)
is trained for ``--epochs`` with Adam (seed 002's optimiser; ``--optimizer sgd`` uses the engine's SGD
groups) on the training split, then the test-set embeddings z̃ are drawn as a scatter-plot matrix with
the fixed vertices overlaid: polytope_<head>.png (and polytope_<head>_normalized.png with
``--normalized``). The features draw the ∧ (simplex), + (orthoplex) and × (cube) shapes of seed 002.
Prints the test accuracy and the compactness (cosine of each test feature to its own class vertex).
About a minute per head on one CPU core with the defaults.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HEADS = ("simplex", "orthoplex", "cube", "hadamard")
ROOT = Path(__file__).resolve().parent.parent


def _shrink_png(path: Path) -> None:
    """Re-save a PNG with a 256-colour palette (octree: keeps the class colours within a few levels;
    median cut merged some): files a quarter of the size, for committing."""
    from PIL import Image

    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    small.save(path, optimize=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--head", nargs="+", default=["simplex", "orthoplex", "cube"], choices=HEADS,
                        help="polytope heads to train (default: simplex orthoplex cube)")
    parser.add_argument("--epochs", type=int, default=2, help="training epochs per head (default 2)")
    parser.add_argument("--train-size", type=int, default=60000, help="training images used (default: all 60 000)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--optimizer", choices=("adam", "sgd"), default="adam",
                        help="adam (seed 002) or the engine's SGD with momentum 0.9")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (default: adam 1e-3, sgd 0.01)")
    parser.add_argument("--margin", default="phi", help="'phi' (m = φ, default) or an angle in radians (0 = RePoNet)")
    parser.add_argument("--points", type=int, default=3000, help="test points drawn per picture")
    parser.add_argument("--normalized", action="store_true", help="also draw the L2-normalised features (Fig. 6)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "images"), help="folder for the PNGs")
    parser.add_argument("--json", default=None, help="also write the measured numbers to this JSON file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.train_size < 1 or args.batch_size < 1:
        parser.error("--epochs, --train-size and --batch-size must be >= 1")
    try:
        margin = "phi" if args.margin == "phi" else float(args.margin)
    except ValueError:
        parser.error(f"--margin must be 'phi' or a number, got {args.margin!r}")

    import timm
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    import polyheads  # noqa: F401  (registers the heads and the conv net with timm)
    from polyheads.functional import l2_normalize
    from polyheads.plots import scatter_matrix
    from polyheads.training import build_optimizer, load_fashion_mnist, predict, train_one_epoch
    from polyheads.training.data import FASHION_MNIST_CLASSES

    try:
        x_train, y_train = load_fashion_mnist("train")
        x_test, y_test = load_fashion_mnist("test")
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    prep = lambda x: x.float().div(255.0).unsqueeze(1)  # noqa: E731  (seed 000 App. E.2: pixels in [0, 1])
    train_set = TensorDataset(prep(x_train[: args.train_size]), y_train[: args.train_size])
    test_loader = DataLoader(TensorDataset(prep(x_test), y_test), batch_size=1000)
    out = Path(args.out)
    results = {}
    for name in args.head:
        torch.manual_seed(args.seed)
        try:
            model = timm.create_model("convnet_mnist", num_classes=10, head=name, head_kwargs={"margin": margin})
        except (TypeError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        head = model.get_classifier()
        if args.optimizer == "sgd":
            optimizer = build_optimizer(model, lr=args.lr or 0.01, momentum=0.9)
        else:  # the engine's parameter groups (backbone, head; the vertices are buffers, never included)
            groups = build_optimizer(model, lr=args.lr or 1e-3).param_groups
            optimizer = torch.optim.Adam([{"params": g["params"], "name": g.get("name")} for g in groups], lr=args.lr or 1e-3)
        loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(args.seed))
        print(f"{name}: d = {head.dim}, m = {head.margin:.4f} rad ({head.margin * 180 / 3.141592653589793:.1f}°), "
              f"κ = {head.scale:g}, trainable classifier parameters: 0 (vertices are a {list(head.vertices.shape)} buffer)")
        start = time.perf_counter()
        for epoch in range(args.epochs):
            loss = train_one_epoch(model, loader, optimizer, epoch=epoch, progress=not args.no_progress,
                                   description=f"{name} epoch {epoch + 1}/{args.epochs}")
            print(f"  epoch {epoch + 1}: loss {loss:.4f} ({time.perf_counter() - start:.0f} s)")
        outputs = predict(model, test_loader)
        with torch.no_grad():
            z = head.embed(outputs["features"])
            own = (l2_normalize(z) * head.vertices[outputs["labels"]]).sum(1)
        accuracy = float((outputs["logits"].argmax(1) == outputs["labels"]).float().mean())
        results[name] = {
            "dim": head.dim, "margin": head.margin, "test_accuracy": accuracy,
            "mean_cos_to_own_vertex": float(own.mean()), "median_cos_to_own_vertex": float(own.median()),
            "epochs": args.epochs, "train_size": len(train_set), "optimizer": args.optimizer,
            "seconds": time.perf_counter() - start,
        }
        print(f"  test accuracy {accuracy:.4f}; cos(z̃, own vertex): mean {own.mean():.3f}, median {own.median():.3f}")
        pictures = [(False, out / f"polytope_{name}.png")]
        if args.normalized:
            pictures.append((True, out / f"polytope_{name}_normalized.png"))
        for normalize, path in pictures:
            margin_text = f"m = φ = {head.margin * 180 / 3.141592653589793:.1f}°" if head.margin_rule == "phi" else f"m = {head.margin:g}"
            title = (f"{name}, d = {head.dim}, {margin_text}: Fashion-MNIST test "
                     + ("z̃/‖z̃‖" if normalize else "z̃") + f", accuracy {accuracy:.1%}")
            scatter_matrix(z, outputs["labels"], path, vertices=head.vertices, normalize=normalize,
                           max_points=args.points, class_names=FASHION_MNIST_CLASSES, title=title, seed=args.seed)
            _shrink_png(path)
            print(f"  wrote {path} ({path.stat().st_size / 1e3:.0f} kB)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
