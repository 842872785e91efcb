"""Reference ResNets written the way third-party projects write them, independent of clrobust's encoder.

tests/test_formats.py builds every third-party checkpoint layout from one of these networks'
state dicts and requires clrobust's loaded network to reproduce the reference's pooled features,
so a mistake shared by clrobust's encoder and its key mapping cannot cancel out.

* :class:`CifarResNet` -- kuangliu/pytorch-cifar, as copied by SupContrast (``resnet_big``), RoCL,
  MadryLab robustness, RobustBench, CL-Robustness and lightly's ``ResNetGenerator``: 3x3 stride-1
  ``conv1``, ``bn1``, no max-pool, ``F.relu``, blocks with a ``shortcut`` Sequential(conv, bn).
* :func:`lightly_cifar_backbone` -- lightly's CIFAR benchmarks: ``nn.Sequential(*list(resnet.children())[:-1],
  nn.AdaptiveAvgPool2d(1))`` of a ``ResNetGenerator``, optionally with lightly's :class:`SplitBatchNorm`.
* :class:`TorchvisionResNet` -- ``torchvision.models.resnet.ResNet`` itself (its blocks, ``_make_layer``
  and forward), narrowed to a small base width; :func:`solo_learn_backbone` applies solo-learn's CIFAR
  changes (``conv1`` 3x3 stride 1 padding 2, ``maxpool`` = Identity, ``fc`` = Identity).
* :class:`MultiBNResNet` -- ACL / AdvCL ``resnet_multi_bn``: torchvision names, CIFAR stem,
  ``bn_list.K`` batch-norm copies, ``downsample.conv`` / ``downsample.bn``, optional ``normalize``.
* :class:`ClaeResNet` -- CLAE's ``ResNetAdvProp_all``: kuangliu names plus ``bn1_adv`` / ``bn2_adv`` /
  ``shortcut_bn_adv`` copies, the shortcut BN outside the ``shortcut`` Sequential.

:func:`randomized` gives any of them random weights and batch-norm statistics.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Type, Union

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet as tv

SD = Dict[str, torch.Tensor]
Norm = Tuple[Sequence[float], Sequence[float]]
NormLayer = Callable[[int], nn.Module]

#: (block kind, blocks per stage) of the depths the tests use.
DEPTHS: Dict[str, Tuple[str, List[int]]] = {
    "resnet18": ("basic", [2, 2, 2, 2]), "resnet34": ("basic", [3, 4, 6, 3]), "resnet50": ("bottleneck", [3, 4, 6, 3]),
}


# ----------------------------------------------------------------------------- random weights

def randomized(net: nn.Module, seed: int = 0) -> Tuple[nn.Module, SD]:
    """Random convs, linears and batch norms (affine and running statistics) for ``net``.

    Returns:
        (``net`` in eval mode, a copy of its state dict taken before ``eval()``, i.e. as saved during
        training: lightly's SplitBatchNorm still holds one set of statistics per split there).
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
            elif isinstance(m, nn.Linear):
                m.weight.copy_(0.1 * torch.randn(m.weight.shape, generator=g))
                if m.bias is not None:
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
                m.running_mean.copy_(0.3 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + 1.5 * torch.rand(m.running_var.shape, generator=g))
                m.num_batches_tracked.fill_(100)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    return net.eval(), state


class ChannelNormalize(nn.Module):
    """``(x - mean) / std`` with buffers ``mean``/``std`` of shape ``shape``.

    ACL / DeACL ``NormalizeByChannelMeanStd`` (shape ``(3,)``) and RobustBench ``ImageNormalizer``
    (shape ``(1, 3, 1, 1)``).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], shape: Sequence[int] = (3,)):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(*shape))
        self.register_buffer("std", torch.tensor(std).view(*shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.view(1, -1, 1, 1)) / self.std.view(1, -1, 1, 1)


# ----------------------------------------------------------------------------- kuangliu / pytorch-cifar

class CifarBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, norm: NormLayer = nn.BatchNorm2d):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = norm(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = norm(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != self.expansion * planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, self.expansion * planes, kernel_size=1, stride=stride, bias=False),
                norm(self.expansion * planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return F.relu(out)


class CifarBottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, norm: NormLayer = nn.BatchNorm2d):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = norm(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = norm(planes)
        self.conv3 = nn.Conv2d(planes, self.expansion * planes, kernel_size=1, bias=False)
        self.bn3 = norm(self.expansion * planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != self.expansion * planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, self.expansion * planes, kernel_size=1, stride=stride, bias=False),
                norm(self.expansion * planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += self.shortcut(x)
        return F.relu(out)


class CifarResNet(nn.Module):
    """kuangliu/pytorch-cifar ResNet with base width ``width``; ``linear`` only when ``num_classes`` is set."""

    def __init__(self, block: Type[Union[CifarBasicBlock, CifarBottleneck]], num_blocks: Sequence[int],
                 width: int = 64, num_classes: Optional[int] = None, norm: NormLayer = nn.BatchNorm2d):
        super().__init__()
        self.in_planes = width
        self.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = norm(width)
        self.layer1 = self._make_layer(block, width, num_blocks[0], 1, norm)
        self.layer2 = self._make_layer(block, 2 * width, num_blocks[1], 2, norm)
        self.layer3 = self._make_layer(block, 4 * width, num_blocks[2], 2, norm)
        self.layer4 = self._make_layer(block, 8 * width, num_blocks[3], 2, norm)
        self.feature_dim = 8 * width * block.expansion
        self.linear = nn.Linear(self.feature_dim, num_classes) if num_classes else None

    @classmethod
    def named(cls, arch: str, width: int, **kw) -> "CifarResNet":
        kind, blocks = DEPTHS[arch]
        return cls(CifarBasicBlock if kind == "basic" else CifarBottleneck, blocks, width, **kw)

    def _make_layer(self, block, planes: int, num_blocks: int, stride: int, norm: NormLayer) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (num_blocks - 1):
            layers.append(block(self.in_planes, planes, s, norm))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The globally average-pooled output of ``layer4`` (SupContrast: ``AdaptiveAvgPool2d``)."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.features(x)
        return self.linear(out) if self.linear is not None else out


# ----------------------------------------------------------------------------- lightly

class SplitBatchNorm(nn.BatchNorm2d):
    """lightly's SplitBatchNorm: running statistics for ``num_splits`` splits, averaged when switched to eval.

    In eval mode it normalises with the first ``num_features`` statistics, which ``train(False)``
    has set to the mean over the splits.
    """

    def __init__(self, num_features: int, num_splits: int):
        super().__init__(num_features)
        self.num_splits = num_splits
        self.register_buffer("running_mean", torch.zeros(num_features * num_splits))
        self.register_buffer("running_var", torch.ones(num_features * num_splits))

    def train(self, mode: bool = True) -> "SplitBatchNorm":
        if self.training and not mode:
            for name in ("running_mean", "running_var"):
                stats = getattr(self, name).view(self.num_splits, self.num_features).mean(0)
                setattr(self, name, stats.repeat(self.num_splits))
        return super().train(mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            raise NotImplementedError("the reference SplitBatchNorm is only run in eval mode")
        return F.batch_norm(x, self.running_mean[:self.num_features], self.running_var[:self.num_features],
                            self.weight, self.bias, False, self.momentum, self.eps)


def split_bn(num_splits: int) -> NormLayer:
    """A norm-layer factory for lightly's SplitBatchNorm (``num_splits`` > 0) or plain BatchNorm2d."""
    return functools.partial(SplitBatchNorm, num_splits=num_splits) if num_splits else nn.BatchNorm2d


def lightly_cifar_backbone(arch: str, width: int, num_splits: int = 0) -> nn.Sequential:
    """lightly's CIFAR benchmark backbone: the ResNetGenerator's children but ``linear``, then average pooling.

    ``ResNet.forward`` applies the stem's ReLU functionally, so this Sequential has none:
    ``0`` = conv1, ``1`` = bn1, ``2``-``5`` = layer1-4, ``6`` = AdaptiveAvgPool2d.
    """
    resnet = CifarResNet.named(arch, width, num_classes=10, norm=split_bn(num_splits))
    return nn.Sequential(*list(resnet.children())[:-1], nn.AdaptiveAvgPool2d(1))


# ----------------------------------------------------------------------------- torchvision

class TorchvisionResNet(tv.ResNet):
    """``torchvision.models.resnet.ResNet`` at base width ``width`` (torchvision fixes 64), ``fc`` = Identity.

    torchvision's own blocks, ``_make_layer`` and ``_forward_impl`` build and run it; only the
    planes are scaled. ``normalize`` (DeACL's ``resnet_add_normalize``) or ``mu``/``sigma``
    buffers (RobustBench entries) normalise the input first when given.
    """

    def __init__(self, arch: str, width: int = 64, norm_layer: Optional[NormLayer] = None,
                 normalize: Optional[nn.Module] = None, mu_sigma: Optional[Norm] = None):
        kind, blocks = DEPTHS[arch]
        self.base = width  # read by _make_layer while tv.ResNet.__init__ runs
        super().__init__(tv.BasicBlock if kind == "basic" else tv.Bottleneck, blocks, norm_layer=norm_layer)
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = self._norm_layer(width)
        self.fc = nn.Identity()
        self.feature_dim = self.inplanes
        self.normalize = normalize
        self.register_buffer("mu", None if mu_sigma is None else torch.tensor(mu_sigma[0]).view(1, 3, 1, 1))
        self.register_buffer("sigma", None if mu_sigma is None else torch.tensor(mu_sigma[1]).view(1, 3, 1, 1))

    def _make_layer(self, block, planes: int, blocks: int, stride: int = 1, dilate: bool = False) -> nn.Sequential:
        if planes == 64:  # layer1 follows the stem
            self.inplanes = self.base
        return super()._make_layer(block, planes * self.base // 64, blocks, stride, dilate)

    def _forward_impl(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalize is not None:
            x = self.normalize(x)
        if self.mu is not None:
            x = (x - self.mu) / self.sigma
        return super()._forward_impl(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)


def cifar_stem(net: TorchvisionResNet, padding: int = 1) -> TorchvisionResNet:
    """The usual CIFAR adaptation of a torchvision ResNet: ``conv1`` 3x3 stride 1, ``maxpool`` = Identity."""
    net.conv1 = nn.Conv2d(3, net.base, kernel_size=3, stride=1, padding=padding, bias=False)
    net.maxpool = nn.Identity()
    return net


def solo_learn_backbone(arch: str, width: int, normalize: Optional[nn.Module] = None) -> TorchvisionResNet:
    """solo-learn's CIFAR backbone: torchvision ResNet, conv1 3x3 stride 1 **padding 2**, no max-pool, fc = Identity."""
    return cifar_stem(TorchvisionResNet(arch, width, normalize=normalize), padding=2)


def lightly_backbone(arch: str, width: int, num_splits: int = 0) -> nn.Sequential:
    """lightly's examples: ``nn.Sequential(*list(torchvision_resnet.children())[:-1])``, output (N, C, 1, 1).

    ``0`` = conv1, ``1`` = bn1, ``2`` = relu, ``3`` = maxpool, ``4``-``7`` = layer1-4, ``8`` = avgpool.
    """
    resnet = TorchvisionResNet(arch, width, norm_layer=split_bn(num_splits))
    return nn.Sequential(*list(resnet.children())[:-1])


# ----------------------------------------------------------------------------- ACL / AdvCL (bn_list)

class MultiBatchNorm(nn.Module):
    """ACL's ``batch_norm_multiple``: one BatchNorm2d per branch in ``bn_list``."""

    def __init__(self, planes: int, branches: int):
        super().__init__()
        self.bn_list = nn.ModuleList([nn.BatchNorm2d(planes) for _ in range(branches)])

    def forward(self, x: torch.Tensor, branch: int) -> torch.Tensor:
        return self.bn_list[branch](x)


class DownsampleMultiple(nn.Module):
    """ACL's ``Downsample_multiple``: ``conv`` (1x1, strided) then ``bn`` (multi-branch)."""

    def __init__(self, inplanes: int, planes: int, stride: int, branches: int):
        super().__init__()
        self.conv = nn.Conv2d(inplanes, planes, kernel_size=1, stride=stride, bias=False)
        self.bn = MultiBatchNorm(planes, branches)

    def forward(self, x: torch.Tensor, branch: int) -> torch.Tensor:
        return self.bn(self.conv(x), branch)


class MultiBNBasicBlock(nn.Module):
    """ACL's torchvision-style BasicBlock with multi-branch batch norms."""

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: Optional[DownsampleMultiple],
                 branches: int):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = MultiBatchNorm(planes, branches)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = MultiBatchNorm(planes, branches)
        self.downsample = downsample

    def forward(self, x: torch.Tensor, branch: int) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x), branch))
        out = self.bn2(self.conv2(out), branch)
        identity = x if self.downsample is None else self.downsample(x, branch)
        return self.relu(out + identity)


