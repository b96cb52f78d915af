"""Exact distributed noise (add, then remove): the arithmetic, the expansion, and the noise
actually left in a real secure sum after the release, under dropouts."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.fl_core.dp import (
    DpConfig,
    NoiseSource,
    add_exact_noise,
    effective_noise_multiplier,
    exact_noise_multiplier,
    integer_sensitivity,
    level_fractions,
    released_noise,
    retained_fraction,
)
from secagg.protocols.config import SecAggConfig
from secagg.protocols.harness import run_round

SIGMA = 0.8


def _cfg(threshold: int = 1) -> DpConfig:
    return DpConfig(unit="record", placement="distributed", clip=1.0, noise_multiplier=SIGMA,
                    delta=1e-5, sample_rate=0.05, threshold=threshold, grid_scale=12)


@given(st.integers(1, 60).flatmap(lambda n: st.tuples(st.just(n), st.integers(1, n))))
def test_levels_sum_to_the_threshold_share_and_keep_exactly_one_over_s(nt: tuple[int, int]
                                                                       ) -> None:
    n, t = nt
    fr = level_fractions(n, t)
    assert len(fr) == n - t + 1 and all(f > 0 for f in fr)
    assert math.isclose(math.fsum(fr), 1.0 / t, rel_tol=1e-12)
    for s in range(t, n + 1):  # s survivors keep s/s = exactly sigma^2 in all
        assert math.isclose(s * retained_fraction(n, t, s), 1.0, rel_tol=1e-12)
    # the same in exact rationals (no float coincidence)
    exact = [Fraction(1, n)] + [Fraction(1, n - j) - Fraction(1, n - j + 1)
                                for j in range(1, n - t + 1)]
    assert sum(exact) == Fraction(1, t)
    with pytest.raises(ValueError):
        retained_fraction(n, t, t - 1)


def test_seeded_streams_are_reproducible_and_separated() -> None:
    """Known-answer vector (frozen), determinism, and label separation."""
    s = NoiseSource.from_seed(bytes(range(32)), b"kat")
    assert s.discrete_gaussian(6, 1000.0).tolist() == [870, -37, -684, 450, 1223, -295]
    a = NoiseSource.from_seed(bytes(32), b"level 1").discrete_gaussian(50, 10.0)
    b = NoiseSource.from_seed(bytes(32), b"level 1").discrete_gaussian(50, 10.0)
    c = NoiseSource.from_seed(bytes(32), b"level 2").discrete_gaussian(50, 10.0)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    with pytest.raises(ValueError):
        NoiseSource.from_seed(bytes(31), b"x")
    with pytest.raises(TypeError):
        NoiseSource.from_seed("x" * 32, b"x")  # type: ignore[arg-type]


@pytest.mark.parametrize(("protocol", "n", "drop", "extra_kept"), [
    ("secagg", 5, {}, 0.0),                               # all survive: 5 answer, all levels out
    ("secagg", 5, {"masked_input": [4]}, 0.0),            # s = 4: levels 2.. released
    ("secagg", 5, {"unmask": [3]}, None),                 # 3 in the sum but silent: keeps its own
    ("secagg+", 12, {"masked_input": [1, 7]}, 0.0),       # sparse graph, s = 10
])
def test_the_secure_sum_carries_exactly_sigma_after_the_release(
        protocol: str, n: int, drop: dict[str, list[int]], extra_kept: float | None) -> None:
    """Zero inputs, real SecAgg/SecAgg+ round, real release: the variance of what is left is
    ``sigma^2`` (plus, for a survivor that never answered, its unreleased levels), measured on
    200,000 coordinates (relative error of the variance ~0.3%), against the threshold design's
    ``s sigma^2 / t`` before the release."""
    dim = 200_000
    pc = SecAggConfig(protocol=protocol, n=n, clip=80.0, scale=12, dropout_rate=0.0,
                      corruption_rate=0.0, **({"k": 6} if protocol == "secagg+" else {}))
    t = pc.threshold
    cfg = _cfg()
    src = NoiseSource.for_testing(b"exact")
    inputs, seeds = {}, {}
    for i in range(n):
        inputs[i], seeds[i] = add_exact_noise(np.zeros(dim), cfg, n, t, src)
    res = run_round(pc, inputs, drop=drop, removable=seeds)
    s = len(res.output.included)
    before = float(np.var(res.aggregate))
    assert math.isclose(before, s * SIGMA**2 / t, rel_tol=0.02)
    left = res.aggregate - released_noise(res.released_noise, cfg, n, t, dim)
    want = SIGMA**2
    if extra_kept is None:  # the silent survivor keeps all its levels
        silent = [i for i in res.output.included if i not in res.released_noise]
        assert silent == drop["unmask"]
        want += len(silent) * SIGMA**2 * (1.0 / t - retained_fraction(n, t, s))
    assert math.isclose(float(np.var(left)), want, rel_tol=0.02)
    assert float(np.var(left)) < before or s == t


def test_released_noise_refuses_bad_levels() -> None:
    with pytest.raises(ValueError, match="level"):
        released_noise({1: {0: bytes(32)}}, _cfg(), 5, 3, 4)
    with pytest.raises(ValueError, match="level"):
        released_noise({1: {3: bytes(32)}}, _cfg(), 5, 3, 4)


@settings(max_examples=20, deadline=None)
@given(st.integers(2, 12).flatmap(lambda n: st.tuples(st.just(n), st.integers(2, n))))
def test_the_exact_bound_is_the_threshold_bound_at_t_survivors(nt: tuple[int, int]) -> None:
    """After the release the sum carries sigma^2 whatever the survivors: the zCDP multiplier
    equals KLS21's for exactly t threshold shares (tau underflows at these grids)."""
    n, t = nt
    dim = 10_000
    exact = exact_noise_multiplier(_cfg(), dim, [(n, t)])
    threshold = effective_noise_multiplier(_cfg(threshold=t), dim)
    assert math.isclose(exact, threshold, rel_tol=1e-9)
    # a grid so coarse that the smallest component is under one grid unit: tau no longer
    # vanishes, and the bound must be worse than the tau-free D2/sqrt(S)
    coarse = DpConfig(unit="record", placement="distributed", clip=1.0, noise_multiplier=0.05,
                      delta=1e-5, sample_rate=0.05, threshold=1, grid_scale=4)
    tau_free = (0.05 * 2**4) / integer_sensitivity(coarse, dim)
    got = exact_noise_multiplier(coarse, dim, [(n, t)])
    assert got <= tau_free * (1 + 1e-12)
    if n > t:
        assert got < 0.99 * tau_free
