"""CIFAR WideResNets ``wrn-DEPTH-WIDEN`` (Zagoruyko & Komodakis), as RobustBench and TRADES build them.

A WRN-D-K is a three-stage pre-activation ResNet: a 16-channel 3x3 stem, (D - 4) / 6 blocks per
stage of 16K, 32K and 64K channels, then BN + ReLU and global pooling (features of size 64K).
Whenever a block changes the width, its first BN + ReLU also feeds the 1x1 shortcut conv (the
``equalInOut`` branch of the reference code; for block1 this happens only when K > 1).
"""

from __future__ import annotations

import re
from typing import Optional, Tuple

from clrobust.errors import ClrobustError
from clrobust.models.preact_resnet import PreActResNet, require_cifar_stem

WRN_NAME = re.compile(r"^wrn-(\d+)-(\d+)$")
#: Stem channels of the reference WideResNet; ``width`` scales every stage with it.
WRN_STEM_WIDTH = 16


#: Plausible limits: far beyond any published WideResNet, short of building a net that fills memory.
MAX_WRN_DEPTH = 406
MAX_WRN_WIDEN = 64


def parse_wrn(name: str) -> Optional[Tuple[int, int]]:
    """(depth, widen factor) of a ``wrn-D-K`` name; None for other names.

    Raises:
        ClrobustError: a ``wrn-`` name whose depth is not 6n + 4 or whose widen factor is 0.
    """
    if not name.startswith("wrn-"):
        return None
    m = WRN_NAME.match(name)
    if m is None:
        raise ClrobustError(f"unknown architecture {name!r}; WideResNets are named wrn-DEPTH-WIDEN "
                            "(e.g. wrn-28-10, wrn-34-10, wrn-70-16).")
    return check_wrn(name, int(m.group(1)), int(m.group(2)))


def check_wrn(name: str, depth: int, widen: int) -> Tuple[int, int]:
    """(depth, widen) unchanged when a WideResNet can have them.

    Raises:
        ClrobustError: a depth that is not 6n + 4, or a widen factor below 1, or either beyond
            :data:`MAX_WRN_DEPTH` / :data:`MAX_WRN_WIDEN` (``name`` in the message).
    """
    if depth < 10 or (depth - 4) % 6:
        raise ClrobustError(f"{name}: WideResNet depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 34, 40, 70 ...).")
    if widen < 1:
        raise ClrobustError(f"{name}: the widen factor must be at least 1.")
    if depth > MAX_WRN_DEPTH or widen > MAX_WRN_WIDEN:
        raise ClrobustError(f"{name}: depth up to {MAX_WRN_DEPTH} and widen factor up to {MAX_WRN_WIDEN} are "
                            "supported (the largest published WideResNets are wrn-106-16 and wrn-70-16).")
    return depth, widen


def wide_resnet(depth: int, widen: int, width: int = WRN_STEM_WIDTH, stem: str = "cifar",
                dual_bn: bool = False, **block_options) -> PreActResNet:
    """A WRN-``depth``-``widen`` encoder; ``width`` is the stem's channel count (16 in the reference).

    ``block_options`` (``act``, ``same_pad``) go to :class:`PreActResNet` (DeepMind's variant).
    """
    require_cifar_stem(f"wrn-{depth}-{widen}", stem)
    n = (depth - 4) // 6
    return PreActResNet([n] * 3, [width * widen, 2 * width * widen, 4 * width * widen], width, dual_bn=dual_bn,
                        **block_options)
