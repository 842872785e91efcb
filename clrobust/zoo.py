"""The embedded zoo: models committed under ``checkpoints/`` and listed in its manifest."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from clrobust.errors import ClrobustError

#: The two models ``compare-layers`` compares when given none.
DEFAULT_PAIR = ("simclr-st", "simclr-at")


def zoo_dir() -> Path:
    """``$CLROBUST_ZOO`` if set, else the repository's ``checkpoints/`` folder."""
    env = os.environ.get("CLROBUST_ZOO")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "checkpoints"


def manifest(directory: Optional[Path] = None) -> Dict[str, Any]:
    path = (directory or zoo_dir()) / "manifest.json"
    if not path.exists():
        return {"models": []}
    return json.loads(path.read_text())


def entries(directory: Optional[Path] = None) -> List[Dict[str, Any]]:
    return list(manifest(directory).get("models", []))


def names(directory: Optional[Path] = None) -> List[str]:
    return [e["name"] for e in entries(directory)]


def resolve(name_or_path: str) -> Tuple[str, Path]:
    """Map a zoo name or a checkpoint path to (label, path)."""
    p = Path(name_or_path)
    if p.suffix in (".safetensors", ".json", ".pt", ".pth", ".ckpt", ".tar", ".t7") or p.exists() \
            or os.sep in name_or_path:
        if not p.exists() and not p.with_name(p.name + ".safetensors").exists():
            raise ClrobustError(f"checkpoint {name_or_path!r} not found.")
        label = p.name
        for suffix in (".safetensors", ".json"):
            label = label[: -len(suffix)] if label.endswith(suffix) else label
        return label, p
    zoo = zoo_dir()
    candidate = zoo / f"{name_or_path}.safetensors"
    if candidate.exists():
        return name_or_path, candidate
    known = names()
    raise ClrobustError(f"unknown model {name_or_path!r}: not a file and not in the zoo "
                        f"({', '.join(known) if known else 'zoo is empty'}).")