class MultiBNResNet(nn.Module):
    """ACL (2 branches: normal, pgd) / AdvCL (3: normal, pgd, pgd_ce) ResNet-18; ``branch`` picks the BN copy."""

    def __init__(self, width: int = 64, branches: int = 2, normalize: Optional[Norm] = None,
                 blocks: Sequence[int] = (2, 2, 2, 2)):
        super().__init__()
        if normalize is not None:
            self.normalize = ChannelNormalize(*normalize)
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = MultiBatchNorm(width, branches)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity()
        for i, n in enumerate(blocks):
            planes, stride = width * 2 ** i, 1 if i == 0 else 2
            downsample = None
            if stride != 1 or self.inplanes != planes:
                downsample = DownsampleMultiple(self.inplanes, planes, stride, branches)
            layer = [MultiBNBasicBlock(self.inplanes, planes, stride, downsample, branches)]
            layer += [MultiBNBasicBlock(planes, planes, 1, None, branches) for _ in range(1, n)]
            self.inplanes = planes
            setattr(self, f"layer{i + 1}", nn.Sequential(*layer))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.feature_dim = self.inplanes

    def features(self, x: torch.Tensor, branch: int = 0) -> torch.Tensor:
        if hasattr(self, "normalize"):
            x = self.normalize(x)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x), branch)))
        for i in range(1, 5):
            for block in getattr(self, f"layer{i}"):
                x = block(x, branch)
        return torch.flatten(self.avgpool(x), 1)


