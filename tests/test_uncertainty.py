"""Intervals that mean what they say: bootstrap coverage on data with a known population CKA,
Wilson and Holm against their formulas, stratified sampling, and the job's statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from clrobust.cka import StreamingCKA
from clrobust.data import ImageData, load_dataset, stratified_indices
from clrobust.errors import ClrobustError
from clrobust.uncertainty import (
    Bootstrap,
    PairedDifference,
    bootstrap_p_value,
    holm,
    percentile_interval,
    wilson_interval,
    with_interval,
)


def population_cka(a: np.ndarray, s: float) -> float:
    """Linear CKA of x ~ N(0, I_p) and y = x A + s e, e ~ N(0, I_q): HSIC is ||cov(x, y)||_F^2, so
    CKA = ||A||^2 / sqrt(||I_p||^2 ||A'A + s^2 I||^2)."""
    p, q = a.shape
    return float(np.sum(a ** 2) / math.sqrt(p * np.sum((a.T @ a + s ** 2 * np.eye(q)) ** 2)))


def _interval(x, y, replicates, batch=128, seed=0, doubled=True):
    acc = StreamingCKA(bootstrap=replicates)
    boot = Bootstrap(replicates, seed)
    for i, lo in enumerate(range(0, len(x), batch)):
        w = boot.weights(i, batch)
        if not doubled:  # the planted bug: weights on one end of each pair only
            w = (w + 1) / 2
        acc.update([torch.from_numpy(x[lo:lo + batch])], [torch.from_numpy(y[lo:lo + batch])], w)
    low, high = percentile_interval(acc.replicates())
    return acc.compute()[0, 0], low[0, 0], high[0, 0]


@pytest.mark.slow
@pytest.mark.parametrize("noise", [1.5, 4.0])
def test_nominal_95_percent_intervals_cover_the_population_cka_93_to_97_percent_of_the_time(noise):
    """400 independent data sets of 256 images (2 batches), 400 replicates each."""
    a = np.random.default_rng(0).normal(size=(6, 5))
    truth = population_cka(a, noise)
    hits, widths = 0, []
    for k in range(400):
        r = np.random.default_rng(1000 + k)
        x = r.normal(size=(256, 6))
        y = x @ a + noise * r.normal(size=(256, 5))
        _, low, high = _interval(x, y, 400, seed=k)
        hits += low <= truth <= high
        widths.append(high - low)
    assert 0.93 <= hits / 400 <= 0.97, (hits / 400, truth)
    assert 0.05 < np.mean(widths) < 0.2


def test_the_doubled_pair_weights_matter():
    """Weighting only one end of each pair (the naive linearisation) gives intervals about half as wide."""
    a = np.random.default_rng(0).normal(size=(6, 5))
    r = np.random.default_rng(7)
    x = r.normal(size=(256, 6))
    y = x @ a + 1.5 * r.normal(size=(256, 5))
    _, lo2, hi2 = _interval(x, y, 1000)
    _, lo1, hi1 = _interval(x, y, 1000, doubled=False)
    assert (hi1 - lo1) / (hi2 - lo2) == pytest.approx(0.5, abs=0.1)


def test_a_replicate_is_the_first_order_expansion_of_the_resampled_statistic():
    """With weights 1 + e the replicate equals the CKA of the pair-weighted unbiased HSIC (sum over a != b
    of w_a w_b U_K U_L), written here in float64, up to O(e^2); with weights 1 it is the CKA itself."""
    from clrobust.cka import u_centre

    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(12, 4)), rng.normal(size=(12, 3))
    y[:, 0] += x[:, 0]
    eps = 1e-4
    w = torch.from_numpy(np.stack([np.ones(12), 1 + eps * rng.normal(size=12)]))
    acc = StreamingCKA(bootstrap=2)
    acc.update([torch.from_numpy(x)], [torch.from_numpy(y)], w)
    reps = acc.replicates()[:, 0, 0]
    assert reps[0] == pytest.approx(acc.compute()[0, 0], abs=1e-14)

    def u(m):
        m = m - m.mean(0)
        return u_centre(torch.from_numpy(m @ m.T)).numpy()

    ww = np.outer(w[1].numpy(), w[1].numpy())
    kx, ky = u(x), u(y)
    exact = (ww * kx * ky).sum() / math.sqrt((ww * kx * kx).sum() * (ww * ky * ky).sum())
    assert abs(reps[1] - exact) < 50 * eps ** 2
    assert abs(reps[1] - acc.compute()[0, 0]) > 10 * eps ** 2  # the weights did move it


