"""NT-Xent and SupCon against literal float64 loops."""

import math

import pytest
import torch

from clrobust.train.losses import nt_xent, supcon


def ref_supcon(z1, z2, labels, t):
    z = torch.cat([z1, z2]).double()
    z = z / z.norm(dim=1, keepdim=True)
    lab = list(labels) + list(labels)
    n = len(lab)
    total = 0.0
    for i in range(n):
        denom = sum(math.exp(float(z[i] @ z[a]) / t) for a in range(n) if a != i)
        pos = [p for p in range(n) if p != i and lab[p] == lab[i]]
        total += -sum(math.log(math.exp(float(z[i] @ z[p]) / t) / denom) for p in pos) / len(pos)
    return total / n


def test_nt_xent_matches_loop():
    torch.manual_seed(0)
    z1, z2 = torch.randn(6, 5), torch.randn(6, 5)
    want = ref_supcon(z1, z2, list(range(6)), 0.5)  # positives: the other view only
    assert nt_xent(z1, z2, 0.5).item() == pytest.approx(want, rel=1e-5)
    assert supcon(z1, z2, None, 0.5).item() == pytest.approx(want, rel=1e-5)


def test_supcon_with_several_positives_matches_loop():
    torch.manual_seed(1)
    z1, z2 = torch.randn(8, 4), torch.randn(8, 4)
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 2, 2])
    assert supcon(z1, z2, labels, 0.1).item() == pytest.approx(ref_supcon(z1, z2, labels.tolist(), 0.1), rel=1e-5)


def test_nt_xent_is_lower_for_aligned_views():
    torch.manual_seed(2)
    z = torch.randn(16, 8)
    assert nt_xent(z, z + 0.01 * torch.randn_like(z)) < nt_xent(z, torch.randn(16, 8))
