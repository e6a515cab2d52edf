"""Issue 11, items 2, 3 and 6: timm's own train.py through ``python -m polyheads.timm_train``, the
namespaced ``polyhead=`` spelling, and ``pretrained=True`` from a local file keeping each head's own
initialisation.

timm's train.py is not shipped with the timm package and nothing may be downloaded here, so CI runs the
runner against a *stand-in* that reproduces the structure of train.py that matters (written below):
``from timm.models import create_model`` bound at import time, ``main()`` behind ``if __name__ ==
"__main__"``, ``_parse_args()``, the training loss chosen from ``--smoothing`` / ``--mixup`` / ``--cutmix`` /
``--bce-loss`` exactly as train.py does, ``timm.task.ClassificationTask(criterion=...)`` (timm >= 1.0.2x) or
``train_one_epoch(..., loss_fn, ...)`` (earlier), timm's real dataset, loader, Mixup and optimizer
factory, and a validation pass with ``nn.CrossEntropyLoss``. docs/own_training_loop.md lists what was
run by hand against the real train.py.
"""
import inspect
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from polyheads import HeadLoss, get_head
from polyheads.functional import polytope_vertices
from polyheads.heads.vmf import weight_init_std
from polyheads.timm_train import TimmTrainError, main, run

STAND_IN = r'''
"""A stand-in for timm's train.py (the structure polyheads.timm_train relies on)."""
import argparse
import json
import os

import torch
import torch.nn as nn

from timm.data import create_dataset, create_loader, resolve_data_config, Mixup, FastCollateMixup
from timm.loss import SoftTargetCrossEntropy, LabelSmoothingCrossEntropy, BinaryCrossEntropy
from timm.models import create_model
from timm.optim import create_optimizer_v2
from timm.task import ClassificationTask

TASK_API = __TASK_API__

parser = argparse.ArgumentParser()
parser.add_argument("data")
parser.add_argument("--model", default="resnet10t")
parser.add_argument("--num-classes", type=int, default=None)
parser.add_argument("--model-kwargs", nargs="*", default=[])
parser.add_argument("--input-size", type=int, nargs=3, default=None)
parser.add_argument("--batch-size", type=int, default=4)
parser.add_argument("--epochs", type=int, default=1)
parser.add_argument("--lr", type=float, default=0.05)
parser.add_argument("--opt", default="sgd")
parser.add_argument("--smoothing", type=float, default=0.1)
parser.add_argument("--mixup", type=float, default=0.0)
parser.add_argument("--cutmix", type=float, default=0.0)
parser.add_argument("--bce-loss", action="store_true")
parser.add_argument("--jsd-loss", action="store_true")
parser.add_argument("--model-dtype", default=None)
parser.add_argument("--torchscript", action="store_true")
parser.add_argument("--head-init-scale", type=float, default=None)
parser.add_argument("--head-init-bias", type=float, default=None)
parser.add_argument("--amp-dtype", default=None)
parser.add_argument("--output", default="")


def _parse_args():
    args = parser.parse_args()
    return args, ""


def train_one_epoch_task(epoch, model, loader, optimizer, args, task=None, mixup_fn=None, amp_autocast=None):
    losses = []
    task.get_trainable_module().train()
    for input, target in loader:
        if mixup_fn is not None:
            input, target = mixup_fn(input, target)
        with amp_autocast():
            loss = task(input, target)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def train_one_epoch_loss_fn(epoch, model, loader, optimizer, loss_fn, args, mixup_fn=None, amp_autocast=None):
    losses = []
    model.train()
    for input, target in loader:
        if mixup_fn is not None:
            input, target = mixup_fn(input, target)
        with amp_autocast():
            output = model(input)
            loss = loss_fn(output, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


train_one_epoch = train_one_epoch_task if TASK_API else train_one_epoch_loss_fn


def validate(model, loader, loss_fn):
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for input, target in loader:
            total += float(loss_fn(model(input), target)) * len(target)
            count += len(target)
    return total / count


def main():
    args, _ = _parse_args()
    kwargs = dict(kv.split("=", 1) for kv in args.model_kwargs)
    model = create_model(args.model, pretrained=False, num_classes=args.num_classes, **kwargs)
    if args.head_init_scale is not None:
        model.get_classifier().bias.mul_(args.head_init_scale)
    if args.model_dtype:
        model.to(dtype=getattr(torch, args.model_dtype))
    data_config = resolve_data_config(vars(args), model=model)
    mixup_active = args.mixup > 0 or args.cutmix > 0
    mixup_fn = None
    if mixup_active:
        mixup_fn = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, label_smoothing=args.smoothing,
                         num_classes=args.num_classes)
    dataset_train = create_dataset("", root=args.data, split="train", is_training=True)
    dataset_eval = create_dataset("", root=args.data, split="validation", is_training=False)
    loader_train = create_loader(dataset_train, input_size=data_config["input_size"], batch_size=args.batch_size,
                                 is_training=True, no_aug=True, use_prefetcher=False, num_workers=0,
                                 device=torch.device("cpu"))
    loader_eval = create_loader(dataset_eval, input_size=data_config["input_size"], batch_size=args.batch_size,
                                is_training=False, use_prefetcher=False, num_workers=0, device=torch.device("cpu"))
    # the loss from the CLI flags, as train.py builds it
    if mixup_active:
        train_loss_fn = BinaryCrossEntropy() if args.bce_loss else SoftTargetCrossEntropy()
    elif args.smoothing:
        train_loss_fn = BinaryCrossEntropy(smoothing=args.smoothing) if args.bce_loss else LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    else:
        train_loss_fn = nn.CrossEntropyLoss()
    validate_loss_fn = nn.CrossEntropyLoss()
    task = ClassificationTask(model=model, criterion=train_loss_fn, device=torch.device("cpu")) if TASK_API else None
    optimizer = create_optimizer_v2(model, opt=args.opt, lr=args.lr, weight_decay=0.0)
    amp = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if args.amp_dtype else (lambda: torch.autocast("cpu", enabled=False))
    results = {"train": [], "validation": []}
    for epoch in range(args.epochs):
        if TASK_API:
            losses = train_one_epoch(epoch, model, loader_train, optimizer, args, task=task, mixup_fn=mixup_fn, amp_autocast=amp)
        else:
            losses = train_one_epoch(epoch, model, loader_train, optimizer, train_loss_fn, args, mixup_fn=mixup_fn, amp_autocast=amp)
        results["train"].append(losses)
        results["validation"].append(validate(model, loader_eval, validate_loss_fn))
    if args.output:
        os.makedirs(args.output, exist_ok=True)
        results["criterion"] = type(task.criterion).__name__ if TASK_API else None
        with open(os.path.join(args.output, "results.json"), "w") as f:
            json.dump(results, f)
        torch.save(model.state_dict(), os.path.join(args.output, "checkpoint.pth"))
    return {"model": model, "task": task, "optimizer": optimizer, "results": results}


if __name__ == "__main__":
    main()
'''

