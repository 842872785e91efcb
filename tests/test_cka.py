"""CKA against float64 references written here, invariances, and the streaming form."""

import numpy as np
import pytest
import torch

from clrobust.cka import StreamingCKA, batch_bounds, linear_cka
from clrobust.errors import ClrobustError


def ref_cka_biased(x, y):
    """Gram-form CKA with the centring matrix H, straight from the definition (float64)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, l = x @ x.T, y @ y.T
    hsic = lambda a, b: np.trace(a @ h @ b @ h) / (n - 1) ** 2  # noqa: E731
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def ref_hsic_unbiased(k, l):
    """Song et al. 2012, the formula as written (not U-centring)."""
    n = k.shape[0]
    kt, lt = k.copy(), l.copy()
    np.fill_diagonal(kt, 0)
    np.fill_diagonal(lt, 0)
    one = np.ones(n)
    return (np.trace(kt @ lt) + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
            - 2 / (n - 2) * one @ kt @ lt @ one) / (n * (n - 3))


def ref_cka_unbiased(xs, ys):
    """Minibatch CKA: unbiased HSIC summed over the batches."""
    kl = kk = ll = 0.0
    for x, y in zip(xs, ys):
        k, l = x @ x.T, y @ y.T
        kl += ref_hsic_unbiased(k, l)
        kk += ref_hsic_unbiased(k, k)
        ll += ref_hsic_unbiased(l, l)
    return kl / np.sqrt(kk * ll)


@pytest.fixture
def xy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 12))
    y = x @ rng.normal(size=(12, 7)) + rng.normal(size=(60, 7))
    return x, y


def test_reference_values_of_kornblith_notebook():
    np.random.seed(1337)
    x = np.random.randn(100, 10)
    y = np.random.randn(100, 10) + x
    assert linear_cka(x, y) == pytest.approx(0.55761, abs=5e-6)
    assert linear_cka(x, y, unbiased=True) == pytest.approx(0.51346, abs=5e-6)


def test_biased_matches_float64_reference(xy):
    x, y = xy
    assert linear_cka(x, y) == pytest.approx(ref_cka_biased(x, y), abs=1e-12)
    # Uncentred, post-ReLU-like float32 input with a large offset: no cancellation loss.
    xr = np.maximum(x, 0).astype(np.float32) + 100
    assert linear_cka(torch.from_numpy(xr), y) == pytest.approx(ref_cka_biased(xr.astype(np.float64), y), abs=1e-9)


def test_unbiased_matches_float64_reference(xy):
    x, y = xy
    assert linear_cka(x, y, unbiased=True) == pytest.approx(ref_cka_unbiased([x], [y]), abs=1e-12)


def test_invariances(xy):
    x, y = xy
    base = linear_cka(x, y)
    q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(12, 12)))
    assert linear_cka(x @ q, y) == pytest.approx(base, abs=1e-10)  # orthogonal
    assert linear_cka(3.7 * x, y) == pytest.approx(base, abs=1e-10)  # isotropic scaling
    assert linear_cka(x + 5.0, y) == pytest.approx(base, abs=1e-10)  # translation
    assert linear_cka(y, x) == pytest.approx(base, abs=1e-12)  # symmetry
    perm = np.random.default_rng(2).permutation(60)
    assert linear_cka(x[perm], y[perm]) == pytest.approx(base, abs=1e-10)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    # Not invariant to a general invertible map, anisotropic scaling, one-sided permutation.
    a = np.random.default_rng(3).normal(size=(12, 12))
    assert abs(linear_cka(x @ a, y) - base) > 1e-3
    assert abs(linear_cka(x * np.linspace(0.1, 10, 12), y) - base) > 1e-3
    assert abs(linear_cka(x[perm], y) - base) > 1e-3


def test_conv_maps_are_flattened():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(20, 3, 4, 4))
    y = rng.normal(size=(20, 5))
    assert linear_cka(x, y) == pytest.approx(ref_cka_biased(x.reshape(20, -1), y), abs=1e-12)


def test_streaming_one_batch_equals_full_batch_unbiased(xy):
    x, y = xy
    acc = StreamingCKA()
    acc.update([torch.from_numpy(x)], [torch.from_numpy(y)])
    assert acc.compute()[0, 0] == pytest.approx(linear_cka(x, y, unbiased=True), abs=1e-12)


def test_streaming_all_pairs_equal_minibatch_reference():
    rng = np.random.default_rng(5)
    layers_a = [rng.normal(size=(50, d)) for d in (6, 9)]
    layers_b = [la @ rng.normal(size=(la.shape[1], 4)) + rng.normal(size=(50, 4)) for la in layers_a] + \
               [np.maximum(rng.normal(size=(50, 3, 2, 2)), 0) + 10]
    acc = StreamingCKA()
    bounds = batch_bounds(50, 16)
    assert bounds[-1] == (32, 50)  # ragged last batch of 2 folded into the previous one
    for lo, hi in bounds:
        acc.update([torch.from_numpy(a[lo:hi]).float() for a in layers_a],
                   [torch.from_numpy(b[lo:hi]).float() for b in layers_b])
    got = acc.compute()
    assert got.shape == (2, 3)
    for i, a in enumerate(layers_a):
        for j, b in enumerate(layers_b):
            a32 = a.astype(np.float32).astype(np.float64)
            b32 = b.reshape(50, -1).astype(np.float32).astype(np.float64)
            want = ref_cka_unbiased([a32[lo:hi] for lo, hi in bounds], [b32[lo:hi] for lo, hi in bounds])
            assert got[i, j] == pytest.approx(want, abs=1e-8)


def test_streaming_self_diagonal_is_one():
    rng = np.random.default_rng(6)
    layers = [torch.from_numpy(rng.normal(size=(40, d))) for d in (3, 8, 20)]
    acc = StreamingCKA()
    for lo, hi in batch_bounds(40, 10):
        acc.update([l[lo:hi] for l in layers], [l[lo:hi] for l in layers])
    m = acc.compute()
    np.testing.assert_allclose(np.diag(m), 1.0, atol=1e-12)
    np.testing.assert_allclose(m, m.T, atol=1e-12)


def test_errors():
    with pytest.raises(ClrobustError, match="same inputs"):
        linear_cka(np.ones((5, 2)), np.ones((6, 2)))
    with pytest.raises(ClrobustError, match="constant"):
        linear_cka(np.ones((10, 3)), np.random.default_rng(0).normal(size=(10, 3)))
    acc = StreamingCKA()
    acc.update([torch.ones(8, 3)], [torch.randn(8, 3)])
    with pytest.raises(ClrobustError, match="constant"):
        acc.compute()
    with pytest.raises(ClrobustError):
        batch_bounds(3, 16)
