"""The training loop's building blocks; the trainer (``polyheads.training``) and the tools use them.

The engine knows heads only through the contract: ``loss``, ``param_groups``, ``on_epoch_start``,
``init_from_data`` (shared/DESIGN.md).
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .._checks import check_float
from ..distributed.comm import all_reduce_sum, is_distributed, sum_allreduce_hook
from ..heads.sharded import sharded_heads
from ..heads.base import Head
from ..timm import get_heads, head_inputs, pre_logits

__all__ = ["pre_logits", "head_loss", "build_optimizer", "train_one_epoch", "predict", "init_heads_from_data",
           "autocast_context", "WEIGHT_DECAY_SKIPS", "LossModule", "wrap_ddp", "broadcast_buffers"]

#: what ``build_optimizer(skip_weight_decay=...)`` can exempt from weight decay
WEIGHT_DECAY_SKIPS = ("bias", "classifier")


def head_loss(
    model: nn.Module, features: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor
) -> torch.Tensor:
    """The head's training objective on pre-logit features.

    For a model with two classifiers (distilled ViTs, LeViT) ``features`` may be one tensor per head
    (:func:`polyheads.head_inputs`) and the result is the mean of the heads' losses.
    """
    heads = get_heads(model)
    if not heads:
        raise ValueError(f"{type(model).__name__} has no polyheads head (create it with head=...)")
    per_head = list(features) if isinstance(features, (list, tuple)) else [features] * len(heads)
    if len(per_head) != len(heads):
        raise ValueError(f"features: got {len(per_head)} tensors for a model with {len(heads)} heads")
    losses = [h.loss(f, target) for h, f in zip(heads, per_head)]
    return losses[0] if len(losses) == 1 else torch.stack(losses).mean()


def _features_function(model: nn.Module, features_fn: Callable | None) -> Callable:
    """What the training loop hands to the heads: the pre-logits, or each head's own input when the
    model has several heads fed different tensors (DeiT-distilled: class and distillation tokens)."""
    if features_fn is not None:
        return features_fn
    if len(get_heads(model)) > 1:
        return lambda images: head_inputs(model, images)
    return lambda images: pre_logits(model, images)


def autocast_context(device: str | torch.device, dtype: torch.dtype | None) -> Any:
    """``torch.autocast`` for the backbone when ``dtype`` is bf16/fp16, else a no-op. Heads switch
    autocast off inside and compute their geometry in float32 (heads/base.py)."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


