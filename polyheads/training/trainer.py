"""The trainer: seed 000's protocol end to end (App. E), for any timm model and any registered head.

    from polyheads.training import Trainer, load_config
    result = Trainer(load_config("configs/fashion_mnist/vmf.yaml", ["epochs=5"])).fit()

One run = build the data splits (App. E.2) -> ``timm.create_model(model, head=...)`` (+ a local
backbone checkpoint, + frozen BatchNorm) -> ``head.init_from_data`` once -> SGD with the heads'
parameter groups -> per epoch: ``head.on_epoch_start``, N x K episodes, validation (accuracy for
fixed-set, Recall@1 in the head's own metric for open-set, as the authors' code), LR halving /
early stopping (:class:`PlateauSchedule`), ``last.pt`` every epoch and ``best.pt`` on improvement
-> the best epoch's weights are evaluated on the test split with ``polyheads.evaluate``.

The run folder holds ``config.yaml``, ``metrics.csv`` / ``metrics.jsonl`` (one row per epoch),
``last.pt``, ``best.pt`` and ``results.json``. ``Trainer(config, resume=run_dir).fit()`` continues a
run exactly where its last checkpoint left it (same batches, same augmentation, same weights).
"""
from __future__ import annotations

import csv
import inspect
import json
import math
import os
import platform
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader

from ..registry import get_head_class, resolve_head_name
from ..timm import create_model, get_heads, load_backbone_state_dict
from .checkpoint import copy_checkpoint, find_checkpoint, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import TrainConfig, config_to_dict
from .datasets import DataBundle, build_data, collate_batched
from .engine import build_optimizer, init_heads_from_data, predict, train_one_epoch
from .modules import PreLogits, freeze_batch_norm
from .sampler import EpisodicBatchSampler
from .schedule import PlateauSchedule

__all__ = ["Trainer", "TrainResult", "train", "seed_everything", "resolve_device", "resolve_amp", "build_model",
           "open_set_recall_at_1", "evaluate_model", "RunFolderExists"]

CHECKPOINT_VERSION = 1


class RunFolderExists(FileExistsError):
    """The output folder already holds a run; resume it or choose another folder."""


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns (also written to ``results.json``)."""

    run_dir: Path
    best_epoch: int
    best_val: float
    val_metric: str
    epochs_run: int
    stopped_early: bool
    test: dict[str, float] = field(default_factory=dict)
    wall_time_s: float = 0.0
    train_images_per_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"run_dir": str(self.run_dir), "best_epoch": self.best_epoch, "best_val": self.best_val,
                "val_metric": self.val_metric, "epochs_run": self.epochs_run, "stopped_early": self.stopped_early,
                "test": self.test, "wall_time_s": self.wall_time_s, "train_images_per_s": self.train_images_per_s}


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; a CUDA request without a GPU fails clearly."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={name!r} but torch sees no CUDA device; use device=cpu or device=auto")
    return device


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: ``auto`` = bf16 on a CUDA device that supports it (else fp16 on CUDA), off on CPU."""
    if amp == "none":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


def _accepts(name: str, argument: str) -> bool:
    try:
        params = inspect.signature(get_head_class(name)).parameters
    except (TypeError, ValueError):
        return False
    return argument in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def build_model(config: TrainConfig, num_classes: int, in_chans: int) -> nn.Module:
    """``timm.create_model(config.model, head=config.head)`` sized for the data, with the local
    backbone checkpoint (``pretrained_path``) and frozen BatchNorm (``freeze_bn``) applied."""
    head = resolve_head_name(config.head)
    head_kwargs = dict(config.head_kwargs)
    if config.embedding_dim is not None and "dim" not in head_kwargs and _accepts(head, "dim"):
        head_kwargs["dim"] = config.embedding_dim
    model_kwargs = dict(config.model_kwargs)
    model_kwargs.setdefault("in_chans", in_chans)
    try:
        model = create_model(config.model, pretrained=False, num_classes=num_classes, head=head,
                             head_kwargs=head_kwargs, **model_kwargs)
    except ValueError as exc:
        if "dim" in config.head_kwargs or "dim" not in head_kwargs:
            raise
        # embedding_dim is a default for every head; a head that cannot take it (a fixed polytope
        # needs dim >= its Eq. 7 size, seed 002) keeps its own default width
        head_kwargs.pop("dim")
        warnings.warn(f"head {head!r} rejected dim={config.embedding_dim} ({exc}); it keeps its default width",
                      RuntimeWarning, stacklevel=2)
        model = create_model(config.model, pretrained=False, num_classes=num_classes, head=head,
                             head_kwargs=head_kwargs, **model_kwargs)
    if config.pretrained_path:
        from timm.models import load_state_dict

        path = Path(config.pretrained_path)
        if not path.is_file():
            raise FileNotFoundError(f"pretrained_path={config.pretrained_path!r}: no such file (nothing is downloaded)")
        load_backbone_state_dict(model, load_state_dict(str(path), use_ema=False, weights_only=False))
    if config.freeze_bn:
        freeze_batch_norm(model)
    return model


