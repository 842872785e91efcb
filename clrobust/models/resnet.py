"""CIFAR ResNets: 3x3 stride-1 stem, no max-pool, a base-width option.

Every activation is its own module (``relu1``, ``relu2`` ...) so that a forward
hook on any named module sees exactly one call per forward pass.
"""

from __future__ import annotations

from typing import Iterator, List, Type, Union

import torch
from torch import nn

from clrobust.models.norm import make_bn


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, dual_bn: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = make_bn(planes, dual_bn)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = make_bn(planes, dual_bn)
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride, dual_bn)
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, dual_bn: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = make_bn(planes, dual_bn)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = make_bn(planes, dual_bn)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = make_bn(planes * 4, dual_bn)
        self.shortcut = _shortcut(in_planes, planes * 4, stride, dual_bn)
        self.relu3 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu3(out + self.shortcut(x))


def _shortcut(in_planes: int, out_planes: int, stride: int, dual_bn: bool) -> nn.Module:
    if stride == 1 and in_planes == out_planes:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride, bias=False),
                         make_bn(out_planes, dual_bn))


#: Stems of :class:`ResNet`: ``cifar`` (3x3, stride 1, padding 1), ``cifar-pad2`` (solo-learn's
#: padding 2), ``cifar-norelu`` (lightly's CIFAR benchmark backbone: conv and bn without the
#: ReLU, which its ResNet applies functionally and so leaves out of ``children()``) and
#: ``imagenet`` (7x7, stride 2, max-pool).


class Stem(nn.Module):
    """conv - bn - relu; ``kernel``/``padding``/``stride`` cover the CIFAR stem and variants."""

    def __init__(self, width: int, kernel: int = 3, stride: int = 1, padding: int = 1,
                 maxpool: bool = False, dual_bn: bool = False, relu: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(3, width, kernel, stride, padding, bias=False)
        self.bn = make_bn(width, dual_bn)
        self.relu = nn.ReLU() if relu else nn.Identity()
        self.maxpool = nn.MaxPool2d(3, 2, 1) if maxpool else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.relu(self.bn(self.conv(x))))


class GlobalPool(nn.Module):
    """Global average pooling to an (N, C) feature vector."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)


class StagedEncoder(nn.Module):
    """What every clrobust CNN encoder shares: ``stem``, stages ``layer1..layerS``, ``avgpool``.

    Subclasses set ``num_stages`` and build those modules; this class runs the stages,
    names the ``blocks`` layer set and initialises the convs.
    """

    num_stages: int

    def stages(self) -> Iterator[nn.Sequential]:
        for i in range(self.num_stages):
            yield getattr(self, f"layer{i + 1}")

    def run_stages(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages():
            x = stage(x)
        return x

    def block_names(self) -> List[str]:
        """Names of the modules in the ``blocks`` layer set, input to output."""
        names = ["stem"]
        for i, stage in enumerate(self.stages()):
            names += [f"layer{i + 1}.{j}" for j in range(len(stage))]
        return names + ["avgpool"]

    def init_convs(self) -> None:
        """He-normal (fan-out) initialisation of every conv."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


class ResNet(StagedEncoder):
    """A ResNet encoder mapping images to pooled features of size ``feature_dim``."""

    def __init__(self, block: Type[Union[BasicBlock, Bottleneck]], num_blocks: List[int],
                 width: int = 64, stem: str = "cifar", dual_bn: bool = False):
        super().__init__()
        if stem == "cifar":
            self.stem = Stem(width, 3, 1, 1, False, dual_bn)
        elif stem == "cifar-pad2":  # solo-learn's CIFAR stem
            self.stem = Stem(width, 3, 1, 2, False, dual_bn)
        elif stem == "cifar-norelu":  # lightly's CIFAR benchmark backbone
            self.stem = Stem(width, 3, 1, 1, False, dual_bn, relu=False)
        elif stem == "imagenet":
            self.stem = Stem(width, 7, 2, 3, True, dual_bn)
        else:
            raise ValueError(f"unknown stem {stem!r}")
        self.width = width
        in_planes = width
        for i, n in enumerate(num_blocks):
            planes = width * 2 ** i
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block(in_planes, planes, stride, dual_bn))
                in_planes = planes * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.num_stages = len(num_blocks)
        self.avgpool = GlobalPool()
        self.feature_dim = in_planes
        self.init_convs()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.avgpool(self.run_stages(self.stem(x)))


def resnet18(width: int = 64, **kw) -> ResNet:
    return ResNet(BasicBlock, [2, 2, 2, 2], width, **kw)


def resnet34(width: int = 64, **kw) -> ResNet:
    return ResNet(BasicBlock, [3, 4, 6, 3], width, **kw)


def resnet50(width: int = 64, **kw) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 6, 3], width, **kw)

