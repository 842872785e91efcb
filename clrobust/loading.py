"""One entry point from a zoo name or a checkpoint path to a ready network."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from clrobust.checkpoints import is_native, load_network
from clrobust.models import Network
from clrobust.zoo import resolve


@dataclass
class LoadedModel:
    label: str
    path: Path
    network: Network
    metadata: Dict[str, Any] = field(default_factory=dict)


def load_model(name_or_path: str, device: str = "cpu", adversarial_bn: bool = False, *,
               arch: Optional[str] = None, normalize: Optional[str] = None, strict: bool = True,
               trust: bool = False) -> LoadedModel:
    """Load a zoo model or a checkpoint file, in eval mode on ``device``.

    Native clrobust checkpoints load directly; any other file goes through
    :func:`clrobust.checkpoints.formats.load_checkpoint` (format detection), with
    ``arch``, ``normalize``, ``strict`` and ``trust`` passed on.

    Raises:
        ClrobustError: unknown name, missing, corrupt, unsafe or unrecognised file.
    """
    label, path = resolve(name_or_path)
    if path.suffix == ".json":
        path = path.with_suffix(".safetensors")
    if not path.exists() and path.with_name(path.name + ".safetensors").exists():
        path = path.with_name(path.name + ".safetensors")
    if is_native(path) or (path.suffix == ".safetensors" and not path.exists()):
        net, meta = load_network(path, adversarial_bn=adversarial_bn)
    else:
        from clrobust.checkpoints.formats import load_checkpoint

        net, report = load_checkpoint(path, arch=arch, normalize=normalize, strict=strict, trust=trust,
                                      adversarial_bn=adversarial_bn)
        meta = {"source_format": report.format, "load_report": report.to_dict()}
    return LoadedModel(label, path, net.to(torch.device(device)).eval(), meta)
