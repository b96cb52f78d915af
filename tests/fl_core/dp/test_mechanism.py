"""Clipping, local Gaussian noise, distributed discrete Gaussian shares, effective sigma."""

from __future__ import annotations

import math

import numpy as np
import pytest

from secagg.fl_core.dp import (
    DpConfig,
    DpConfigError,
    NoiseSource,
    Placement,
    Unit,
    add_distributed_noise,
    add_local_noise,
    clip_l2,
    effective_noise_multiplier,
    grid_unit,
    integer_sensitivity,
    tail_probability,
)


def _cfg(placement: Placement = Placement.DISTRIBUTED, **kw: object) -> DpConfig:
    base: dict[str, object] = dict(
        unit=Unit.CLIENT,
        placement=placement,
        clip=1.0,
        noise_multiplier=1.0,
        delta=1e-5,
        sample_rate=1.0,
    )
    base.update(kw)
    return DpConfig(**base)  # type: ignore[arg-type]


def test_clip_l2_scales_only_large_vectors_and_copies() -> None:
    v = np.array([3.0, 4.0], dtype=np.float32)
    out, norm = clip_l2(v, 1.0)
    assert norm == pytest.approx(5.0)
    assert np.linalg.norm(out) == pytest.approx(1.0, rel=1e-12)
    assert np.allclose(out, [0.6, 0.8]) and v[0] == 3.0 and out.dtype == np.float64
    small, n2 = clip_l2(np.array([0.1, 0.2]), 1.0)
    assert np.array_equal(small, [0.1, 0.2]) and n2 == pytest.approx(math.sqrt(0.05))
    zero, n0 = clip_l2(np.zeros(3), 1.0)
    assert n0 == 0.0 and not zero.any()
    with pytest.raises(ValueError):
        clip_l2(np.array([np.nan]), 1.0)
    with pytest.raises(ValueError):
        clip_l2(np.ones(2), 0.0)


def test_local_noise_std_is_sigma_times_clip() -> None:
    cfg = _cfg(Placement.LOCAL, clip=0.5, noise_multiplier=2.0)
    out = add_local_noise(np.zeros(100_000), cfg, NoiseSource.for_testing(b"local"))
    assert out.std() == pytest.approx(1.0, rel=0.02)
    assert cfg.share_std() == 1.0


@pytest.mark.parametrize("clip", [1.0, 0.7])
def test_distributed_output_is_on_the_grid(clip: float) -> None:
    cfg = _cfg(clip=clip, threshold=3)
    u = grid_unit(cfg)
    assert u == clip * 2.0**-14
    vec, _ = clip_l2(NoiseSource.for_testing(b"v").gaussian(5000, 1.0), clip)
    out = add_distributed_noise(vec, cfg, NoiseSource.for_testing(b"d"))
    k = out / u
    if clip == 1.0:  # power-of-two unit: exact
        assert np.array_equal(k, np.rint(k))
    assert np.max(np.abs(k - np.rint(k))) < 1e-6  # a 1/u fixed-point encoder re-encodes exactly
    noise = out - vec
    assert noise.std() == pytest.approx(cfg.share_std(), rel=0.05)


def test_sum_of_threshold_shares_has_full_variance() -> None:
    t, dim = 4, 50_000
    cfg = _cfg(clip=1.0, noise_multiplier=1.3, threshold=t, grid_scale=6)
    src = NoiseSource.for_testing(b"shares")
    total = sum(add_distributed_noise(np.zeros(dim), cfg, src) for _ in range(t))
    assert isinstance(total, np.ndarray)
    # std of a sample std is std/sqrt(2 dim) = 0.3%: 2% is a > 6 sd margin
    assert total.std() == pytest.approx(1.3, rel=0.02)
    assert abs(total.mean()) < 5 * 1.3 / math.sqrt(dim)
    # one share alone is far too little noise
    assert cfg.share_std() == pytest.approx(1.3 / 2)


