"""NT-Xent and SupCon against literal float64 loops."""

import math

import pytest
import torch

from clrobust.losses import nt_xent, supcon


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


@pytest.mark.parametrize("t", [0.5, 0.1, 0.05])
def test_float64_inputs_match_loop_to_float64_precision(t):
    """In float64 the vectorised losses equal the loop to ~1e-12, so any change of formula shows (float32 hides
    differences below ~1e-5)."""
    g = torch.Generator().manual_seed(3)
    z1 = torch.randn(7, 5, generator=g, dtype=torch.float64)
    z2 = 3 * torch.randn(7, 5, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 3])  # label 3 once: its only positive is its other view
    assert nt_xent(z1, z2, t).item() == pytest.approx(ref_supcon(z1, z2, list(range(7)), t), rel=1e-12)
    assert supcon(z1, z2, labels, t).item() == pytest.approx(ref_supcon(z1, z2, labels.tolist(), t), rel=1e-12)


def test_closed_forms_on_orthonormal_embeddings():
    """z1 = z2 = (e1, e2): each anchor has its copy (cosine 1) and two orthogonal others (cosine 0)."""
    z = torch.eye(2, 3, dtype=torch.float64) * torch.tensor([[2.0], [0.5]], dtype=torch.float64)  # norms ignored
    for t in (0.5, 0.1):
        e = math.exp(1 / t)
        want_nt = math.log(1 + 2 / e)  # -log(e^(1/t) / (e^(1/t) + 2))
        assert nt_xent(z, z, t).item() == pytest.approx(want_nt, rel=1e-12)
        assert ref_supcon(z, z, [0, 1], t) == pytest.approx(want_nt, rel=1e-12)
        # one class: positives are the copy (logit 1/t) and both orthogonal ones (logit 0), averaged
        want_one = math.log(e + 2) - 1 / (3 * t)
        assert supcon(z, z, torch.tensor([0, 0]), t).item() == pytest.approx(want_one, rel=1e-12)
        assert ref_supcon(z, z, [0, 0], t) == pytest.approx(want_one, rel=1e-12)


def test_losses_ignore_embedding_norms_and_pair_order():
    torch.manual_seed(4)
    z1, z2 = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    labels = torch.tensor([2, 0, 1, 0, 2, 1])
    scale = torch.rand(6, 1, dtype=torch.float64) + 0.1
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    assert nt_xent(z1 * scale, z2, 0.2).item() == pytest.approx(nt_xent(z1, z2, 0.2).item(), rel=1e-12)
    assert nt_xent(z1[perm], z2[perm], 0.2).item() == pytest.approx(nt_xent(z1, z2, 0.2).item(), rel=1e-12)
    assert nt_xent(z2, z1, 0.2).item() == pytest.approx(nt_xent(z1, z2, 0.2).item(), rel=1e-12)
    assert supcon(z1[perm], z2[perm], labels[perm], 0.2).item() == \
        pytest.approx(supcon(z1, z2, labels, 0.2).item(), rel=1e-12)


def test_nt_xent_is_lower_for_aligned_views():
    torch.manual_seed(2)
    z = torch.randn(16, 8)
    assert nt_xent(z, z + 0.01 * torch.randn_like(z)) < nt_xent(z, torch.randn(16, 8))
