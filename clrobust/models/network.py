"""The network clrobust analyses: input normalisation, encoder, projection head, linear classifier."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Optional, Sequence, Tuple, TypeVar, cast

import torch
from torch import nn

from clrobust.models.registry import default_width

M = TypeVar("M", bound=nn.Module)


def fast_layout(net: M, device: torch.device, amp: bool = False) -> M:
    """``net`` on ``device``, in channels-last memory where :func:`prefers_channels_last` says its convolutions
    run faster so. Only the layout changes: outputs agree to the order of floating-point sums (about 4e-7), and
    saved weights are made contiguous."""
    net = net.to(device)
    return net.to(memory_format=torch.channels_last) if prefers_channels_last(net, device, amp) else net


def prefers_channels_last(net: nn.Module, device: torch.device, amp: bool = False) -> bool:
    """On a GPU, channels-last under bf16 autocast (``amp``). On a CPU, in fp32 and bf16 alike (oneDNN's
    kernels; measured at width 16 on 2 cores in fp32: attack steps 1.47x, training steps 1.2x), unless a
    convolution is one oneDNN mishandles there: its weight gradient of a strided 1x1 convolution on channels-last
    input with fewer input channels than its channel block (8 with AVX2, 16 with AVX-512) writes past a
    workspace, which hangs, crashes or silently gives wrong gradients (oneDNN issue 6035; here the width-4
    ResNet's shortcut hung). So a net keeps the default layout where a strided 1x1 convolution has fewer than
    16 input channels, or any convolution other than a wider-than-1x1 one on the 3-channel image has a number
    of input channels that is not a multiple of 8."""
    if device.type != "cpu":
        return amp
    convs = [c for c in net.modules() if isinstance(c, nn.Conv2d)]
    strided_1x1 = [c for c in convs if c.kernel_size == (1, 1) and c.stride != (1, 1)]
    return (all(c.in_channels >= 16 for c in strided_1x1)
            and all(c.in_channels % 8 == 0 or (c.in_channels == 3 and c.kernel_size != (1, 1)) for c in convs))


class Normalize(nn.Module):
    """(x - mean) / std with buffers, so models take inputs in [0, 1] as attacks expect."""

    mean: torch.Tensor  # buffers, registered in __init__
    std: torch.Tensor

    def __init__(self, mean: Optional[Sequence[float]], std: Optional[Sequence[float]]):
        super().__init__()
        self.enabled = mean is not None
        self.register_buffer("mean", torch.tensor(mean if mean is not None else [0.0] * 3).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std if std is not None else [1.0] * 3).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std if self.enabled else x


class ProjectionHead(nn.Module):
    """The 2-layer MLP of SimCLR / SupCon (feature -> hidden -> out)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(hidden, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.relu(self.fc1(x)))


#: Plausible ranges of a config's integers: (lowest, highest, None allowed).
_INT_RANGES = {"width": (1, 1024, True), "num_classes": (1, 100_000, False), "proj_dim": (1, 65_536, True),
               "proj_hidden": (1, 65_536, True)}


@dataclass
class ModelConfig:
    """Everything needed to rebuild a network's modules (saved beside its weights)."""

    arch: str = "resnet18"
    width: Optional[int] = None  # base (stem) width; None: the architecture's reference width
    stem: str = "cifar"
    num_classes: int = 10
    proj_dim: Optional[int] = 128
    proj_hidden: Optional[int] = None
    mean: Optional[Tuple[float, ...]] = None
    std: Optional[Tuple[float, ...]] = None
    dual_bn: bool = False
    extra: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.width is None:
            self.width = default_width(self.arch)

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["mean"] = list(self.mean) if self.mean is not None else None
        d["std"] = list(self.std) if self.std is not None else None
        return d

    @classmethod
    def checked(cls, d: Any, where: str) -> "ModelConfig":
        """The config a file declares, validated before any module is built: a JSON object with
        only known keys, each of its type and in a plausible range (``where`` names the file).

        Raises:
            ClrobustError: the first problem found, named.
        """
        from clrobust.errors import ClrobustError

        def bad(problem: str) -> ClrobustError:
            return ClrobustError(f"{where}: model config {problem}; the file is damaged or was not written "
                                 "by clrobust.")

        if not isinstance(d, dict):
            raise bad(f"is a JSON {type(d).__name__}, not an object")
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise bad(f"has unknown keys {', '.join(map(repr, unknown[:5]))} (a newer clrobust may read it)")
        for key, (lo, hi, optional) in _INT_RANGES.items():
            v = d.get(key)
            if v is None and (optional or key not in d):
                continue
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
                raise bad(f"{key}={v!r} is not an integer from {lo} to {hi}")
        for key in ("arch", "stem"):
            if key in d and not isinstance(d[key], str):
                raise bad(f"{key}={d[key]!r} is not a string")
        for key in ("mean", "std"):
            v = d.get(key)
            if v is None:
                continue
            if (not isinstance(v, list) or len(v) not in (1, 3)
                    or not all(isinstance(a, (int, float)) and not isinstance(a, bool) and math.isfinite(a)
                               for a in v)):
                raise bad(f"{key}={v!r} is not a list of 1 or 3 finite numbers")
            if key == "std" and not all(a > 0 for a in v):
                raise bad(f"std={v!r} has a value that is not above 0")
        if "dual_bn" in d and not isinstance(d["dual_bn"], bool):
            raise bad(f"dual_bn={d['dual_bn']!r} is not true or false")
        if "extra" in d and not isinstance(d["extra"], dict):
            raise bad("extra is not an object")
        from clrobust.models.registry import architecture
        from clrobust.names import STEMS

        if d.get("stem", "cifar") not in STEMS:
            raise bad(f"stem={d['stem']!r} is not one of {', '.join(STEMS)}")
        try:
            architecture(d.get("arch", "resnet18"))
        except ClrobustError as exc:
            raise bad(f"arch: {exc}") from None
        return cls.from_dict(d)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "ModelConfig":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        for k in ("mean", "std"):
            if known.get(k) is not None:
                known[k] = tuple(known[k])
        return cls(**known)


class Network(nn.Module):
    """normalize -> encoder -> (projector | classifier).

    ``forward`` returns classifier logits (what attacks need); ``features`` the
    encoder output; ``project`` the contrastive embedding.
    """

    def __init__(self, config: ModelConfig, encoder: nn.Module):
        super().__init__()
        self.config = config
        self.normalize = Normalize(config.mean, config.std)
        self.encoder = encoder
        dim = cast(int, encoder.feature_dim)  # an int attribute of every clrobust encoder
        self.projector = (ProjectionHead(dim, config.proj_hidden or dim, config.proj_dim)
                          if config.proj_dim else None)
        self.classifier = nn.Linear(dim, config.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.normalize(x))

    def project(self, x: torch.Tensor) -> torch.Tensor:
        if self.projector is None:
            raise RuntimeError("this network has no projection head")
        return self.projector(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
