"""CKA against float64 references written here, invariances, and the streaming form."""


import numpy as np
import pytest
import torch

from clrobust.cka import (
    StreamingCKA,
    _hsic_biased,
    _hsic_unbiased,
    batch_bounds,
    disparity,
    flatten,
    linear_cka,
    u_centre,
    ugram_stack,
)
from clrobust.errors import ClrobustError


def ref_cka_biased(x, y):
    """Gram-form CKA with the centring matrix H, straight from the definition (float64)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, g = x @ x.T, y @ y.T
    hsic = lambda a, b: np.trace(a @ h @ b @ h) / (n - 1) ** 2  # noqa: E731
    return hsic(k, g) / np.sqrt(hsic(k, k) * hsic(g, g))


def ref_hsic_biased(k: np.ndarray, g: np.ndarray) -> float:
    """trace(K H L H) / (n - 1)^2, H the centring matrix."""
    n = k.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    return float(np.trace(k @ h @ g @ h) / (n - 1) ** 2)


def ref_hsic_unbiased(k, g):
    """Song et al. 2012, the formula as written (not U-centring)."""
    n = k.shape[0]
    kt, lt = k.copy(), g.copy()
    np.fill_diagonal(kt, 0)
    np.fill_diagonal(lt, 0)
    one = np.ones(n)
    return (np.trace(kt @ lt) + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
            - 2 / (n - 2) * one @ kt @ lt @ one) / (n * (n - 3))


def ref_cka_unbiased(xs, ys):
    """Minibatch CKA: unbiased HSIC summed over the batches."""
    kl = kk = ll = 0.0
    for x, y in zip(xs, ys):
        k, g = x @ x.T, y @ y.T
        kl += ref_hsic_unbiased(k, g)
        kk += ref_hsic_unbiased(k, k)
        ll += ref_hsic_unbiased(g, g)
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
        acc.update([g[lo:hi] for g in layers], [g[lo:hi] for g in layers])
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


def test_flatten_is_channel_major_float64():
    x = torch.arange(24, dtype=torch.float32).reshape(2, 3, 2, 2)
    f = flatten(x)
    assert f.dtype == torch.float64 and f.shape == (2, 12)
    assert torch.equal(f[1], torch.arange(12, 24, dtype=torch.float64))
    assert flatten(np.ones((5, 1))).shape == (5, 1)


def test_hsic_estimators_match_their_formulas(xy):
    """The HSIC values themselves, of uncentred kernels too (normalisations cancel in CKA, not in streaming sums)."""
    x, y = xy
    for shift in (0.0, 3.0):
        kx, ky = (x + shift) @ (x + shift).T, (y - shift) @ (y - shift).T
        tx, ty = torch.from_numpy(kx), torch.from_numpy(ky)
        assert _hsic_biased(tx, ty).item() == pytest.approx(ref_hsic_biased(kx, ky), rel=1e-12)
        assert _hsic_unbiased(tx, ty).item() == pytest.approx(ref_hsic_unbiased(kx, ky), rel=1e-12)


def test_u_centre_definition_and_stacks():
    """U-centring: zero diagonal, zero row sums; works on a stack of Grams (leading dims), one by one."""
    rng = np.random.default_rng(7)
    grams = []
    for d in (3, 5):
        a = rng.normal(size=(6, d)) + 2.0
        grams.append(torch.from_numpy(a @ a.T))
    u = u_centre(grams[0])
    assert torch.equal(torch.diagonal(u), torch.zeros(6, dtype=torch.float64))
    np.testing.assert_allclose(u.sum(1).numpy(), 0, atol=1e-10)
    n, k = 6, grams[0].numpy().copy()
    np.fill_diagonal(k, 0)
    want = k - k.sum(1, keepdims=True) / (n - 2) - k.sum(0, keepdims=True) / (n - 2) + k.sum() / ((n - 1) * (n - 2))
    np.fill_diagonal(want, 0)
    np.testing.assert_allclose(u.numpy(), want, atol=1e-10)
    stacked = u_centre(torch.stack(grams))
    for i, g in enumerate(grams):
        torch.testing.assert_close(stacked[i], u_centre(g), rtol=0, atol=1e-12)
    assert u_centre(torch.eye(4)).shape == (4, 4)
    with pytest.raises(ClrobustError, match=r"^unbiased HSIC needs at least 4 samples per batch, got 3\.$"):
        u_centre(torch.eye(3))


def test_u_centre_leaves_its_input_alone():
    g = torch.ones(5, 5, dtype=torch.float64) * 3
    u_centre(g)
    assert torch.equal(g, torch.ones(5, 5, dtype=torch.float64) * 3)


def test_ugram_stack_shape_and_rows():
    rng = np.random.default_rng(8)
    acts = [torch.from_numpy(rng.normal(size=(5, 2, 3))), torch.from_numpy(rng.normal(size=(5, 4)))]
    g, exps = ugram_stack(acts)
    assert g.shape == (2, 25) and g.dtype == torch.float64
    f = flatten(acts[0])
    f = f - f.mean(0)
    want = u_centre(f @ f.T).reshape(-1) * 2.0 ** (-2 * exps[0])  # features rescaled by 2**-e
    torch.testing.assert_close(g[0], want, rtol=0, atol=1e-12)
    assert exps.tolist() == [0.0, 0.0]  # magnitudes near 1 are used as they are (no rescaling pass)
    big = [a * 1e40 for a in acts]  # beyond 2**SAFE_EXPONENT: rescaled by 2**-e, e the exponent of max |x|
    g_big, e_big = ugram_stack(big)
    assert [2.0 ** (e - 1) <= float(a.abs().max()) < 2.0 ** e for a, e in zip(big, e_big.tolist())] == [True] * 2
    torch.testing.assert_close(g_big * 2.0 ** (2 * e_big[:, None]) / 1e80, g,
                               rtol=1e-12, atol=0)


def test_centring_before_the_gram_keeps_precision():
    """Per-feature offsets up to 1e6: Grams of uncentred features would lose every significant digit."""
    rng = np.random.default_rng(9)
    x = rng.normal(size=(30, 5))
    y = x @ rng.normal(size=(5, 3)) + rng.normal(size=(30, 3))
    offsets_x, offsets_y = np.array([1e6, -2e6, 3e5, 0.0, 5e6]), np.array([-3e6, 1e6, 7e5])
    for unbiased in (False, True):
        want = linear_cka(x, y, unbiased=unbiased)
        assert linear_cka(x + offsets_x, y + offsets_y, unbiased=unbiased) == pytest.approx(want, abs=1e-7)


def test_small_scales_are_fine(xy):
    """Self-HSIC far below 1 is still a defined CKA (no threshold at 1)."""
    x, y = xy
    assert linear_cka(1e-4 * x, 1e-3 * y) == pytest.approx(linear_cka(x, y), abs=1e-10)
    assert linear_cka(1e-4 * x, y, unbiased=True) == pytest.approx(linear_cka(x, y, unbiased=True), abs=1e-10)
    acc = StreamingCKA()
    acc.update([torch.from_numpy(1e-4 * x)], [torch.from_numpy(1e-4 * y)])
    assert acc.compute()[0, 0] == pytest.approx(linear_cka(x, y, unbiased=True), abs=1e-10)


def test_minimum_sample_counts():
    rng = np.random.default_rng(10)
    x2, y2 = rng.normal(size=(2, 3)), rng.normal(size=(2, 4))
    assert linear_cka(x2, y2) == pytest.approx(1.0, abs=1e-12)  # two centred points: both rank 1
    x4, y4 = rng.normal(size=(4, 3)), rng.normal(size=(4, 4))
    assert linear_cka(x4, y4, unbiased=True) == pytest.approx(ref_cka_unbiased([x4], [y4]), abs=1e-12)
    with pytest.raises(ClrobustError, match=r"^CKA needs at least 2 samples, got 1\.$"):
        linear_cka(x2[:1], y2[:1])
    with pytest.raises(ClrobustError, match=r"^CKA needs at least 4 samples, got 3\.$"):
        linear_cka(x4[:3], y4[:3], unbiased=True)


def test_linear_cka_error_messages():
    with pytest.raises(ClrobustError, match=r"^x and y must describe the same inputs: 5 vs 6 rows\.$"):
        linear_cka(np.ones((5, 2)), np.ones((6, 2)))
    y = np.random.default_rng(0).normal(size=(10, 3))
    msg = r"^CKA is undefined: {} is constant over the samples \(every sample has the same features\)\.$"
    with pytest.raises(ClrobustError, match=msg.format("x")):
        linear_cka(np.ones((10, 3)), y)
    with pytest.raises(ClrobustError, match=msg.format("y")):
        linear_cka(y, np.full((10, 2), 7.0), unbiased=True)
    with pytest.raises(ClrobustError, match=msg.format("y")):  # constant up to the rounding of its mean
        linear_cka(y, np.full((10, 2), 0.1), unbiased=True)


def test_streaming_state_counts_and_raw_sums():
    """state() holds the unbiased HSIC sums (to all-reduce); n and batches count what went in."""
    rng = np.random.default_rng(11)
    a, b = rng.normal(size=(22, 4)), rng.normal(size=(22, 3))
    acc = StreamingCKA()
    assert acc.state() == [None, None, None] and acc.n == 0 and acc.batches == 0
    bounds = batch_bounds(22, 8)
    assert bounds == [(0, 8), (8, 16), (16, 22)]
    for lo, hi in bounds:
        acc.update([torch.from_numpy(a[lo:hi])], [torch.from_numpy(b[lo:hi])])
    assert acc.n == 22 and acc.batches == 3
    xy, xx, yy = acc.state()  # relative to 2**(2 ex) and 2**(2 ey), the reference exponents
    ex, ey = (float(t) for t in acc.exponents())
    assert (ex, ey) == (0, 0)  # magnitudes near 1: no rescaling, the sums are the raw ones
    xy, xx, yy = xy * 2 ** (2 * ex + 2 * ey), xx * 2 ** (4 * ex), yy * 2 ** (4 * ey)
    gram = lambda m: (m - m.mean(0)) @ (m - m.mean(0)).T  # noqa: E731
    parts = [(gram(a[lo:hi]), gram(b[lo:hi])) for lo, hi in bounds]
    assert xy.item() == pytest.approx(sum(ref_hsic_unbiased(ka, kb) for ka, kb in parts), rel=1e-10)
    assert xx.item() == pytest.approx(sum(ref_hsic_unbiased(ka, ka) for ka, _ in parts), rel=1e-10)
    assert yy.item() == pytest.approx(sum(ref_hsic_unbiased(kb, kb) for _, kb in parts), rel=1e-10)


def test_streaming_same_recording_object_and_mismatch():
    rng = np.random.default_rng(12)
    layers = [torch.from_numpy(rng.normal(size=(8, d))) for d in (2, 5)]
    other = [torch.from_numpy(rng.normal(size=(8, 3)))]
    acc = StreamingCKA()
    acc.update(layers, layers)  # the same list: Grams computed once, still exact
    acc.update(layers, [a.clone() for a in layers])
    np.testing.assert_allclose(np.diag(acc.compute()), 1.0, atol=1e-12)
    acc2 = StreamingCKA()
    acc2.update(layers, other)
    want = [ref_cka_unbiased([a.numpy()], [other[0].numpy()]) for a in layers]
    np.testing.assert_allclose(acc2.compute()[:, 0], want, atol=1e-12)
    with pytest.raises(ClrobustError, match=r"^both recordings of a CKA pair must come from the same batch\.$"):
        acc.update(layers, [a[:6] for a in layers])


def test_streaming_errors_name_the_constant_layer():
    rng = np.random.default_rng(13)
    good = [torch.from_numpy(rng.normal(size=(8, 3))) for _ in range(2)]
    const = torch.ones(8, 3, dtype=torch.float64)
    with pytest.raises(ClrobustError, match=r"^no batch was accumulated\.$"):
        StreamingCKA().compute()
    acc = StreamingCKA()
    acc.update([good[0], const], good)
    with pytest.raises(ClrobustError, match=r"^CKA undefined for layer 1 of the rows: its activations are constant "
                                            r"over the samples \(self-HSIC <= 0\)\.$"):
        acc.compute()
    acc = StreamingCKA()
    acc.update(good, [good[0], good[1], const])
    with pytest.raises(ClrobustError, match=r"^CKA undefined for layer 2 of the columns: "):
        acc.compute()


def test_disparity():
    m = np.array([[0.9, 0.1, 0.0], [0.2, 0.25, 0.3], [0.0, 0.0, 1.0]], dtype=np.float32)
    d = disparity(m)
    assert d.dtype == np.float64 and d.shape == (3,)
    np.testing.assert_allclose(d, [1 - np.float64(np.float32(0.9)), 0.75, 0.0], rtol=0, atol=0)
    np.testing.assert_allclose(disparity(torch.eye(2, dtype=torch.float64) * 0.5), [0.5, 0.5])
    assert disparity([[1.0]]).tolist() == [0.0]
    for bad, shape in ((np.ones((2, 3)), r"\(2, 3\)"), (np.ones(3), r"\(3,\)"), (np.ones((2, 2, 2)), r"\(2, 2, 2\)")):
        with pytest.raises(ClrobustError, match=r"^disparity needs the square clean-vs-adversarial CKA matrix of one "
                                                rf"model, got shape {shape}\.$"):
            disparity(bad)


@pytest.mark.parametrize("n,size,want", [
    (4, 16, [(0, 4)]),
    (10, 8, [(0, 10)]),  # a last batch of 2 folds into the previous one
    (20, 8, [(0, 8), (8, 16), (16, 20)]),  # a last batch of exactly 4 stays
    (19, 8, [(0, 8), (8, 19)]),
    (35, 8, [(0, 8), (8, 16), (16, 24), (24, 35)]),
    (32, 8, [(0, 8), (8, 16), (16, 24), (24, 32)]),
])
def test_batch_bounds(n, size, want):
    assert batch_bounds(n, size) == want


def test_batch_bounds_minimum():
    assert batch_bounds(6, 4, minimum=2) == [(0, 4), (4, 6)]
    assert batch_bounds(5, 4, minimum=2) == [(0, 5)]
    assert batch_bounds(2, 4, minimum=2) == [(0, 2)]
    with pytest.raises(ClrobustError, match=r"^need at least 4 samples for minibatch CKA, got 3\.$"):
        batch_bounds(3, 16)
    with pytest.raises(ClrobustError, match=r"^need at least 5 samples for minibatch CKA, got 4\.$"):
        batch_bounds(4, 16, minimum=5)


def test_prepared_updates_equal_plain_updates_and_metric_identity():
    """The registry's two-step update (prepare once per recording, then pairs) sums exactly what update() sums."""
    rng = np.random.default_rng(3)
    xs = [rng.normal(size=(9, 5)), rng.normal(size=(9, 2, 2, 2))]
    ys = [rng.normal(size=(9, 4))]
    plain, prepared = StreamingCKA(), StreamingCKA()
    for _ in range(2):
        plain.update(xs, ys)
        prepared.update_prepared(StreamingCKA().prepare(xs), prepared.prepare(ys))
    for a, b in zip(plain.state(), prepared.state()):
        assert torch.equal(a, b)
    assert prepared.n == 18 and prepared.batches == 2
    assert tuple(StreamingCKA().prepare(xs).grams.shape) == (2, 81)
    assert StreamingCKA.name == "linear-cka" and "unbiased HSIC" in StreamingCKA.description
    empty = StreamingCKA()
    empty.ensure_state(2, 1)
    assert [tuple(t.shape) for t in empty.state()] == [(2, 1), (2,), (1,)]
    assert all(t.dtype == torch.float64 and not t.any() for t in empty.state())


