"""What is recorded beside every result: versions, seed, settings, and safe output folders."""

from __future__ import annotations

import functools
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


#: key in versions() -> distribution name, read from the installed package metadata (no import)
_DISTRIBUTIONS = {"torch": "torch", "numpy": "numpy", "torchvision": "torchvision", "torchattacks": "torchattacks",
                  "sklearn": "scikit-learn", "kornia": "kornia"}


@functools.lru_cache(maxsize=1)
def _installed() -> Dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for key, dist in _DISTRIBUTIONS.items():
        try:
            out[key] = version(dist)
        except PackageNotFoundError:  # pragma: no cover - optional at run time
            pass
    return out


def versions() -> Dict[str, str]:
    """Versions of Python, clrobust and the libraries that shape the numbers, from the installed packages'
    metadata (importing a library only to read its version costs seconds at start-up)."""
    import clrobust

    out = {"python": platform.python_version(), "clrobust": clrobust.__version__, **_installed()}
    torch = sys.modules.get("torch")
    if torch is not None:  # the build that actually runs (e.g. a +cpu or +cu build), when it differs
        out["torch"] = str(torch.__version__)
    return out


def arithmetic() -> Dict[str, Any]:
    """How the numbers were computed: torch's CPU threads and whether CUDA matrix products may use TF32
    (off unless ``clrobust --tf32``; CKA sums are float64 on every device)."""
    import torch

    return {"threads": torch.get_num_threads(), "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
            "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32), "cka_sums": "float64"}


def set_tf32(enabled: bool) -> None:
    """Allow (or forbid, the default) TF32 in CUDA matrix products and convolutions."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


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
