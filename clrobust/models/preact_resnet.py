"""Pre-activation ResNets (BN - ReLU - conv blocks): PreActResNet-18 and, with three stages, WideResNets.

Names follow clrobust's ResNets: ``stem.conv``, ``layerK.J.{bn1,conv1,bn2,conv2,shortcut.0}``, the
final ``bn`` (normalises the last block's output before pooling) and ``avgpool``. Every activation
is its own module so a forward hook on any named module sees exactly one call per forward pass;
the activation modules are named ``relu1``/``relu2``/``relu`` whatever their type (ReLU or SiLU).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from clrobust.errors import ClrobustError
from clrobust.models.norm import make_bn
from clrobust.models.resnet import GlobalPool, StagedEncoder

Activation = Callable[[], nn.Module]


class SamePadConv2d(nn.Conv2d):
    """A stride-2 3x3 conv with TensorFlow's ``SAME`` padding: one zero row and column, bottom and right only.

    DeepMind's models (trained in JAX, then ported) pad this way; PyTorch's ``padding=1`` would
    read every window one pixel up and to the left. The state-dict keys are those of ``nn.Conv2d``.
    """

    def __init__(self, in_planes: int, planes: int, kernel_size: int = 3, stride: int = 2):
        if (kernel_size, stride) != (3, 2):
            raise ValueError("SamePadConv2d implements the 3x3, stride-2 case only")
        super().__init__(in_planes, planes, kernel_size, stride, padding=0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (0, 1, 0, 1)))


def conv3x3(in_planes: int, planes: int, stride: int, same_pad: bool = False) -> nn.Conv2d:
    """A bias-free 3x3 conv; with ``same_pad`` a stride-2 one pads bottom/right only (:class:`SamePadConv2d`)."""
    if same_pad and stride == 2:
        return SamePadConv2d(in_planes, planes, 3, stride)
    return nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)


class PreActBlock(nn.Module):
    """bn1 - relu1 - conv1 - bn2 - relu2 - conv2, added to the shortcut.

    The shortcut is the identity, or a conv (no BN) when the stride or the
    width changes. That conv reads the pre-activated input ``relu1(bn1(x))``,
    as in WideResNet and Rice et al.'s PreActResNet, unless ``raw_shortcut``:
    then it reads ``x`` itself (RobustBench's ``PreActBlock``).

    Args:
        act: activation factory (``nn.ReLU``, ``nn.SiLU`` for Swish).
        same_pad: stride-2 3x3 convs pad bottom/right only (DeepMind's models).
        shortcut_kernel: 1 (usual) or 3 (DeepMind's PreActResNet) for the shortcut conv.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1, dual_bn: bool = False,
                 raw_shortcut: bool = False, act: Activation = nn.ReLU, same_pad: bool = False,
                 shortcut_kernel: int = 1):
        super().__init__()
        self.bn1 = make_bn(in_planes, dual_bn)
        self.relu1 = act()
        self.conv1 = conv3x3(in_planes, planes, stride, same_pad)
        self.bn2 = make_bn(planes, dual_bn)
        self.relu2 = act()
        self.conv2 = conv3x3(planes, planes, 1)
        self.shortcut: Optional[nn.Module] = None
        if stride != 1 or in_planes != planes:
            if shortcut_kernel == 3:
                conv = conv3x3(in_planes, planes, stride, same_pad)
            elif shortcut_kernel == 1:
                conv = nn.Conv2d(in_planes, planes, 1, stride, bias=False)
            else:
                raise ValueError("shortcut_kernel must be 1 or 3")
            self.shortcut = nn.Sequential(conv)
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


class PreActResNet(StagedEncoder):
    """A pre-activation ResNet encoder mapping images to pooled features of size ``feature_dim``.

    Args:
        num_blocks: residual blocks per stage; stage 1 keeps the resolution, later ones halve it.
        widths: output channels of each stage.
        stem_width: channels of the first conv.
        final_bn: BN + activation on the last block's output before pooling.
        raw_shortcut: shortcut convs read the block input rather than its pre-activation.
        dual_bn: clean/adversarial batch norms (:class:`DualBatchNorm2d`).
        act, same_pad, shortcut_kernel: block options (see :class:`PreActBlock`).
    """

    def __init__(self, num_blocks: Sequence[int], widths: Sequence[int], stem_width: int,
                 final_bn: bool = True, raw_shortcut: bool = False, dual_bn: bool = False,
                 act: Activation = nn.ReLU, same_pad: bool = False, shortcut_kernel: int = 1):
        super().__init__()
        if len(num_blocks) != len(widths):
            raise ValueError("num_blocks and widths need one entry per stage")
        self.stem = PreActStem(stem_width)
        self.width = stem_width
        in_planes = stem_width
        for i, (n, planes) in enumerate(zip(num_blocks, widths)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(PreActBlock(in_planes, planes, stride, dual_bn, raw_shortcut, act, same_pad,
                                          shortcut_kernel))
                in_planes = planes
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.num_stages = len(num_blocks)
        self.bn = make_bn(in_planes, dual_bn) if final_bn else None
        self.relu = act() if final_bn else None
        self.avgpool = GlobalPool()
        self.feature_dim = in_planes
        self.init_convs()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.run_stages(self.stem(x))
        if self.bn is not None:
            assert self.relu is not None  # built together with self.bn
            x = self.relu(self.bn(x))
        return self.avgpool(x)


def require_cifar_stem(arch: str, stem: str) -> None:
    """Raise a ClrobustError unless ``stem`` is ``cifar`` (the only stem of pre-activation nets)."""
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
