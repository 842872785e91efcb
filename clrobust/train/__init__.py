"""Training: augmentations and the scenario trainer (the losses live in :mod:`clrobust.losses`)."""

from clrobust.train.trainer import ADV_METHODS, SCENARIOS, SCHEMES, TrainConfig, Trainer, train

__all__ = ["ADV_METHODS", "SCENARIOS", "SCHEMES", "TrainConfig", "Trainer", "train"]
