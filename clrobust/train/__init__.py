"""Training: contrastive and supervised losses, augmentations and the scenario trainer."""

from clrobust.train.losses import nt_xent, supcon
from clrobust.train.trainer import ADV_METHODS, SCENARIOS, SCHEMES, TrainConfig, Trainer, fit_linear, train

__all__ = ["ADV_METHODS", "SCENARIOS", "SCHEMES", "TrainConfig", "Trainer", "fit_linear", "nt_xent",
           "supcon", "train"]
