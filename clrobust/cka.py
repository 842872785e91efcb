"""Linear CKA, exact: full-batch (biased or unbiased HSIC) and the streaming minibatch form.

* :func:`linear_cka` — two N x D arrays or tensors, one float (float64 inside).
* :class:`StreamingCKA` — minibatch CKA (Nguyen, Raghu & Kornblith 2021): unbiased
  HSIC summed over batches, for *every* layer pair of two recordings at once.
  Each batch's features are centred before their Gram (the unbiased HSIC does not
  change), Grams and sums are float64, and memory does not grow with the number
  of samples.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Union

import numpy as np
import torch

from clrobust.errors import ClrobustError

ArrayLike = Union[np.ndarray, torch.Tensor]


def flatten(x: ArrayLike) -> torch.Tensor:
    """(N, ...) -> (N, D) float64 tensor (conv maps flattened channel-major)."""
    t = torch.as_tensor(x)
    return t.reshape(t.shape[0], -1).to(torch.float64)


def _gram(x: ArrayLike) -> torch.Tensor:
    t = flatten(x)
    t = t - t.mean(0, keepdim=True)
    return t @ t.T


def _hsic_biased(k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    n = k.shape[0]
    h = torch.eye(n, dtype=k.dtype) - 1.0 / n
    return torch.trace(k @ h @ l @ h) / (n - 1) ** 2


def u_centre(k: torch.Tensor) -> torch.Tensor:
    """U-centred Gram matrix: <u_centre(K), u_centre(L)> / (n (n - 3)) is the unbiased HSIC."""
    n = k.shape[-1]
    if n < 4:
        raise ClrobustError(f"unbiased HSIC needs at least 4 samples per batch, got {n}.")
    k = k.clone()
    k.diagonal(dim1=-2, dim2=-1).zero_()
    row = k.sum(-1, keepdim=True) / (n - 2)
    total = k.sum((-2, -1), keepdim=True) / ((n - 1) * (n - 2))
    u = k - row - row.transpose(-2, -1) + total
    u.diagonal(dim1=-2, dim2=-1).zero_()
    return u


def _hsic_unbiased(k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    n = k.shape[0]
    return (u_centre(k) * u_centre(l)).sum() / (n * (n - 3))


def linear_cka(x: ArrayLike, y: ArrayLike, unbiased: bool = False) -> float:
    """Linear CKA between two representations of the same N inputs.

    Args:
        x: N x D array or tensor (higher ranks are flattened per sample).
        y: N x D' array or tensor.
        unbiased: use the unbiased HSIC estimator (Song et al. 2012) instead of the
            biased one; it does not inflate CKA at small N.

    Raises:
        ClrobustError: different N, too few samples, or a constant representation.
    """
    x, y = flatten(x), flatten(y)
    if x.shape[0] != y.shape[0]:
        raise ClrobustError(f"x and y must describe the same inputs: {x.shape[0]} vs {y.shape[0]} rows.")
    if x.shape[0] < (4 if unbiased else 2):
        raise ClrobustError(f"CKA needs at least {4 if unbiased else 2} samples, got {x.shape[0]}.")
    k, l = _gram(x), _gram(y)
    hsic = _hsic_unbiased if unbiased else _hsic_biased
    kl, kk, ll = hsic(k, l), hsic(k, k), hsic(l, l)
    denom = kk * ll
    if not denom > 0:
        raise ClrobustError("CKA is undefined: a representation is constant over the samples "
                            f"(HSIC(K,K)={kk.item():.3g}, HSIC(L,L)={ll.item():.3g}).")
    return float(kl / torch.sqrt(denom))


def ugram_stack(acts: Sequence[ArrayLike]) -> torch.Tensor:
    """(L, n*n) float64: every layer's U-centred Gram of one batch, flattened, stacked."""
    return torch.stack([u_centre(_gram(a)).reshape(-1) for a in acts])


