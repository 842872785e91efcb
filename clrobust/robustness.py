"""Clean and robust accuracy of a network on a data set (the evaluation at the end of training)."""

from __future__ import annotations

from typing import Dict, Mapping, Optional

import torch
from torch import nn

from clrobust.activations import Stage
from clrobust.attacks import AttackSpec
from clrobust.data import ImageData
from clrobust.distributed import Dist


def right_counts(right: Mapping[str, torch.Tensor]) -> Dict[str, int]:
    """Images classified right on each input (name -> per-image boolean mask of one model on one batch), and,
    where both were recorded, ``robust``: right both clean and adversarial. An attack that moves a misclassified
    image to its class adds to the adversarial count but not to the robust one (as audit and RobustBench count)."""
    out = {k: int(v.sum()) for k, v in right.items()}
    if "clean" in right and "adversarial" in right:
        out["robust"] = int((right["clean"] & right["adversarial"]).sum())
    return out


def accuracy(net: nn.Module, data: ImageData, spec: AttackSpec, batch_size: int = 256,
             progress: bool = False, desc: str = "accuracy", dist: Optional[Dist] = None) -> Dict[str, float]:
    """Clean accuracy and robust accuracy under ``spec`` (crafted against ``net``) on all of ``data``.

    Robust accuracy counts an image only if it is classified correctly both clean and attacked, as
    ``clrobust audit`` and RobustBench count it: a label-free attack (threat model I) can move a misclassified
    image to its right class, and that is no robustness. Batches, attack seeds and forward passes are those of
    the activations stage (:mod:`clrobust.activations`), as in every other job; under torchrun (``dist``) each
    process attacks its batches and the counts are summed.
    """
    net.eval()
    correct = {"clean": 0, "adversarial": 0}
    device = next(net.parameters()).device
    stage = Stage({"model": net}, None, spec, str(device))
    for batch in stage.batches(data, batch_size, inputs=("clean", "adversarial"), progress=progress, desc=desc,
                               dist=dist):
        right = right_counts({rec.input: rec.logits.argmax(1) == batch.y for rec in batch.recordings})
        correct["clean"] += right["clean"]
        correct["adversarial"] += right["robust"]
    if dist is not None:
        counts = torch.tensor([correct["clean"], correct["adversarial"]], dtype=torch.int64)
        dist.all_reduce([counts])
        correct = {"clean": int(counts[0]), "adversarial": int(counts[1])}
    n = len(data)
    return {"clean": correct["clean"] / n, "adversarial": correct["adversarial"] / n, "n": n}
