"""Clean and robust accuracy of a network on a data set (the evaluation at the end of training)."""

from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import nn

from clrobust.activations import Stage
from clrobust.attacks import AttackSpec
from clrobust.data import ImageData
from clrobust.distributed import Dist


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
        right = {rec.input: rec.logits.argmax(1) == batch.y for rec in batch.recordings}
        correct["clean"] += int(right["clean"].sum())
        correct["adversarial"] += int((right["adversarial"] & right["clean"]).sum())
    if dist is not None:
        counts = torch.tensor([correct["clean"], correct["adversarial"]], dtype=torch.int64)
        dist.all_reduce([counts])
        correct = {"clean": int(counts[0]), "adversarial": int(counts[1])}
    n = len(data)
    return {"clean": correct["clean"] / n, "adversarial": correct["adversarial"] / n, "n": n}
