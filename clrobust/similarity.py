"""Representation similarity measures beside linear CKA, full batch, behind one door.

>>> from clrobust import similarity
>>> similarity.compute("rbf-cka", x, y, bandwidth=0.5)
>>> similarity.compute("procrustes", x, y)

Each measure takes two N x D representations of the same N inputs (higher ranks are
flattened per sample; checked and upcast to float64 by :func:`clrobust.cka.flatten`)
and returns one float. Similarities are 1 for identical representations; the
Procrustes *distance* is 0 for them. ``MEASURES`` lists each with its direction.

* ``linear-cka``, ``linear-cka-unbiased``: :func:`clrobust.cka.linear_cka`.
* ``rbf-cka``: CKA of Gaussian-kernel Grams, bandwidth ``bandwidth`` times the median
  pairwise distance (Kornblith et al. 2019; ``bandwidth=0.5`` is their demo's 0.65483).
* ``procrustes``: orthogonal Procrustes distance of the centred, unit-Frobenius-norm
  representations, ``sqrt(2 - 2 ||X'Y||_*)`` (Williams et al. 2021; Ding et al. 2021).
* ``rsa``: Spearman correlation of the two representational dissimilarity matrices
  (1 - Pearson correlation between samples), upper triangles (Kriegeskorte et al. 2008).
* ``svcca``: mean canonical correlation after keeping the singular directions that
  explain ``variance`` (0.99) of each representation (Raghu et al. 2017).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict

import numpy as np
import torch

from clrobust.cka import ArrayLike, flatten, linear_cka, scaled
from clrobust.errors import ClrobustError


@dataclass(frozen=True)
class Measure:
    """A similarity measure: its function, whether higher means more similar, and what it is."""

    fn: Callable[..., float]
    higher_is_similar: bool
    description: str


def _pair(x: ArrayLike, y: ArrayLike, minimum: int = 2) -> tuple:
    fx, fy = flatten(x, "x"), flatten(y, "y")
    if fx.shape[0] != fy.shape[0]:
        raise ClrobustError(f"x and y must describe the same inputs: {fx.shape[0]} vs {fy.shape[0]} rows.")
    if fx.shape[0] < minimum:
        raise ClrobustError(f"this measure needs at least {minimum} samples, got {fx.shape[0]}.")
    return scaled(fx)[0], scaled(fy)[0]  # an exact power-of-two rescaling: no overflow, same value


def _centred(t: torch.Tensor, what: str) -> torch.Tensor:
    c = t - t.mean(0, keepdim=True)
    if not float(c.norm()) > 8 * t.shape[0] * torch.finfo(torch.float64).eps * float(t.norm()):
        raise ClrobustError(f"{what} is constant over the samples; the measure is undefined.")
    return c


def rbf_gram(t: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """exp(-d^2 / (2 bandwidth^2 median(d^2))) over all pairs (the median over the full matrix)."""
    sq = t.pow(2).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2 * t @ t.T).clamp_min(0)
    med = float(np.median(d2.numpy()))  # over the full matrix, diagonal included, as Kornblith et al.
    if not med > 0:
        raise ClrobustError("RBF CKA is undefined: the median pairwise distance is 0 (most samples coincide).")
    return torch.exp(-d2 / (2 * bandwidth ** 2 * med))


def rbf_cka(x: ArrayLike, y: ArrayLike, bandwidth: float = 0.5, unbiased: bool = False) -> float:
    """CKA of Gaussian-kernel Gram matrices (bandwidth as a fraction of the median distance)."""
    from clrobust.cka import _hsic_biased, _hsic_unbiased

    if not (math.isfinite(bandwidth) and bandwidth > 0):
        raise ClrobustError(f"bandwidth must be a finite number above 0, got {bandwidth}.")
    fx, fy = _pair(x, y, 4 if unbiased else 2)
    k, l = rbf_gram(fx, bandwidth), rbf_gram(fy, bandwidth)
    hsic = _hsic_unbiased if unbiased else _hsic_biased
    kl, kk, ll = hsic(k, l), hsic(k, k), hsic(l, l)
    if not kk * ll > 0:
        raise ClrobustError("RBF CKA is undefined: a kernel matrix is constant after centring.")
    return float(kl / torch.sqrt(kk * ll))


def _basis(c: torch.Tensor) -> tuple:
    """Economy SVD of centred features: (U, S) with the numerically zero directions dropped."""
    u, s, _ = torch.linalg.svd(c, full_matrices=False)
    keep = s > s.max() * max(c.shape) * torch.finfo(torch.float64).eps
    return u[:, keep], s[keep]


def procrustes(x: ArrayLike, y: ArrayLike) -> float:
    """Orthogonal Procrustes distance: min over orthogonal Q of ||X - Y Q||_F for centred X, Y scaled
    to unit Frobenius norm, = sqrt(2 - 2 ||X'Y||_*). Different widths are fine (the narrower one is
    zero-padded); computed through economy SVDs, so D may be far above N."""
    fx, fy = _pair(x, y)
    cx, cy = _centred(fx, "x"), _centred(fy, "y")
    ux, sx = _basis(cx / cx.norm())
    uy, sy = _basis(cy / cy.norm())
    nuclear = float(torch.linalg.svdvals((ux * sx).T @ (uy * sy)).sum())
    return math.sqrt(max(0.0, 2.0 - 2.0 * nuclear))


def rsa(x: ArrayLike, y: ArrayLike) -> float:
    """Spearman correlation of the upper triangles of the correlation-distance RDMs."""
    from scipy.stats import spearmanr

    fx, fy = _pair(x, y, 3)

    def rdm(t: torch.Tensor, what: str) -> np.ndarray:
        c = t - t.mean(1, keepdim=True)
        norms = c.norm(dim=1)
        if not bool((norms > 0).all()):
            raise ClrobustError(f"RSA is undefined: a sample of {what} has the same value in every feature.")
        z = c / norms[:, None]
        return (1 - z @ z.T).numpy()

    iu = np.triu_indices(fx.shape[0], k=1)
    rho = spearmanr(rdm(fx, "x")[iu], rdm(fy, "y")[iu]).statistic
    if not math.isfinite(rho):
        raise ClrobustError("RSA is undefined: a dissimilarity matrix is constant.")
    return float(rho)


def svcca(x: ArrayLike, y: ArrayLike, variance: float = 0.99) -> float:
    """Mean canonical correlation between the top singular directions (``variance`` of each kept)."""
    if not 0 < variance <= 1:
        raise ClrobustError(f"variance must be in (0, 1], got {variance}.")
    fx, fy = _pair(x, y, 3)

    def reduced(t: torch.Tensor, what: str) -> torch.Tensor:
        u, s = _basis(_centred(t, what))
        share = torch.cumsum(s ** 2, 0) / (s ** 2).sum()
        k = int(torch.searchsorted(share, torch.tensor(variance, dtype=share.dtype) - 1e-12)) + 1
        return u[:, :k]  # orthonormal columns spanning the kept directions

    qx, qy = reduced(fx, "x"), reduced(fy, "y")
    rho = torch.linalg.svdvals(qx.T @ qy).clamp(max=1.0)
    return float(rho[: min(qx.shape[1], qy.shape[1])].mean())


MEASURES: Dict[str, Measure] = {
    "linear-cka": Measure(lambda x, y: linear_cka(x, y), True, "linear CKA, biased HSIC (Kornblith et al. 2019)"),
    "linear-cka-unbiased": Measure(lambda x, y: linear_cka(x, y, unbiased=True), True,
                                   "linear CKA, unbiased HSIC (Song et al. 2012)"),
    "rbf-cka": Measure(rbf_cka, True, "CKA of RBF kernels, bandwidth a fraction of the median distance"),
    "procrustes": Measure(procrustes, False, "orthogonal Procrustes distance (0: equal up to rotation)"),
    "rsa": Measure(rsa, True, "Spearman correlation of correlation-distance RDMs"),
    "svcca": Measure(svcca, True, "mean canonical correlation of the 99%-variance SVD subspaces"),
}


def compute(name: str, x: ArrayLike, y: ArrayLike, **params: Any) -> float:
    """The measure ``name`` (see :data:`MEASURES`) between two representations of the same inputs.

    Raises:
        ClrobustError: an unknown name or parameter, or inputs the measure is undefined on.
    """
    if name not in MEASURES:
        raise ClrobustError(f"unknown measure {name!r}; use one of: {', '.join(MEASURES)}.")
    try:
        return MEASURES[name].fn(x, y, **params)
    except TypeError as exc:
        if "argument" in str(exc):
            raise ClrobustError(f"{name}: {exc}.") from None
        raise
