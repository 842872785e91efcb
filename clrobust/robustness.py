"""Clean and robust accuracy of a network on a data set."""

from __future__ import annotations

from typing import Dict

import torch
from torch import nn
from tqdm.auto import tqdm

from clrobust.attacks import AttackSpec, attack_batch
from clrobust.data import ImageData


def accuracy(net: nn.Module, data: ImageData, spec: AttackSpec, batch_size: int = 256,
             progress: bool = False, desc: str = "accuracy") -> Dict[str, float]:
    """Clean accuracy and accuracy under ``spec`` (crafted against ``net``) on all of ``data``."""
    net.eval()
    correct_clean = correct_adv = 0
    n = 0
    for i, (x, y) in enumerate(tqdm(data.batches(batch_size), total=-(-len(data) // batch_size),
                                    desc=desc, disable=not progress, leave=False)):
        with torch.no_grad():
            correct_clean += int((net(x).argmax(1) == y).sum())
        x_adv = attack_batch(spec, net, x, y, batch_index=i)
        with torch.no_grad():
            correct_adv += int((net(x_adv).argmax(1) == y).sum())
        n += len(y)
    return {"clean": correct_clean / n, "adversarial": correct_adv / n, "n": n}
