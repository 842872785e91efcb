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


@pytest.fixture
def one_process_group(tmp_path):
    """A gloo process group of one process, so the multi-process code paths run in this test."""
    import torch.distributed as td

    td.init_process_group("gloo", store=td.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        yield Dist(rank=0, world=1)
    finally:
        td.destroy_process_group()


def test_batch_norm_over_all_processes_equals_torch_batch_norm(one_process_group):
    """The synchronised batch norm (one process: the all-reduces are identities) against nn.BatchNorm2d:
    outputs, input and parameter gradients, running statistics, also with momentum 0 (attacks)."""
    from torch import nn

    from clrobust.models.norm import BatchNorm2d, DualBatchNorm2d, sync_batch_norm

    torch.manual_seed(0)
    x = (torch.randn(6, 5, 4, 4, dtype=torch.float64) * 3 + 10).requires_grad_(True)
    ref = nn.BatchNorm2d(5).double()
    with torch.no_grad():
        ref.weight.uniform_(0.5, 2)
        ref.bias.uniform_(-1, 1)
    ours = nn.Sequential(nn.BatchNorm2d(5), DualBatchNorm2d(5)).double()
    ours[0].load_state_dict(ref.state_dict())
    assert sync_batch_norm(ours) == 3 and type(ours[0]) is BatchNorm2d and ours[1].adv.synced
    for momentum in (0.1, 0.0):
        ref.momentum = ours[0].momentum = momentum
        x2 = x.detach().clone().requires_grad_(True)
        out_ref, out = ref(x), ours[0](x2)
        w = torch.randn_like(out_ref)
        (out_ref * w).sum().backward()
        (out * w).sum().backward()
        torch.testing.assert_close(out, out_ref, rtol=0, atol=1e-12)
        torch.testing.assert_close(x2.grad, x.grad, rtol=0, atol=1e-12)
        for a, b in ((ours[0].weight.grad, ref.weight.grad), (ours[0].bias.grad, ref.bias.grad),
                     (ours[0].running_mean, ref.running_mean), (ours[0].running_var, ref.running_var)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
        x.grad = None
        ours[0].zero_grad()
        ref.zero_grad()
    assert int(ours[0].num_batches_tracked) == int(ref.num_batches_tracked) == 2
    ours.eval()  # evaluation uses the running statistics, in any mode of synchronisation
    ref.eval()
    torch.testing.assert_close(ours[0](x), ref(x), rtol=0, atol=1e-12)


def test_the_whole_batch_gather_passes_every_gradient_back(one_process_group):
    from clrobust.distributed import sum_with_gradient

    t = torch.arange(4.0, requires_grad=True)
    out = sum_with_gradient(t)
    (out * torch.tensor([1.0, 2, 3, 4])).sum().backward()
    assert out.tolist() == [0, 1, 2, 3] and t.grad.tolist() == [1, 2, 3, 4]
