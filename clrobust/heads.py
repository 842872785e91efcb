"""A linear classifier for every model: its own head, or a probe fitted on frozen train features.

End-to-end attacks (threat model II) and accuracies need a classifier. A model whose
file has none (a head-less encoder, or a head that does not fit the data set) gets
the one linear-probe estimator of :mod:`clrobust.linear_probe`, fitted on the
frozen pooled features of the train split, never a random head.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, cast

import torch
from torch import nn
from tqdm.auto import tqdm

from clrobust.checkpoints import LoadedModel
from clrobust.data import ImageData
from clrobust.errors import ClrobustError
from clrobust.linear_probe import fit_linear_probe

#: ``--classifier``: ``auto`` keeps a model's own head when it fits the data set (head-less
#: models get a probe); ``probe`` always drops the head and fits a probe.
from clrobust.names import CLASSIFIER_MODES  # the one list, torch-free for the CLI


def choose_classifier(lm: LoadedModel, num_classes: int, data_name: str, mode: str = "auto") -> None:
    """Decide whether ``lm`` keeps its own head on a data set of ``num_classes`` classes.

    With ``probe`` (or a head-less model whose placeholder head has another size) the
    head is replaced by an untrained one of the right size and the model is marked
    head-less, so :func:`ensure_classifier` fits the probe.

    Raises:
        ClrobustError: ``auto`` with a real head of another size (an ImageNet head on CIFAR).
    """
    if mode not in CLASSIFIER_MODES:
        raise ClrobustError(f"unknown --classifier {mode!r}; use one of: {', '.join(CLASSIFIER_MODES)}.")
    net = lm.network
    if mode == "auto" and lm.has_classifier and lm.num_classes != num_classes:
        raise ClrobustError(f"model {lm.label!r} has a {lm.num_classes}-class head but {data_name} has "
                            f"{num_classes} classes; pass --classifier probe to fit a linear probe on its "
                            "features instead, or use the data set it was trained on.")
    if mode == "probe" or lm.num_classes != num_classes:
        old = net.classifier
        net.classifier = nn.Linear(cast(int, net.encoder.feature_dim), num_classes).to(old.weight.device)
        net.config.num_classes = num_classes
        lm.has_classifier = False

#: Batch size of the feature pass before a probe fit.
FEATURE_BATCH = 256


def ensure_classifier(lm: LoadedModel, train: Optional[ImageData], seed: int = 0,
                      progress: bool = True) -> Dict[str, Any]:
    """Give a head-less model a linear probe fitted on frozen features of ``train``; describe its classifier.

    Models with a classifier of their own are left alone. The probe is deterministic
    given ``seed``, so every process of a multi-process run fits the same one.

    Returns:
        ``{"classifier": description}`` (+ ``probe_train_accuracy`` and ``probe_train_images``
        when a probe was fitted).
    """
    if lm.has_classifier:
        return {"classifier": "own linear head"}
    if train is None:
        raise ValueError("a head-less model needs train data to fit its probe")
    net = lm.network
    device = next(net.parameters()).device
    feats = []
    total = -(-len(train) // FEATURE_BATCH)
    with torch.no_grad():
        for x, _ in tqdm(train.batches(FEATURE_BATCH), total=total, desc=f"{lm.label}: probe features",
                         disable=not progress, unit="batch", leave=False):
            feats.append(net.features(x.to(device)).cpu())
    f = torch.cat(feats)
    probe = fit_linear_probe(f, train.labels, net.config.num_classes, seed=seed)
    probe.to_linear(net.classifier)
    lm.has_classifier = True
    acc = probe.accuracy(f, train.labels)
    return {"classifier": f"linear probe fitted on {len(train)} frozen train features ({probe.description()})",
            "probe_train_accuracy": acc, "probe_train_images": len(train)}
