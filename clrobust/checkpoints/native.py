"""clrobust's own checkpoint format: ``NAME.safetensors`` (weights, no pickle) + ``NAME.json``.

The JSON holds the model config (enough to rebuild the modules), how the model
was trained, its measured accuracies and the library versions; the same model
config is also stored in the safetensors header so the weights file alone suffices.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch

from clrobust.errors import ClrobustError
from clrobust.models import ModelConfig, Network, create_model

FORMAT = "clrobust-v1"


def _paths(path: Union[str, Path]) -> Tuple[Path, Path]:
    p = Path(path)
    stem = p.with_suffix("") if p.suffix in (".safetensors", ".json") else p
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def save_network(path: Union[str, Path], net: Network, metadata: Optional[Dict[str, Any]] = None) -> Path:
    """Write ``path.safetensors`` and ``path.json``; returns the weights path."""
    from safetensors.torch import save_file

    weights, meta_path = _paths(path)
    weights.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().clone() for k, v in net.state_dict().items()}
    config = net.config.to_dict()
    save_file(state, str(weights), metadata={"format": FORMAT, "model": json.dumps(config)})
    meta = {"format": FORMAT, "model": config, **(metadata or {})}
    meta_path.write_text(json.dumps(meta, indent=2, default=_json_default) + "\n")
    return weights


def _json_default(o: Any) -> Any:
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o))


def read_metadata(path: Union[str, Path]) -> Dict[str, Any]:
    """The JSON beside a native checkpoint ({} when absent)."""
    _, meta_path = _paths(path)
    if not meta_path.exists():
        return {}
    try:
        return json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise ClrobustError(f"metadata file {str(meta_path)!r} is not valid JSON ({exc}); "
                            "restore it or delete it to load the weights alone.") from None


def is_native(path: Union[str, Path]) -> bool:
    weights, _ = _paths(path)
    if not weights.exists():
        return False
    try:
        from safetensors import safe_open

        with safe_open(str(weights), "pt") as f:
            return (f.metadata() or {}).get("format") == FORMAT
    except Exception:
        return False


def load_network(path: Union[str, Path], adversarial_bn: bool = False) -> Tuple[Network, Dict[str, Any]]:
    """Load a native checkpoint; returns the network (eval mode) and its metadata.

    With ``adversarial_bn`` a dual-BN checkpoint (CLAE) uses its adversarial
    batch-norm statistics instead of the clean ones.
    """
    from safetensors import SafetensorError, safe_open

    weights, _ = _paths(path)
    if not weights.exists():
        raise ClrobustError(f"checkpoint {str(path)!r} not found: give a zoo name "
                            "(see `clrobust zoo`) or the path of a .safetensors file.")
    try:
        with safe_open(str(weights), "pt") as f:
            header = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ClrobustError(f"checkpoint {str(weights)!r} is corrupt or not a safetensors file "
                            f"({exc}); re-download or re-train it.") from None
    if header.get("format") != FORMAT or "model" not in header:
        raise ClrobustError(f"{str(weights)!r} is a safetensors file but not a clrobust checkpoint "
                            "(no model config in its header).")
    config = ModelConfig.from_dict(json.loads(header["model"]))
    net = create_model(config)
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ClrobustError(f"checkpoint {str(weights)!r} does not match its own model config "
                            f"({first}); the file is damaged.") from None
    if adversarial_bn:
        _use_adversarial_bn(net, weights)
    net.eval()
    meta = read_metadata(weights)
    return net, meta


def _use_adversarial_bn(net: Network, weights: Path) -> None:
    from clrobust.models import DualBatchNorm2d

    duals = [m for m in net.modules() if isinstance(m, DualBatchNorm2d)]
    if not duals:
        raise ClrobustError(f"{str(weights)!r} has no adversarial batch-norm; drop --adversarial-bn.")
    for m in duals:
        m.route_adversarial = True
