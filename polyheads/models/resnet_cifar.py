"""ResNets for 32 x 32 inputs (seed 000 App. E.1), registered with timm.

"For CIFAR10 and CIFAR100, the first convolutional layer uses a 3 x 3 kernel instead of 7 x 7."
As in the authors' released code (``first_conv_3x3``) the 3 x 3 convolution has stride 1 and
padding 1 and the stem's 3 x 3 / 2 max-pool stays, so a 32 x 32 image reaches the last stage at
2 x 2. Everything else is timm's ``ResNet`` (Bottleneck blocks [3, 4, 6, 3] for ResNet-50, the
last block's BN zero-initialised), so ``timm.create_model("resnet50_cifar", num_classes=100,
head="vmf")`` works like any timm model: ``forward_features``, ``forward_head(pre_logits=True)``
(the 2048-D pooled features the head receives), ``reset_classifier``, ``features_only``.
"""
from __future__ import annotations

from typing import Any

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.resnet import BasicBlock, Bottleneck, ResNet
from torch import nn

__all__ = ["CifarResNet"]

_CIFAR10_MEAN, _CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


class CifarResNet(ResNet):
    """timm's ``ResNet`` with a 3 x 3, stride-1 first convolution (seed 000 App. E.1)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("stem_type", "") not in ("", None):
            raise ValueError("CifarResNet has its own 3x3 stem; stem_type must be ''")
        super().__init__(*args, **kwargs)
        old = self.conv1
        self.conv1 = nn.Conv2d(old.in_channels, old.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        # the stem no longer halves the resolution: every reduction is half of ImageNet ResNet's
        for info in self.feature_info:
            info["reduction"] = max(1, info["reduction"] // 2)


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 10,
        "input_size": (3, 32, 32),
        "pool_size": (2, 2),
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": _CIFAR10_MEAN,
        "std": _CIFAR10_STD,
        "first_conv": "conv1",
        "classifier": "fc",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({"resnet50_cifar.untrained": _cfg(), "resnet18_cifar.untrained": _cfg()})


def _create(variant: str, pretrained: bool, **kwargs: Any) -> CifarResNet:
    return build_model_with_cfg(CifarResNet, variant, pretrained, **kwargs)


@register_model
def resnet50_cifar(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-50 for 32 x 32 inputs (CIFAR-10/100, seed 000 App. E.1): 3 x 3 stride-1 first conv."""
    return _create("resnet50_cifar", pretrained, **dict(block=Bottleneck, layers=(3, 4, 6, 3), **kwargs))


@register_model
def resnet18_cifar(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-18 for 32 x 32 inputs with the same stem (a cheaper stand-in for quick runs)."""
    return _create("resnet18_cifar", pretrained, **dict(block=BasicBlock, layers=(2, 2, 2, 2), **kwargs))