@torch.no_grad()
def open_set_recall_at_1(model: nn.Module, features: torch.Tensor, labels: torch.Tensor, chunk: int = 4096) -> float:
    """Leave-one-out Recall@1 of the head's embeddings in the head's own ``distance`` -- the authors'
    open-set validation signal (``polyheads.metrics.precision_at_1``)."""
    from ..metrics import precision_at_1

    head = get_heads(model)[0]
    device = next(iter(head.parameters()), torch.empty(0)).device
    emb = torch.cat([head.embed(features[i:i + chunk].to(device)) for i in range(0, len(features), chunk)])
    return float(precision_at_1(emb, labels, metric=head.distance))


def _loader(dataset: Any, batch_size: int, workers: int, device: torch.device, **kwargs: Any) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate_batched,
                      pin_memory=device.type == "cuda", **kwargs)


def evaluate_model(model: nn.Module, test_loader: DataLoader, val_loader: DataLoader | None, *, device: torch.device,
                   protocol: str, retrieval: bool = True, raw: bool = False) -> dict[str, Any]:
    """The seed-000 Table 1-4 columns of ``model`` on ``test_loader`` via ``polyheads.evaluate``
    (temperature fitted on ``val_loader``; open-set: retrieval only). Returns the numeric entries as
    floats (``raw=True``: ``polyheads.evaluate``'s dict unchanged). Without ``polyheads.evaluate``
    only the accuracy."""
    try:
        from ..evaluation import evaluate
    except ImportError:
        evaluate = None
    if evaluate is not None:
        kwargs: dict[str, Any] = {"device": str(device), "open_set": protocol == "open", "retrieval": retrieval}
        params = inspect.signature(evaluate).parameters
        kwargs = {k: v for k, v in kwargs.items() if k in params}
        result = evaluate(model, test_loader, val_loader=val_loader if protocol == "fixed" else None, **kwargs)
        if raw:
            return result
        return {k: float(v) for k, v in result.items()
                if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool) and k != "open_set"}
    out = predict(model, test_loader, device=device)
    return {"accuracy": float((out["logits"].argmax(1) == out["labels"]).float().mean())}