def test_effective_noise_multiplier_matches_rounding_loss() -> None:
    dim = 10_000
    for unit, slack in ((Unit.CLIENT, math.sqrt(dim) / 2), (Unit.RECORD, math.sqrt(dim))):
        for scale in (14, 20):
            cfg = _cfg(unit=unit, noise_multiplier=0.8, threshold=5, grid_scale=scale)
            expect = 0.8 * 2.0**scale / (2.0**scale + slack)
            assert integer_sensitivity(cfg, dim) == 2.0**scale + slack
            assert effective_noise_multiplier(cfg, dim) == pytest.approx(expect, rel=1e-9)
            assert effective_noise_multiplier(cfg, dim) < 0.8
    assert effective_noise_multiplier(_cfg(Placement.LOCAL, noise_multiplier=0.8), dim) == 0.8


def test_effective_noise_multiplier_pays_for_tau_at_tiny_shares() -> None:
    # share sigma ~0.58 grid units: tau is no longer negligible and must lower sigma_eff
    cfg = _cfg(noise_multiplier=0.5, threshold=3, grid_scale=1)
    no_tau = 0.5 * 2.0 / (2.0 + math.sqrt(10) / 2)
    assert effective_noise_multiplier(cfg, 10) < 0.99 * no_tau
    with pytest.raises(DpConfigError, match="below 1/2"):
        _cfg(noise_multiplier=0.1, threshold=3, grid_scale=1)


def test_tail_probability_bounds_empirical_tail() -> None:
    for placement in (Placement.LOCAL, Placement.DISTRIBUTED):
        cfg = _cfg(placement, threshold=2, grid_scale=8)
        std = cfg.share_std()
        assert tail_probability(cfg, 10, 0.0) == 1.0
        probs = [tail_probability(cfg, 1000, b * std) for b in (2, 4, 6, 8)]
        assert probs == sorted(probs, reverse=True)
        assert tail_probability(cfg, 10**6, 12 * std) < 1e-20
        src = NoiseSource.for_testing(b"tail")
        noise = (
            add_local_noise(np.zeros(100_000), cfg, src)
            if placement is Placement.LOCAL
            else add_distributed_noise(np.zeros(100_000), cfg, src)
        )
        bound = 2.5 * std
        assert float(np.mean(np.abs(noise) > bound)) <= tail_probability(cfg, 1, bound)
    with pytest.raises(ValueError):
        tail_probability(_cfg(), 0, 1.0)


def test_distributed_rejects_bad_input() -> None:
    cfg = _cfg()
    with pytest.raises(ValueError, match="1-D"):
        add_distributed_noise(np.zeros((2, 2)), cfg, NoiseSource())
    with pytest.raises(ValueError, match="too large"):
        add_distributed_noise(np.array([1e30]), cfg, NoiseSource())


def test_distributed_noise_is_sqrt_n_smaller_in_the_mean_at_same_privacy() -> None:
    n, dim, sigma = 8, 20_000, 1.0
    local = _cfg(Placement.LOCAL, unit=Unit.RECORD, noise_multiplier=sigma)
    dist = _cfg(Placement.DISTRIBUTED, unit=Unit.RECORD, noise_multiplier=sigma, threshold=n)
    # same accounting input (to within the grid's rounding slack) ...
    assert effective_noise_multiplier(dist, dim) == pytest.approx(sigma, rel=0.01)
    src = NoiseSource.for_testing(b"sqrt-n")
    zero = np.zeros(dim)
    mean_local = sum(add_local_noise(zero, local, src) for _ in range(n)) / n
    mean_dist = sum(add_distributed_noise(zero, dist, src) for _ in range(n)) / n
    assert isinstance(mean_local, np.ndarray) and isinstance(mean_dist, np.ndarray)
    # ... but the noise in the mean of n updates is sigma*C/sqrt(n) (local) vs sigma*C/n
    assert mean_local.std() == pytest.approx(sigma / math.sqrt(n), rel=0.03)
    assert mean_dist.std() == pytest.approx(sigma / n, rel=0.03)
    assert mean_local.std() / mean_dist.std() == pytest.approx(math.sqrt(n), rel=0.05)
