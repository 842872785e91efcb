"""Batch-norm variants: plain, and dual (clean / adversarial statistics, as in CLAE and ACL).

Both can take their training statistics over the whole batch of a multi-process run
(:func:`sync_batch_norm`): every process normalises its share of the batch with the
mean and variance of all shares, so ``N`` processes train as one process with the
whole batch would. torch's ``SyncBatchNorm`` does this on GPUs only; this one runs the
same on the CPU (gloo) and on GPUs (NCCL).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn


class BatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d (same parameters, buffers and results) whose training statistics span every process
    once :func:`sync_batch_norm` has switched it over."""

    synced: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.synced and self.training:
            return _global_batch_norm(self, x)
        return super().forward(x)


def _global_batch_norm(bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """Normalise with the mean and biased variance of the batch summed over all processes (a differentiable
    all-reduce, so gradients flow through the statistics as in one process); the running statistics take
    the unbiased variance, as nn.BatchNorm2d's do."""
    from clrobust.distributed import sum_with_gradient

    c = x.shape[1]
    xf = x.to(torch.promote_types(x.dtype, torch.float32))  # bf16 under autocast: statistics in float32
    count = torch.full((1,), float(x.numel() // c), dtype=xf.dtype, device=x.device)
    local_sum = xf.sum((0, 2, 3))
    total = sum_with_gradient(torch.cat([local_sum, count]))
    n = total[c]
    mean = total[:c] / n
    centred = xf - mean.view(1, c, 1, 1)
    var = sum_with_gradient((centred * centred).sum((0, 2, 3))) / n  # two passes: exact for large means
    if bn.track_running_stats and bn.running_mean is not None and bn.running_var is not None:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)  # type: ignore[union-attr]
            m = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)  # type: ignore
            bn.running_mean.mul_(1 - m).add_(mean.detach().to(bn.running_mean.dtype), alpha=m)
            unbiased = var.detach() * n / torch.clamp(n - 1, min=1)
            bn.running_var.mul_(1 - m).add_(unbiased.to(bn.running_var.dtype), alpha=m)
    out = centred * torch.rsqrt(var + bn.eps).view(1, c, 1, 1)
    if bn.affine:
        out = out * bn.weight.view(1, c, 1, 1) + bn.bias.view(1, c, 1, 1)
    return out.to(x.dtype)


class DualBatchNorm2d(BatchNorm2d):
    """A BatchNorm2d whose own parameters serve clean inputs, plus ``adv`` for adversarial ones.

    The clean parameters keep BatchNorm2d's names, so a dual-BN state dict minus
    its ``.adv.`` keys loads into a plain model unchanged.
    """

    def __init__(self, num_features: int, **kw):
        super().__init__(num_features, **kw)
        self.adv = BatchNorm2d(num_features, **kw)
        self.route_adversarial = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.route_adversarial:
            return self.adv(x)
        return super().forward(x)


def make_bn(num_features: int, dual: bool) -> nn.BatchNorm2d:
    return DualBatchNorm2d(num_features) if dual else BatchNorm2d(num_features)


def sync_batch_norm(model: nn.Module, enabled: bool = True) -> int:
    """Take every 2-d batch norm's training statistics over all processes of the run (``enabled``), or
    back to this process's share; plain nn.BatchNorm2d modules become :class:`BatchNorm2d` (same state).
    Returns how many batch norms were switched; any other batch norm (1-d, 3-d) is refused."""
    switched = 0
    for name, m in model.named_modules():
        if not isinstance(m, nn.modules.batchnorm._BatchNorm):
            continue
        if type(m) is nn.BatchNorm2d:
            m.__class__ = BatchNorm2d
        if not isinstance(m, BatchNorm2d):
            raise TypeError(f"{name} is a {type(m).__name__}; only 2-d batch norm is synchronised")
        m.synced = enabled
        switched += 1
    return switched


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
