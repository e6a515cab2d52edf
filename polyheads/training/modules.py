"""Small modules the trainer wraps models with: frozen BatchNorm (seed 000 App. E.1) and a
compilable pre-logit feature extractor."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..heads.base import Head

__all__ = ["FrozenBatchNorm", "freeze_batch_norm", "PreLogits"]


class FrozenBatchNorm(nn.Module):
    """BatchNorm with fixed statistics and affine parameters, for inputs of any rank [B, C, ...].

    "all batch-normalization parameters are frozen" (seed 000 App. E.1, open-set runs): the layer
    computes ``(x - running_mean) / sqrt(running_var + eps) * weight + bias`` in training and
    evaluation alike; its tensors are buffers, so no optimiser ever touches them.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features, self.eps = num_features, eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    @classmethod
    def from_batch_norm(cls, bn: _BatchNorm) -> "FrozenBatchNorm":
        frozen = cls(bn.num_features, bn.eps)
        device = bn.running_mean.device if bn.running_mean is not None else None
        frozen.to(device)
        with torch.no_grad():
            if bn.affine:
                frozen.weight.copy_(bn.weight)
                frozen.bias.copy_(bn.bias)
            if bn.track_running_stats and bn.running_mean is not None:
                frozen.running_mean.copy_(bn.running_mean)
                frozen.running_var.copy_(bn.running_var)
        return frozen

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        state_dict.pop(prefix + "num_batches_tracked", None)  # a BatchNorm checkpoint loads as well
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return x * scale.reshape(shape).to(x.dtype) + shift.reshape(shape).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def freeze_batch_norm(model: nn.Module) -> int:
    """Replace every BatchNorm of ``model`` outside its polyheads heads by :class:`FrozenBatchNorm`,
    in place. Returns how many layers were frozen."""
    count = 0
    for name, module in list(model.named_children()):
        if isinstance(module, Head):
            continue
        if isinstance(module, _BatchNorm):
            setattr(model, name, FrozenBatchNorm.from_batch_norm(module))
            count += 1
        else:
            count += freeze_batch_norm(module)
    return count


class PreLogits(nn.Module):
    """``forward(x) = model.forward_head(model.forward_features(x), pre_logits=True)`` -- the part of
    a timm model that ``torch.compile`` compiles (the head stays eager: its input checks and
    float32 geometry are not worth a graph break)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)
