"""The one linear-probe estimator: multinomial logistic regression on frozen features.

Used wherever clrobust fits a linear classifier on fixed features: per-layer probes
(``probe-layers``, figures), the classifier of a head-less encoder before it is
attacked end to end, and the classifier phase of training.

Features are standardised with the train mean and population std (constant
features become 0); the objective ``mean cross-entropy + weight_decay * ||W||^2``
(bias not penalised) is minimised by full-batch L-BFGS in float64 from a seeded
start. The objective is strictly convex, so the optimum does not depend on the
start, and the fit is deterministic given the seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clrobust.errors import ClrobustError

ArrayLike = Union[np.ndarray, torch.Tensor]

#: How the estimator is described in result files.
DESCRIPTION = ("multinomial logistic regression on standardised features, full-batch L-BFGS (float64), "
               "L2 weight decay {wd:g}, seeded init")


def _as_matrix(x: ArrayLike) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x.detach().cpu())
    return t.reshape(t.shape[0], -1).to(torch.float64)


@dataclass
class LinearProbe:
    """A fitted probe: ``logits = ((x - mean) / std) @ coef + bias`` (float64; ``coef`` is features x classes)."""

    coef: torch.Tensor
    bias: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    weight_decay: float

    @property
    def n_classes(self) -> int:
        return int(self.coef.shape[1])

    def logits(self, x: ArrayLike) -> torch.Tensor:
        """Class scores of feature rows ``x`` (any shape (N, ...), flattened per row)."""
        return (_as_matrix(x) - self.mean) / self.std @ self.coef + self.bias

    def predict(self, x: ArrayLike) -> torch.Tensor:
        return self.logits(x).argmax(1)

    def accuracy(self, x: ArrayLike, y: ArrayLike) -> float:
        """Fraction of rows of ``x`` predicted as their label in ``y``."""
        labels = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y.cpu(), dtype=torch.long)
        return float((self.predict(x) == labels).double().mean())

    def to_linear(self, layer: nn.Linear) -> nn.Linear:
        """Write the probe into ``layer`` (standardisation folded into its weight and bias)."""
        w = self.coef.T / self.std
        b = self.bias - w @ self.mean
        if tuple(layer.weight.shape) != tuple(w.shape):
            raise ClrobustError(f"the probe maps {w.shape[1]} features to {w.shape[0]} classes, but the "
                                f"classifier is {tuple(layer.weight.shape)}.")
        with torch.no_grad():
            layer.weight.copy_(w.to(layer.weight.dtype))
            if layer.bias is not None:
                layer.bias.copy_(b.to(layer.bias.dtype))
        return layer

    def description(self) -> str:
        return DESCRIPTION.format(wd=self.weight_decay)


def fit_linear_probe(features: ArrayLike, labels: ArrayLike, n_classes: Optional[int] = None,
                     weight_decay: float = 1e-4, seed: int = 0, max_iter: int = 200) -> LinearProbe:
    """Fit the probe on ``features`` (N, ...) and integer ``labels`` (N,).

    Args:
        features: train features, flattened per row; converted to float64.
        labels: class indices in ``[0, n_classes)``.
        n_classes: number of classes [max label + 1].
        weight_decay: coefficient of ``||W||^2`` added to the mean cross-entropy.
        seed: seeds the initial weights (the optimum does not depend on it).
        max_iter: L-BFGS iterations.

    Raises:
        ClrobustError: no rows, or a different number of features and labels.
    """
    x = _as_matrix(features)
    y = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels.cpu(),
                        dtype=torch.long).reshape(-1)
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ClrobustError(f"probe needs as many labels as feature rows (got {x.shape[0]} and {y.shape[0]}).")
    k = int(n_classes if n_classes is not None else int(y.max()) + 1)
    mean = x.mean(0)
    std = x.std(0, unbiased=False)
    std = torch.where(std > 1e-8, std, torch.ones_like(std))
    xs = (x - mean) / std
    gen = torch.Generator().manual_seed(seed)
    w = (0.01 * torch.randn(x.shape[1], k, generator=gen, dtype=torch.float64)).requires_grad_(True)
    b = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(xs @ w + b, y) + weight_decay * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return LinearProbe(w.detach(), b.detach(), mean, std, weight_decay)
