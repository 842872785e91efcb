"""Similarity measures between two recordings, behind one protocol and a registry.

A :class:`Metric` accumulates, batch by batch, a value for every pair of layers of
two recordings of the same images (rows: layers of the first, columns: layers of
the second), and computes the matrix at the end. :meth:`Metric.prepare` is what one
recording contributes to every pair it is in (CKA: its U-centred Grams), computed
once per batch however many pairs share the recording. Its running sums
(:meth:`Metric.state`) are all-reduced under torchrun, after every process
aligns them to common reference scales (:meth:`Metric.align`).

>>> m = metric("linear-cka")
>>> for xa, xb in batches:
...     m.update_prepared(m.prepare(xa), m.prepare(xb))
>>> m.compute()

Minibatch linear CKA (:class:`clrobust.cka.StreamingCKA`) is the first entry;
:func:`register_metric` adds more.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence

import numpy as np
import torch

from clrobust.cka import StreamingCKA
from clrobust.errors import ClrobustError


class Metric(Protocol):
    """A streaming layer-by-layer similarity of two recordings."""

    name: str
    description: str

    def prepare(self, acts: Sequence[Any]) -> Any:
        """One recording's per-batch contribution (e.g. its Grams), shared by every pair it is in."""

    def update_prepared(self, px: Any, py: Any, weights: Optional[torch.Tensor] = None) -> None:
        """Add one batch of a pair, given both recordings' :meth:`prepare` results and, with a bootstrap,
        the images' weights (replicates x batch size)."""

    def update(self, acts_x: Sequence[Any], acts_y: Sequence[Any], weights: Optional[torch.Tensor] = None) -> None:
        """Add one batch of a pair from the recordings themselves."""

    def state(self) -> List[Optional[torch.Tensor]]:
        """The running sums (summed across processes under torchrun)."""

    def ensure_state(self, rows: int, cols: int, device: Optional[torch.device] = None) -> None:
        """Zero sums of the right shape (on ``device``, the CPU by default) when this process saw no batch."""

    def exponents(self) -> List[Optional[torch.Tensor]]:
        """Reference scales of the sums (their maximum over the processes is taken first)."""

    def align(self, exponents: Sequence[torch.Tensor]) -> None:
        """Rescale the sums to reference scales at least ``exponents``, before they are summed."""

    def compute(self) -> np.ndarray:
        """The (layers of x) x (layers of y) matrix."""

    def replicates(self) -> Optional[np.ndarray]:
        """The matrix under each bootstrap replicate (replicates x rows x cols); None without bootstrap."""


METRICS: Dict[str, Callable[..., Metric]] = {StreamingCKA.name: StreamingCKA}


def register_metric(name: str, factory: Callable[..., Metric]) -> None:
    """Add a measure under ``name`` (``compare-layers --metric NAME``); ``factory(bootstrap=R, precision=P)``
    makes an accumulator that also keeps R bootstrap replicates, in precision ``exact`` or ``fast``."""
    METRICS[name] = factory


def metric(name: str, bootstrap: int = 0, precision: str = "exact") -> Metric:
    """A fresh accumulator of the measure ``name`` (with ``bootstrap`` replicates, 0 for none, and the
    arithmetic ``precision``: ``exact`` or ``fast``)."""
    if name not in METRICS:
        raise ClrobustError(f"unknown metric {name!r}; use one of: {', '.join(METRICS)}.")
    return METRICS[name](bootstrap=bootstrap, precision=precision)