SCALES = [1e-150, 1e-100, 1e-60, 1e-20, 1.0, 1e20, 1e40, 1e60, 1e100, 1e150]


@pytest.mark.parametrize("scale", SCALES)
def test_cka_does_not_depend_on_the_features_magnitude(xy, scale):
    """From 1e-150 to 1e150 every form gives the float64 reference at scale 1 (the reference itself
    overflows or underflows at most of these scales, which is why it is evaluated at 1)."""
    x, y = xy
    want_b, want_u = ref_cka_biased(x, y), ref_cka_unbiased([x[:30], x[30:]], [y[:30], y[30:]])
    assert linear_cka(scale * x, scale * y) == pytest.approx(want_b, abs=1e-12)
    assert linear_cka(scale * x, y) == pytest.approx(want_b, abs=1e-12)
    assert linear_cka(x, scale * y, unbiased=True) == pytest.approx(ref_cka_unbiased([x], [y]), abs=1e-12)
    acc = StreamingCKA()
    for lo, hi in ((0, 30), (30, 60)):
        acc.update([torch.from_numpy(scale * x[lo:hi])], [torch.from_numpy(y[lo:hi] / scale)])
    assert acc.compute()[0, 0] == pytest.approx(want_u, abs=1e-12)


def test_streaming_batches_of_different_magnitudes_and_processes_that_align():
    """Batch magnitudes 1e100 apart sum as the float64 reference does at representable scales,
    and two processes' sums add up once aligned to common reference exponents."""
    rng = np.random.default_rng(21)
    xs = [rng.normal(size=(10, 5)) for _ in range(3)]
    ys = [x @ rng.normal(size=(5, 4)) + rng.normal(size=(10, 4)) for x in xs]
    mags = [1.0, 2.0 ** 40, 2.0 ** -30]  # the reference holds these without overflow
    want = ref_cka_unbiased([m * x for m, x in zip(mags, xs)], [y for y in ys])
    one = StreamingCKA()
    for m, x, y in zip(mags, xs, ys):
        one.update([torch.from_numpy(m * x)], [torch.from_numpy(y)])
    assert one.compute()[0, 0] == pytest.approx(want, abs=1e-12)
    huge = StreamingCKA()  # the same data at 1e100: float64 Gram products would overflow
    for m, x, y in zip(mags, xs, ys):
        huge.update([torch.from_numpy(1e100 * m * x)], [torch.from_numpy(1e-100 * y)])
    assert huge.compute()[0, 0] == pytest.approx(want, abs=1e-12)
    ranks = [StreamingCKA(), StreamingCKA(), StreamingCKA()]  # batch 0 and 2 on rank 0, 1 on rank 1, none on 2
    for r, m, x, y in zip((0, 1, 0), mags, xs, ys):
        ranks[r].update([torch.from_numpy(m * x)], [torch.from_numpy(y)])
    ranks[2].ensure_state(1, 1)
    top = [torch.maximum(torch.maximum(a, b), c) for a, b, c in zip(*(r.exponents() for r in ranks))]
    for r in ranks:
        r.align(top)
    total = ranks[0]
    for r in ranks[1:]:
        for a, b in zip(total.state(), r.state()):
            a += b
    assert total.compute()[0, 0] == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.int32, torch.uint8, torch.float32])
