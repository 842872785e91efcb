"""One entry point from a zoo name or a checkpoint path to a ready network."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict

import torch

from clrobust.checkpoints import is_native, load_network
from clrobust.errors import ClrobustError
from clrobust.models import Network
from clrobust.zoo import resolve


@dataclass
class LoadedModel:
    label: str
    path: Path
    network: Network
    metadata: Dict[str, Any] = field(default_factory=dict)


def load_model(name_or_path: str, device: str = "cpu", adversarial_bn: bool = False) -> LoadedModel:
    """Load a zoo model or a checkpoint file, in eval mode on ``device``.

    Raises:
        ClrobustError: unknown name, missing, corrupt or foreign file.
    """
    label, path = resolve(name_or_path)
    if path.suffix == ".json":
        path = path.with_suffix(".safetensors")
    if not path.exists() and path.with_name(path.name + ".safetensors").exists():
        path = path.with_name(path.name + ".safetensors")
    if path.suffix == ".safetensors" or is_native(path):
        net, meta = load_network(path, adversarial_bn=adversarial_bn)
    else:
        raise ClrobustError(f"{str(path)!r} is not a clrobust checkpoint (.safetensors with its "
                            "model config); convert it with `clrobust convert`.")
    return LoadedModel(label, path, net.to(torch.device(device)).eval(), meta)
