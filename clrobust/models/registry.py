"""Architecture names: fixed ones in :data:`ARCHITECTURES`, plus the ``wrn-DEPTH-WIDEN`` and
``dm-wrn-DEPTH-WIDEN[-relu]`` families."""

from __future__ import annotations

import functools
from typing import Callable, Dict

from torch import nn

from clrobust.errors import ClrobustError
from clrobust.models.dm_resnet import DM_PREACT_ARCHITECTURES, parse_dm_wrn
from clrobust.models.preact_resnet import preact_resnet18, preact_resnet18_v1
from clrobust.models.resnet import resnet18, resnet34, resnet50
from clrobust.models.wide_resnet import WRN_STEM_WIDTH, parse_wrn, wide_resnet

#: name -> factory(width, stem=..., dual_bn=...).
ARCHITECTURES: Dict[str, Callable[..., nn.Module]] = {
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "preact-resnet18": preact_resnet18,
    "preact-resnet18-v1": preact_resnet18_v1,
    **DM_PREACT_ARCHITECTURES,
}
DEFAULT_WIDTH = 64


def known_architectures() -> str:
    """The accepted names, for messages and help texts."""
    return (", ".join(sorted(ARCHITECTURES)) + ", wrn-DEPTH-WIDEN (e.g. wrn-28-10), "
            "dm-wrn-DEPTH-WIDEN[-relu] (e.g. dm-wrn-28-10), torchvision:NAME (e.g. torchvision:resnet50), "
            "timm:NAME")


def architecture(name: str) -> Callable[..., nn.Module]:
    """The encoder factory for an architecture name.

    Raises:
        ClrobustError: unknown name, or a malformed ``wrn-`` / ``dm-wrn-`` name.
    """
    if name in ARCHITECTURES:
        return ARCHITECTURES[name]
    wrn = parse_wrn(name)
    if wrn is not None:
        return functools.partial(wide_resnet, *wrn)
    dm_wrn = parse_dm_wrn(name)
    if dm_wrn is not None:
        return dm_wrn
    from clrobust.models.foreign import library_factory, split_name

    if split_name(name) is not None:
        return library_factory(name)
    raise ClrobustError(f"unknown architecture {name!r}; known: {known_architectures()}.")


def default_width(name: str) -> int:
    """The reference base width of an architecture (stem channels): 16 for WRNs, else 64."""
    return WRN_STEM_WIDTH if name.startswith(("wrn-", "dm-wrn-")) else DEFAULT_WIDTH
