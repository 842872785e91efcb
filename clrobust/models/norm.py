"""Batch-norm variants: plain, and dual (clean / adversarial statistics, as in CLAE and ACL)."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn


class DualBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm2d whose own parameters serve clean inputs, plus ``adv`` for adversarial ones.

    The clean parameters keep BatchNorm2d's names, so a dual-BN state dict minus
    its ``.adv.`` keys loads into a plain model unchanged.
    """

    def __init__(self, num_features: int, **kw):
        super().__init__(num_features, **kw)
        self.adv = nn.BatchNorm2d(num_features, **kw)
        self.route_adversarial = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.route_adversarial:
            return self.adv(x)
        return super().forward(x)


def make_bn(num_features: int, dual: bool) -> nn.BatchNorm2d:
    return DualBatchNorm2d(num_features) if dual else nn.BatchNorm2d(num_features)


@contextlib.contextmanager
def adversarial_bn(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Route every DualBatchNorm2d of ``model`` to its adversarial statistics inside the block."""
    duals = [m for m in model.modules() if isinstance(m, DualBatchNorm2d)]
    old = [m.route_adversarial for m in duals]
    for m in duals:
        m.route_adversarial = enabled
    try:
        yield
    finally:
        for m, o in zip(duals, old):
            m.route_adversarial = o


def has_dual_bn(model: nn.Module) -> bool:
    return any(isinstance(m, DualBatchNorm2d) for m in model.modules())