def test_bootstrap_weights_are_seeded_per_batch_and_poisson():
    b = Bootstrap(500, seed=4)
    assert torch.equal(b.weights(2, 64), Bootstrap(500, seed=4).weights(2, 64))
    assert not torch.equal(b.weights(2, 64), b.weights(3, 64))
    assert not torch.equal(b.weights(2, 64), Bootstrap(500, seed=5).weights(2, 64))
    w = b.weights(0, 2000)
    assert w.dtype == torch.float64 and w.shape == (500, 2000)
    assert float(w.mean()) == pytest.approx(1.0, abs=0.01) and float(w.var()) == pytest.approx(1.0, abs=0.02)
    assert "1000 Poisson bootstrap replicates" in Bootstrap(1000, 0).describe()


def test_streaming_replicates_add_up_across_batches_and_processes():
    """Bootstrap sums are sums: two processes' replicates, aligned and added, equal one process's."""
    rng = np.random.default_rng(5)
    xs = [rng.normal(size=(16, 4)) * m for m in (1.0, 1e3)]
    ys = [x @ rng.normal(size=(4, 3)) + rng.normal(size=(16, 3)) for x in xs]
    boot = Bootstrap(50, 1)
    one = StreamingCKA(bootstrap=50)
    for i, (x, y) in enumerate(zip(xs, ys)):
        one.update([torch.from_numpy(x)], [torch.from_numpy(y)], boot.weights(i, 16))
    ranks = [StreamingCKA(bootstrap=50), StreamingCKA(bootstrap=50)]
    for i, (x, y) in enumerate(zip(xs, ys)):
        ranks[i].update([torch.from_numpy(x)], [torch.from_numpy(y)], boot.weights(i, 16))
    top = [torch.maximum(a, b) for a, b in zip(ranks[0].exponents(), ranks[1].exponents())]
    for r in ranks:
        r.align(top)
    for a, b in zip(ranks[0].state(), ranks[1].state()):
        a += b
    np.testing.assert_allclose(ranks[0].replicates(), one.replicates(), rtol=1e-12)
    with pytest.raises(ClrobustError, match=r"bootstrap weights of shape \(50, 16\)"):
        StreamingCKA(bootstrap=50).update([torch.from_numpy(xs[0])], [torch.from_numpy(ys[0])])


def test_percentile_interval_ignores_undefined_replicates():
    r = np.array([[1.0, np.nan], [2.0, np.nan], [3.0, np.nan], [4.0, np.nan], [5.0, 7.0]])
    low, high = percentile_interval(r, level=0.5)
    assert low.tolist()[0] == 2.0 and high.tolist()[0] == 4.0 and low[1] == high[1] == 7.0


@pytest.mark.parametrize("k, n", [(0, 10), (3, 10), (10, 10), (37, 512), (1, 1)])
def test_wilson_interval_matches_its_formula(k, n):
    z = 1.959963984540054
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    low, high = wilson_interval(k, n)
    assert low == pytest.approx(max(0.0, centre - half), abs=1e-12)
    assert high == pytest.approx(min(1.0, centre + half), abs=1e-12)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_holm_adjustment_by_hand():
    # sorted p: 0.01 (x4 = 0.04), 0.02 (x3 = 0.06), 0.03 (x2 = 0.06, monotone), 0.5 (x1 = 0.5)
    assert holm([0.03, 0.5, 0.01, 0.02]) == pytest.approx([0.06, 0.5, 0.04, 0.06])
    assert holm([0.9, 0.9]) == [1.0, 1.0]