def test_low_precision_and_integer_features_are_upcast(xy, dtype):
    """The CKA of the values as stored (the float64 reference of the same rounded values)."""
    x, y = xy
    tx = torch.from_numpy(np.abs(x) * 20).to(dtype)
    ty = torch.from_numpy(np.abs(y) * 20).to(dtype)
    want = ref_cka_biased(tx.double().numpy(), ty.double().numpy())
    assert linear_cka(tx, ty) == pytest.approx(want, abs=1e-12)
    acc = StreamingCKA()
    acc.update([tx], [ty])
    assert acc.compute()[0, 0] == pytest.approx(ref_cka_unbiased([tx.double().numpy()], [ty.double().numpy()]),
                                                abs=1e-12)


@pytest.mark.parametrize("bad, message", [
    (lambda x: np.where(np.arange(60)[:, None] == 7, np.nan, x), r"x: NaN or Inf values \(first in sample 7\)"),
    (lambda x: np.where(np.arange(60)[:, None] == 3, np.inf, x), r"x: NaN or Inf values \(first in sample 3\)"),
    (lambda x: x[:0], r"x: empty \(\(0, 12\)\)"),
    (lambda x: x[:, :0], r"x: empty \(\(60, 0\)\)"),
    (lambda x: np.float64(3.0), r"x: a 0-d value"),
    (lambda x: x + 1j * x, r"x: complex values"),
    (lambda x: [["a"] * 12] * 60, r"x: not a numeric array"),
])
def test_bad_features_are_refused_by_name(xy, bad, message):
    x, y = xy
    with pytest.raises(ClrobustError, match=message):
        linear_cka(bad(x), y)
    if np.ndim(bad(x)) == 2 and np.size(bad(x)) and not isinstance(bad(x), list):
        with pytest.raises(ClrobustError, match=message.replace("x:", "layer 0:")):
            StreamingCKA().update([torch.as_tensor(bad(x))], [torch.as_tensor(y)])
    with pytest.raises(ClrobustError, match="no layers to compare"):
        StreamingCKA().update([], [torch.as_tensor(y)])