class Trainer:
    """Seed 000's training protocol (App. E) for one config; see the module docstring.

    Args:
        config: a validated :class:`TrainConfig`.
        resume: a run folder or checkpoint file to continue (its model, optimiser, schedule, RNG
            states and history are restored; ``config`` should be the checkpoint's, possibly with
            overrides such as a larger ``epochs``).
        overwrite: start afresh in an output folder that already holds a run.
        log: where the per-epoch lines go (``print`` by default).
    """

    def __init__(self, config: TrainConfig, *, resume: str | os.PathLike | None = None, overwrite: bool = False,
                 log: Callable[[str], None] = print) -> None:
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig (load_config(...)), got {type(config).__name__}")
        self.config = config.validate("config")
        self.log = log
        self.device = resolve_device(config.device)
        self.amp_dtype = resolve_amp(config.amp, self.device)
        self.resume_path = find_checkpoint(resume) if resume is not None else None
        default_dir = Path("runs") / config.dataset / resolve_head_name(config.head) / f"seed{config.seed}"
        self.run_dir = Path(config.output_dir) if config.output_dir else default_dir
        if self.resume_path is not None and not config.output_dir:
            self.run_dir = self.resume_path.parent
        if self.resume_path is None and (self.run_dir / "last.pt").exists() and not overwrite:
            raise RunFolderExists(
                f"{self.run_dir} already holds a run (last.pt); resume it with --resume {self.run_dir}, "
                "pass --overwrite, or set output_dir=..."
            )
        self.history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ setup
    def _setup(self) -> None:
        cfg = self.config
        seed_everything(cfg.seed)
        self.data: DataBundle = build_data(cfg)
        self.model = build_model(cfg, self.data.num_classes, self.data.in_chans).to(self.device)
        self.sampler = EpisodicBatchSampler(self.data.train_labels, min(cfg.batch_classes, self.data.num_classes),
                                            cfg.batch_instances, cfg.episodes_per_epoch, seed=cfg.seed)
        workers = cfg.num_workers
        self.train_loader = DataLoader(self.data.train, batch_sampler=self.sampler, num_workers=workers,
                                       collate_fn=collate_batched, pin_memory=self.device.type == "cuda",
                                       persistent_workers=workers > 0)
        self.val_loader = _loader(self.data.val, cfg.eval_batch_size, workers, self.device)
        self.test_loader = (_loader(self.data.test, cfg.eval_batch_size, workers, self.device)
                            if self.data.test is not None else None)
        self.features_fn = None
        if cfg.compile:
            self.features_fn = torch.compile(PreLogits(self.model))
        self.scaler = torch.amp.GradScaler(self.device.type) if self.amp_dtype == torch.float16 else None

    def _init_heads(self) -> None:
        cfg = self.config
        source = self.data.train_eval
        if cfg.init_samples is not None and cfg.init_samples < len(source):
            pick = np.random.default_rng(cfg.seed).choice(len(source), size=cfg.init_samples, replace=False)
            source = source.subset(np.sort(pick))
        loader = _loader(source, cfg.eval_batch_size, cfg.num_workers, self.device)
        init_heads_from_data(self.model, loader, device=self.device)

    def _build_optimisation(self) -> None:
        cfg = self.config
        self.optimizer = build_optimizer(
            self.model, cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay,
            temperature_lr=cfg.temperature_lr, temperature_momentum=cfg.temperature_momentum,
            skip_weight_decay=cfg.weight_decay_skip,
        )
        self.schedule = PlateauSchedule(self.optimizer, lr_patience=cfg.lr_patience, lr_factor=cfg.lr_factor,
                                        stop_patience=cfg.early_stop_patience)

    # ------------------------------------------------------------------ checkpoints and logs
    def _state(self, epoch: int, finished: bool) -> dict[str, Any]:
        return {
            "version": CHECKPOINT_VERSION,
            "epoch": epoch,
            "finished": finished,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": rng_state(),
            "config": config_to_dict(self.config),
            "history": list(self.history),
            "num_classes": self.data.num_classes,
            "in_chans": self.data.in_chans,
            "protocol": self.data.protocol,
        }

    def _write_metrics(self, rewrite: bool = False) -> None:
        csv_path, jsonl_path = self.run_dir / "metrics.csv", self.run_dir / "metrics.jsonl"
        rows = self.history if rewrite else self.history[-1:]
        if not rows:
            return
        columns = list(self.history[0])
        mode = "w" if rewrite or len(self.history) == 1 else "a"
        with open(csv_path, mode, newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            if mode == "w":
                writer.writeheader()
            writer.writerows(rows)
        with open(jsonl_path, mode) as fh:
            for row in rows:
                fh.write(json.dumps(row) + "\n")

    def _restore(self) -> int:
        state = load_checkpoint(self.resume_path, map_location=self.device)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.history = list(state.get("history", []))
        self._write_metrics(rewrite=True)
        set_rng_state(state["rng"])
        self.log(f"resumed {self.resume_path} after epoch {state['epoch']} "
                 f"(best {self.schedule.best:.4f} at epoch {self.schedule.best_epoch})")
        return state["epoch"] + 1  # an early-stopped run stays stopped (its last history row says so)

    # ------------------------------------------------------------------ the run
    def _describe(self) -> None:
        cfg, info = self.config, self.data.info
        head = get_heads(self.model)[0]
        amp = {None: "off", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp_dtype]
        self.log(f"{cfg.dataset} ({self.data.protocol}-set): train {info['train']} images / {info['train_classes']} classes, "
                 f"val {info['val']} / {info['val_classes']}, test {info['test']} / {info['test_classes']}; "
                 f"input {info['input_shape']}")
        self.log(f"model {cfg.model} + head {head!r}")
        self.log(f"device {self.device}, amp {amp}, compile {cfg.compile}; batches {self.sampler.num_classes} classes x "
                 f"{self.sampler.num_instances} instances, {len(self.sampler)} per epoch; run folder {self.run_dir}")

    def _validate(self) -> tuple[str, float]:
        out = predict(self.model, self.val_loader, device=self.device, amp_dtype=self.amp_dtype, features_fn=self.features_fn)
        if self.data.protocol == "open":
            return "val_recall_at_1", open_set_recall_at_1(self.model, out["features"], out["labels"])
        return "val_accuracy", float((out["logits"].argmax(1) == out["labels"]).float().mean())

    def fit(self) -> TrainResult:
        """Train until ``epochs`` or early stopping, then evaluate the best weights on the test split."""
        start_time = time.perf_counter()
        cfg = self.config
        self._setup()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        if self.resume_path is None:
            self._init_heads()
            self._build_optimisation()
            start_epoch = 0
        else:
            self._build_optimisation()
            start_epoch = self._restore()
        self._describe()
        stopped_early = bool(self.history and self.history[-1].get("stop"))
        images_seen, train_seconds = 0, 0.0
        epoch = start_epoch
        while epoch < cfg.epochs and not stopped_early:
            self.sampler.set_epoch(epoch)
            t0 = time.perf_counter()
            loss = train_one_epoch(self.model, self.train_loader, self.optimizer, epoch=epoch, device=self.device,
                                   progress=cfg.progress, amp_dtype=self.amp_dtype, scaler=self.scaler,
                                   features_fn=self.features_fn, description=f"epoch {epoch + 1}/{cfg.epochs}")
            t_train = time.perf_counter() - t0
            if not math.isfinite(loss):
                raise FloatingPointError(f"epoch {epoch}: the training loss is {loss}; lower lr={cfg.lr}")
            metric_name, value = self._validate()
            lr = self.optimizer.param_groups[0]["lr"]
            decision = self.schedule.step(value, epoch)
            n_images = len(self.sampler) * self.sampler.num_classes * self.sampler.num_instances
            images_seen += n_images
            train_seconds += t_train
            stopped_early = decision.stop
            row = {"epoch": epoch, "train_loss": loss, metric_name: value, "best": self.schedule.best,
                   "best_epoch": self.schedule.best_epoch, "lr": lr, "lr_halved": decision.lr_reduced,
                   "stop": decision.stop, "train_s": round(t_train, 3), "epoch_s": round(time.perf_counter() - t0, 3),
                   "images_per_s": round(n_images / max(t_train, 1e-9), 1)}
            self.history.append(row)
            last = save_checkpoint(self.run_dir / "last.pt", self._state(epoch, finished=False))
            if decision.improved:
                copy_checkpoint(last, self.run_dir / "best.pt")
            self._write_metrics()
            flags = (" *" if decision.improved else "") + (" lr/2" if decision.lr_reduced else "") + (
                " early stop" if decision.stop else "")
            self.log(f"epoch {epoch + 1:3d}/{cfg.epochs}  loss {loss:.4f}  {metric_name} {value:.4f}  "
                     f"best {self.schedule.best:.4f} (epoch {self.schedule.best_epoch + 1})  lr {lr:.3g}  "
                     f"{row['epoch_s']:.1f}s  {row['images_per_s']:.0f} img/s{flags}")
            epoch += 1
        epochs_run = len(self.history)
        if self.history:
            save_checkpoint(self.run_dir / "last.pt", self._state(self.history[-1]["epoch"], finished=True))
        best_path = self.run_dir / "best.pt"
        if best_path.exists():
            self.model.load_state_dict(load_checkpoint(best_path, map_location=self.device)["model"])
        test: dict[str, float] = {}
        if cfg.evaluate_test and self.test_loader is not None:
            test = evaluate_model(self.model, self.test_loader, self.val_loader, device=self.device,
                                  protocol=self.data.protocol, retrieval=cfg.test_retrieval)
            shown = "  ".join(f"{k} {v:.4f}" for k, v in test.items() if not k.endswith("samples"))
            self.log(f"test (best epoch {self.schedule.best_epoch + 1}): {shown}")
        result = TrainResult(
            run_dir=self.run_dir, best_epoch=self.schedule.best_epoch, best_val=self.schedule.best,
            val_metric="val_recall_at_1" if self.data.protocol == "open" else "val_accuracy", epochs_run=epochs_run,
            stopped_early=stopped_early, test=test, wall_time_s=time.perf_counter() - start_time,
            train_images_per_s=images_seen / train_seconds if train_seconds else 0.0,
        )
        summary = {**result.to_dict(), "config": config_to_dict(cfg), "data": self.data.info, "device": str(self.device),
                   "torch": torch.__version__, "machine": platform.platform(), "head": repr(get_heads(self.model)[0])}
        (self.run_dir / "results.json").write_text(json.dumps(summary, indent=2, default=str))
        return result


def train(config: TrainConfig, *, resume: str | os.PathLike | None = None, overwrite: bool = False,
          log: Callable[[str], None] = print) -> TrainResult:
    """``Trainer(config, resume=..., overwrite=...).fit()``."""
    return Trainer(config, resume=resume, overwrite=overwrite, log=log).fit()

