"""Pre-activation ResNets (BN - ReLU - conv blocks): PreActResNet-18 and, with three stages, WideResNets.

Names follow clrobust's ResNets: ``stem.conv``, ``layerK.J.{bn1,conv1,bn2,conv2,shortcut.0}``, the
final ``bn`` (normalises the last block's output before pooling) and ``avgpool``. Every activation
is its own module so a forward hook on any named module sees exactly one call per forward pass.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import nn

from clrobust.errors import ClrobustError
from clrobust.models.norm import make_bn
from clrobust.models.resnet import GlobalPool


class PreActBlock(nn.Module):
    """bn1 - relu1 - conv1 - bn2 - relu2 - conv2, added to the shortcut.

    The shortcut is the identity, or a 1x1 conv (no BN) when the stride or the
    width changes. That conv reads the pre-activated input ``relu1(bn1(x))``,
    as in WideResNet and Rice et al.'s PreActResNet, unless ``raw_shortcut``:
    then it reads ``x`` itself (RobustBench's ``PreActBlock``).
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1, dual_bn: bool = False,
                 raw_shortcut: bool = False):
        super().__init__()
        self.bn1 = make_bn(in_planes, dual_bn)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = make_bn(planes, dual_bn)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut: Optional[nn.Module] = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False))
        self.raw_shortcut = raw_shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu1(self.bn1(x))
        if self.shortcut is None:
            skip = x
        else:
            skip = self.shortcut(x if self.raw_shortcut else pre)
        out = self.conv2(self.relu2(self.bn2(self.conv1(pre))))
        return out + skip


class PreActStem(nn.Module):
    """The 3x3 stride-1 first conv; pre-activation nets normalise inside the next block instead."""

    def __init__(self, width: int):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class PreActResNet(nn.Module):
    """A pre-activation ResNet encoder mapping images to pooled features of size ``feature_dim``.

    Args:
        num_blocks: residual blocks per stage; stage 1 keeps the resolution, later ones halve it.
        widths: output channels of each stage.
        stem_width: channels of the first conv.
        final_bn: BN + ReLU on the last block's output before pooling.
        raw_shortcut: shortcut convs read the block input rather than its pre-activation.
        dual_bn: clean/adversarial batch norms (:class:`DualBatchNorm2d`).
    """

    def __init__(self, num_blocks: Sequence[int], widths: Sequence[int], stem_width: int,
                 final_bn: bool = True, raw_shortcut: bool = False, dual_bn: bool = False):
        super().__init__()
        if len(num_blocks) != len(widths):
            raise ValueError("num_blocks and widths need one entry per stage")
        self.stem = PreActStem(stem_width)
        self.stem_kind = "cifar"
        self.width = stem_width
        in_planes = stem_width
        for i, (n, planes) in enumerate(zip(num_blocks, widths)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(PreActBlock(in_planes, planes, stride, dual_bn, raw_shortcut))
                in_planes = planes
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.num_stages = len(num_blocks)
        self.bn = make_bn(in_planes, dual_bn) if final_bn else None
        self.relu = nn.ReLU() if final_bn else None
        self.avgpool = GlobalPool()
        self.feature_dim = in_planes
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        if self.bn is not None:
            x = self.relu(self.bn(x))
        return self.avgpool(x)

    def block_names(self) -> List[str]:
        """Names of the modules in the ``blocks`` layer set, input to output."""
        names = ["stem"]
        for i in range(self.num_stages):
            stage = getattr(self, f"layer{i + 1}")
            names += [f"layer{i + 1}.{j}" for j in range(len(stage))]
        return names + ["avgpool"]


def require_cifar_stem(arch: str, stem: str) -> None:
    if stem != "cifar":
        raise ClrobustError(f"{arch} has only the CIFAR stem (3x3 conv, stride 1), not {stem!r}.")


def preact_resnet18(width: int = 64, stem: str = "cifar", dual_bn: bool = False) -> PreActResNet:
    """PreActResNet-18 with the shortcut from the pre-activated input and BN + ReLU before pooling.

    RobustBench's ``PreActBlockV2`` / ``out_shortcut=True`` with ``bn_before_fc`` (Rice et al. 2020).
    """
    require_cifar_stem("preact-resnet18", stem)
    return PreActResNet([2, 2, 2, 2], [width, 2 * width, 4 * width, 8 * width], width, dual_bn=dual_bn)


def preact_resnet18_v1(width: int = 64, stem: str = "cifar", dual_bn: bool = False) -> PreActResNet:
    """PreActResNet-18 with the shortcut from the raw block input and no BN before pooling.

    RobustBench's default ``PreActResNet(PreActBlock, [2, 2, 2, 2])`` (Wong et al. 2020,
    Andriushchenko & Flammarion 2020).
    """
    require_cifar_stem("preact-resnet18-v1", stem)
    return PreActResNet([2, 2, 2, 2], [width, 2 * width, 4 * width, 8 * width], width, final_bn=False,
                        raw_shortcut=True, dual_bn=dual_bn)
