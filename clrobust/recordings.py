"""An on-disk cache of recordings (``--cache DIR``): every batch's layer outputs, logits and inputs, per model and
input, so the same recordings can be analysed again (other measures, metrics, bootstrap settings, figures)
without attacking or running the networks.

A recording is keyed by what determines it: the network's weights, the recorded layers, the images (their
pixels, in order) and the batching, and, for adversarial and noise inputs, the attack, its seed and the network
it was crafted against, and the library versions. Each batch is one safetensors file (read without running
code), written atomically; an unreadable file is recomputed with a warning.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

import torch

from clrobust.attacks import AttackSpec
from clrobust.data import ImageData
from clrobust.provenance import versions, weights_hash

#: Raised when the layout of a cached batch changes.
LAYOUT = 1


class RecordingCache:
    """Cached recordings of one job under ``root``: :meth:`get` a batch, :meth:`put` one."""

    def __init__(self, root: Path, models: Mapping[str, torch.nn.Module], layers: Mapping[str, Sequence[str]],
                 data: ImageData, batch_size: int, attack: Optional[AttackSpec],
                 adv_source: Optional[str] = None) -> None:
        self.root = Path(root)
        images = data.fingerprint()
        common = {"images": images, "batch_size": batch_size, "versions": versions(), "layout": LAYOUT}
        hashes = {lab: weights_hash(net) for lab, net in models.items()}
        self.keys: Dict[tuple, str] = {}
        for lab in models:
            base = {**common, "weights": hashes[lab], "layers": list(layers.get(lab, []))}
            self.keys[(lab, "clean")] = _digest(base)
            if attack is not None:
                crafted_on = hashes[adv_source] if adv_source is not None else hashes[lab]
                self.keys[(lab, "adversarial")] = _digest({**base, "attack": attack.to_dict(),
                                                           "crafted_on": crafted_on})
                self.keys[(lab, "noise")] = _digest({**base, "attack": attack.noise().to_dict()})
        self.hits = 0
        self.misses = 0

    def _path(self, model: str, inp: str, index: int) -> Path:
        return self.root / self.keys[(model, inp)] / f"batch-{index:06d}.safetensors"

    def has(self, model: str, inp: str, index: int) -> bool:
        return (model, inp) in self.keys and self._path(model, inp, index).is_file()

    def get(self, model: str, inp: str, index: int) -> Optional[Dict[str, Any]]:
        """The cached batch (``inputs``, ``logits``, ``layers``) or None."""
        if not self.has(model, inp, index):
            self.misses += 1
            return None
        from safetensors import safe_open

        path = self._path(model, inp, index)
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                names = json.loads(meta.get("layers", "[]"))
                out = {"inputs": f.get_tensor("inputs"), "logits": f.get_tensor("logits"),
                       "layers": {n: f.get_tensor(f"layer.{i}") for i, n in enumerate(names)}}
        except Exception as exc:  # any unreadable file: recompute it
            warnings.warn(f"recording cache {str(path)!r} is unreadable ({' '.join(str(exc).split())[:120]}); "
                          "recomputing it.", stacklevel=2)
            self.misses += 1
            return None
        self.hits += 1
        return out

    def put(self, model: str, inp: str, index: int, inputs: torch.Tensor, logits: torch.Tensor,
            layers: Mapping[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        path = self._path(model, inp, index)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"inputs": inputs, "logits": logits, **{f"layer.{i}": t for i, t in enumerate(layers.values())}}
        tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp),
                  metadata={"layers": json.dumps(list(layers)), "model": model, "input": inp})
        os.replace(tmp, path)


def _digest(d: Dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:20]
