"""Batched, per-sample random augmentations (kornia) driven by torch's global RNG."""

from __future__ import annotations

import kornia.augmentation as K
from torch import nn


def simclr_augment(size: int = 32, min_scale: float = 0.2, jitter: float = 0.4) -> nn.Module:
    """SimCLR's CIFAR views: resized crop, flip, colour jitter (p 0.8), grayscale (p 0.2)."""
    return nn.Sequential(
        K.RandomResizedCrop((size, size), scale=(min_scale, 1.0)),
        K.RandomHorizontalFlip(),
        K.ColorJitter(jitter, jitter, jitter, jitter / 4, p=0.8),
        K.RandomGrayscale(p=0.2),
    )


def crop_flip_augment(size: int = 32, padding: int = 4) -> nn.Module:
    """The supervised CIFAR augmentation: random crop with padding, horizontal flip."""
    return nn.Sequential(K.RandomCrop((size, size), padding=padding), K.RandomHorizontalFlip())