class LossModule(nn.Module):
    """``forward(images, target)`` -> the heads' training loss (pre-logits under autocast, then
    :func:`head_loss`): the module DistributedDataParallel wraps, so that its gradient hooks see
    the whole step."""

    def __init__(self, model: nn.Module, features_fn: Callable | None = None, amp_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.model = model
        self.__dict__["features_fn"] = features_fn  # not a submodule: a compiled view of ``model``
        self.amp_dtype = amp_dtype

    def forward(self, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with autocast_context(images.device, self.amp_dtype):
            features = _features_function(self.model, self.features_fn)(images)
        return head_loss(self.model, features, target)


def wrap_ddp(
    model: nn.Module,
    *,
    features_fn: Callable | None = None,
    amp_dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """``DistributedDataParallel(LossModule(model))`` for one training step per call.

    With class-sharded heads (:class:`polyheads.distributed.ShardedHead`) their class weights are
    left out of DDP (each rank owns its rows and gets their exact gradient) and the other gradients
    are *summed* over the ranks (:func:`polyheads.distributed.sum_allreduce_hook`): the sharded loss
    is already the global batch's, each rank holds a share. Otherwise DDP averages, as usual (each
    rank's loss is its own batch's mean).
    """
    from torch.nn.parallel import DistributedDataParallel

    step = LossModule(model, features_fn, amp_dtype)
    sharded = sharded_heads(step)
    if sharded:
        ignore = [f"{name}.{key}" for name, head in sharded.items() for key in head.sharded_parameters()]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(step, ignore)
    device = torch.device(device)
    ddp = DistributedDataParallel(step, device_ids=[device] if device.type == "cuda" else None)
    if sharded:
        ddp.register_comm_hook(None, sum_allreduce_hook)
    return ddp


@torch.no_grad()
def broadcast_buffers(model: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm statistics, head state) to every rank -- before an
    evaluation, so all ranks predict with the same model. No-op without a process group."""
    if not is_distributed():
        return
    import torch.distributed as dist

    for buffer in model.buffers():
        dist.broadcast(buffer, src=src)


def _heads_of(model: nn.Module) -> list[Head]:
    return get_heads(model) or [m for m in model.modules() if isinstance(m, Head)]


def build_optimizer(
    model: nn.Module,
    lr: float,
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    temperature_lr: float | None = None,
    *,
    temperature_momentum: float | None = None,
    skip_weight_decay: Iterable[str] = (),
) -> torch.optim.Optimizer:
    """SGD over the backbone and the heads' own parameter groups (seed 000 App. E.3, F).

    The temperature τ gets ``temperature_lr`` (TLR) and no weight decay; ``temperature_momentum``
    (0 in the authors' released code) gives it its own momentum. Fixed buffers (polytope vertices,
    centres) are never optimised. ``skip_weight_decay`` exempts ``"bias"`` (biases and all 1-D
    parameters: BatchNorm affines) and/or ``"classifier"`` (head parameters outside the head's
    embedding layer: class weights, hyperbolic offsets) from weight decay, as the authors' code
    does. A model with manifold parameters (the Poincaré head's offsets) gets geoopt's
    ``RiemannianSGD`` for the whole model (it treats Euclidean tensors as SGD does).
    """
    lr = check_float("lr", lr, minimum=0.0, min_inclusive=False)
    momentum = check_float("momentum", momentum, minimum=0.0, maximum=1.0)
    weight_decay = check_float("weight_decay", weight_decay, minimum=0.0)
    if temperature_momentum is not None:
        temperature_momentum = check_float("temperature_momentum", temperature_momentum, minimum=0.0, maximum=1.0)
    skips = set(skip_weight_decay)
    unknown = skips - set(WEIGHT_DECAY_SKIPS)
    if unknown:
        raise ValueError(f"skip_weight_decay entries must be in {WEIGHT_DECAY_SKIPS}, got {sorted(unknown)}")
    heads = _heads_of(model)
    head_groups: list[dict[str, Any]] = []
    for head in heads:
        head_groups.extend(head.param_groups(temperature_lr=temperature_lr))
    in_heads = {id(p) for g in head_groups for p in g["params"]}
    backbone = [p for p in model.parameters() if p.requires_grad and id(p) not in in_heads]
    groups = ([{"params": backbone, "name": "backbone"}] if backbone else []) + head_groups
    for group in groups:
        if group.get("name") == "temperature" and temperature_momentum is not None:
            group["momentum"] = temperature_momentum
            group["nesterov"] = nesterov and temperature_momentum > 0
    if skips and weight_decay > 0:
        groups = _split_weight_decay(groups, heads, skips)
    manifold = any(type(p).__name__ == "ManifoldParameter" for g in groups for p in g["params"])
    if manifold:
        import geoopt

        return geoopt.optim.RiemannianSGD(groups, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0,
                                          weight_decay=weight_decay, stabilize=10)
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0,
                           weight_decay=weight_decay)


def _split_weight_decay(groups: list[dict[str, Any]], heads: list[Head], skips: set[str]) -> list[dict[str, Any]]:
    """Move the parameters ``skips`` names into copies of their group with ``weight_decay=0``."""
    embedding_ids = {id(p) for h in heads for p in getattr(h, "embedding", nn.Identity()).parameters()}
    head_ids = {id(p) for h in heads for p in h.parameters()}
    out: list[dict[str, Any]] = []
    for group in groups:
        if group.get("weight_decay") == 0.0:
            out.append(group)
            continue
        keep, skip = [], []
        for p in group["params"]:
            exempt = ("bias" in skips and p.ndim <= 1) or (
                "classifier" in skips and id(p) in head_ids and id(p) not in embedding_ids)
            (skip if exempt else keep).append(p)
        if keep:
            out.append({**group, "params": keep})
        if skip:
            out.append({**group, "params": skip, "weight_decay": 0.0, "name": f"{group.get('name', 'group')}_no_decay"})
    return out


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    *,
    epoch: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
    amp_dtype: torch.dtype | None = None,
    scaler: "torch.amp.GradScaler | None" = None,
    features_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    description: str | None = None,
    step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> float:
    """One pass over ``loader``; calls every head's ``on_epoch_start(epoch)`` first. Returns the mean loss
    (over every rank's samples when a process group is initialised).

    ``amp_dtype`` (bf16/fp16) runs the backbone under autocast; ``scaler`` (a ``GradScaler``, for
    fp16) scales the loss; ``features_fn`` replaces :func:`pre_logits` (e.g. a compiled backbone);
    ``step`` (``images, target -> loss``, e.g. :func:`wrap_ddp`'s module) replaces the forward pass.
    """
    model.train()
    for head in get_heads(model):
        head.on_epoch_start(epoch)
    batches: Iterable = loader
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(loader, desc=description or f"epoch {epoch}", leave=False, dynamic_ncols=True)
    features_of = _features_function(model, features_fn)
    total = torch.zeros((), dtype=torch.float64)
    count = 0
    for images, target in batches:
        images, target = images.to(device, non_blocking=True), target.to(device, non_blocking=True)
        if step is not None:
            loss = step(images, target)
        else:
            with autocast_context(device, amp_dtype):
                features = features_of(images)
            loss = head_loss(model, features, target)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        total += loss.detach().double().cpu() * len(target)
        count += len(target)
        if progress and hasattr(batches, "set_postfix"):
            batches.set_postfix(loss=f"{float(loss):.4f}", refresh=False)
    if is_distributed():  # the mean over every rank's samples
        summed = all_reduce_sum(torch.stack([total, torch.tensor(float(count), dtype=torch.float64)]))
        total, count = summed[0], int(summed[1])
    return float(total) / max(count, 1)


@torch.no_grad()
def predict(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    device: str | torch.device = "cpu",
    amp_dtype: torch.dtype | None = None,
    features_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Eval-mode pass: ``logits`` [N, K], ``features`` (pre-logits) [N, F] and ``labels`` [N], on the CPU."""
    model.eval()
    heads = get_heads(model)
    features_of = features_fn if features_fn is not None else (lambda x: pre_logits(model, x))
    logits, features, labels = [], [], []
    for images, target in loader:
        images = images.to(device, non_blocking=True)
        with autocast_context(device, amp_dtype):
            feats = features_of(images)
        if len(heads) == 1:
            out = heads[0](feats)
        else:
            with autocast_context(device, amp_dtype):
                out = model.forward_head(model.forward_features(images))
        logits.append(out.float().cpu())
        features.append(feats.float().cpu())
        labels.append(torch.as_tensor(target).cpu())
    return {"logits": torch.cat(logits), "features": torch.cat(features), "labels": torch.cat(labels)}


@torch.no_grad()
def init_heads_from_data(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, Any]],
    *,
    device: str | torch.device = "cpu",
    batch_stats: bool = True,
) -> None:
    """One pass over the training data, handing the pre-logit features to every head's
    ``init_from_data`` (vMF's α, seed 000 App. D).

    With ``batch_stats=True`` (default) BatchNorm layers normalise with each batch's statistics, as
    during training (the authors' code runs this pass in training mode) -- a freshly initialised
    network's running statistics (mean 0, variance 1) would give features of another scale. The
    running statistics are restored afterwards, so the pass leaves the model unchanged. Dropout is
    off. ``batch_stats=False`` uses eval mode throughout.
    """
    was_training = model.training
    model.eval()
    saved: list[tuple[_BatchNorm, dict[str, torch.Tensor]]] = []
    if batch_stats:
        for module in model.modules():
            if isinstance(module, _BatchNorm) and not isinstance(module, Head):
                saved.append((module, {k: v.clone() for k, v in module.named_buffers(recurse=False)}))
                module.train()
    try:
        heads = get_heads(model)
        features_of = _features_function(model, None)
        batches = []
        for images, _ in loader:
            out = features_of(images.to(device))
            batches.append([f.float().flatten(1) for f in out] if isinstance(out, list) else [out.float()] * len(heads))
    finally:
        for module, buffers in saved:
            for name, value in buffers.items():
                getattr(module, name).copy_(value)
    for index, head in enumerate(heads):
        head.init_from_data(torch.cat([b[index] for b in batches]))
    model.train(was_training)
