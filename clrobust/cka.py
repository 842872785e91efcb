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
from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from clrobust.errors import ClrobustError

ArrayLike = Union[np.ndarray, torch.Tensor]


#: Reference exponent of a row or column that has seen no batch: any real exponent exceeds it.
NO_EXPONENT = -1.0e6


def flatten(x: ArrayLike, what: str = "features", dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """(N, ...) -> (N, D) float64 (or ``dtype``) tensor (conv maps flattened channel-major), checked.

    float16, bfloat16 and integer inputs are upcast; 0-d, empty, complex, boolean-less
    garbage and NaN/Inf values are refused with a :class:`ClrobustError` naming ``what``.
    """
    return _checked(x, what, dtype)[0]


def _checked(x: ArrayLike, what: str, dtype: torch.dtype) -> Tuple[torch.Tensor, float]:
    """:func:`flatten`, and the largest |entry| (found by the same pass that checks finiteness)."""
    try:
        t = torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ClrobustError(f"{what}: not a numeric array ({_one_line(exc)}).") from None
    if t.is_complex():
        raise ClrobustError(f"{what}: complex values; CKA is defined for real features (pass .real or .abs()).")
    if t.dim() == 0:
        raise ClrobustError(f"{what}: a 0-d value; CKA needs one row per sample (an N x D array).")
    if t.shape[0] == 0 or t[0].numel() == 0:
        raise ClrobustError(f"{what}: empty ({tuple(t.shape)}); CKA needs samples with at least one feature.")
    t = t.reshape(t.shape[0], -1).to(dtype)
    low, high = torch.aminmax(t)  # one pass, no mask: NaN and Inf propagate into the extremes
    if not (math.isfinite(float(low)) and math.isfinite(float(high))):
        bad = int((~torch.isfinite(t)).any(1).nonzero()[0])
        raise ClrobustError(f"{what}: NaN or Inf values (first in sample {bad}); CKA of non-finite "
                            "features is undefined.")
    return t, max(-float(low), float(high))


def all_finite(t: torch.Tensor) -> bool:
    """Whether every entry is finite: one min/max pass (NaN and Inf propagate into the extremes), no mask."""
    if not t.numel() or not t.is_floating_point():
        return True
    low, high = torch.aminmax(t.detach())
    return math.isfinite(float(low)) and math.isfinite(float(high))


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _ldexp(t: torch.Tensor, e: int) -> torch.Tensor:
    """``t * 2**e``, exact (in two steps when 2**e itself would overflow or underflow the dtype)."""
    if abs(e) < (1000 if t.dtype == torch.float64 else 120):  # 2**e and the product stay normal numbers
        return t * (2.0 ** e)
    half = e // 2
    return t * (2.0 ** half) * (2.0 ** (e - half))


#: A batch whose largest |entry| lies within 2**±SAFE_EXPONENT is used as it is by the streaming form:
#: its Gram entries stay far inside even float32's range, so rescaling it would only cost a pass.
SAFE_EXPONENT = 20


def scaled(t: torch.Tensor, largest: Optional[float] = None, lazy: bool = False) -> Tuple[torch.Tensor, int]:
    """``(t * 2**-e, e)`` with ``e`` the binary exponent of max |t| (``largest``, when known): entries
    become O(1) exactly (a power-of-two scaling rounds nothing), so Gram products neither overflow nor
    underflow whatever the features' magnitude. An all-zero ``t`` has ``e = 0``; with ``lazy``, so does
    one within 2**±:data:`SAFE_EXPONENT`, returned unscaled."""
    if not t.numel():
        return t, 0
    if largest is None:
        low, high = torch.aminmax(t)
        largest = max(-float(low), float(high))
    if largest == 0.0:
        return t, 0
    e = math.frexp(largest)[1]
    if lazy and abs(e) <= SAFE_EXPONENT:
        return t, 0
    return _ldexp(t, -e), e


def _centre(t: torch.Tensor, largest: Optional[float] = None) -> torch.Tensor:
    """Column-centred ``t``; exactly zero when ``t`` is constant over the samples up to the
    rounding of the mean (which would otherwise leave a CKA of pure rounding noise). ``largest``
    (max |t|, when known) bounds ||t|| and usually spares computing it."""
    c = t - t.mean(0, keepdim=True)
    spread = float(c.norm())
    bound = 8 * t.shape[0] * torch.finfo(t.dtype).eps
    if largest is not None and spread > bound * largest * math.sqrt(t.numel()):  # ||t|| <= largest sqrt(numel)
        return c
    if not spread > bound * float(t.norm()):
        return torch.zeros_like(c)
    return c


def _centred(x: ArrayLike, what: str) -> torch.Tensor:
    """Checked, rescaled to O(1), column-centred float64 features; constant ones are refused."""
    c = _centre(scaled(flatten(x, what))[0])
    if not bool(c.any()):
        raise ClrobustError(f"CKA is undefined: {what} is constant over the samples (every sample has the "
                             "same features).")
    return c


def _hsic_biased(k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    n = k.shape[0]
    h = torch.eye(n, dtype=k.dtype, device=k.device) - 1.0 / n
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

    Each representation is rescaled by a power of two before its Gram matrix, so
    features of magnitude 1e-150 or 1e150 give the CKA they give at 1.

    Args:
        x: N x D array or tensor (higher ranks are flattened per sample; float16,
            bfloat16 and integers are upcast to float64).
        y: N x D' array or tensor.
        unbiased: use the unbiased HSIC estimator (Song et al. 2012) instead of the
            biased one; it does not inflate CKA at small N.

    Raises:
        ClrobustError: different N, too few samples, a constant representation, or
            features that are empty, 0-d, complex or not finite.
    """
    fx, fy = flatten(x, "x"), flatten(y, "y")
    if fx.shape[0] != fy.shape[0]:
        raise ClrobustError(f"x and y must describe the same inputs: {fx.shape[0]} vs {fy.shape[0]} rows.")
    if fx.shape[0] < (4 if unbiased else 2):
        raise ClrobustError(f"CKA needs at least {4 if unbiased else 2} samples, got {fx.shape[0]}.")
    cx, cy = _centred(fx, "x"), _centred(fy, "y")
    k, l = cx @ cx.T, cy @ cy.T
    hsic = _hsic_unbiased if unbiased else _hsic_biased
    kl, kk, ll = hsic(k, l), hsic(k, k), hsic(l, l)
    denom = kk * ll
    if not denom > 0:
        raise ClrobustError("CKA is undefined: a representation is constant over the samples "
                            f"(HSIC(K,K)={kk.item():.3g}, HSIC(L,L)={ll.item():.3g}).")
    return float(kl / torch.sqrt(denom))


class PreparedGrams(NamedTuple):
    """One batch of one recording: every layer's U-centred Gram of its features rescaled by
    ``2**-exponent`` (so O(1)), flattened and stacked (L, n*n), and those exponents (L,)."""

    grams: torch.Tensor
    exponents: torch.Tensor


#: ``exact``: everything in float64; ``fast``: each layer's features checked, rescaled, centred and multiplied
#: into their Gram (the O(n^2 D) step) in float32, everything after the Gram (U-centring, sums) in float64.
PRECISIONS = ("exact", "fast")


def ugram_stack(acts: Sequence[ArrayLike], precision: str = "exact") -> PreparedGrams:
    """Every layer's U-centred Gram of one batch (features rescaled by a power of two), stacked."""
    if precision not in PRECISIONS:
        raise ClrobustError(f"unknown precision {precision!r}; use one of: {', '.join(PRECISIONS)}.")
    grams, exps = [], []
    for i, a in enumerate(acts):
        dtype = torch.float64
        if precision == "fast":  # float32 from here on; float64 input is rescaled first, so it cannot overflow
            given = torch.as_tensor(a).dtype if torch.is_tensor(a) or isinstance(a, np.ndarray) else None
            dtype = torch.float64 if given == torch.float64 else torch.float32
        t, largest = _checked(a, f"layer {i}", dtype)
        t, e = scaled(t, largest, lazy=True)
        largest = math.ldexp(largest, -e)
        if precision == "fast":
            t = t.float()
        t = _centre(t, largest)
        grams.append(u_centre((t @ t.T).double()).reshape(-1))
        exps.append(float(e))
    if not grams:
        raise ClrobustError("no layers to compare: the recording is empty (check --layers).")
    stacked = torch.stack(grams)
    return PreparedGrams(stacked, torch.tensor(exps, dtype=torch.float64, device=stacked.device))


class StreamingCKA:
    """Minibatch linear CKA for all layer pairs of two recordings.

    >>> acc = StreamingCKA()
    >>> for xa, xb in batches:                 # lists of per-layer (b, ...) tensors
    ...     acc.update(xa, xb)
    >>> acc.compute()                          # (layers of a) x (layers of b) array

    ``update_prepared`` takes :meth:`prepare` results, so several pairs that share a
    recording compute its Grams once per batch. It is the first entry of the metric
    registry (:mod:`clrobust.metrics`).

    Device: the sums live where the first batch's Grams were computed (a GPU's activations are
    multiplied there); later batches are moved to them, and :meth:`compute` returns host arrays.

    Scale: each batch's layer features are rescaled by ``2**-e`` before their Gram.
    The sums are kept relative to a running reference exponent per row and per
    column (the largest seen) and rescaled, exactly, when it grows; the references
    cancel in the CKA ratio, so any magnitude float64 can hold gives the CKA of the
    same features at 1.
    """

    name = "linear-cka"
    description = "minibatch linear CKA, unbiased HSIC summed over batches (float64)"

    def prepare(self, acts: Sequence[ArrayLike]) -> PreparedGrams:
        """What one recording contributes to every pair it is in, once per batch: its U-centred Grams."""
        return ugram_stack(acts, self.precision)

    def __init__(self, bootstrap: int = 0, precision: str = "exact") -> None:
        if precision not in PRECISIONS:
            raise ClrobustError(f"unknown precision {precision!r}; use one of: {', '.join(PRECISIONS)}.")
        self.bootstrap = bootstrap
        self.precision = precision
        if precision == "fast":
            self.description = ("minibatch linear CKA, unbiased HSIC summed over batches (float32 Gram products "
                                "of float64-centred features, float64 after them)")
        self.xy: torch.Tensor | None = None
        self.xx: torch.Tensor | None = None
        self.yy: torch.Tensor | None = None
        self.ex: torch.Tensor | None = None
        self.ey: torch.Tensor | None = None
        self.bxy: torch.Tensor | None = None  # (replicates, rows, cols): the sums under bootstrap weights
        self.bxx: torch.Tensor | None = None
        self.byy: torch.Tensor | None = None
        self.n = 0
        self.batches = 0

    def update(self, acts_x: Sequence[ArrayLike], acts_y: Sequence[ArrayLike],
               weights: Optional[torch.Tensor] = None) -> None:
        px = ugram_stack(acts_x, self.precision)
        py = px if acts_y is acts_x else ugram_stack(acts_y, self.precision)
        self.update_prepared(px, py, weights)

    def update_prepared(self, px: PreparedGrams, py: PreparedGrams, weights: Optional[torch.Tensor] = None) -> None:
        """Add one batch of the pair, given both recordings' :meth:`prepare` results.

        ``weights`` (replicates x batch size, e.g. :meth:`clrobust.uncertainty.Bootstrap.weights`)
        are the images' bootstrap weights; they are required when the accumulator was made with
        ``bootstrap`` replicates. Each replicate adds the linearised weighted sum: image a's share
        of the unbiased HSIC, c_a = sum_b U_K[a, b] U_L[a, b], counted 2 w_a - 1 times (the first-order
        expansion of the pair weights w_a w_b), so a replicate costs O(n) per layer pair, not O(n^2).
        """
        gx, gy = px.grams, py.grams
        b = math.isqrt(gx.shape[1])
        if gy.shape[1] != gx.shape[1]:
            raise ClrobustError("both recordings of a CKA pair must come from the same batch.")
        self.ensure_state(gx.shape[0], gy.shape[0], gx.device)
        assert self.ex is not None and self.ey is not None and self.xy is not None
        assert self.xx is not None and self.yy is not None
        dev = self.xy.device
        gx, gy = gx.to(dev), gy.to(dev)
        pex, pey = px.exponents.to(dev), py.exponents.to(dev)
        self.align([pex, pey])
        fx = torch.exp2(2 * (pex - self.ex))  # <= 1: this batch relative to the reference
        fy = torch.exp2(2 * (pey - self.ey))
        scale = 1.0 / (b * (b - 3))
        self.xy += (gx @ gy.T) * scale * fx[:, None] * fy[None, :]
        self.xx += (gx * gx).sum(1) * scale * fx ** 2
        self.yy += (gy * gy).sum(1) * scale * fy ** 2
        if self.bootstrap:
            if weights is None or tuple(weights.shape) != (self.bootstrap, b):
                raise ClrobustError(f"bootstrap weights of shape ({self.bootstrap}, {b}) are needed for this batch.")
            assert self.bxy is not None and self.bxx is not None and self.byy is not None
            v = 2 * weights.to(dev, torch.float64) - 1
            ux, uy = gx.view(-1, b, b), gy.view(-1, b, b)
            cxy = torch.einsum("iab,jab->ija", ux, uy)
            cxx = (ux * ux).sum(2)
            cyy = cxx if py is px else (uy * uy).sum(2)
            self.bxy += torch.einsum("ija,ra->rij", cxy, v) * (scale * fx[:, None] * fy[None, :])
            self.bxx += (v @ cxx.T) * (scale * fx ** 2)
            self.byy += (v @ cyy.T) * (scale * fy ** 2)
        self.n += b
        self.batches += 1

    def ensure_state(self, rows: int, cols: int, device: Optional[torch.device] = None) -> None:
        """Zero sums of shape (rows, cols), (rows,), (cols,) on ``device`` (the CPU by default) when no
        batch was added, so that a process that owned no batch still joins every all-reduce with tensors
        of the right shape."""
        if self.xy is None:
            self.xy = torch.zeros(rows, cols, dtype=torch.float64, device=device)
            self.xx = torch.zeros(rows, dtype=torch.float64, device=device)
            self.yy = torch.zeros(cols, dtype=torch.float64, device=device)
            self.ex = torch.full((rows,), NO_EXPONENT, dtype=torch.float64, device=device)
            self.ey = torch.full((cols,), NO_EXPONENT, dtype=torch.float64, device=device)
            if self.bootstrap:
                self.bxy = torch.zeros(self.bootstrap, rows, cols, dtype=torch.float64, device=device)
                self.bxx = torch.zeros(self.bootstrap, rows, dtype=torch.float64, device=device)
                self.byy = torch.zeros(self.bootstrap, cols, dtype=torch.float64, device=device)

    def state(self) -> List[Optional[torch.Tensor]]:
        """The running sums (and their bootstrap replicates), e.g. to all-reduce across processes (None
        before the first batch). They are relative to :meth:`exponents`: :meth:`align` every process first."""
        if self.bootstrap:
            return [self.xy, self.xx, self.yy, self.bxy, self.bxx, self.byy]
        return [self.xy, self.xx, self.yy]

    def exponents(self) -> List[Optional[torch.Tensor]]:
        """The reference exponents of the rows and the columns (None before the first batch)."""
        return [self.ex, self.ey]

    def align(self, exponents: Sequence[torch.Tensor]) -> None:
        """Raise the reference exponents to at least ``exponents`` (e.g. their maximum over the
        processes), rescaling the sums exactly, so that sums of several processes add up."""
        assert self.ex is not None and self.ey is not None and self.xy is not None
        assert self.xx is not None and self.yy is not None
        ex = torch.maximum(self.ex, exponents[0].to(self.ex.device))
        ey = torch.maximum(self.ey, exponents[1].to(self.ey.device))
        fx, fy = torch.exp2(2 * (self.ex - ex)), torch.exp2(2 * (self.ey - ey))
        self.xy *= fx[:, None] * fy[None, :]
        self.xx *= fx ** 2
        self.yy *= fy ** 2
        if self.bxy is not None and self.bxx is not None and self.byy is not None:
            self.bxy *= fx[:, None] * fy[None, :]
            self.bxx *= fx ** 2
            self.byy *= fy ** 2
        self.ex, self.ey = ex, ey

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
        return (self.xy / torch.sqrt(self.xx[:, None] * self.yy[None, :])).cpu().numpy()

    def replicates(self) -> Optional[np.ndarray]:
        """(replicates, rows, cols) CKA under each bootstrap replicate's weights (NaN where a replicate
        leaves a self-HSIC not positive); None without bootstrap."""
        if not self.bootstrap or self.bxy is None:
            return None
        assert self.bxx is not None and self.byy is not None
        defined = (self.bxx[:, :, None] > 0) & (self.byy[:, None, :] > 0)  # both self-HSICs, not their product
        out = self.bxy / torch.sqrt((self.bxx[:, :, None] * self.byy[:, None, :]).clamp(min=0))
        return torch.where(defined, out, torch.full_like(out, float("nan"))).cpu().numpy()


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


def depth_thirds(n: int) -> Tuple[slice, slice]:
    """The first and the last third of ``n`` layers (at least one layer each): where every summary reads
    "early" and "late"."""
    k = max(1, n // 3)
    return slice(0, k), slice(n - k, n)


def late_mean(values: Sequence[float]) -> float:
    """Mean over the last third of the layers (:func:`depth_thirds`)."""
    v = np.asarray(values, dtype=float)
    return float(v[depth_thirds(len(v))[1]].mean())


def early_mean(values: Sequence[float]) -> float:
    """Mean over the first third of the layers (:func:`depth_thirds`)."""
    v = np.asarray(values, dtype=float)
    return float(v[depth_thirds(len(v))[0]].mean())


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