class StreamingCKA:
    """Minibatch linear CKA for all layer pairs of two recordings.

    >>> acc = StreamingCKA()
    >>> for xa, xb in batches:                 # lists of per-layer (b, ...) tensors
    ...     acc.update(xa, xb)
    >>> acc.compute()                          # (layers of a) x (layers of b) array

    ``update_grams`` takes precomputed :func:`ugram_stack` results, so several
    pairs that share a recording compute its Grams once per batch. It is the first
    entry of the metric registry (:mod:`clrobust.metrics`).
    """

    name = "linear-cka"
    description = "minibatch linear CKA, unbiased HSIC summed over batches (float64)"

    @staticmethod
    def prepare(acts: Sequence[ArrayLike]) -> torch.Tensor:
        """What one recording contributes to every pair it is in, once per batch: its U-centred Grams."""
        return ugram_stack(acts)

    def update_prepared(self, px: torch.Tensor, py: torch.Tensor) -> None:
        self.update_grams(px, py)

    def __init__(self) -> None:
        self.xy: torch.Tensor | None = None
        self.xx: torch.Tensor | None = None
        self.yy: torch.Tensor | None = None
        self.n = 0
        self.batches = 0

    def update(self, acts_x: Sequence[ArrayLike], acts_y: Sequence[ArrayLike]) -> None:
        gx = ugram_stack(acts_x)
        gy = gx if acts_y is acts_x else ugram_stack(acts_y)
        self.update_grams(gx, gy)

    def update_grams(self, gx: torch.Tensor, gy: torch.Tensor) -> None:
        b = math.isqrt(gx.shape[1])
        if gy.shape[1] != gx.shape[1]:
            raise ClrobustError("both recordings of a CKA pair must come from the same batch.")
        scale = 1.0 / (b * (b - 3))
        xy = (gx @ gy.T) * scale
        xx = (gx * gx).sum(1) * scale
        yy = (gy * gy).sum(1) * scale
        if self.xy is None:
            self.xy, self.xx, self.yy = xy, xx, yy
        else:
            assert self.xx is not None and self.yy is not None  # the three are set together
            self.xy += xy
            self.xx += xx
            self.yy += yy
        self.n += b
        self.batches += 1

    def ensure_state(self, rows: int, cols: int) -> None:
        """Zero sums of shape (rows, cols), (rows,), (cols,) when no batch was added, so that a process
        that owned no batch still joins every all-reduce with tensors of the right shape."""
        if self.xy is None:
            self.xy = torch.zeros(rows, cols, dtype=torch.float64)
            self.xx = torch.zeros(rows, dtype=torch.float64)
            self.yy = torch.zeros(cols, dtype=torch.float64)

    def state(self) -> List[Optional[torch.Tensor]]:
        """The running sums, e.g. to all-reduce across processes (None before the first batch)."""
        return [self.xy, self.xx, self.yy]

    def compute(self) -> np.ndarray:
        """CKA matrix (rows: layers of x, columns: layers of y).

        Raises:
            ClrobustError: nothing accumulated, or a layer whose summed self-HSIC is
                not positive (constant activations): reported, not hidden by an epsilon.
        """
        if self.xy is None:
            raise ClrobustError("no batch was accumulated.")
        assert self.xx is not None and self.yy is not None  # set together with self.xy
        bad = [i for i, v in enumerate(self.xx.tolist()) if not v > 0]
        bad_y = [i for i, v in enumerate(self.yy.tolist()) if not v > 0]
        if bad or bad_y:
            side, idx = ("rows", bad[0]) if bad else ("columns", bad_y[0])
            raise ClrobustError(f"CKA undefined for layer {idx} of the {side}: its activations are "
                                "constant over the samples (self-HSIC <= 0).")
        return (self.xy / torch.sqrt(self.xx[:, None] * self.yy[None, :])).numpy()


def disparity(cka_clean_adversarial: ArrayLike) -> np.ndarray:
    """Clean-vs-adversarial disparity per layer: ``1 - CKA(clean_l, adversarial_l)``.

    Args:
        cka_clean_adversarial: the square CKA matrix of a model's clean recording
            (rows) against its adversarial recording (columns), same layers in order.
    """
    m = np.asarray(cka_clean_adversarial, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ClrobustError(f"disparity needs the square clean-vs-adversarial CKA matrix of one model, "
                            f"got shape {m.shape}.")
    return 1.0 - np.diag(m)


def batch_bounds(n: int, batch_size: int, minimum: int = 4) -> List[tuple]:
    """Batch (start, stop) pairs covering n samples; a last batch smaller than ``minimum``
    is folded into the previous one (unbiased HSIC needs 4 samples)."""
    if n < minimum:
        raise ClrobustError(f"need at least {minimum} samples for minibatch CKA, got {n}.")
    bounds = [(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < minimum:
        last = bounds.pop()
        bounds[-1] = (bounds[-1][0], last[1])
    return bounds
