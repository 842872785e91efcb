"""DeepMind's pre-activation nets (Gowal et al. 2020, Rebuffi et al. 2021): ``dm-wrn-D-K`` and ``dm-preact-resnetN``.

Same shapes as :mod:`clrobust.models.wide_resnet` and PreActResNet, three differences:

* the activation is Swish (SiLU) by default; a ``-relu`` suffix builds the ReLU variant
  (``dm-wrn-28-10`` vs ``dm-wrn-28-10-relu``): checkpoints cannot tell the two apart;
* every stride-2 3x3 conv pads bottom/right only (TensorFlow ``SAME``, :class:`SamePadConv2d`);
* ``dm-preact-resnetN`` shortcuts are 3x3 convs (same padding) reading the raw block input.

WideResNet shortcuts read the pre-activated input, as in the reference WRN. Batch norms keep
PyTorch's defaults (eps 1e-5, momentum 0.1), as in the ported models.
"""

from __future__ import annotations

import functools
import re
from typing import Callable, Dict, Optional, Sequence

from torch import nn

from clrobust.errors import ClrobustError
from clrobust.models.preact_resnet import Activation, PreActResNet, require_cifar_stem
from clrobust.models.wide_resnet import WRN_STEM_WIDTH, check_wrn, wide_resnet

DM_WRN_NAME = re.compile(r"^dm-wrn-(\d+)-(\d+)(-relu)?$")
#: Blocks per stage of DeepMind's PreActResNet depths.
DM_PREACT_DEPTHS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
DM_PREACT_WIDTH = 64


def _activation(relu: bool) -> Activation:
    return nn.ReLU if relu else nn.SiLU


def dm_wide_resnet(depth: int, widen: int, width: int = WRN_STEM_WIDTH, stem: str = "cifar",
                   dual_bn: bool = False, relu: bool = False) -> PreActResNet:
    """DeepMind's WRN-``depth``-``widen`` (``DMWideResNet``); ``width`` is the stem's channel count (16)."""
    require_cifar_stem(f"dm-wrn-{depth}-{widen}", stem)
    return wide_resnet(depth, widen, width, stem, dual_bn, act=_activation(relu), same_pad=True)


def dm_preact_resnet(num_blocks: Sequence[int], width: int = DM_PREACT_WIDTH, stem: str = "cifar",
                     dual_bn: bool = False, relu: bool = False) -> PreActResNet:
    """DeepMind's PreActResNet (``DMPreActResNet``): 3x3 shortcuts from the raw input, final BN."""
    require_cifar_stem("dm-preact-resnet", stem)
    return PreActResNet(num_blocks, [width, 2 * width, 4 * width, 8 * width], width, raw_shortcut=True,
                        dual_bn=dual_bn, act=_activation(relu), same_pad=True, shortcut_kernel=3)


def _dm_preact_names() -> Dict[str, Callable[..., nn.Module]]:
    names: Dict[str, Callable[..., nn.Module]] = {}
    for depth, blocks in DM_PREACT_DEPTHS.items():
        for suffix, relu in (("", False), ("-relu", True)):
            names[f"dm-preact-resnet{depth}{suffix}"] = functools.partial(dm_preact_resnet, blocks, relu=relu)
    return names


#: ``dm-preact-resnet18``, ``dm-preact-resnet34`` and their ``-relu`` variants.
DM_PREACT_ARCHITECTURES = _dm_preact_names()


def parse_dm_wrn(name: str) -> Optional[Callable[..., nn.Module]]:
    """The factory of a ``dm-wrn-D-K[-relu]`` name; None for other names.

    Raises:
        ClrobustError: a malformed ``dm-wrn-`` name, a depth that is not 6n + 4 or a widen factor of 0.
    """
    if not name.startswith("dm-wrn-"):
        return None
    m = DM_WRN_NAME.match(name)
    if m is None:
        raise ClrobustError(f"unknown architecture {name!r}; DeepMind WideResNets are named "
                            "dm-wrn-DEPTH-WIDEN (Swish) or dm-wrn-DEPTH-WIDEN-relu (e.g. dm-wrn-28-10).")
    depth, widen = check_wrn(name, int(m.group(1)), int(m.group(2)))
    return functools.partial(dm_wide_resnet, depth, widen, relu=m.group(3) is not None)