@pytest.mark.parametrize("scale", [1e-30, 1.0, 1e30])
def test_fast_precision_stays_within_1e_6_of_exact(scale):
    """--precision fast: float32 Gram products of centred features; the minibatch CKA of post-ReLU layers
    (uncentred means far from 0, where float32 Grams of raw features lose 1e-2) within 1e-6 of float64."""
    rng = np.random.default_rng(30)
    layers = [np.maximum(rng.normal(1.0, 1.0, size=(200, d)), 0) * scale for d in (8, 300, 3000)]
    layers = [torch.from_numpy(a).float() for a in layers]
    other = [torch.relu(a + 0.5 * scale * torch.randn(a.shape, generator=torch.Generator().manual_seed(1)))
             for a in layers]
    exact, fast = StreamingCKA(), StreamingCKA(precision="fast")
    for lo in range(0, 200, 50):
        for acc in (exact, fast):
            acc.update([a[lo:lo + 50] for a in layers], [b[lo:lo + 50] for b in other])
    assert np.abs(fast.compute() - exact.compute()).max() < 1e-6
    assert not np.array_equal(fast.compute(), exact.compute())  # the Gram products did run in float32
    assert fast.description == ("minibatch linear CKA, unbiased HSIC summed over batches (float32 Gram products "
                                "of float64-centred features, float64 after them)")
    assert exact.description == "minibatch linear CKA, unbiased HSIC summed over batches (float64)"
    for bad in (lambda: StreamingCKA(precision="half"), lambda: ugram_stack(layers, precision="half")):
        with pytest.raises(ClrobustError, match=r"^unknown precision 'half'; use one of: exact, fast\.$"):
            bad()


