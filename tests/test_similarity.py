"""Every similarity measure against a float64 formula written here and, where they exist, published values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import rankdata

from clrobust import similarity
from clrobust.errors import ClrobustError


@pytest.fixture
def notebook():
    """Kornblith et al.'s demo data: np.random.seed(1337); X = randn(100, 10); Y = randn(100, 10) + X."""
    np.random.seed(1337)
    x = np.random.randn(100, 10)
    y = np.random.randn(100, 10) + x
    return x, y


@pytest.fixture
def xy():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(60, 12))
    y = np.tanh(x @ rng.normal(size=(12, 9))) + 0.5 * rng.normal(size=(60, 9))
    return x, y


def ref_rbf_cka(x, y, threshold):
    """The demo notebook's gram_rbf and cka, re-typed in float64."""
    def gram(a):
        dots = a @ a.T
        sq = np.diag(dots)
        d2 = -2 * dots + sq[:, None] + sq[None, :]
        return np.exp(-d2 / (2 * threshold ** 2 * np.median(d2)))

    def centre(g):
        means = np.mean(g, 0)
        means -= np.mean(means) / 2
        return g - means[:, None] - means[None, :]

    kx, ky = centre(gram(x)), centre(gram(y))
    return float((kx.ravel() @ ky.ravel()) / (np.linalg.norm(kx) * np.linalg.norm(ky)))


def ref_procrustes(x, y):
    """min over orthogonal Q of ||X - Y Q||_F, with Q = U V' from the SVD of Y'X (X, Y centred, unit norm)."""
    x = x - x.mean(0)
    y = y - y.mean(0)
    x, y = x / np.linalg.norm(x), y / np.linalg.norm(y)
    d = max(x.shape[1], y.shape[1])
    x = np.pad(x, ((0, 0), (0, d - x.shape[1])))
    y = np.pad(y, ((0, 0), (0, d - y.shape[1])))
    u, _, vt = np.linalg.svd(y.T @ x)
    return float(np.linalg.norm(x - y @ (u @ vt)))


def ref_rsa(x, y):
    iu = np.triu_indices(len(x), k=1)
    a, b = (1 - np.corrcoef(x))[iu], (1 - np.corrcoef(y))[iu]
    ra, rb = rankdata(a), rankdata(b)
    return float(np.corrcoef(ra, rb)[0, 1])


def ref_svcca(x, y, variance=0.99):
    """Keep the top singular directions, then CCA as singular values of Sxx^-1/2 Sxy Syy^-1/2."""
    def reduce(a):
        a = a - a.mean(0)
        u, s, vt = np.linalg.svd(a, full_matrices=False)
        k = int(np.searchsorted(np.cumsum(s ** 2) / np.sum(s ** 2), variance - 1e-12)) + 1
        return a @ vt[:k].T

    a, b = reduce(x), reduce(y)

    def inv_sqrt(m):
        w, v = np.linalg.eigh(m)
        return v @ np.diag(w ** -0.5) @ v.T

    m = inv_sqrt(a.T @ a) @ (a.T @ b) @ inv_sqrt(b.T @ b)
    rho = np.linalg.svd(m, compute_uv=False)
    return float(rho[: min(a.shape[1], b.shape[1])].mean())


def test_published_values_of_the_kornblith_demo(notebook):
    x, y = notebook
    assert similarity.compute("linear-cka", x, y) == pytest.approx(0.55761, abs=5e-6)
    assert similarity.compute("linear-cka-unbiased", x, y) == pytest.approx(0.51346, abs=5e-6)
    assert similarity.compute("rbf-cka", x, y, bandwidth=0.5) == pytest.approx(0.65483, abs=5e-6)


@pytest.mark.parametrize("bandwidth", [0.5, 1.0, 2.0])
def test_rbf_cka_matches_the_notebook_formula(xy, bandwidth):
    x, y = xy
    assert similarity.compute("rbf-cka", x, y, bandwidth=bandwidth) == pytest.approx(
        ref_rbf_cka(x, y, bandwidth), abs=1e-8)
    assert similarity.compute("rbf-cka", 1e-120 * x, 1e90 * y, bandwidth=bandwidth) == pytest.approx(
        ref_rbf_cka(x, y, bandwidth), abs=1e-8)  # the median heuristic makes it scale-free


def test_procrustes_matches_the_optimal_rotation(xy):
    x, y = xy
    assert similarity.compute("procrustes", x, y) == pytest.approx(ref_procrustes(x, y), abs=1e-8)
    q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(12, 12)))
    assert similarity.compute("procrustes", x, 3.0 * x @ q + 7.0) == pytest.approx(0.0, abs=1e-6)
    wide = np.random.default_rng(2).normal(size=(30, 400))  # D far above N: the SVD path
    narrow = wide[:, :50] @ np.random.default_rng(3).normal(size=(50, 20))
    assert similarity.compute("procrustes", wide, narrow) == pytest.approx(ref_procrustes(wide, narrow), abs=1e-8)
    assert 0 < similarity.compute("procrustes", x, y) < math.sqrt(2)
    assert not similarity.MEASURES["procrustes"].higher_is_similar


def test_rsa_matches_spearman_of_the_rdms(xy):
    x, y = xy
    assert similarity.compute("rsa", x, y) == pytest.approx(ref_rsa(x, y), abs=1e-8)
    assert similarity.compute("rsa", x, 2 * x + 1) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("variance", [0.99, 0.9, 0.5])
def test_svcca_matches_the_covariance_formula(xy, variance):
    x, y = xy
    assert similarity.compute("svcca", x, y, variance=variance) == pytest.approx(ref_svcca(x, y, variance), abs=1e-8)
    q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(12, 12)))
    assert similarity.compute("svcca", x, x @ q) == pytest.approx(1.0, abs=1e-8)


def test_linear_cka_entries_are_the_cka_module(xy):
    from clrobust.cka import linear_cka

    x, y = xy
    assert similarity.compute("linear-cka", x, y) == linear_cka(x, y)
    assert similarity.compute("linear-cka-unbiased", x, y) == linear_cka(x, y, unbiased=True)


@pytest.mark.parametrize("name", sorted(similarity.MEASURES))
def test_every_measure_refuses_bad_input_by_name(name, xy):
    x, y = xy
    with pytest.raises(ClrobustError, match="12 vs 6 rows|60 vs 6 rows"):
        similarity.compute(name, x, y[:6])
    with pytest.raises(ClrobustError, match="NaN or Inf"):
        similarity.compute(name, np.where(x > 2, np.nan, x), y)
    with pytest.raises(ClrobustError, match="constant|undefined"):
        similarity.compute(name, np.ones_like(x), y)
    same = similarity.compute(name, x, x)
    assert same == pytest.approx(0.0 if name == "procrustes" else 1.0, abs=1e-6)


def test_unknown_measure_and_parameter():
    x = np.random.default_rng(0).normal(size=(10, 3))
    with pytest.raises(ClrobustError, match="unknown measure 'cca'; use one of: linear-cka"):
        similarity.compute("cca", x, x)
    with pytest.raises(ClrobustError, match="rbf-cka: .*unexpected keyword argument 'sigma'"):
        similarity.compute("rbf-cka", x, x, sigma=1.0)
    with pytest.raises(ClrobustError, match="bandwidth must be a finite number above 0"):
        similarity.compute("rbf-cka", x, x, bandwidth=0)