# ----------------------------------------------------------------------------- CLAE (bn*_adv)

class ClaeBasicBlock(nn.Module):
    """CLAE's BasicBlock: ``bn1``/``bn1_adv``, ``bn2``/``bn2_adv``, ``shortcut`` (conv only) + ``shortcut_bn(_adv)``."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.bn1_adv = nn.BatchNorm2d(planes, momentum=0.01)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.bn2_adv = nn.BatchNorm2d(planes, momentum=0.01)
        self.shortcut = nn.Sequential()
        self.shortcut_bn: Optional[nn.BatchNorm2d] = None
        self.shortcut_bn_adv: Optional[nn.BatchNorm2d] = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False))
            self.shortcut_bn = nn.BatchNorm2d(planes)
            self.shortcut_bn_adv = nn.BatchNorm2d(planes, momentum=0.01)

    def forward(self, x: torch.Tensor, adv: bool = False) -> torch.Tensor:
        if adv:
            out = self.bn2_adv(self.conv2(F.relu(self.bn1_adv(self.conv1(x)))))
            sbn = self.shortcut_bn_adv
        else:
            out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
            sbn = self.shortcut_bn
        out = out + (self.shortcut(x) if sbn is None else sbn(self.shortcut(x)))
        return F.relu(out)


class ClaeResNet(nn.Module):
    """CLAE's ``ResNetAdvProp_all`` (BasicBlocks), ``fc`` removed as SimCLR_BN does; ``adv`` picks the BN copies."""

    def __init__(self, width: int = 64, blocks: Sequence[int] = (2, 2, 2, 2), pool_len: int = 4):
        super().__init__()
        self.in_planes = width
        self.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.bn1_adv = nn.BatchNorm2d(width, momentum=0.01)
        for i, n in enumerate(blocks):
            layer = []
            for s in [1 if i == 0 else 2] + [1] * (n - 1):
                layer.append(ClaeBasicBlock(self.in_planes, width * 2 ** i, s))
                self.in_planes = width * 2 ** i
            setattr(self, f"layer{i + 1}", nn.Sequential(*layer))
        self.pool_len = pool_len
        self.feature_dim = self.in_planes

    def features(self, x: torch.Tensor, adv: bool = False) -> torch.Tensor:
        out = F.relu((self.bn1_adv if adv else self.bn1)(self.conv1(x)))
        for i in range(1, 5):
            for block in getattr(self, f"layer{i}"):
                out = block(out, adv=adv)
        out = F.avg_pool2d(out, self.pool_len)  # 32x32 inputs: layer4 is 4x4, so this is global pooling
        return out.view(out.size(0), -1)


def robustbench_normalized(model: nn.Module, norm: Norm) -> nn.Sequential:
    """RobustBench's ``normalize_model``: ``Sequential(normalize=ImageNormalizer(mean, std), model=model)``."""
    return nn.Sequential(OrderedDict([("normalize", ChannelNormalize(*norm, shape=(1, 3, 1, 1))), ("model", model)]))
