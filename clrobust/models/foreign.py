"""Networks of other libraries by name: ``torchvision:NAME`` and ``timm:NAME`` (timm only when installed).

The library builds the network without weights; its last linear layer becomes the
:class:`~clrobust.models.Network`'s classifier and the rest its encoder, so every
command records, attacks and probes it as any other network. The encoder's ``blocks``
layer set is the library's first convolution, each of its residual (or transformer)
blocks, and ``avgpool``: the feature the classifier reads.
"""

from __future__ import annotations

import re
from typing import Any, Callable, List, Optional, Tuple

import torch
from torch import nn

from clrobust.errors import ClrobustError

LIBRARIES = ("torchvision", "timm")
#: Class names of the modules that make up the ``blocks`` layer set.
BLOCK_CLASS = re.compile(r"(Block|Bottleneck|InvertedResidual|Stage\d*|EncoderBlock)$")
_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")


def split_name(arch: str) -> Optional[Tuple[str, str]]:
    """(library, model name) of ``torchvision:resnet50`` / ``timm:vit_tiny_patch16_224``; None for other names."""
    library, sep, name = arch.partition(":")
    if not sep or library not in LIBRARIES:
        return None
    if not _NAME.match(name):
        raise ClrobustError(f"{arch!r}: a {library} model name has letters, digits, '_', '-' and '.' only.")
    return library, name


def build_library_network(library: str, name: str) -> nn.Module:
    """The library's network ``name``, randomly initialised (no download ever)."""
    if library == "torchvision":
        import torchvision.models as tvm

        if name not in tvm.list_models():
            raise ClrobustError(f"torchvision has no model {name!r}; see torchvision.models.list_models().")
        return tvm.get_model(name, weights=None)
    try:
        import timm  # type: ignore[import-not-found]  # an optional extra
    except ImportError:
        raise ClrobustError(f"timm:{name} needs timm, which is not installed: pip install 'clrobust[timm]'.") \
            from None
    if not timm.is_model(name):
        raise ClrobustError(f"timm has no model {name!r}; see timm.list_models().")
    return timm.create_model(name, pretrained=False)


def last_linear(net: nn.Module) -> Tuple[str, nn.Linear]:
    """The name and module of the network's last linear layer (its classifier)."""
    linears = [(n, m) for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ClrobustError(f"{type(net).__name__} has no linear classifier to separate from its encoder.")
    return linears[-1]


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, leaf, module)


class LibraryEncoder(nn.Module):
    """A library network without its classifier; ``avgpool`` (an identity) marks the feature it outputs."""

    def __init__(self, arch: str, **_ignored: Any) -> None:
        super().__init__()
        parsed = split_name(arch)
        if parsed is None:
            raise ClrobustError(f"{arch!r} is not a torchvision: or timm: name.")
        self.arch = arch
        self.net = build_library_network(*parsed)
        head_name, head = last_linear(self.net)
        self.head_name = head_name
        self.num_classes = head.out_features
        self.feature_dim = head.in_features
        _set_module(self.net, head_name, nn.Identity())
        self.avgpool = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.avgpool(self.net(x).flatten(1))

    def block_names(self) -> List[str]:
        names = [n for n, m in self.named_modules() if n and BLOCK_CLASS.search(type(m).__name__)]
        # a block inside a block (timm stages hold blocks) is left to the glob patterns
        names = [n for n in names if not any(n.startswith(o + ".") for o in names if o != n)]
        first_conv = next((n for n, m in self.named_modules() if isinstance(m, nn.Conv2d)), None)
        return ([first_conv] if first_conv else []) + names + ["avgpool"]


def library_factory(arch: str) -> Callable[..., LibraryEncoder]:
    """An encoder factory (the registry's signature) for a ``torchvision:`` / ``timm:`` name."""
    def factory(*_args: Any, **_kw: Any) -> LibraryEncoder:
        return LibraryEncoder(arch)
    return factory
