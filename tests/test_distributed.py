"""torchrun plumbing that needs no second process: each rank's device, collectives on it, zero sums."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clrobust.cka import StreamingCKA
from clrobust.distributed import Dist, owns, rank_device


def test_each_rank_takes_the_gpu_of_its_local_rank():
    assert rank_device("cuda", 3) == torch.device("cuda", 3)
    assert rank_device("cuda:1", 3) == torch.device("cuda", 1)  # an explicit index is kept
    assert rank_device("cpu", 3) == torch.device("cpu")


def test_collectives_run_on_the_rank_device_and_write_back(monkeypatch):
    """Every tensor reaches all_reduce on the rank's device; the sum lands in the caller's tensor."""
    import torch.distributed as td

    seen = []

    def fake_all_reduce(t, op=None):
        seen.append(t.device)
        t.mul_(3)  # as if three ranks held the same values

    monkeypatch.setattr(td, "all_reduce", fake_all_reduce)
    dist = Dist(rank=1, world=3, device=torch.device("cpu"))
    counts = torch.tensor([1, 2], dtype=torch.int64)
    sums = torch.ones(2, 2, dtype=torch.float64)
    dist.all_reduce([counts, sums])
    assert seen == [torch.device("cpu")] * 2
    assert counts.tolist() == [3, 6] and torch.equal(sums, torch.full((2, 2), 3.0, dtype=torch.float64))
    table = {"m": {"clean": 2, "adversarial": 1}}
    dist.all_reduce_counts(table)
    assert table == {"m": {"clean": 6, "adversarial": 3}}
    assert [i for i in range(7) if owns(dist, i)] == [1, 4] and owns(None, 5)


def test_a_rank_without_batches_contributes_zero_sums_of_the_right_shape():
    empty, full = StreamingCKA(), StreamingCKA()
    empty.ensure_state(3, 2)
    assert [tuple(t.shape) for t in empty.state()] == [(3, 2), (3,), (2,)]
    assert all(float(t.abs().sum()) == 0 for t in empty.state())
    rng = np.random.default_rng(0)
    xs, ys = [rng.normal(size=(8, 5)) for _ in range(3)], [rng.normal(size=(8, 4)) for _ in range(2)]
    full.update(xs, ys)
    before = [t.clone() for t in full.state()]
    full.ensure_state(3, 2)  # a rank that did compute keeps its sums
    assert all(torch.equal(a, b) for a, b in zip(before, full.state()))
    want = full.compute()
    for a, b in zip(full.state(), empty.state()):  # what all_reduce does: zero sums change nothing
        a += b
    np.testing.assert_array_equal(full.compute(), want)
    with pytest.raises(Exception, match="constant"):
        empty.compute()  # zero sums alone are no result