def test_bootstrap_p_value_and_paired_difference():
    rng = np.random.default_rng(0)
    reps = np.stack([rng.normal(0.5, 0.1, 999), rng.normal(0.0, 0.1, 999)], axis=1)
    p = bootstrap_p_value(reps)
    assert p[0] == pytest.approx(2 / 1000) and 0.5 < p[1] <= 1.0
    d = PairedDifference.from_replicates("a", "b", "disparity", ["l1", "l2"], np.array([0.5, 0.0]), reps)
    assert d.significant() == [True, False] and d.p_holm[0] == pytest.approx(2 * p[0])
    assert d.ci_low[0] > 0.25 and d.ci_high[0] < 0.75 and d.ci_low[1] < 0 < d.ci_high[1]
    assert with_interval(0.2401, 0.2129, 0.2645) == "0.240 [0.213, 0.265]"
    assert with_interval(0.406, 0.365, 0.449, percent=True) == "40.6% [36.5%, 44.9%]"
    assert with_interval(0.5, None, None) == "0.500"


def test_stratified_sampling_keeps_class_shares_and_is_seeded():
    labels = np.repeat(np.arange(4), [50, 30, 15, 5])
    idx = stratified_indices(labels, 20, seed=3)
    assert len(set(idx.tolist())) == 20 and list(idx) == sorted(idx)
    assert np.bincount(labels[idx], minlength=4).tolist() == [10, 6, 3, 1]
    assert np.array_equal(idx, stratified_indices(labels, 20, seed=3))
    assert not np.array_equal(idx, stratified_indices(labels, 20, seed=4))
    odd = stratified_indices(labels, 7, seed=0)  # quotas 3.5, 2.1, 1.05, 0.35: the largest remainders win
    assert np.bincount(labels[odd], minlength=4).tolist() == [4, 2, 1, 0]


def test_sampling_of_a_data_set():
    data = load_dataset("cifar10-mini", "test")
    strat = data.sample(100, "stratified", 0)
    first = data.sample(100, "first")
    assert torch.equal(first.images, data.images[:100]) and "the first 100 of the 846" in first.chosen
    assert "class-stratified, sample seed 0, indices sha256" in strat.chosen
    counts = np.bincount(strat.labels.numpy(), minlength=10)
    shares = np.bincount(data.labels.numpy(), minlength=10) / len(data) * 100
    assert np.all(np.abs(counts - shares) < 1)
    assert data.sample(None) is data and data.sample(10_000) is data
    with pytest.raises(ClrobustError, match="unknown sampling 'random'"):
        data.sample(10, "random")
    tiny = ImageData("t", "test", data.images[:6], torch.tensor([0, 0, 0, 1, 1, 1]), ["a", "b"])
    assert sorted(tiny.sample(4, "stratified", 1).labels.tolist()) == [0, 0, 1, 1]


def _pair_stack(seed: int = 9, scales=(1.0, 1e12)):
    """Two batches (16 images) of a 2-layer recording and a 3-layer one, the second 1e12 times larger (so its
    features are rescaled by a power of two and the running sums by the change of reference exponent)."""
    rng = np.random.default_rng(seed)
    batches = []
    for m in scales:
        x = [rng.normal(size=(16, 4)) * m, rng.normal(size=(16, 6)) * m]
        y = [x[0] @ rng.normal(size=(4, 3)) + rng.normal(size=(16, 3)), rng.normal(size=(16, 5)),
             x[1][:, :2] + 0.1 * rng.normal(size=(16, 2))]
        batches.append(([torch.from_numpy(a) for a in x], [torch.from_numpy(b) for b in y]))
    return batches