def test_fast_precision_reads_float64_features_beyond_float32s_range():
    """float64 features of magnitude 1e100 are checked and rescaled in float64 before the float32 Gram."""
    rng = np.random.default_rng(31)
    x = rng.normal(size=(40, 6)) * 1e100
    y = x[:, :3] + 1e100 * rng.normal(size=(40, 3))
    exact, fast = StreamingCKA(), StreamingCKA(precision="fast")
    for lo in (0, 20):
        for acc in (exact, fast):
            acc.update([torch.from_numpy(x[lo:lo + 20])], [torch.from_numpy(y[lo:lo + 20])])
    assert np.isfinite(fast.compute()).all() and abs(fast.compute() - exact.compute()).max() < 1e-6


@pytest.mark.parametrize("n,early,late", [(1, [0], [0]), (2, [0], [1]), (3, [0], [2]), (5, [0], [4]),
                                          (6, [0, 1], [4, 5]), (9, [0, 1, 2], [6, 7, 8]), (10, [0, 1, 2], [7, 8, 9])])
def test_depth_thirds_and_their_means(n, early, late):
    """'Early' and 'late' are the first and last third of the layers, at least one layer each."""
    from clrobust.cka import depth_thirds, early_mean, late_mean

    first, last = depth_thirds(n)
    assert list(range(n))[first] == early and list(range(n))[last] == late
    values = [float(2 ** i) for i in range(n)]  # distinct powers of two: any other subset has another mean
    assert early_mean(values) == pytest.approx(np.mean([values[i] for i in early]), rel=1e-15)
    assert late_mean(values) == pytest.approx(np.mean([values[i] for i in late]), rel=1e-15)
    assert isinstance(late_mean(values), float) and isinstance(early_mean(values), float)


