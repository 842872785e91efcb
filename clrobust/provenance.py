"""What is recorded beside every result: versions, seed, settings, and safe output folders."""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict

if TYPE_CHECKING:
    import torch


def weights_hash(net: "torch.nn.Module") -> str:
    """sha256 of a network's state dict (names and values): which weights produced a cached result."""
    import hashlib

    h = hashlib.sha256()
    for k, v in net.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def versions() -> Dict[str, str]:
    """Versions of Python, clrobust and the libraries that shape the numbers."""
    import numpy
    import torch

    import clrobust

    out = {"python": platform.python_version(), "clrobust": clrobust.__version__,
           "torch": torch.__version__, "numpy": numpy.__version__}
    for mod in ("torchvision", "torchattacks", "sklearn", "kornia"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # pragma: no cover - optional at run time
            pass
    return out


def command_line() -> str:
    return " ".join(["clrobust"] + sys.argv[1:]) if sys.argv else ""


def write_json(path: Path, data: Dict[str, Any]) -> None:
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_default) + "\n")
    tmp.replace(path)


def _default(o: Any) -> Any:
    import numpy as np
    import torch

    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, (np.ndarray, torch.Tensor)):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")
