"""``torchvision:NAME[=WEIGHTS]`` and ``timm:NAME[=WEIGHTS]``: a library's architecture with weights from a local
file (read without running code, as every checkpoint), or randomly initialised when no file is given."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch

from clrobust.checkpoints.reading import read_checkpoint_file
from clrobust.checkpoints.report import LoadReport
from clrobust.checkpoints.table import NORMALIZATIONS, parse_normalize
from clrobust.errors import ClrobustError
from clrobust.models import ModelConfig, Network
from clrobust.models.foreign import LibraryEncoder, split_name

#: Input side the libraries' ImageNet networks are built for (their layers are ordered with it).
IMAGENET_SIDE = 224


def parse_library_spec(spec: str) -> Optional[Tuple[str, Optional[Path]]]:
    """(``library:name``, weights file or None) of a model argument, or None when it names no library model."""
    arch, _, weights = spec.partition("=")
    if split_name(arch) is None:
        return None
    return arch, (Path(weights) if weights else None)


def library_label(spec: str) -> str:
    """The label of a library model: its name, plus its weights file's stem when they differ."""
    parsed = parse_library_spec(spec)
    assert parsed is not None
    arch, weights = parsed
    name = arch.split(":", 1)[1]
    if weights is None:
        return f"{name}-random-init"
    stem = weights.name.split(".")[0]
    return stem if name in stem else f"{name}-{stem}"


def _state_dict(obj: Any, where: str) -> Dict[str, torch.Tensor]:
    for key in ("state_dict", "model", "model_state_dict"):  # common containers
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ClrobustError(f"{where} holds no state dict of tensors; save the network's state_dict().")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


def load_library_model(spec: str, normalize: Optional[str] = None, trust: bool = False
                       ) -> Tuple[Network, LoadReport]:
    """Build the library network of ``spec`` and load its weights file into it (strictly: every key, every
    shape). Inputs are normalised with ImageNet's mean and std unless ``normalize`` says otherwise."""
    parsed = parse_library_spec(spec)
    if parsed is None:
        raise ClrobustError(f"{spec!r} names no torchvision: or timm: model.")
    arch, weights = parsed
    encoder = LibraryEncoder(arch)
    head = encoder.head_name + "."
    state: Dict[str, torch.Tensor] = {}
    num_classes = encoder.num_classes
    if weights is not None:
        state = _state_dict(read_checkpoint_file(weights, trust), repr(str(weights)))
        if state.get(head + "weight") is not None and state[head + "weight"].dim() == 2:
            num_classes = int(state[head + "weight"].shape[0])  # the file's classes (e.g. 10 for CIFAR)
    norm = parse_normalize(normalize) if normalize else NORMALIZATIONS["imagenet"]
    config = ModelConfig(arch=arch, num_classes=num_classes, proj_dim=None,
                         mean=norm[0] if norm else None, std=norm[1] if norm else None,
                         extra={"input_size": IMAGENET_SIDE})
    net = Network(config, encoder)
    notes = []
    if weights is not None:
        where = repr(str(weights))
        mapped = {("classifier." + k[len(head):]) if k.startswith(head) else f"encoder.net.{k}": v
                  for k, v in state.items()}
        own = net.state_dict()
        missing = sorted(k for k in own if k not in mapped and not k.startswith("normalize."))
        unexpected = sorted(k for k in mapped if k not in own)
        wrong = sorted(k for k in mapped if k in own and mapped[k].shape != own[k].shape)
        if missing or unexpected or wrong:
            problem = (f"lacks {', '.join(missing[:3])}" if missing else
                       f"has keys {arch} does not ({', '.join(unexpected[:3])})" if unexpected else
                       f"has other shapes for {', '.join(wrong[:3])}")
            raise ClrobustError(f"{where} is not a {arch} state dict: it {problem}; check the name after "
                                f"'{arch.split(':')[0]}:' or the file.")
        net.load_state_dict({**{k: v for k, v in own.items() if k.startswith("normalize.")}, **mapped})
    else:
        notes.append("no weights file: randomly initialised (a baseline), its classifier replaced by a probe")
    params = sum(p.numel() for p in net.parameters())
    report = LoadReport(path=str(weights) if weights else spec, format=arch.split(":")[0], source=spec, arch=arch,
                        width=int(config.width or 0), stem="library", num_classes=num_classes,
                        params=params, encoder_params=sum(p.numel() for p in encoder.parameters()),
                        container=None, has_classifier=weights is not None and f"{head}weight" in state,
                        dual_bn=False, adversarial_bn=False,
                        normalize={"mean": list(config.mean) if config.mean else None,
                                   "std": list(config.std) if config.std else None,
                                   "origin": f"user (--normalize {normalize})" if normalize else
                                   "library default (imagenet)"},
                        notes=notes)
    return net.eval(), report
