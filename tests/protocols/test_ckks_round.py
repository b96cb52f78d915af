"""Whole CKKS rounds through the harness: the (weighted) mean for any dropout set, key reuse
across rounds, ckks+mask == ckks, active mode, and the config / context plumbing."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secagg.ckks import PRESETS
from secagg.protocols import (
    ConfigError,
    LocalProtocolError,
    RoundContext,
    SecAggConfig,
    ThresholdError,
    run_round,
)
from secagg.protocols.config import CKKS_MIN_SCALE
from secagg.protocols.harness import STAGES, RoundSimulation
from secagg.protocols.transitions import ClientStage
from tests.protocols.ckks_helpers import ckks_config, keyring
from tests.protocols.helpers import bound, make_config
from tests.protocols.test_round import completes

FEW = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def inputs(n: int, dim: int, seed: int = 0) -> dict[int, Any]:
    gen = np.random.default_rng(seed)
    return {i: gen.uniform(-1.0, 1.0, dim) for i in range(n)}


def weights_for(n: int, seed: int = 0) -> dict[int, float]:
    gen = np.random.default_rng(seed + 1)
    return {i: float(gen.uniform(0.0, 4.0)) for i in range(n)}


def plain_twin(cfg: SecAggConfig) -> SecAggConfig:
    """The plaintext baseline with the same fixed point (the exact reference)."""
    return make_config("plain", n=cfg.n, weighted=cfg.weighted, max_weight=cfg.max_weight,
                       bits=cfg.bits, scale=cfg.scale)


@st.composite
def ckks_cases(draw: st.DrawFn) -> tuple[int, set[int], set[int]]:
    n = draw(st.integers(2, 8))
    ids = st.sets(st.integers(0, n - 1), max_size=n)
    return n, draw(ids), draw(st.sets(st.integers(0, n - 1), max_size=2))


@FEW
@given(ckks_cases())
def test_ckks_weighted_mean_for_any_dropout_set(case: tuple[int, set[int], set[int]]) -> None:
    n, dropped, late = case
    cfg = ckks_config("ckks", n=n, weighted=True, max_weight=4.0)
    xs, ws = inputs(n, 5, seed=n), weights_for(n, seed=n)
    drop = {"masked_input": dropped, "unmask": late - dropped}  # late: upload, then gone
    if dropped == set(range(n)) or late | dropped == set(range(n)):
        with pytest.raises(ThresholdError):
            run_round(cfg, xs, drop, ws, keys=keyring(cfg))
        return
    r = run_round(cfg, xs, drop, ws, keys=keyring(cfg))
    ref = run_round(plain_twin(cfg), xs, {"masked_input": dropped}, ws)
    assert r.included == ref.included == tuple(sorted(set(range(n)) - dropped))
    np.testing.assert_array_equal(r.output.ring, ref.output.ring)  # exact: same fixed point
    truth = sum(ws[i] * xs[i] for i in r.included)
    assert np.max(np.abs(r.aggregate - truth)) <= 4.0 * bound(cfg, len(r.included))
    w = sum(ws[i] for i in r.included)
    assert abs(r.weight_total - w) <= 4.0 * bound(cfg, len(r.included))
    if w > 0.5:
        np.testing.assert_allclose(r.mean, truth / w, atol=1e-3)
    assert not r.client_errors and not r.server_rejections


@st.composite
def mask_cases(draw: st.DrawFn) -> tuple[SecAggConfig, dict[str, set[int]]]:
    n = draw(st.integers(3, 8))
    k = draw(st.sampled_from([*range(2, n - 1, 2), n - 1]))
    t = draw(st.integers((k + 1) // 2 + 1, k + 1))
    cfg = ckks_config("ckks+mask", n=n, k=k, threshold=t, weighted=True, max_weight=4.0,
                      active=draw(st.booleans()))
    few = st.sets(st.integers(0, n - 1), max_size=2)
    return cfg, {s: draw(few) for s in STAGES if draw(st.booleans())}


@FEW
@given(mask_cases())
def test_ckks_mask_for_any_dropout_pattern(case: tuple[SecAggConfig, dict[str, set[int]]]) -> None:
    cfg, drop = case
    xs, ws = inputs(cfg.n, 4, seed=cfg.n), weights_for(cfg.n, seed=cfg.n)
    sim = RoundSimulation(cfg, xs, drop=drop, weights=ws, keys=keyring(cfg))
    try:
        r = sim.run()
    except ThresholdError:
        assert not completes(sim, drop)
        return
    assert completes(sim, drop)
    truth = sum((ws[i] * xs[i] for i in r.included), np.zeros(4))
    assert np.max(np.abs(r.aggregate - truth)) <= 4.0 * bound(cfg, len(r.included))
    gone = {i for s in STAGES[: STAGES.index("masked_input") + 1] for i in drop.get(s, ())}
    assert set(r.included) <= set(range(cfg.n)) - gone
    assert not r.client_errors and not r.server_rejections
    late = set().union(*(drop.get(s, set()) for s in STAGES[STAGES.index("masked_input") + 1 :]))
    for cid, c in sim.clients.items():  # everyone left in the sum decrypted the same
        if cid in r.included and cid not in late:
            assert c.stage is ClientStage.DONE and c.result.included == r.included


def test_ckks_mask_equals_ckks_within_the_fixed_point_bound() -> None:
    n, dim = 6, 300
    xs, ws = inputs(n, dim, seed=3), weights_for(n, seed=3)
    drop = {"masked_input": {2}}
    cfg_c = ckks_config("ckks", n=n, weighted=True, max_weight=4.0)
    cfg_m = ckks_config("ckks+mask", n=n, k=5, threshold=4, weighted=True, max_weight=4.0)
    a = run_round(cfg_c, xs, drop, ws, keys=keyring(cfg_c))
    b = run_round(cfg_m, xs, drop, ws, keys=keyring(cfg_m))
    assert a.included == b.included == (0, 1, 3, 4, 5)
    np.testing.assert_array_equal(a.aggregate, b.aggregate)  # same fixed point, exact sums
    assert a.weight_total == b.weight_total
    truth = sum(ws[i] * xs[i] for i in a.included)
    assert np.max(np.abs(b.aggregate - truth)) <= 4.0 * bound(cfg_m, 5)
    assert b.client_mask_words > 0 and a.client_mask_words == 0


@pytest.mark.parametrize("protocol", ["ckks", "ckks+mask"])
def test_first_round_sets_up_keys_and_later_rounds_reuse_them(protocol: str) -> None:
    cfg = ckks_config(protocol, n=4, k=3, threshold=3) if protocol == "ckks+mask" \
        else ckks_config(protocol, n=4)
    xs = inputs(4, 50)
    r1 = run_round(cfg, xs)
    assert r1.key_setup is not None and r1.keys is not None
    assert set(r1.keys.holders) == {0, 1, 2, 3} and r1.key_setup.leader in range(4)
    r2 = run_round(cfg, xs, round_id=2, keys=r1.keys)
    assert r2.key_setup is None and r2.keys is r1.keys
    np.testing.assert_array_equal(r1.aggregate, r2.aggregate)
    assert r1.bytes_up_per_client > 0 and r1.server_s > 0 and r1.client_s_mean > 0
    with pytest.raises(LocalProtocolError, match="hold no key"):
        run_round(cfg, {i + 10: x for i, x in xs.items()}, keys=r1.keys)


@pytest.mark.parametrize("protocol", ["ckks", "ckks+mask"])
def test_active_mode_round(protocol: str) -> None:
    cfg = ckks_config(protocol, n=4, active=True, **({"k": 3, "threshold": 3}
                                                      if protocol == "ckks+mask" else {}))
    xs = inputs(4, 20)
    r = run_round(cfg, xs, {"masked_input": {1}}, keys=keyring(cfg))
    assert r.included == (0, 2, 3)
    truth = xs[0] + xs[2] + xs[3]
    assert np.max(np.abs(r.aggregate - truth)) <= bound(cfg, 3)


def test_unseeded_uploads_are_twice_the_size_and_sum_alike() -> None:
    seeded, full = (ckks_config("ckks", n=3, ckks_seeded=s) for s in (True, False))
    xs = inputs(3, 5000)
    a = run_round(seeded, xs, keys=keyring(seeded))
    b = run_round(full, xs, keys=keyring(full))
    np.testing.assert_array_equal(a.aggregate, b.aggregate)
    assert 1.8 < b.bytes_up_per_client / a.bytes_up_per_client < 2.2


# -- config and context --------------------------------------------------------------------


def test_ckks_config_defaults_and_overrides() -> None:
    c = SecAggConfig(protocol="ckks", n=20)
    assert (c.k, c.threshold, c.is_ckks, c.is_masked, c.is_secure) == (0, 1, True, False, True)
    assert c.ckks_layout is not None and c.ckks_layout.preset.name == "exact-4096"
    assert c.ckks_value_bits == 16 and c.ckks_layout.n_max == 20  # 2^14 scale, clip 1
    m = SecAggConfig(protocol="ckks+mask", n=20)
    s = SecAggConfig(protocol="secagg+", n=20)
    assert (m.k, m.threshold) == (s.k, s.threshold) and m.is_masked
    assert m.ckks_value_bits == m.bits  # whole masked ring elements
    small = SecAggConfig(protocol="ckks", n=3)
    assert small.ckks_layout is not None and small.ckks_layout.lanes_per_slot == 2
    wide = SecAggConfig(protocol="ckks+mask", n=20, ckks_preset="exact-4096-wide")
    assert wide.ckks_layout is not None and wide.ckks_layout.preset is PRESETS["exact-4096-wide"]
    assert len({c.digest, m.digest, s.digest, wide.digest}) == 4
    assert SecAggConfig(protocol="ckks", n=20, ckks_seeded=False).digest != c.digest
    old_size = len(b"secagg/config/v1") + 1 + len(b"secagg+") + struct.calcsize(">IIIIId??dddIIB")
    assert s.ckks_layout is None and len(s.to_bytes()) == old_size  # SecAgg digests unchanged


def test_ckks_default_scale_trades_fractional_bits_for_two_lanes() -> None:
    c = SecAggConfig(protocol="ckks", n=20)
    assert c.ckks_layout is not None
    assert (c.scale, c.ckks_layout.preset.name, c.ckks_layout.lanes_per_slot) == (
        14, "exact-4096", 2)
    assert c.scale >= CKKS_MIN_SCALE
    # An explicit scale is kept. At 16 exact-4096 fits one lane; at 15 only the wide preset
    # (1.5x the bytes per slot) fits two: 14 is the largest scale with two cheap lanes.
    s16 = SecAggConfig(protocol="ckks", n=20, scale=16)
    assert s16.scale == 16 and s16.ckks_layout is not None
    assert s16.ckks_layout.lanes_per_slot == 1
    s15 = SecAggConfig(protocol="ckks", n=20, scale=15)
    assert s15.scale == 15 and s15.ckks_layout is not None
    assert s15.ckks_layout.preset.name == "exact-4096-wide"
    fixed = SecAggConfig(protocol="ckks", n=20, bits=22)  # explicit bits fix the scale too
    assert fixed.scale == 16
    # ckks+mask lanes carry whole ring elements: no scale >= 12 gives them a second lane.
    assert SecAggConfig(protocol="ckks+mask", n=20).scale == 16
    # A given preset is packed as densely as it can be: the wide one takes two lanes at 15.
    wide = SecAggConfig(protocol="ckks", n=20, ckks_preset="exact-4096-wide")
    assert wide.scale == 15 and wide.ckks_layout is not None
    assert wide.ckks_layout.lanes_per_slot == 2
    # Where 16 already packs the most lanes, the default stays 16.
    assert SecAggConfig(protocol="ckks", n=6).scale == 16


def test_default_ckks_round_at_n20_packs_two_lanes_within_the_fixed_point_bound() -> None:
    n, dim = 20, 8190  # two ciphertexts of 2 x 2048 values, the last lane padded
    cfg = ckks_config("ckks", n=n)
    assert cfg.ckks_layout is not None and cfg.ckks_layout.lanes_per_slot == 2
    xs = inputs(n, dim, seed=20)
    xs[0][:3] = (-1.0, 1.0, 0.0)  # the clip bounds travel too
    r = run_round(cfg, xs, {"masked_input": {7}}, keys=keyring(cfg))
    assert r.included == tuple(i for i in range(n) if i != 7)
    truth = sum(xs[i] for i in r.included)
    assert np.max(np.abs(r.aggregate - truth)) <= bound(cfg, len(r.included))
    ref = run_round(plain_twin(cfg), xs, {"masked_input": {7}})
    np.testing.assert_array_equal(r.output.ring, ref.output.ring)  # exact integer sums
    assert r.bytes_up_per_client < 8.5 * dim  # two values per slot: about 8 bytes per value


@pytest.mark.parametrize(("kw", "match"), [
    ({"protocol": "ckks", "ckks_preset": "nope"}, "unknown ckks_preset"),
    ({"protocol": "ckks", "ckks_preset": "float-4096"}, "float preset"),
    ({"protocol": "secagg", "ckks_preset": "exact-4096"}, "CKKS protocols only"),
    ({"protocol": "secagg", "ckks_seeded": False}, "CKKS protocols only"),
    ({"protocol": "ckks", "k": 2}, "no neighbour graph"),
    ({"protocol": "ckks", "threshold": 0}, "threshold"),
    ({"protocol": "ckks+mask", "bits": 32, "n": 2**14}, "CKKS layout"),
])
def test_ckks_config_errors(kw: dict[str, Any], match: str) -> None:
    kw.setdefault("n", 8)
    with pytest.raises(ConfigError, match=match):
        SecAggConfig(**kw)
    with pytest.raises(TypeError):
        SecAggConfig(protocol="ckks", n=4, ckks_preset=4)  # type: ignore[arg-type]


def test_round_context_binds_the_ckks_fingerprint() -> None:
    cfg = ckks_config("ckks", n=3)
    kw: dict[str, Any] = {"config": cfg, "round_id": 1, "dim": 4, "client_ids": range(3)}
    with pytest.raises(ConfigError):
        RoundContext(**kw)
    with pytest.raises(ConfigError):
        RoundContext(**kw, ckks_fingerprint=bytes(31))
    with pytest.raises(ConfigError):
        RoundContext(**{**kw, "config": make_config("secagg", n=3)}, ckks_fingerprint=bytes(32))
    a = RoundContext(**kw, ckks_fingerprint=bytes(32))
    b = RoundContext(**kw, ckks_fingerprint=b"\x01" * 32)
    assert a.digest != b.digest and a.ckks_fingerprint == bytes(32)
    with pytest.raises(ConfigError):
        _ = RoundContext(**{**kw, "config": make_config("secagg", n=3)}).ckks_fingerprint
