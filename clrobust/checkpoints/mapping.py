"""Generic machinery that applies a :class:`CheckpointFormat` to a state dict.

Steps, the same for every format: unwrap (``module.`` on every key,
``_orig_mod.``), drop heads, strip a prefix, split batch-norm copies into
branches, rename, then sort keys into encoder / classifier / normalisation /
unexpected. The architecture is then read off the tensor shapes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

from clrobust.checkpoints.table import IN_MODEL_NORMALIZE, CheckpointFormat
from clrobust.errors import ClrobustError
from clrobust.models.registry import architecture

#: Top-level keys that may hold the state dict, tried in order (then the dict itself).
CONTAINER_KEYS = ("state_dict", "model", "net", "encoder", "backbone", "online_backbone", "model_state_dict")

_ENCODER_KEY = re.compile(r"^(stem|layer\d+\.\d+|bn)\.")
#: (blocks per stage, bottleneck) -> clrobust architecture.
_DEPTHS: Dict[Tuple[Tuple[int, ...], bool], str] = {
    ((2, 2, 2, 2), False): "resnet18", ((3, 4, 6, 3), False): "resnet34", ((3, 4, 6, 3), True): "resnet50"}
_KNOWN_DEPTHS: Dict[Tuple[Tuple[int, ...], bool], str] = {
    ((3, 4, 23, 3), True): "ResNet-101", ((3, 8, 36, 3), True): "ResNet-152"}


def find_state_dict(obj: Any) -> Tuple[Dict[str, torch.Tensor], Optional[str], List[str]]:
    """Locate the tensors in a loaded checkpoint.

    Returns:
        (state dict, the top-level key it came from or None, the top-level keys).

    Raises:
        ClrobustError: no dict of tensors anywhere obvious.
    """
    if isinstance(obj, nn.Module):
        return dict(obj.state_dict()), "<module>", []
    if not isinstance(obj, Mapping):
        raise ClrobustError(f"the checkpoint holds a {type(obj).__name__}, not a dict of weights; "
                            "save model.state_dict() instead.")
    top = [str(k) for k in obj.keys()]
    if _is_state_dict(obj):
        return _tensors(obj), None, top
    for key in CONTAINER_KEYS:
        value = obj.get(key)
        if isinstance(value, nn.Module):
            value = value.state_dict()
        if isinstance(value, Mapping) and _is_state_dict(value):
            return _tensors(value), key, top
    raise ClrobustError(f"no state dict found in the checkpoint (top-level keys: {', '.join(top[:12])}); "
                        f"expected one under {', '.join(CONTAINER_KEYS)} or a flat dict of tensors.")


def _is_state_dict(d: Mapping) -> bool:
    values = list(d.values())
    n = sum(isinstance(v, torch.Tensor) for v in values)
    return n > 0 and n >= len(values) / 2


def _tensors(d: Mapping) -> Dict[str, torch.Tensor]:
    return {str(k): v for k, v in d.items() if isinstance(v, torch.Tensor)}


def unwrap(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Remove ``_orig_mod.`` (torch.compile) and a ``module.`` prefix shared by every key."""
    out = {k.replace("_orig_mod.", ""): v for k, v in state.items()}
    while out and all(k.startswith("module.") for k in out):
        out = {k[len("module."):]: v for k, v in out.items()}
    return out


@dataclass
class Mapped:
    """A state dict sorted into clrobust's parts."""

    encoder: Dict[str, torch.Tensor] = field(default_factory=dict)
    classifier: Dict[str, torch.Tensor] = field(default_factory=dict)
    normalize: Dict[str, torch.Tensor] = field(default_factory=dict)
    dropped: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    sources: Dict[str, str] = field(default_factory=dict)  # canonical key -> key in the file
    notes: List[str] = field(default_factory=list)


def canonical_key(fmt: CheckpointFormat, key: str) -> Tuple[Optional[str], int]:
    """Map one unwrapped key to (clrobust key, BN branch); (None, 0) if it is a head to drop."""
    if any(re.search(p, key) for p in fmt.heads):
        return None, 0
    k = key
    for prefix in sorted(fmt.prefixes, key=len, reverse=True):
        if k.startswith(prefix):
            k = k[len(prefix):]
            break
    branch = 0
    for pattern, repl, fixed in fmt.bn_branches:
        m = re.search(pattern, k)
        if m:
            branch = fixed if fixed is not None else int(m.group("branch"))
            k = re.sub(pattern, repl, k, count=1)
            break
    for pattern, repl in fmt.renames + IN_MODEL_NORMALIZE:
        k = re.sub(pattern, repl, k)
    return k, branch


def map_state(fmt: CheckpointFormat, state: Dict[str, torch.Tensor]) -> Mapped:
    """Apply ``fmt`` to an unwrapped state dict."""
    out = Mapped()
    for key, value in state.items():
        k, branch = canonical_key(fmt, key)
        if k is None:
            out.dropped.append(key)
            continue
        if branch not in (0, fmt.adversarial_branch):
            out.dropped.append(key)
            continue
        if _ENCODER_KEY.match(k):
            if branch:
                head, _, leaf = k.rpartition(".")
                k = f"{head}.adv.{leaf}"
            target = out.encoder
        elif k.startswith("classifier."):
            target = out.classifier
        elif k.startswith("normalize."):
            target = out.normalize
        else:
            out.unexpected.append(key)
            continue
        if k in target:
            same = target[k].shape == value.shape and torch.equal(target[k], value)
            out.dropped.append(key)
            if not same:
                out.notes.append(f"{key} differs from {out.sources[k]} (both map to {k}); kept the first.")
            continue
        target[k] = value
        out.sources[k] = key
    return out