@pytest.mark.parametrize("dtype,value,e", [(torch.float64, 2.0 ** 1000, -1101), (torch.float64, 2.0 ** -1000, 1101),
                                           (torch.float32, 2.0 ** 100, -161), (torch.float32, 2.0 ** -100, 161),
                                           (torch.float64, 3.0, -7), (torch.float32, 3.0, 9)])
def test_power_of_two_scaling_is_exact_beyond_the_range_of_two_to_the_e(dtype, value, e):
    """t * 2**e is exact even where 2**e alone over- or underflows the dtype (it is applied in two steps)."""
    from clrobust.cka import _ldexp

    t = torch.tensor([value, -value / 2], dtype=dtype)
    got = _ldexp(t, e)
    want = torch.tensor([np.ldexp(value, e), np.ldexp(-value / 2, e)], dtype=torch.float64)
    assert got.dtype == dtype and torch.equal(got.double(), want)


def test_all_finite_on_empty_integer_and_infinite_tensors():
    from clrobust.cka import all_finite

    assert all_finite(torch.empty(0)) and all_finite(torch.tensor([1, 2])) and all_finite(torch.ones(3))
    for bad in ([1.0, float("inf")], [float("-inf"), 1.0], [float("nan"), 1.0]):
        assert not all_finite(torch.tensor(bad)), bad


