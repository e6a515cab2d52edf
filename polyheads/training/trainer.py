"""The trainer: seed 000's protocol end to end (App. E), for any timm model and any registered head.

    from polyheads.training import Trainer, load_config
    result = Trainer(load_config("configs/fashion_mnist/vmf.yaml", ["epochs=5"])).fit()

One run = build the data splits (App. E.2) -> ``timm.create_model(model, head=...)`` (+ a local
backbone checkpoint, + frozen BatchNorm) -> ``head.init_from_data`` once -> SGD with the heads'
parameter groups -> per epoch: ``head.on_epoch_start``, N x K episodes, validation (accuracy for
fixed-set, Recall@1 in the head's own metric for open-set, as the authors' code), LR halving /
early stopping (:class:`PlateauSchedule`), ``last.pt`` every epoch and ``best.pt`` on improvement
-> the best epoch's weights are evaluated on the test split with ``polyheads.evaluate``.

Under ``torchrun`` (a process group initialised, ``polyheads.distributed.init_distributed``) the
same run is data-parallel: each rank takes every world-th episode, DistributedDataParallel keeps the
weights equal (summing instead of averaging for class-sharded heads, whose class weights stay on
their rank), validation is split over the ranks and gathered, and only rank 0 logs and writes the
run folder. Checkpoints hold whole (unsharded) tensors, so a run resumes on any number of ranks.

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

from ..distributed.comm import all_gather_objects, barrier, dist_info, gather_rows_nograd, local_state
from ..heads.sharded import full_state_dict, sharded_heads
from ..registry import get_head_class, resolve_head_name
from ..timm import create_model, get_heads, load_backbone_state_dict
from .checkpoint import (copy_checkpoint, find_checkpoint, gather_optimizer_state, load_checkpoint, rng_state,
                         save_checkpoint, set_rng_state, shard_optimizer_state)
from .config import TrainConfig, config_to_dict
from .datasets import DataBundle, build_data, collate_batched
from .engine import broadcast_buffers, build_optimizer, init_heads_from_data, predict, train_one_epoch, wrap_ddp
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
    """``"auto"`` -> CUDA when available, else CPU; a CUDA request without a GPU fails clearly.
    Under torchrun a CUDA device without an index is this process's ``cuda:LOCAL_RANK``."""
    if name == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={name!r} but torch sees no CUDA device; use device=cpu or device=auto")
    info = dist_info()
    if device.type == "cuda" and device.index is None and info.distributed:
        device = torch.device("cuda", info.local_rank)
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
        self.dist = dist_info()
        self.log = log if self.dist.is_main else (lambda _: None)
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
                                            cfg.batch_instances, cfg.episodes_per_epoch, seed=cfg.seed,
                                            rank=self.dist.rank, world_size=self.dist.world_size)
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
        self.step = None
        self.full_val_loader = self.val_loader  # the whole split in order (the test evaluation's temperature fit)
        if self.dist.distributed:
            self.step = wrap_ddp(self.model, features_fn=self.features_fn, amp_dtype=self.amp_dtype, device=self.device)
            # validation: rank r predicts items r, r + world, ... (padded like DistributedSampler), gathered after
            val_order = _distributed_order(len(self.data.val), self.dist.rank, self.dist.world_size)
            self.val_loader = _loader(self.data.val, cfg.eval_batch_size, workers, self.device, sampler=val_order)
        self.sharded = bool(sharded_heads(self.model))

    def _seed_rank(self, epoch: int) -> None:
        """Different augmentation draws per rank (the model is already equal on every rank)."""
        if self.dist.distributed:
            seed_everything(self.config.seed + 1_000_003 * (epoch + 1) + self.dist.rank)

    def _init_heads(self) -> None:
        cfg = self.config
        source = self.data.train_eval
        if cfg.init_samples is not None and cfg.init_samples < len(source):
            pick = np.random.default_rng(cfg.seed).choice(len(source), size=cfg.init_samples, replace=False)
            source = source.subset(np.sort(pick))
        if self.dist.distributed:  # each rank its share; the heads combine them (vMF's α over all ranks)
            source = source.subset(np.arange(len(source))[self.dist.rank::self.dist.world_size])
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
    def _state(self, epoch: int, finished: bool) -> dict[str, Any] | None:
        """The checkpoint (on rank 0; ``None`` on the others). A collective under torchrun: sharded
        class weights and their momentum are gathered whole, every rank's RNG state is kept."""
        model_state = full_state_dict(self.model) if self.sharded else self.model.state_dict()
        optimizer_state = gather_optimizer_state(self.optimizer, self.model) if self.sharded else self.optimizer.state_dict()
        rng_ranks = all_gather_objects(rng_state()) if self.dist.distributed else None
        if not self.dist.is_main:
            return None
        return {
            "version": CHECKPOINT_VERSION,
            "epoch": epoch,
            "finished": finished,
            "model": model_state,
            "optimizer": optimizer_state,
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": rng_state(),
            "rng_ranks": rng_ranks,
            "world_size": self.dist.world_size,
            "config": config_to_dict(self.config),
            "history": list(self.history),
            "num_classes": self.data.num_classes,
            "in_chans": self.data.in_chans,
            "protocol": self.data.protocol,
        }

    def _write_metrics(self, rewrite: bool = False) -> None:
        if not self.dist.is_main:
            return
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
        self.model.load_state_dict(state["model"])  # sharded heads keep their own rows of the whole weights
        self.optimizer.load_state_dict(shard_optimizer_state(state["optimizer"], self.optimizer, self.model))
        self.schedule.load_state_dict(state["schedule"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.history = list(state.get("history", []))
        self._write_metrics(rewrite=True)
        ranks = state.get("rng_ranks")
        if ranks and len(ranks) == self.dist.world_size:
            set_rng_state(ranks[self.dist.rank])  # the same ranks: each continues its own streams
        else:
            set_rng_state(state["rng"])
            if self.dist.distributed:
                self._seed_rank(state["epoch"] + 1)
        saved_world = state.get("world_size", 1)
        self.log(f"resumed {self.resume_path} after epoch {state['epoch']} "
                 f"(best {self.schedule.best:.4f} at epoch {self.schedule.best_epoch})"
                 + (f"; saved by {saved_world} ranks, continuing on {self.dist.world_size}"
                    if saved_world != self.dist.world_size else ""))
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
        if self.dist.distributed:
            import torch.distributed as dist

            self.log(f"distributed: {self.dist.world_size} ranks ({dist.get_backend()}), "
                     f"{len(self.sampler)} episodes per rank and epoch"
                     + ("; class-sharded head: gradients summed over the ranks" if self.sharded else ""))

    def _validate(self) -> tuple[str, float]:
        if self.dist.distributed:
            broadcast_buffers(self.model)  # every rank predicts with rank 0's BatchNorm statistics
        out = predict(self.model, self.val_loader, device=self.device, amp_dtype=self.amp_dtype, features_fn=self.features_fn)
        if self.dist.distributed:  # every rank's share, back in data-set order
            n = len(self.data.val)
            out = {k: _undo_distributed_order(gather_rows_nograd(v), self.dist.world_size, n) for k, v in out.items()}
        if self.data.protocol == "open":
            name, value = "val_recall_at_1", open_set_recall_at_1(self.model, out["features"], out["labels"])
        else:
            name, value = "val_accuracy", float((out["logits"].argmax(1) == out["labels"]).float().mean())
        if self.dist.distributed:  # rank 0's number everywhere: the schedule decides the same on every rank
            value = all_gather_objects(value)[0]
        return name, value

    def fit(self) -> TrainResult:
        """Train until ``epochs`` or early stopping, then evaluate the best weights on the test split."""
        start_time = time.perf_counter()
        cfg = self.config
        start_epoch = self.prepare()
        self._describe()
        stopped_early = bool(self.history and self.history[-1].get("stop"))
        images_seen, train_seconds = 0, 0.0
        epoch = start_epoch
        while epoch < cfg.epochs and not stopped_early:
            self.sampler.set_epoch(epoch)
            t0 = time.perf_counter()
            loss = train_one_epoch(self.model, self.train_loader, self.optimizer, epoch=epoch, device=self.device,
                                   progress=cfg.progress and self.dist.is_main, amp_dtype=self.amp_dtype,
                                   scaler=self.scaler, features_fn=self.features_fn,
                                   description=f"epoch {epoch + 1}/{cfg.epochs}", step=self.step)
            t_train = time.perf_counter() - t0
            if not math.isfinite(loss):
                raise FloatingPointError(f"epoch {epoch}: the training loss is {loss}; lower lr={cfg.lr}")
            metric_name, value = self._validate()
            lr = self.optimizer.param_groups[0]["lr"]
            decision = self.schedule.step(value, epoch)
            n_images = len(self.sampler) * self.sampler.num_classes * self.sampler.num_instances * self.dist.world_size
            images_seen += n_images
            train_seconds += t_train
            stopped_early = decision.stop
            row = {"epoch": epoch, "train_loss": loss, metric_name: value, "best": self.schedule.best,
                   "best_epoch": self.schedule.best_epoch, "lr": lr, "lr_halved": decision.lr_reduced,
                   "stop": decision.stop, "train_s": round(t_train, 3), "epoch_s": round(time.perf_counter() - t0, 3),
                   "images_per_s": round(n_images / max(t_train, 1e-9), 1)}
            self.history.append(row)
            state = self._state(epoch, finished=False)
            if state is not None:  # rank 0
                last = save_checkpoint(self.run_dir / "last.pt", state)
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
            state = self._state(self.history[-1]["epoch"], finished=True)
            if state is not None:
                save_checkpoint(self.run_dir / "last.pt", state)
        barrier()  # rank 0 has written best.pt
        best_path = self.run_dir / "best.pt"
        if best_path.exists():
            self.model.load_state_dict(load_checkpoint(best_path, map_location=self.device)["model"])
        test: dict[str, float] = {}
        if cfg.evaluate_test and self.test_loader is not None:
            test = self._test()
            shown = "  ".join(f"{k} {v:.4f}" for k, v in test.items() if not k.endswith("samples"))
            self.log(f"test (best epoch {self.schedule.best_epoch + 1}): {shown}")
        result = TrainResult(
            run_dir=self.run_dir, best_epoch=self.schedule.best_epoch, best_val=self.schedule.best,
            val_metric="val_recall_at_1" if self.data.protocol == "open" else "val_accuracy", epochs_run=epochs_run,
            stopped_early=stopped_early, test=test, wall_time_s=time.perf_counter() - start_time,
            train_images_per_s=images_seen / train_seconds if train_seconds else 0.0,
        )
        summary = {**result.to_dict(), "config": config_to_dict(cfg), "data": self.data.info, "device": str(self.device),
                   "world_size": self.dist.world_size, "torch": torch.__version__, "machine": platform.platform(),
                   "head": repr(get_heads(self.model)[0])}
        if self.dist.is_main:
            (self.run_dir / "results.json").write_text(json.dumps(summary, indent=2, default=str))
        return result

    def prepare(self) -> int:
        """Build data, model and optimiser, then initialise the heads from data (a fresh run) or
        restore the checkpoint (a resumed one; any number of ranks). Returns the first epoch to train.
        :meth:`fit` calls it; call it yourself to inspect a restored state."""
        cfg = self.config
        self._setup()
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        if self.resume_path is None:
            self._init_heads()
            self._build_optimisation()
            self._seed_rank(0)
            return 0
        self._build_optimisation()
        return self._restore()

    def _test(self) -> dict[str, float]:
        """The test evaluation. Under torchrun every rank evaluates the same batches with rank 0's
        buffers and gets the same result (a class-sharded head's logits need every rank; for the others
        it costs no wall time and keeps no rank waiting at a collective past its timeout)."""
        kwargs = dict(device=self.device, protocol=self.data.protocol, retrieval=self.config.test_retrieval)
        if not self.dist.distributed:
            return evaluate_model(self.model, self.test_loader, self.full_val_loader, **kwargs)
        broadcast_buffers(self.model)
        if self.sharded:
            return evaluate_model(self.model, self.test_loader, self.full_val_loader, **kwargs)
        with local_state():  # nothing in the evaluation talks to the other ranks
            return evaluate_model(self.model, self.test_loader, self.full_val_loader, **kwargs)


def _distributed_order(n: int, rank: int, world_size: int) -> list[int]:
    """Rank ``rank``'s items of ``range(n)``: every world-th, padded from the start so that every
    rank has the same count (``DistributedSampler(shuffle=False)``'s order)."""
    total = -(-n // world_size) * world_size
    order = [i % n for i in range(total)]
    return order[rank::world_size]


def _undo_distributed_order(gathered: torch.Tensor, world_size: int, n: int) -> torch.Tensor:
    """Rank-major gathered rows (rank 0's share, rank 1's, ...) back to data-set order, padding dropped."""
    per_rank = gathered.shape[0] // world_size
    return gathered.reshape(world_size, per_rank, *gathered.shape[1:]).transpose(0, 1).reshape(-1, *gathered.shape[1:])[:n]


def train(config: TrainConfig, *, resume: str | os.PathLike | None = None, overwrite: bool = False,
          log: Callable[[str], None] = print) -> TrainResult:
    """``Trainer(config, resume=..., overwrite=...).fit()``."""
    return Trainer(config, resume=resume, overwrite=overwrite, log=log).fit()

