"""SecAggConfig: derivation of k, t, bits and scale; validation; the digest."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.fixedpoint import FixedPointConfig, Rounding
from secagg.protocols import ConfigError, ProtocolKind, SecAggConfig
from secagg.protocols.params import _upper_quantile, graph_parameters, min_threshold


def test_issue_example_and_strings() -> None:
    cfg = SecAggConfig(protocol="secagg+", n=20, threshold=11)
    assert cfg.protocol is ProtocolKind.SECAGG_PLUS
    assert cfg.threshold == 11
    assert 2 * cfg.threshold > cfg.k + 1  # no split of any client's two secrets
    assert cfg.k % 2 == 0 or cfg.k == cfg.n - 1


@pytest.mark.parametrize("n", [2, 3, 4, 5, 10, 20, 21, 100])
def test_secagg_defaults_are_bonawitz(n: int) -> None:
    cfg = SecAggConfig(protocol="secagg", n=n, corruption_rate=0.0)
    assert cfg.k == n - 1
    assert cfg.threshold == n // 2 + 1


def test_secagg_threshold_accounts_for_corruption() -> None:
    cfg = SecAggConfig(protocol="secagg", n=100, corruption_rate=0.05)
    assert cfg.threshold >= (100 + 5) // 2 + 1


@pytest.mark.parametrize("n", [10, 20, 50, 100, 200, 500, 1000])
def test_secagg_plus_default_meets_the_rule(n: int) -> None:
    cfg = SecAggConfig(protocol="secagg+", n=n)
    k, t = cfg.k, cfg.threshold
    assert k == n - 1 or (k % 2 == 0 and 2 <= k <= n - 2)
    assert min_threshold(k) <= t <= k + 1
    corrupt = math.ceil(cfg.corruption_rate * n)
    dropped = math.ceil(cfg.dropout_rate * n)
    # (2) no split, except with probability 2^-sigma per client
    assert 2 * t - k - 1 >= _upper_quantile(n - 1, corrupt, k, 2.0**-cfg.sigma / n)
    if k < n - 1:  # (3) enough surviving neighbours w.h.p.
        assert _upper_quantile(n - 1, dropped, k, 2.0**-cfg.eta / n) <= k - t + 1


def test_secagg_plus_is_sparse_at_scale() -> None:
    cfg = SecAggConfig(protocol="secagg+", n=1000)
    assert cfg.k < 150 and cfg.threshold < cfg.k
    assert SecAggConfig(protocol="secagg+", n=1000, dropout_rate=0.3).k > cfg.k


def test_upper_quantile_exact_small_case() -> None:
    # Hypergeometric(pop=4, succ=2, draws=2): P[X=2] = 1/6, P[X>=1] = 5/6.
    assert _upper_quantile(4, 2, 2, 0.2) == 2
    assert _upper_quantile(4, 2, 2, 0.1) == 3
    assert _upper_quantile(4, 2, 2, 0.9) == 1


@pytest.mark.parametrize(
    "kw",
    [
        {"protocol": "secagg", "n": 10, "k": 4},
        {"protocol": "secagg+", "n": 20, "k": 5},  # odd sparse degree
        {"protocol": "secagg+", "n": 20, "k": 6, "threshold": 4},  # 2t <= k + 1
        {"protocol": "secagg+", "n": 20, "k": 6, "threshold": 8},  # more than k + 1 holders
        {"protocol": "secagg", "n": 10, "threshold": 5},
        {"protocol": "secagg", "n": 1},
        {"protocol": "nope", "n": 3},
        {"protocol": "secagg", "n": 4, "clip": 0.0},
        {"protocol": "secagg", "n": 4, "clip": float("nan")},
        {"protocol": "secagg", "n": 4, "dropout_rate": 1.0},
        {"protocol": "secagg", "n": 4, "bits": 12, "scale": 16},  # overflow by design
        {"protocol": "secagg", "n": 4, "bits": 40},
        {"protocol": "plain", "n": 4, "active": True},
        {"protocol": "plain", "n": 4, "threshold": 3},
    ],
)
def test_rejects_unsafe_or_inconsistent(kw: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        SecAggConfig(**kw)  # type: ignore[arg-type]


def test_sparse_k_must_keep_the_graph_connected() -> None:
    with pytest.raises(ConfigError, match="disconnected"):
        SecAggConfig(protocol="secagg+", n=1000, k=4, dropout_rate=0.3)


@pytest.mark.parametrize("kw", [{"n": "4"}, {"n": 4, "active": 1}, {"n": 4, "clip": "1"},
                                {"n": 4, "rounding": "nearest"}, {"n": True}])
def test_type_errors(kw: dict[str, object]) -> None:
    with pytest.raises(TypeError):
        SecAggConfig(protocol="secagg", **kw)  # type: ignore[arg-type]


def test_keyword_only_and_frozen() -> None:
    with pytest.raises(TypeError):
        SecAggConfig("secagg", 4)  # type: ignore[misc]
    cfg = SecAggConfig(protocol="secagg", n=4)
    with pytest.raises(AttributeError):
        cfg.n = 5  # type: ignore[misc]


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 5000), clip=st.floats(1e-3, 1e3), scale=st.none() | st.integers(0, 20),
       bits=st.none() | st.integers(8, 32))
def test_fixed_point_never_overflows(n: int, clip: float, scale: int | None,
                                     bits: int | None) -> None:
    try:
        cfg = SecAggConfig(protocol="plain", n=n, clip=clip, scale=scale, bits=bits)
    except ConfigError:
        assert bits is not None or scale is not None
        return
    fp = cfg.fixed_point
    assert fp == FixedPointConfig(bits=cfg.bits, scale=cfg.scale, clip=clip, n_max=n)
    assert 2 * n * math.ceil(clip * 2**cfg.scale) < 2**cfg.bits <= 2**32
    if scale is None and bits is None:
        assert cfg.scale == min(16, cfg.scale) and cfg.bits == max(
            8, FixedPointConfig.minimal_bits(n_max=n, clip=clip, scale=cfg.scale))


def test_default_admits_unit_range() -> None:
    for proto in ("plain", "secagg", "secagg+"):
        cfg = SecAggConfig(protocol=proto, n=1000)
        assert cfg.clip >= 1.0 and cfg.scale >= 12


def test_digest_binds_every_field() -> None:
    base = SecAggConfig(protocol="secagg", n=10)
    variants = [
        SecAggConfig(protocol="secagg+", n=10, k=9),
        SecAggConfig(protocol="secagg", n=11),
        SecAggConfig(protocol="secagg", n=10, threshold=7),
        SecAggConfig(protocol="secagg", n=10, bits=31),
        SecAggConfig(protocol="secagg", n=10, scale=15),
        SecAggConfig(protocol="secagg", n=10, clip=2.0),
        SecAggConfig(protocol="secagg", n=10, active=True),
        SecAggConfig(protocol="secagg", n=10, weighted=True),
        SecAggConfig(protocol="secagg", n=10, max_weight=2.0),
        SecAggConfig(protocol="secagg", n=10, rounding=Rounding.STOCHASTIC),
        SecAggConfig(protocol="secagg", n=10, sigma=41),
    ]
    digests = {base.digest, *(v.digest for v in variants)}
    assert len(digests) == len(variants) + 1
    assert base.digest == SecAggConfig(protocol="secagg", n=10).digest


@settings(max_examples=40, deadline=None)
@given(n=st.integers(3, 60), data=st.data())
def test_user_k_and_t_are_checked_not_changed(n: int, data: st.DataObject) -> None:
    k = data.draw(st.sampled_from([*range(2, n - 1, 2), n - 1]))
    t = data.draw(st.integers(min_threshold(k), k + 1))
    assert graph_parameters(n, corruption_rate=0.0, dropout_rate=0.0, sigma=40, eta=30,
                            k=k, t=t) == (k, t)