def test_replicates_of_a_layer_stack_are_each_pairs_own():
    """Every (i, j) replicate of a 2 x 3 layer stack equals the replicate of the pair (x_i, y_j) accumulated
    alone with the same weights; weights of 1 give the CKA itself; all-zero weights leave no positive
    self-HSIC, so every replicate is NaN."""
    boot = Bootstrap(20, 2)
    batches = _pair_stack()
    acc = StreamingCKA(bootstrap=20)
    for k, (x, y) in enumerate(batches):
        acc.update(x, y, boot.weights(k, 16))
    reps = acc.replicates()
    assert reps.shape == (20, 2, 3)
    for i in range(2):
        for j in range(3):
            one = StreamingCKA(bootstrap=20)
            for k, (x, y) in enumerate(batches):
                one.update([x[i]], [y[j]], boot.weights(k, 16))
            np.testing.assert_allclose(reps[:, i, j], one.replicates()[:, 0, 0], rtol=1e-12)
            assert acc.compute()[i, j] == pytest.approx(one.compute()[0, 0], rel=1e-12)
    ones = StreamingCKA(bootstrap=3)
    for x, y in batches:
        ones.update(x, y, torch.ones(3, 16, dtype=torch.float64))
    np.testing.assert_allclose(ones.replicates(), np.broadcast_to(ones.compute(), (3, 2, 3)), rtol=1e-12)
    zero = StreamingCKA(bootstrap=2)
    zero.update(batches[0][0], batches[0][1], torch.zeros(2, 16, dtype=torch.float64))
    assert np.isnan(zero.replicates()).all() and np.isfinite(zero.compute()).all()
    assert StreamingCKA().replicates() is None and StreamingCKA(bootstrap=3).replicates() is None  # no batch yet
    # Features with a small spread (self-HSICs far below 1) and weights 1: still the CKA itself.
    rng = np.random.default_rng(1)
    small = [torch.from_numpy(1 + 1e-3 * rng.normal(size=(16, 2)))]
    tiny = StreamingCKA(bootstrap=2)
    tiny.update(small, [batches[0][1][0]], torch.ones(2, 16, dtype=torch.float64))
    assert float(tiny.state()[1][0]) < 1e-3
    np.testing.assert_allclose(tiny.replicates()[:, 0, 0], tiny.compute()[0, 0], rtol=1e-12)
    # One image carries layer x's spread but not layer y's: drawing that image twice and no other leaves x's
    # self-HSIC positive and y's negative, so the replicate is undefined (NaN), not a division by zero.
    x = rng.normal(size=(16, 3))
    x[0] *= 100
    lop = StreamingCKA(bootstrap=1)
    lop.update([torch.from_numpy(x)], [torch.from_numpy(rng.normal(size=(16, 3)))],
               2 * torch.eye(16, dtype=torch.float64)[:1])
    assert float(lop.state()[4][0, 0]) > 0 > float(lop.state()[5][0, 0])
    assert np.isnan(lop.replicates()).all()
    with pytest.raises(ClrobustError, match=r"bootstrap weights of shape \(20, 16\)"):
        StreamingCKA(bootstrap=20).update(batches[0][0], batches[0][1], torch.ones(20, 15, dtype=torch.float64))


def test_a_recording_against_itself_equals_it_against_a_copy():
    """The self-pair shortcut (one Gram stack for both sides) gives what two equal recordings give."""
    boot = Bootstrap(10, 3)
    x = _pair_stack()[0][0]
    same, copy = StreamingCKA(bootstrap=10), StreamingCKA(bootstrap=10)
    same.update(x, x, boot.weights(0, 16))
    copy.update(x, [t.clone() for t in x], boot.weights(0, 16))
    np.testing.assert_allclose(same.replicates(), copy.replicates(), rtol=1e-12)
    np.testing.assert_allclose(same.compute(), copy.compute(), rtol=1e-12)
    assert same.compute()[0, 0] == pytest.approx(1.0) and same.compute()[0, 1] < 1


