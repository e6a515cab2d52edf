"""The training loop's building blocks; the trainer (``polyheads.training``) and the tools use them.

The engine knows heads only through the contract: ``loss``, ``param_groups``, ``on_epoch_start``,
``init_from_data`` (shared/DESIGN.md).
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from .._checks import check_float
from ..heads.base import Head
from ..timm import get_heads

__all__ = ["pre_logits", "head_loss", "build_optimizer", "train_one_epoch", "predict", "init_heads_from_data"]


def pre_logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The pooled features the head receives: ``forward_head(forward_features(x), pre_logits=True)``."""
    return model.forward_head(model.forward_features(images), pre_logits=True)


def head_loss(model: nn.Module, features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The head's training objective on pre-logit features (the mean over the heads of a model with
    two classifiers, e.g. distilled ViTs)."""
    heads = get_heads(model)
    if not heads:
        raise ValueError(f"{type(model).__name__} has no polyheads head (create it with head=...)")
    losses = [h.loss(features, target) for h in heads]
    return losses[0] if len(losses) == 1 else torch.stack(losses).mean()


def build_optimizer(
    model: nn.Module,
    lr: float,
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    temperature_lr: float | None = None,
) -> torch.optim.Optimizer:
    """SGD over the backbone and the heads' own parameter groups (seed 000 App. E.3, F).

    The temperature τ gets ``temperature_lr`` (TLR) and no weight decay; fixed buffers (polytope
    vertices, centres) are never optimised. A model with manifold parameters (the Poincaré head's
    offsets) gets geoopt's ``RiemannianSGD`` for the whole model (it treats Euclidean tensors as SGD does).
    """
    lr = check_float("lr", lr, minimum=0.0, min_inclusive=False)
    momentum = check_float("momentum", momentum, minimum=0.0, maximum=1.0)
    weight_decay = check_float("weight_decay", weight_decay, minimum=0.0)
    head_groups: list[dict[str, Any]] = []
    for head in get_heads(model) or [m for m in model.modules() if isinstance(m, Head)]:
        head_groups.extend(head.param_groups(temperature_lr=temperature_lr))
    in_heads = {id(p) for g in head_groups for p in g["params"]}
    backbone = [p for p in model.parameters() if p.requires_grad and id(p) not in in_heads]
    groups = ([{"params": backbone, "name": "backbone"}] if backbone else []) + head_groups
    manifold = any(type(p).__name__ == "ManifoldParameter" for g in groups for p in g["params"])
    if manifold:
        import geoopt

        return geoopt.optim.RiemannianSGD(groups, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0,
                                          weight_decay=weight_decay, stabilize=10)
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0,
                           weight_decay=weight_decay)


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    *,
    epoch: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> float:
    """One pass over ``loader``; calls every head's ``on_epoch_start(epoch)`` first. Returns the mean loss."""
    model.train()
    for head in get_heads(model):
        head.on_epoch_start(epoch)
    batches: Iterable = loader
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(loader, desc=f"epoch {epoch}", leave=False)
    total, count = 0.0, 0
    for images, target in batches:
        images, target = images.to(device, non_blocking=True), target.to(device, non_blocking=True)
        loss = head_loss(model, pre_logits(model, images), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(target)
        count += len(target)
    return total / max(count, 1)


@torch.no_grad()
def predict(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    device: str | torch.device = "cpu",
) -> dict[str, torch.Tensor]:
    """Eval-mode pass: ``logits`` [N, K], ``features`` (pre-logits) [N, F] and ``labels`` [N], on the CPU."""
    model.eval()
    logits, features, labels = [], [], []
    for images, target in loader:
        feats = pre_logits(model, images.to(device))
        heads = get_heads(model)
        out = heads[0](feats) if len(heads) == 1 else model.forward_head(model.forward_features(images.to(device)))
        logits.append(out.float().cpu())
        features.append(feats.float().cpu())
        labels.append(target.cpu())
    return {"logits": torch.cat(logits), "features": torch.cat(features), "labels": torch.cat(labels)}


@torch.no_grad()
def init_heads_from_data(model: nn.Module, loader: Iterable[tuple[torch.Tensor, Any]], *, device: str | torch.device = "cpu") -> None:
    """One pass over the training data, handing the pre-logit features to every head's
    ``init_from_data`` (vMF's α, seed 000 App. D). Batch-norm statistics are left untouched (eval mode)."""
    was_training = model.training
    model.eval()
    features = torch.cat([pre_logits(model, images.to(device)).float() for images, _ in loader])
    for head in get_heads(model):
        head.init_from_data(features)
    model.train(was_training)
