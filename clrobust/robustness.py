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
    """Clean accuracy and accuracy under ``spec`` (crafted against ``net``) on all of ``data``.

    Batches, attack seeds and forward passes are those of the activations stage
    (:mod:`clrobust.activations`), as in every other job; under torchrun (``dist``) each process attacks its
    batches and the counts are summed.
    """
    net.eval()
    correct = {"clean": 0, "adversarial": 0}
    device = next(net.parameters()).device
    stage = Stage({"model": net}, None, spec, str(device))
    for batch in stage.batches(data, batch_size, inputs=("clean", "adversarial"), progress=progress, desc=desc,
                               dist=dist):
        for rec in batch.recordings:
            correct[rec.input] += int((rec.logits.argmax(1) == batch.y).sum())
    if dist is not None:
        counts = torch.tensor([correct["clean"], correct["adversarial"]], dtype=torch.int64)
        dist.all_reduce([counts])
        correct = {"clean": int(counts[0]), "adversarial": int(counts[1])}
    n = len(data)
    return {"clean": correct["clean"] / n, "adversarial": correct["adversarial"] / n, "n": n}