@pytest.mark.parametrize("bootstrap", [0, 5])
def test_a_process_without_batches_joins_with_zero_sums(bootstrap):
    """A process that owned no batch makes zero sums of the right shapes and the 'no batch yet' exponents;
    aligned to the others' exponents and added, it changes nothing."""
    from clrobust.cka import NO_EXPONENT

    boot = Bootstrap(max(bootstrap, 1), 4)
    full, empty = StreamingCKA(bootstrap=bootstrap), StreamingCKA(bootstrap=bootstrap)
    for k, (x, y) in enumerate(_pair_stack(1)):
        full.update(x, y, boot.weights(k, 16) if bootstrap else None)
    before = full.compute(), full.replicates()
    empty.ensure_state(2, 3)
    shapes = [(2, 3), (2,), (3,)] + ([(bootstrap, 2, 3), (bootstrap, 2), (bootstrap, 3)] if bootstrap else [])
    assert [tuple(t.shape) for t in empty.state()] == shapes
    assert all(float(t.abs().sum()) == 0 and t.dtype == torch.float64 for t in empty.state())
    assert all(bool((e == NO_EXPONENT).all()) for e in empty.exponents())
    assert [tuple(e.shape) for e in empty.exponents()] == [(2,), (3,)]
    top = [torch.maximum(a, b) for a, b in zip(full.exponents(), empty.exponents())]
    for acc in (full, empty):
        acc.align(top)
    for a, b in zip(full.state(), empty.state()):
        a += b
    np.testing.assert_allclose(full.compute(), before[0], rtol=1e-12)
    if bootstrap:
        np.testing.assert_allclose(full.replicates(), before[1], rtol=1e-12)
    empty.ensure_state(7, 7)  # state already there: unchanged
    assert tuple(empty.state()[0].shape) == (2, 3)


def _ref_stream(batches, weights):
    """The minibatch CKA of every layer pair and its bootstrap replicates, in float64 from the definitions:
    per batch the U-centred Grams (K with a zero diagonal, minus its row and column means over n - 2, plus its
    total over (n - 1)(n - 2), diagonal zeroed), HSIC_u = sum U_K U_L / (n (n - 3)) summed over batches; a
    replicate weighs image a's row of that sum by 2 w_a - 1."""
    def u(f):
        f = f - f.mean(0)
        k = f @ f.T
        np.fill_diagonal(k, 0.0)
        n, r = len(k), k.sum(1)
        out = k - r[:, None] / (n - 2) - r[None, :] / (n - 2) + k.sum() / ((n - 1) * (n - 2))
        np.fill_diagonal(out, 0.0)
        return out

    nx, ny = len(batches[0][0]), len(batches[0][1])
    reps = weights[0].shape[0]
    s, sx, sy = np.zeros((nx, ny)), np.zeros(nx), np.zeros(ny)
    b, bx, by = np.zeros((reps, nx, ny)), np.zeros((reps, nx)), np.zeros((reps, ny))
    for (xs, ys), w in zip(batches, weights):
        n = len(xs[0])
        c = 1.0 / (n * (n - 3))
        v = 2 * w.numpy() - 1
        ux, uy = [u(t.numpy()) for t in xs], [u(t.numpy()) for t in ys]
        for i, a in enumerate(ux):
            sx[i] += (a * a).sum() * c
            bx[:, i] += v @ (a * a).sum(1) * c
            for j, g in enumerate(uy):
                s[i, j] += (a * g).sum() * c
                b[:, i, j] += v @ (a * g).sum(1) * c
        for j, g in enumerate(uy):
            sy[j] += (g * g).sum() * c
            by[:, j] += v @ (g * g).sum(1) * c
    with np.errstate(invalid="ignore"):  # a replicate with a negative self-HSIC is undefined: NaN
        return s / np.sqrt(np.outer(sx, sy)), b / np.sqrt(bx[:, :, None] * by[:, None, :])


@pytest.mark.parametrize("scales", [(1e7, 4e7, 1e7), (1.0, 1e12), (3e-9, 1.0)])
def test_streaming_cka_and_replicates_equal_the_float64_definition_at_any_scale(scales):
    """Batches of other magnitudes (each rescaled by its power of two; reference exponents that grow, sums
    rescaled, later batches below the reference): the streaming CKA and every replicate equal the float64
    definition written here."""
    boot = Bootstrap(6, 8)
    batches = _pair_stack(4, scales)
    weights = [boot.weights(k, 16) for k in range(len(batches))]
    for order in (batches, batches[::-1]):  # the larger batch second (reference grows) and first
        acc = StreamingCKA(bootstrap=6)
        w = weights if order is batches else weights[::-1]
        for (x, y), wk in zip(order, w):
            acc.update(x, y, wk)
        cka, reps = _ref_stream(order, w)
        np.testing.assert_allclose(acc.compute(), cka, rtol=1e-9)
        np.testing.assert_allclose(acc.replicates(), reps, rtol=1e-9)
