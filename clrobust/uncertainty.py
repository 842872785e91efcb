"""Uncertainty of the numbers clrobust reports: bootstrap weights over images, percentile
intervals, Wilson intervals for accuracies, paired differences and Holm's correction, and
t-intervals over training runs (one recipe's mean; two recipes' difference, Welch).

The bootstrap resamples *images*. Every image gets one Poisson(1) weight per replicate,
drawn from a generator seeded by (seed, batch index), so every model, input and layer
pair of a run sees the same resampled image sets (paired comparisons stay paired), a
rerun draws the same weights, and processes under torchrun draw the weights of their
own batches only. How the weights enter minibatch CKA is in :class:`clrobust.cka.StreamingCKA`;
``docs/statistics.md`` explains the choice and its cost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

#: Two-sided level of every interval clrobust reports.
LEVEL = 0.95
from clrobust.names import DEFAULT_REPLICATES  # noqa: E402  (torch-free for the CLI)


@dataclass(frozen=True)
class Bootstrap:
    """Poisson(1) bootstrap weights over images: ``replicates`` resamples, seeded by ``seed``."""

    replicates: int = DEFAULT_REPLICATES
    seed: int = 0

    def weights(self, batch_index: int, n: int) -> torch.Tensor:
        """(replicates, n) float64 weights of the ``n`` images of batch ``batch_index``."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 0x5EED, batch_index]))
        return torch.from_numpy(rng.poisson(1.0, size=(self.replicates, n)).astype(np.float64))

    def describe(self) -> str:
        return (f"{LEVEL:.0%} percentile intervals from {self.replicates} Poisson bootstrap replicates over "
                f"images (seed {self.seed})")


def percentile_interval(replicates: np.ndarray, level: float = LEVEL) -> Tuple[np.ndarray, np.ndarray]:
    """Elementwise (low, high) percentile interval over axis 0, ignoring undefined (NaN) replicates."""
    r = np.asarray(replicates, dtype=np.float64)
    tail = 100 * (1 - level) / 2
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN slice gives NaN, as it should
            return np.nanpercentile(r, tail, axis=0), np.nanpercentile(r, 100 - tail, axis=0)


def wilson_interval(successes: int, n: int, level: float = LEVEL) -> Tuple[float, float]:
    """Wilson score interval of a proportion (well behaved at 0 and 1, unlike the normal one)."""
    if n <= 0:
        return (math.nan, math.nan)
    from scipy.stats import binomtest

    ci = binomtest(int(successes), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return (float(ci.low), float(ci.high))


def bootstrap_p_value(differences: np.ndarray) -> np.ndarray:
    """Two-sided bootstrap p-value of "the difference is 0", per column of (replicates, k) differences:
    twice the share of replicates on the far side of zero (plus one, so it is never 0)."""
    d = np.asarray(differences, dtype=np.float64)
    r = np.sum(np.isfinite(d), axis=0)
    below = (np.sum(d <= 0, axis=0) + 1) / (r + 1)
    above = (np.sum(d >= 0, axis=0) + 1) / (r + 1)
    return np.minimum(1.0, 2 * np.minimum(below, above))


def holm(p_values: Sequence[float]) -> List[float]:
    """Holm's step-down adjustment: family-wise error controlled across the tests (e.g. layers)."""
    p = np.asarray(p_values, dtype=np.float64)
    order = np.argsort(p)
    m = len(p)
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


@dataclass
class PairedDifference:
    """``a - b`` per layer on the same images: the value, its interval, p-value and Holm-adjusted p."""

    a: str
    b: str
    quantity: str
    layers: List[str]
    difference: List[float]
    ci_low: List[float]
    ci_high: List[float]
    p_value: List[float]
    p_holm: List[float]

    @classmethod
    def from_replicates(cls, a: str, b: str, quantity: str, layers: Sequence[str], value: np.ndarray,
                        replicates: np.ndarray) -> "PairedDifference":
        low, high = percentile_interval(replicates)
        p = bootstrap_p_value(replicates)
        return cls(a, b, quantity, list(layers), [float(v) for v in value], low.tolist(), high.tolist(),
                   p.tolist(), holm(p.tolist()))

    def to_dict(self) -> Dict[str, object]:
        return dict(self.__dict__)

    def significant(self, alpha: float = 1 - LEVEL) -> List[bool]:
        return [p < alpha for p in self.p_holm]


def t_interval(values: Sequence[float], level: float = LEVEL) -> Dict[str, Any]:
    """Mean of independent runs with its t-interval (runs as the sample): ``mean``, ``values``, ``n``, and
    with two runs or more ``sd`` (ddof 1), ``ci_low``, ``ci_high``."""
    from scipy.stats import t as student_t

    v = np.asarray(values, dtype=np.float64)
    out: Dict[str, Any] = {"mean": float(v.mean()), "values": v.tolist(), "n": len(v)}
    if len(v) > 1:
        sd = float(v.std(ddof=1))
        half = float(student_t.ppf(0.5 + level / 2, len(v) - 1)) * sd / math.sqrt(len(v))
        out.update(sd=sd, ci_low=out["mean"] - half, ci_high=out["mean"] + half)
    return out


def welch_interval(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> Dict[str, Any]:
    """Difference of the means of two groups of independent runs, ``a - b``, with Welch's t-interval
    (unequal variances, Welch-Satterthwaite degrees of freedom): ``difference``, ``n`` (runs of each), and
    with two runs or more in each ``df``, ``ci_low``, ``ci_high``. Runs that agree exactly give a zero-width
    interval."""
    from scipy.stats import t as student_t

    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    out: Dict[str, Any] = {"difference": float(x.mean() - y.mean()), "n": [len(x), len(y)]}
    if len(x) < 2 or len(y) < 2:
        return out
    va, vb = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(x) - 1) + vb ** 2 / (len(y) - 1)) if se > 0 else len(x) + len(y) - 2
    half = float(student_t.ppf(0.5 + level / 2, df)) * se
    out.update(df=float(df), ci_low=out["difference"] - half, ci_high=out["difference"] + half)
    return out


def with_interval(value: float, low: Optional[float], high: Optional[float], digits: int = 3,
                  percent: bool = False) -> str:
    """``0.240 [0.212, 0.268]`` (or percentages); the value alone when there is no interval."""
    def f(v: float) -> str:
        return f"{v:.{max(digits - 2, 0)}%}" if percent else f"{v:.{digits}f}"
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return f(value)
    return f"{f(value)} [{f(low)}, {f(high)}]"
