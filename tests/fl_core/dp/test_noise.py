"""The CSPRNG noise sources: distributions checked against exact laws, reproducibility."""

from __future__ import annotations

import ast
import math
import pathlib

import numpy as np
import pytest
from scipy import stats  # type: ignore[import-untyped]

from secagg.fl_core.dp.noise import NoiseSource

N = 200_000


def _pmf(sigma: float, support: np.ndarray) -> np.ndarray:
    """Exact discrete Gaussian pmf exp(-x^2/2s^2)/Z, Z summed far into the tails."""
    wide = np.arange(-int(60 * sigma) - 60, int(60 * sigma) + 61)
    z = np.exp(-(wide.astype(np.float64) ** 2) / (2 * sigma**2)).sum()
    out: np.ndarray = np.exp(-(support.astype(np.float64) ** 2) / (2 * sigma**2)) / z
    return out


def _exact_variance(sigma: float) -> float:
    if sigma > 20:  # N_Z(0, s^2) has variance s^2 up to ~exp(-2 pi^2 s^2)
        return sigma**2
    wide = np.arange(-int(60 * sigma) - 60, int(60 * sigma) + 61)
    return float((_pmf(sigma, wide) * wide.astype(np.float64) ** 2).sum())


@pytest.mark.parametrize("sigma", [0.5, 3.0, 1000.0, 40000.0])
def test_discrete_gaussian_mean_and_variance(sigma: float) -> None:
    x = NoiseSource.for_testing(b"dg-%f" % sigma).discrete_gaussian(N, sigma)
    assert x.dtype == np.int64 and x.shape == (N,)
    var = _exact_variance(sigma)
    assert abs(x.mean()) < 5 * math.sqrt(var / N)
    # sample variance of a near-Gaussian law has std var*sqrt(2/N)
    assert abs(x.var() - var) < 5 * var * math.sqrt(2.0 / N)


def test_discrete_gaussian_small_sigma_is_not_continuous_variance() -> None:
    # at sigma=0.5 the discrete law's variance is clearly below sigma^2: the test above has power
    assert _exact_variance(0.5) < 0.9 * 0.25


def _chi2_pvalue(x: np.ndarray, sigma: float, edge: int = 12) -> float:
    support = np.arange(-edge, edge + 1)
    counts = np.array([(x == k).sum() for k in support], dtype=np.float64)
    probs = _pmf(sigma, support)
    tails = 1.0 - probs.sum()
    counts = np.append(counts, (np.abs(x) > edge).sum())
    expected = np.append(probs, tails) * x.size
    keep = expected > 5
    observed, expected = counts[keep], expected[keep]  # rare cells merged into one below
    if not keep.all():
        observed = np.append(observed, counts[~keep].sum())
        expected = np.append(expected, (np.append(probs, tails) * x.size)[~keep].sum())
    expected *= observed.sum() / expected.sum()
    return float(stats.chisquare(observed, expected).pvalue)


def test_discrete_gaussian_chi_square_against_exact_pmf() -> None:
    x = NoiseSource.for_testing(b"chi2").discrete_gaussian(N, 3.0)
    assert _chi2_pvalue(x, 3.0) > 1e-3
    # power: the same sample is rejected against a 5% wider law
    assert _chi2_pvalue(x, 3.15) < 1e-6


def test_gaussian_moments_and_ks() -> None:
    z = NoiseSource.for_testing(b"gauss").gaussian(N + 1, 2.5)
    assert z.shape == (N + 1,)
    assert abs(z.mean()) < 5 * 2.5 / math.sqrt(N)
    assert abs(z.var() - 6.25) < 5 * 6.25 * math.sqrt(2.0 / N)
    assert stats.kstest(z / 2.5, "norm").pvalue > 1e-3


def test_uniform_open_interval_and_ks() -> None:
    u = NoiseSource.for_testing(b"unif").uniform(N)
    assert u.min() > 0.0 and u.max() < 1.0
    assert stats.kstest(u, "uniform").pvalue > 1e-3


def test_for_testing_reproducible_and_fresh_sources_differ() -> None:
    a = NoiseSource.for_testing(b"seed").discrete_gaussian(1000, 10.0)
    b = NoiseSource.for_testing(b"seed").discrete_gaussian(1000, 10.0)
    c = NoiseSource.for_testing(b"other").discrete_gaussian(1000, 10.0)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert not np.array_equal(NoiseSource().uniform(16), NoiseSource().uniform(16))


def test_poisson_mask_rate() -> None:
    mask = NoiseSource.for_testing(b"poisson").poisson_mask(N, 0.1)
    assert mask.dtype == np.bool_
    assert abs(mask.sum() - 0.1 * N) < 5 * math.sqrt(N * 0.1 * 0.9)
    assert not NoiseSource().poisson_mask(100, 0.0).any()
    assert NoiseSource().poisson_mask(100, 1.0).all()


def test_argument_validation() -> None:
    src = NoiseSource()
    with pytest.raises(ValueError, match="n must be"):
        src.uniform(-1)
    with pytest.raises(TypeError):
        src.gaussian(3.0, 1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sigma"):
        src.discrete_gaussian(3, float("nan"))
    with pytest.raises(ValueError, match="rate"):
        src.poisson_mask(3, 1.5)
    with pytest.raises(TypeError):
        NoiseSource.for_testing("seed")  # type: ignore[arg-type]
    assert not src.discrete_gaussian(5, 0.0).any()


def test_dp_package_uses_no_predictable_generator() -> None:
    root = pathlib.Path(__file__).resolve().parents[3] / "fl_core" / "dp"
    sources = list(root.glob("*.py"))
    assert len(sources) >= 5
    banned_modules = {"random", "numpy.random", "torch", "secrets"}
    for path in sources:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                names = {node.module or ""} | {f"{node.module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Attribute):
                names = {"numpy.random"} if node.attr in ("random", "urandom") else set()
            else:
                continue
            assert not names & (banned_modules | {"os.urandom", "numpy.random"}), path.name