def key_overlap(fmt: CheckpointFormat, state: Dict[str, torch.Tensor]) -> float:
    """Fraction of keys that ``fmt`` maps onto clrobust encoder names (for 'closest format' hints)."""
    if not state:
        return 0.0
    hits = 0
    for key in state:
        k, _ = canonical_key(fmt, key)
        hits += k is not None and bool(_ENCODER_KEY.match(k))
    return hits / len(state)


@dataclass
class ArchGuess:
    arch: str
    width: int
    stem: str
    dual_bn: bool


def infer_arch(fmt: CheckpointFormat, encoder: Dict[str, torch.Tensor], arch: Optional[str] = None,
               stem: Optional[str] = None) -> ArchGuess:
    """Read family, depth, width, stem and dual BN off the mapped encoder tensors (``arch``/``stem`` override).

    A stem without batch norm means a pre-activation net: three stages make a WideResNet
    ``wrn-D-K``, four stages of two blocks a PreActResNet-18 (``-v1`` without the final ``bn``),
    of 3-4-6-3 blocks a PreActResNet-34; the format's ``arch_prefix`` then names the family
    (``dm-`` for DeepMind's layout of the same shapes).

    Raises:
        ClrobustError: no stem conv, or a depth clrobust does not build.
    """
    conv = encoder.get("stem.conv.weight")
    if conv is None or conv.dim() != 4:
        raise ClrobustError(f"no first convolution found after mapping with format {fmt.name!r}; "
                            "the file is not a ResNet of that layout (try --format).")
    width = int(conv.shape[0])
    if stem is None:
        kernel = int(conv.shape[-1])
        if kernel == 7:
            stem = "imagenet"
        elif kernel == 3:
            stem = fmt.small_stem
        else:
            raise ClrobustError(f"first convolution is {kernel}x{kernel}; clrobust builds 3x3 (CIFAR) "
                                "and 7x7 (ImageNet) stems only.")
    dual = any(".adv." in k for k in encoder)
    if arch is None:
        counts = _blocks_per_stage(encoder)
        if "stem.bn.weight" in encoder:
            arch = _resnet_arch(encoder, counts)
        else:
            arch = fmt.arch_prefix + _preact_arch(encoder, counts, width)
            try:
                architecture(arch)
            except ClrobustError:
                raise ClrobustError(f"the encoder's shapes read as {arch}, which clrobust does not build in "
                                    f"the {fmt.name} layout; pass --arch if the guess is wrong.") from None
    return ArchGuess(arch, width, stem, dual)


def _blocks_per_stage(encoder: Dict[str, torch.Tensor]) -> List[int]:
    counts = []
    for stage in range(1, 10):
        blocks = {int(m.group(1)) for k in encoder for m in [re.match(rf"^layer{stage}\.(\d+)\.", k)] if m}
        if not blocks:
            break
        counts.append(len(blocks))
    return counts


def _resnet_arch(encoder: Dict[str, torch.Tensor], counts: List[int]) -> str:
    counts = counts + [0] * (4 - len(counts))
    bottleneck = any(re.match(r"^layer\d\.\d+\.conv3\.", k) for k in encoder)
    key = (tuple(counts), bottleneck)
    if key not in _DEPTHS:
        name = _KNOWN_DEPTHS.get(key, f"{'bottleneck' if bottleneck else 'basic'} blocks {counts}")
        raise ClrobustError(f"encoder has {name} (blocks per stage {counts}); clrobust builds "
                            "resnet18, resnet34 and resnet50 only (pass --arch if the guess is wrong).")
    return _DEPTHS[key]


def _preact_arch(encoder: Dict[str, torch.Tensor], counts: List[int], width: int) -> str:
    """``wrn-D-K``, ``preact-resnet18(-v1)`` or ``preact-resnet34`` from a pre-activation encoder (stem without BN)."""
    outs = [encoder.get(f"layer{i + 1}.0.conv1.weight") for i in range(len(counts))]
    planes = [int(w.shape[0]) if w is not None else 0 for w in outs]
    if len(counts) == 3 and len(set(counts)) == 1 and planes[0] % width == 0:
        widen = planes[0] // width
        if widen and planes == [width * widen, 2 * width * widen, 4 * width * widen]:
            return f"wrn-{6 * counts[0] + 4}-{widen}"
    if counts == [2, 2, 2, 2]:
        return "preact-resnet18" if "bn.weight" in encoder else "preact-resnet18-v1"
    if counts == [3, 4, 6, 3] and "bn.weight" in encoder:
        return "preact-resnet34"
    raise ClrobustError(f"pre-activation encoder with blocks per stage {counts} and stage widths {planes} "
                        f"(stem {width}) is neither a WideResNet wrn-D-K nor a PreActResNet-18/34; "
                        "pass --arch if the guess is wrong.")
