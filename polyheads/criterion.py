"""``HeadLoss``: a head's own training objective as ``criterion(output, target)``.

Training loops that see only a model's output -- timm's ``train.py``, Lightning, a hand-written loop --
call ``loss = criterion(model(x), target)``. With a polyheads head the objective is label-aware (ArcFace's
margin, vMF's bound, the centre and triplet terms), so ``nn.CrossEntropyLoss`` on the logits would train
another model. ``HeadLoss(model)`` computes the head's objective from the output of the same forward pass::

    criterion = polyheads.HeadLoss(model)
    model.train()
    loss = criterion(model(images), target)      # == head.loss(features, target) on this batch
    loss.backward()

How, per head (no second forward pass):

- ``standard``, ``cosine``, ``normface``, ``poincare``: the objective is the cross-entropy of the returned
  logits (seed 000 Eq. 1-3); probability targets [B, K] (mixup/cutmix) and ``label_smoothing`` work.
- ``arcface``, ``cosface`` and the polytopes: the logits are ``s cos θ_j`` with a known ``s`` (β, or κ of
  seed 002 Eq. 8), so ``cos θ_y = logit_y / s`` and the margin is put on the target logit of *these*
  logits (seed 000 Eq. 4, seed 002 Eq. 9). ``label_smoothing`` works; probability targets are refused
  (the margin needs one target class).
- ``sphereface`` (row scale β‖z‖), ``vmf`` (samples of z), ``center``, ``triplet`` (terms in z): the head
  attaches the embedding z of its training-mode forward to the logits it returns; the criterion reads it
  from ``output``. That reference lives exactly as long as the output tensor: it cannot be stale and
  nothing is kept on the module.

Models with two heads (distilled DeiT / LeViT) return the *average* of the two heads' logits in training
mode; no head objective is defined on an average, so ``HeadLoss`` refuses it and asks for
``model.set_distilled_training(True)``, after which the model returns ``(logits, logits_dist)`` and the
criterion averages the two heads' objectives (as ``polyheads.training.engine.head_loss`` does).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ._checks import check_float
from .heads.base import Head
from .timm import get_heads

__all__ = ["HeadLoss", "unwrap_model"]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module under ``torch.compile`` (``_orig_mod``) and DistributedDataParallel / DataParallel
    (``module``) wrappers."""
    seen = 0
    while seen < 8:
        inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module) and isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            inner = model.module
        if not isinstance(inner, nn.Module):
            return model
        model, seen = inner, seen + 1
    return model


def _outermost_heads(model: nn.Module) -> list[Head]:
    """The heads of a model built without ``timm.create_model(head=...)``, in module order; a head inside
    another head (a sharded head's local head) is part of it, not a head of the model."""
    heads: list[Head] = []
    prefixes: list[str] = []
    for name, module in model.named_modules():
        if isinstance(module, Head) and not any(name.startswith(p) for p in prefixes):
            heads.append(module)
            prefixes.append(f"{name}." if name else "")
    return heads


class HeadLoss(nn.Module):
    """``criterion(output, target)`` = the training objective of the polyheads head(s) of ``model``.

    Args:
        model_or_head: a model with polyheads head(s) (``timm.create_model(..., head=...)``, possibly wrapped
            by ``torch.compile`` or DistributedDataParallel) or a head itself. Heads are looked up at every
            call, so ``reset_classifier`` afterwards is followed. The model is not registered as a submodule:
            ``criterion.to(device)`` and ``criterion.state_dict()`` do not touch it.
        label_smoothing: ε in [0, 1) as ``torch.nn.functional.cross_entropy`` (timm's ``--smoothing``);
            refused by heads whose objective is not a cross-entropy of logits (center, triplet, vmf).

    ``forward(output, target)``: ``output`` the logits [B, K] the model returned in training mode (or the
    tuple ``(logits, logits_dist)`` of a two-head model with distilled training on); ``target`` class indices
    [B] or probabilities [B, K] (mixup / cutmix; see :meth:`soft_target_heads`). Returns the mean objective,
    equal to ``head.loss(features, target)`` on the same batch.
    """

    def __init__(self, model_or_head: nn.Module, *, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not isinstance(model_or_head, nn.Module):
            raise TypeError(
                f"model_or_head must be a torch.nn.Module (a model with a polyheads head, or a head), "
                f"got {type(model_or_head).__name__}"
            )
        self.label_smoothing = check_float(
            "label_smoothing", label_smoothing, minimum=0.0, maximum=1.0, max_inclusive=False
        )
        self._source = (model_or_head,)  # a tuple: not a registered submodule
        heads = self.heads()
        if self.label_smoothing:
            refusals = [(h, h.label_smoothing_refusal()) for h in heads]
            bad = [(h, why) for h, why in refusals if why is not None]
            if bad:
                h, why = bad[0]
                raise ValueError(f"head {h.head_name!r} refuses label_smoothing={self.label_smoothing:g}: {why}")

    def heads(self) -> list[Head]:
        """The heads of the model, in classifier order (looked up now)."""
        source = self._source[0]
        if isinstance(source, Head):
            return [source]
        model = unwrap_model(source)
        heads = get_heads(model) if getattr(model, "polyheads_cfg", None) else _outermost_heads(model)
        if not heads:
            raise ValueError(
                f"{type(source).__name__} has no polyheads head: create it with "
                "timm.create_model(..., head=NAME) or polyheads.attach_head(model, NAME)"
            )
        return heads

    def soft_target_refusals(self) -> dict[str, str]:
        """``{head name: why}`` for this model's heads that refuse probability targets; empty if all accept."""
        return {h.head_name: why for h in self.heads() if (why := h.soft_target_refusal()) is not None}

    @staticmethod
    def soft_target_heads() -> list[str]:
        """Registered heads whose objective (with default arguments) accepts probability targets."""
        from .registry import get_head_class, list_heads

        return [name for name in list_heads() if get_head_class(name)._loss_is_logit_cross_entropy()]

    def forward(self, output: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        heads = self.heads()
        if isinstance(output, (tuple, list)):
            if len(output) != len(heads):
                raise ValueError(
                    f"output is a {type(output).__name__} of {len(output)} tensors but the model has {len(heads)} "
                    "heads (one logits tensor per head, e.g. a distilled model's (logits, logits_dist))"
                )
            losses = [
                h.loss_from_output(o, target, label_smoothing=self.label_smoothing) for h, o in zip(heads, output)
            ]
            return losses[0] if len(losses) == 1 else torch.stack(losses).mean()
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"output must be the model's logits (a tensor) or a tuple of them, got {type(output).__name__}")
        if len(heads) > 1:
            raise ValueError(
                f"the model has {len(heads)} heads ({', '.join(repr(h.head_name) for h in heads)}) and returned one "
                "tensor: in training mode a distilled model returns the average of its heads' logits, on which no "
                "head objective is defined. Call model.set_distilled_training(True) so that it returns "
                "(logits, logits_dist); HeadLoss then averages the two heads' objectives"
            )
        return heads[0].loss_from_output(output, target, label_smoothing=self.label_smoothing)

    def extra_repr(self) -> str:
        try:
            names = [h.head_name for h in self.heads()]
        except ValueError:
            names = []
        return f"heads={names}, label_smoothing={self.label_smoothing:g}"
