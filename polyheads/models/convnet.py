"""The small convolutional network of seed 000 App. E.1 for 28 x 28 inputs (MNIST, Fashion-MNIST),
registered with timm so that ``timm.create_model("convnet_mnist", num_classes=10, head="vmf")`` works.

Two blocks of conv 5x5 (6 then 16 filters, zero-padding 2, stride 1) -> BatchNorm -> ReLU -> 2x2
max-pool, then flatten -> FC 120 -> BatchNorm -> ReLU. That 120-wide vector is the pooled pre-logit
feature (``forward_head(x, pre_logits=True)``); the classifier ``fc`` maps it to the classes, and a
polyheads head replaces it (its embedding layer is the seed's "120 units to n units" layer).
Xavier-uniform weights and zero biases everywhere (App. E.1).
"""
from __future__ import annotations

from typing import Any

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

__all__ = ["ConvNet28"]


class ConvNet28(nn.Module):
    """Seed 000 App. E.1 network for 28 x 28 images, with timm's model API."""

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 1,
        img_size: int | tuple[int, int] = 28,
        hidden_size: int = 120,
        drop_rate: float = 0.0,
        global_pool: str = "avg",  # accepted for timm compatibility; the network flattens
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if kwargs:
            raise TypeError(f"ConvNet28 got unexpected keyword arguments {sorted(kwargs)}")
        height, width = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)[-2:]
        if height % 4 or width % 4:
            raise ValueError(f"img_size must be a multiple of 4 (two 2x2 poolings), got {img_size}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.num_features = self.head_hidden_size = hidden_size
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 6, kernel_size=5, stride=1, padding=2),
            nn.BatchNorm2d(6),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, kernel_size=5, stride=1, padding=2),
            nn.BatchNorm2d(16),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.flatten = nn.Flatten(1)
        self.pre_logits = nn.Sequential(
            nn.Linear(16 * (height // 4) * (width // 4), hidden_size),
            nn.BatchNorm1d(hidden_size),
            nn.ReLU(inplace=True),
        )
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(hidden_size, num_classes) if num_classes > 0 else nn.Identity()
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.pre_logits(self.flatten(x)))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 10,
        "input_size": (1, 28, 28),
        "pool_size": None,
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "fixed_input_size": True,
        "mean": (0.0,),
        "std": (1.0,),  # seed 000 App. E.2: pixels linearly scaled to [0, 1], nothing else
        "first_conv": "features.0",
        "classifier": "fc",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({"convnet_mnist.untrained": _cfg()})


@register_model
def convnet_mnist(pretrained: bool = False, **kwargs: Any) -> ConvNet28:
    """Seed 000 App. E.1 MNIST / Fashion-MNIST network (28 x 28 x 1 inputs, 120-D pre-logits)."""
    return build_model_with_cfg(ConvNet28, "convnet_mnist", pretrained, **kwargs)