NUM_CLASSES = 3


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """A tiny ImageFolder: train/ (6 images per class) and validation/ (2 per class), 24 x 24 RGB."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("validation", 2)):
        for c in range(NUM_CLASSES):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = (rng.random((24, 24, 3)) * 80 + 60 * c).astype("uint8")  # classes differ in brightness
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def scripts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scripts")
    paths = {}
    for name, task_api in (("task", True), ("loss_fn", False)):
        path = folder / f"train_{name}.py"
        path.write_text(STAND_IN.replace("__TASK_API__", repr(task_api)))
        paths[name] = path
    return paths


def base_args(image_folder, *extra):
    return [str(image_folder), "--model", "resnet10t", "--num-classes", str(NUM_CLASSES),
            "--input-size", "3", "32", "32", *extra]


def test_command_line_runs_train_script_with_vmf_and_its_initialisation(image_folder, scripts, tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "polyheads.timm_train", "--train-script", str(scripts["task"]), "--head", "vmf",
               "--head-kwargs", '{"dim": 8}', "--init-batches", "2", "--",
               *base_args(image_folder, "--smoothing", "0", "--output", str(out))]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["criterion"] == "HeadLoss"
    losses = results["train"][0]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)  # 18 images / batch 4, drop_last in training
    state = torch.load(out / "checkpoint.pth", weights_only=True)
    assert state["fc.embedding.weight"].shape == (8, 512)
    assert bool(state["fc.alpha_from_data"]), "init_from_data (seed 000 App. D) ran before the first epoch"


@pytest.mark.parametrize("api", ["task", "loss_fn"])
def test_criterion_swapped_and_epoch_hooks_called(image_folder, scripts, api):
    out = run(scripts[api], base_args(image_folder, "--epochs", "2", "--smoothing", "0.1"), head="arcface",
              head_kwargs={"dim": 16, "margin_warmup_epochs": 1}, init_batches=0)
    model = out["model"]
    head = get_head(model)
    assert head.head_name == "arcface" and head.epoch == 1 and head.margin_active  # on_epoch_start(0), (1)
    if api == "task":
        assert isinstance(out["task"].criterion, HeadLoss) and out["task"].criterion.label_smoothing == 0.1
    assert all(math.isfinite(v) for losses in out["results"]["train"] for v in losses)
    # the swapped criterion is the head's objective: on a fixed batch it equals head.loss with smoothing 0
    x, y = torch.randn(6, 3, 32, 32), torch.tensor([0, 1, 2, 0, 1, 2])
    model.train()
    criterion = HeadLoss(model)
    with torch.no_grad():
        feats = model.forward_head(model.forward_features(x), pre_logits=True)
        expected = head.loss(feats, y)
        assert torch.allclose(criterion(model(x), y), expected, atol=1e-5)


def test_mixup_targets_reach_a_softmax_head(image_folder, scripts):
    out = run(scripts["task"], base_args(image_folder, "--mixup", "0.4", "--cutmix", "1.0"), head="cosine")
    assert isinstance(out["task"].criterion, HeadLoss)
    assert all(math.isfinite(v) for v in out["results"]["train"][0])


def test_poincare_gets_a_riemannian_optimizer(image_folder, scripts):
    import geoopt

    out = run(scripts["task"], base_args(image_folder, "--opt", "momentum"), head="poincare")
    assert isinstance(out["optimizer"], geoopt.optim.RiemannianSGD)
    head = get_head(out["model"])
    assert float(head.offsets.detach().norm(dim=1).max()) < 1.0 / math.sqrt(head.c)  # still inside the ball


@pytest.mark.parametrize(
    "head,extra,text",
    [
        ("arcface", ["--mixup", "0.4"], "refuses: the margin acts on the one target class"),
        ("vmf", [], "--smoothing 0"),  # train.py's default smoothing 0.1; vMF's Eq. 13 is no cross-entropy
        ("cosine", ["--bce-loss", "--smoothing", "0"], "--bce-loss"),
        ("cosine", ["--model-dtype", "bfloat16"], "use --amp"),
        ("cosine", ["--head-init-scale", "2.0"], "initialise themselves"),
        (None, [], "has no polyheads head"),
    ],
)
def test_refusals_are_clear(image_folder, scripts, head, extra, text):
    with pytest.raises(TimmTrainError) as info:
        run(scripts["task"], base_args(image_folder, *extra), head=head, init_batches=0)
    assert text in str(info.value)


def test_mixup_refusal_names_the_heads_that_accept_soft_targets(image_folder, scripts):
    with pytest.raises(TimmTrainError) as info:
        run(scripts["task"], base_args(image_folder, "--cutmix", "1.0"), head="sphereface")
    assert "'sphereface'" in str(info.value)
    for name in ("standard", "cosine", "normface", "poincare"):
        assert name in str(info.value)


def test_missing_train_script_says_where_to_get_it(tmp_path, capsys):
    code = main(["--train-script", str(tmp_path / "train.py"), "--head", "cosine", "--", "data"])
    assert code == 2 and "pytorch-image-models" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--head", "cosine", "--head-kwargs", "[1]", "--train-script", str(tmp_path / "train.py"), "--", "data"])
    assert "JSON object" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# item 3: a spelling that never collides with a model's own keyword
# ---------------------------------------------------------------------------------------------
def _timm_model_classes():
    import timm.models as models

    for module in vars(models).values():
        if inspect.ismodule(module) and module.__name__.startswith("timm.models."):
            for obj in vars(module).values():
                if isinstance(obj, type) and issubclass(obj, torch.nn.Module) and obj.__module__ == module.__name__:
                    yield obj


def test_polyhead_keyword_is_used_by_no_timm_model():
    taken = {"polyhead": [], "head_kwargs": [], "head": []}
    for cls in _timm_model_classes():
        try:
            params = inspect.signature(cls.__init__).parameters
        except (TypeError, ValueError):
            continue
        for key in taken:
            if key in params:
                taken[key].append(cls.__name__)
    assert not taken["polyhead"] and not taken["head_kwargs"]
    assert "HighResolutionNet" in taken["head"]  # the known collision that head= must leave alone


def test_hrnet_keeps_its_own_head_while_polyhead_installs_ours():
    model = timm.create_model("hrnet_w18_small", head="incre", polyhead="cosine", num_classes=4)
    assert type(model.classifier).__name__ == "CosineHead"
    assert hasattr(model, "incre_modules") and model.incre_modules is not None  # HRNet's "incre" head is built
    assert model.head_hidden_size == 2048 and model.classifier.in_features == 2048
    plain = timm.create_model("hrnet_w18_small", head="classification", num_classes=4)  # HRNet's other own value
    assert isinstance(plain.classifier, torch.nn.Linear)


# ---------------------------------------------------------------------------------------------
# item 6: pretrained=True from a local file loads the backbone, the head keeps its own initialisation
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def plain_checkpoint(tmp_path_factory):
    plain = timm.create_model("resnet10t", num_classes=1000)
    path = tmp_path_factory.mktemp("ckpt") / "resnet10t.pth"
    torch.save(plain.state_dict(), path)
    return path, plain.state_dict()


@pytest.mark.parametrize("overlay", [{}, {"num_classes": -1}])  # -1: what train.py's --pretrained-path passes
def test_pretrained_file_keeps_vmf_initialisation(plain_checkpoint, overlay):
    path, plain = plain_checkpoint
    model = timm.create_model("resnet10t", pretrained=True, pretrained_cfg_overlay={"file": str(path), **overlay},
                              num_classes=100, head="vmf", head_kwargs={"dim": 64, "lam": 0.7})
    for key in ("conv1.0.weight", "layer4.0.conv2.weight", "layer2.0.bn1.running_var"):
        assert torch.equal(model.state_dict()[key], plain[key])
    head = model.fc
    # seed 000 Eq. 19: w_ji ~ N(0, σ²), σ = λ(n-1)/((1-λ²)√n); 6400 draws: the sample std is within 4 %
    sigma = weight_init_std(64, 0.7)
    weight = head.weight.detach()
    assert abs(float(weight.std()) / sigma - 1) < 0.04 and abs(float(weight.mean())) < 4 * sigma / 80
    assert not bool(head.alpha_from_data) and float(head.alpha) == pytest.approx(head._default_alpha(), rel=1e-6)
    assert torch.equal(head.embedding.bias, torch.zeros(64))  # the head's own Xavier / zero-bias scheme


@pytest.mark.parametrize("name", ["simplex", "orthoplex", "cube", "hadamard"])
def test_pretrained_file_keeps_polytope_vertices(plain_checkpoint, name):
    path, plain = plain_checkpoint
    model = timm.create_model("resnet10t", pretrained=True, pretrained_cfg_overlay={"file": str(path), "num_classes": -1},
                              num_classes=10, head=name)
    assert torch.equal(model.layer3[0].conv1.weight, plain["layer3.0.conv1.weight"])
    head = model.fc
    assert torch.equal(head.vertices, polytope_vertices(name, 10, head.dim, dtype=torch.float32))
    assert "vertices" not in dict(head.named_parameters()) and head.margin == pytest.approx(head.phi)