def test_linear_cka_names_the_bad_side():
    good, bad = np.ones((6, 2)), np.ones((6, 2))
    good[:, 0] = np.arange(6)
    bad[2, 1] = np.nan
    with pytest.raises(ClrobustError, match=r"^y: "):
        linear_cka(good, bad)
    with pytest.raises(ClrobustError, match=r"^x: "):
        linear_cka(bad, good)


def test_power_of_two_rescaling_by_hand():
    """scaled(t) = (t * 2**-e, e), e the binary exponent of max |t| (negative entries count by magnitude);
    zero and empty features keep e = 0; lazily, e within +-20 is left unscaled."""
    from clrobust.cka import scaled

    t, e = scaled(torch.tensor([-8.0, 1.0], dtype=torch.float64))
    assert e == 4 and torch.equal(t, torch.tensor([-0.5, 0.0625], dtype=torch.float64))
    t, e = scaled(torch.tensor([1.0, -0.5], dtype=torch.float64))
    assert e == 1 and torch.equal(t, torch.tensor([0.5, -0.25], dtype=torch.float64))
    assert scaled(torch.zeros(3))[1] == 0 and scaled(torch.empty(0))[1] == 0
    edge = torch.tensor([2.0 ** 19], dtype=torch.float64)  # exponent 20: still left as it is
    assert scaled(edge, lazy=True) == (edge, 0)
    t, e = scaled(torch.tensor([2.0 ** 20], dtype=torch.float64), lazy=True)  # exponent 21: rescaled
    assert e == 21 and float(t) == 0.5


def test_bad_feature_messages_are_one_line_and_carry_the_cause():
    from clrobust.cka import _one_line

    assert _one_line(ValueError("first line\n   second\tline ")) == "first line second line"
    junk = [["a"] * 12] * 60
    with pytest.raises((TypeError, ValueError, RuntimeError)) as cause:
        torch.as_tensor(junk)
    with pytest.raises(ClrobustError) as err:
        linear_cka(junk, np.ones((60, 12)))
    assert str(err.value) == f"x: not a numeric array ({_one_line(cause.value)})."
    bad = np.ones((5, 2))
    bad[3, 0] = np.inf
    with pytest.raises(ClrobustError) as err:
        linear_cka(np.arange(10.0).reshape(5, 2), bad)
    assert str(err.value) == "y: NaN or Inf values (first in sample 3); CKA of non-finite features is undefined."


def test_streaming_sums_stay_on_their_device_and_take_batches_from_another():
    """The sums live on the device of the first batch's Grams (a GPU's, in compare-layers); a batch that
    arrives from another device is moved to them. The meta device stands in for a second device here;
    benchmarks/gpu_check.py checks the numbers on CUDA."""
    g = torch.Generator().manual_seed(3)
    acts = [torch.randn(8, 5, generator=g), torch.randn(8, 3, generator=g)]
    acc = StreamingCKA(bootstrap=4)
    acc.ensure_state(2, 2, torch.device("meta"))
    acc.update(acts, acts, torch.ones(4, 8))  # CPU Grams, exponents and weights into meta sums
    assert {t.device.type for t in acc.state() + acc.exponents()} == {"meta"}
    cpu = StreamingCKA()
    cpu.update(acts, acts)
    assert isinstance(cpu.compute(), np.ndarray) and cpu.xy.device.type == "cpu"
