"""Data augmentation of seed 000 App. E.2, per data set, with torchvision's v2 transforms.

=========  ====================================================================================  ======================
data set   training                                                                              validation / test
=========  ====================================================================================  ======================
MNIST,     pixels linearly scaled to [0, 1], nothing else                                        same
Fashion
CIFAR      reflect-pad 4, random 32 x 32 crop, horizontal flip, z-score, one random 8 x 8        z-score
           occlusion set to 0 (fully inside the image, as the authors' ``RandomOcclusion``)
Cars196    resize 256 x 256, colour jitter (0.3, 0.3, 0.3, hue 0.1), random-resized crop          resize 256 x 256,
           scale [0.16, 1] (aspect 1, as the authors' code) to 224, flip, z-score                 centre crop 224, z-score
CUB        resize short side 256, jitter (0.25, 0.25, 0.25), random-resized crop scale            resize short side 256,
           [0.16, 1] aspect [0.75, 1.33] to 224, flip, z-score                                    centre crop 224, z-score
SOP        resize 256 x 256, random-resized crop scale [0.16, 1] aspect [0.75, 1.33] to 224,      resize 256 x 256,
           flip, z-score                                                                          centre crop 224, z-score
=========  ====================================================================================  ======================

In-memory tensor data sets (MNIST, CIFAR) get transforms on float tensors in [0, 1]; image-folder
data sets get them on PIL images. ``image_size`` rescales the 224 / 256 pair (256 = 224 x 8 / 7)
for quick runs on small images.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torchvision.transforms import v2

from .._checks import check_choice, check_int

__all__ = ["build_transforms", "AUGMENTATIONS", "IMAGENET_MEAN", "IMAGENET_STD", "CIFAR10_MEAN", "CIFAR10_STD",
           "CIFAR100_MEAN", "CIFAR100_STD"]

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# the statistics the authors' released code uses
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)

#: augmentation presets (``none`` = MNIST-style: no augmentation, no z-score)
AUGMENTATIONS = ("none", "cifar", "cars196", "cub200", "sop")


def _to_float() -> list[Callable]:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]


def build_transforms(
    kind: str,
    *,
    image_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    augment: bool = True,
) -> tuple[Callable | None, Callable | None]:
    """``(train_transform, eval_transform)`` of preset ``kind`` (seed 000 App. E.2).

    For ``none`` and ``cifar`` the transforms act on float tensors [C, H, W] in [0, 1] (the eval
    transform also on whole batches [B, C, H, W]); for the image-folder presets on PIL images.
    ``augment=False`` makes the training transform equal to the evaluation one.
    """
    check_choice("kind", kind, AUGMENTATIONS)
    if kind == "none":
        return None, None
    if kind == "cifar":
        size = 32 if image_size is None else check_int("image_size", image_size, minimum=8)
        mean, std = mean or CIFAR10_MEAN, std or CIFAR10_STD
        normalize = v2.Normalize(mean, std)
        patch = (8 * 8) / (size * size)
        train = v2.Compose([
            v2.RandomCrop(size, padding=4, padding_mode="reflect"),
            v2.RandomHorizontalFlip(),
            normalize,
            v2.RandomErasing(p=1.0, scale=(patch, patch), ratio=(1.0, 1.0), value=0.0),
        ])
        return (train if augment else normalize), normalize
    size = 224 if image_size is None else check_int("image_size", image_size, minimum=8)
    resize = max(size, round(size * 8 / 7))
    mean, std = mean or IMAGENET_MEAN, std or IMAGENET_STD
    tail = [*_to_float(), v2.Normalize(mean, std)]
    if kind == "cub200":
        resize_op: Callable = v2.Resize(resize)  # the shorter side, aspect kept
        jitter: list[Callable] = [v2.ColorJitter(0.25, 0.25, 0.25)]
        ratio = (0.75, 1.33)
    elif kind == "cars196":
        resize_op = v2.Resize((resize, resize))
        jitter = [v2.ColorJitter(0.3, 0.3, 0.3, 0.1)]
        ratio = (1.0, 1.0)
    else:  # sop, and user folders
        resize_op = v2.Resize((resize, resize))
        jitter = []
        ratio = (0.75, 1.33)
    evaluation = v2.Compose([resize_op, v2.CenterCrop(size), *tail])
    train = v2.Compose([
        resize_op, *jitter, v2.RandomResizedCrop(size, scale=(0.16, 1.0), ratio=ratio), v2.RandomHorizontalFlip(), *tail,
    ])
    return (train if augment else evaluation), evaluation
