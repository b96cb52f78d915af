"""Tests for secagg.fixedpoint: the overflow validator, encode/decode error bounds, clipping
reports, non-finite rejection, stochastic rounding and argument checking."""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from secagg import fixedpoint as fp
from secagg.errors import RangeError
from secagg.fixedpoint import ClipReport, FixedPointConfig, Rounding, decode_sum, encode

CFG = FixedPointConfig(bits=20, scale=10, clip=1.0, n_max=100)


def _ring_sum(encodings: list[np.ndarray], bits: int) -> np.ndarray:
    total = np.zeros_like(encodings[0], dtype=np.uint64)
    for e in encodings:
        total += e
    return (total % (1 << bits)).astype(np.uint32)


# ---------------------------------------------------------------- config validation


def test_config_fields_and_resolution() -> None:
    assert CFG.resolution == 2.0**-10
    assert FixedPointConfig(bits=8, scale=0, clip=1.0, n_max=1).resolution == 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        CFG.bits = 32  # type: ignore[misc]
    with pytest.raises(TypeError):
        FixedPointConfig(20, 10, 1.0, 100)  # type: ignore[call-arg]  # keyword-only
    with pytest.raises(TypeError):
        FixedPointConfig(bits=20, scale=10, clip=1.0)  # type: ignore[call-arg]  # no defaults


def test_config_rejects_overflow_and_names_minimal_bits() -> None:
    need = FixedPointConfig.minimal_bits(n_max=100, clip=1.0, scale=10)
    assert need == 18  # 2 * 100 * 1024 = 204800 < 2^18
    with pytest.raises(RangeError, match=r"minimal_bits\(.*\) = 18") as info:
        FixedPointConfig(bits=17, scale=10, clip=1.0, n_max=100)
    assert isinstance(info.value, ValueError)
    FixedPointConfig(bits=18, scale=10, clip=1.0, n_max=100)


def test_config_beyond_32_bits_explains() -> None:
    with pytest.raises(RangeError, match="more than 32"):
        FixedPointConfig(bits=32, scale=24, clip=100.0, n_max=1000)


def test_boundary_is_tight_at_exact_power_of_two() -> None:
    # 2 * n_max * clip * 2^scale == 2^bits exactly: the sum n_max * clip * 2^scale = 2^(bits-1)
    # would wrap to the most negative value, so it must be refused.
    with pytest.raises(RangeError):
        FixedPointConfig(bits=16, scale=8, clip=1.0, n_max=128)
    FixedPointConfig(bits=17, scale=8, clip=1.0, n_max=128)


def test_non_dyadic_clip_accounts_for_rounding_up() -> None:
    # n * 2 * clip * 2^scale = 255 < 2^8, yet 127.5 rounds to 128 = -128 in 8 bits.
    with pytest.raises(RangeError, match="= 9"):
        FixedPointConfig(bits=8, scale=0, clip=127.5, n_max=1)
    cfg = FixedPointConfig(bits=9, scale=0, clip=127.5, n_max=1)
    e, _ = encode(np.array([127.5, -127.5]), cfg, rounding=Rounding.NEAREST)
    np.testing.assert_array_equal(decode_sum(e, cfg, n=1), [128.0, -128.0])
    seen = set()
    for _ in range(40):
        e, _ = encode(np.array([127.5, -127.5]), cfg, rounding=Rounding.STOCHASTIC)
        hi, lo = decode_sum(e, cfg, n=1).tolist()
        assert hi in (127.0, 128.0) and lo in (-127.0, -128.0)
        seen.add(hi)
    assert seen == {127.0, 128.0}  # the upper neighbour does occur: 9 bits were needed


def test_float32_clip_bound_is_not_rounded_up() -> None:
    # 0.1 is not a float32; float32(0.1) > 0.1 must count as clipped, and decode to 0.1.
    cfg = FixedPointConfig(bits=32, scale=28, clip=0.1, n_max=4)
    x = np.array([np.float32(0.1), -np.float32(0.1), np.nextafter(np.float32(0.1), 0)])
    e, report = encode(x.astype(np.float32), cfg, rounding=Rounding.NEAREST)
    assert report.n_clipped == 2
    got = decode_sum(e, cfg, n=1)
    assert got[0] == round(0.1 * 2**28) / 2**28 and got[1] == -got[0]
    assert got[2] < got[0]


@settings(max_examples=200, deadline=None)
@given(
    n_max=st.integers(1, 10_000),
    clip=st.floats(1e-3, 1e3, allow_nan=False, allow_infinity=False),
    scale=st.integers(0, 20),
)
def test_minimal_bits_is_minimal_and_sufficient(n_max: int, clip: float, scale: int) -> None:
    b = FixedPointConfig.minimal_bits(n_max=n_max, clip=clip, scale=scale)
    worst = n_max * math.ceil(clip * 2**scale)  # largest |sum| of rounded encodings
    assert 2 * worst < 2**b  # fits the signed range of b bits
    assert b == 1 or 2 * worst >= 2 ** (b - 1)  # and b - 1 would not do
    if 8 <= b <= 32:
        FixedPointConfig(bits=b, scale=scale, clip=clip, n_max=n_max)
    if 9 <= b <= 33:
        with pytest.raises(RangeError, match=f"= {b} bits"):
            FixedPointConfig(bits=b - 1, scale=scale, clip=clip, n_max=n_max)


@pytest.mark.parametrize(
    ("kwargs", "exc", "name"),
    [
        ({"bits": 7}, ValueError, "bits"),
        ({"bits": 33}, ValueError, "bits"),
        ({"bits": 20.0}, TypeError, "bits"),
        ({"bits": True}, TypeError, "bits"),
        ({"scale": -1}, ValueError, "scale"),
        ({"scale": "10"}, TypeError, "scale"),
        ({"clip": 0.0}, ValueError, "clip"),
        ({"clip": -1.0}, ValueError, "clip"),
        ({"clip": float("nan")}, ValueError, "clip"),
        ({"clip": float("inf")}, ValueError, "clip"),
        ({"clip": "1.0"}, TypeError, "clip"),
        ({"clip": True}, TypeError, "clip"),
        ({"n_max": 0}, ValueError, "n_max"),
        ({"n_max": 2.0}, TypeError, "n_max"),
    ],
)
def test_config_argument_checks(kwargs: dict[str, object], exc: type[Exception], name: str) -> None:
    args: dict[str, object] = {"bits": 20, "scale": 10, "clip": 1.0, "n_max": 100, **kwargs}
    with pytest.raises(exc, match=name):
        FixedPointConfig(**args)  # type: ignore[arg-type]


def test_minimal_bits_argument_checks() -> None:
    with pytest.raises(TypeError, match="n_max"):
        FixedPointConfig.minimal_bits(n_max="1", clip=1.0, scale=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="clip"):
        FixedPointConfig.minimal_bits(n_max=1, clip=float("nan"), scale=0)
    with pytest.raises(ValueError, match="scale"):
        FixedPointConfig.minimal_bits(n_max=1, clip=1.0, scale=-2)


def test_int_clip_is_normalised_to_float() -> None:
    cfg = FixedPointConfig(bits=20, scale=10, clip=1, n_max=100)
    assert isinstance(cfg.clip, float) and cfg == CFG


# ---------------------------------------------------------------- encode / decode


@settings(max_examples=100, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 8),
    dim=st.integers(1, 200),
    scale=st.integers(0, 20),
    clip=st.sampled_from([0.5, 1.0, 3.0, 0.1, 1e-3, 17.25]),
    rounding=st.sampled_from(list(Rounding)),
    dtype=st.sampled_from([np.float32, np.float64]),
    edges=st.booleans(),
)
def test_encode_sum_decode_error_bound(
    seed: int,
    n: int,
    dim: int,
    scale: int,
    clip: float,
    rounding: Rounding,
    dtype: type[np.floating],
    edges: bool,
) -> None:
    bits = FixedPointConfig.minimal_bits(n_max=n, clip=clip, scale=scale)
    assume(bits <= 32)
    cfg = FixedPointConfig(bits=max(bits, 8), scale=scale, clip=clip, n_max=n)
    gen = np.random.default_rng(seed)  # test data only; the library never uses numpy.random
    xs = [gen.uniform(-clip, clip, dim).astype(dtype) for _ in range(n)]
    if edges:  # the clip bound itself, and values straddling half units
        for x in xs:
            x[: min(dim, 4)] = np.array([clip, -clip, 0.5 * 2.0**-scale, -1.5 * 2.0**-scale])[
                : min(dim, 4)
            ]
    encodings = []
    for x in xs:
        e, report = encode(x, cfg, rounding=rounding)
        assert e.dtype == np.uint32 and e.shape == (dim,)
        assert int(e.max()) < (1 << cfg.bits)
        wide = np.abs(x.astype(np.float64))
        assert report.n_clipped == int(np.count_nonzero(wide > clip))  # float32(clip) may be
        assert report.max_abs == float(wide.max())  # just above clip: that counts as clipped
        encodings.append(e)
    got = decode_sum(_ring_sum(encodings, cfg.bits), cfg, n=n)
    want = np.sum([np.clip(x.astype(np.float64), -clip, clip) for x in xs], axis=0)
    unit = 2.0**-scale
    bound = n * (unit / 2 if rounding is Rounding.NEAREST else unit)
    assert np.all(np.abs(got - want) <= bound * (1 + 1e-9))


def test_encode_known_values_and_twos_complement() -> None:
    x = np.array([0.0, 0.5, -0.5, 1.0, -1.0, 2.0**-10, -(2.0**-10)], dtype=np.float64)
    e, report = encode(x, CFG, rounding=Rounding.NEAREST)
    m = 1 << 20
    assert e.tolist() == [0, 512, m - 512, 1024, m - 1024, 1, m - 1]
    assert report == ClipReport(n_clipped=0, max_abs=1.0)
    np.testing.assert_array_equal(decode_sum(e, CFG, n=1), x)


def test_nearest_is_round_half_even() -> None:
    cfg = FixedPointConfig(bits=8, scale=0, clip=8.0, n_max=1)
    e, _ = encode(np.array([0.5, 1.5, 2.5, -0.5, -1.5]), cfg, rounding=Rounding.NEAREST)
    assert decode_sum(e, cfg, n=1).tolist() == [0.0, 2.0, 2.0, -0.0, -2.0]


def test_many_chunks_match_vectorised_reference() -> None:
    n = 3 * (1 << 16) + 17
    x = np.sin(np.arange(n, dtype=np.float64)) * 1.2  # some values beyond clip=1
    for dtype in (np.float32, np.float64):
        xd = x.astype(dtype)
        e, report = encode(xd, CFG, rounding=Rounding.NEAREST)  # type: ignore[arg-type]
        ref = np.rint(np.clip(xd.astype(np.float64), -1, 1) * 1024).astype(np.int64) % (1 << 20)
        np.testing.assert_array_equal(e, ref.astype(np.uint32))
        assert report.n_clipped == int(np.count_nonzero(np.abs(xd) > 1.0))
        assert report.max_abs == pytest.approx(float(np.abs(xd).max()))


def test_clipping_is_reported_and_applied() -> None:
    x = np.array([0.25, 3.0, -7.5, 1.0, -1.0], dtype=np.float32)
    for rounding in Rounding:
        e, report = encode(x, CFG, rounding=rounding)
        assert report.n_clipped == 2
        assert report.max_abs == 7.5
        np.testing.assert_array_equal(decode_sum(e, CFG, n=1), [0.25, 1.0, -1.0, 1.0, -1.0])


def test_huge_finite_values_are_clipped_not_rejected() -> None:
    x = np.array([1e300, -1e300], dtype=np.float64)
    cfg = FixedPointConfig(bits=32, scale=30, clip=1.0, n_max=1)
    e, report = encode(x, cfg, rounding=Rounding.NEAREST)
    assert report.n_clipped == 2 and report.max_abs == 1e300
    np.testing.assert_array_equal(decode_sum(e, cfg, n=1), [1.0, -1.0])
    x32 = np.array([3e38], dtype=np.float32)  # overflows float32 once scaled by 2^30
    e, report = encode(x32, cfg, rounding=Rounding.NEAREST)
    assert report.n_clipped == 1
    assert decode_sum(e, cfg, n=1).tolist() == [1.0]


def test_empty_vector() -> None:
    e, report = encode(np.zeros(0, dtype=np.float32), CFG, rounding=Rounding.STOCHASTIC)
    assert e.shape == (0,) and e.dtype == np.uint32
    assert report == ClipReport(n_clipped=0, max_abs=0.0)
    assert decode_sum(e, CFG, n=1).shape == (0,)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("rounding", list(Rounding))
def test_non_finite_rejected(dtype: type, bad: float, rounding: Rounding) -> None:
    x: np.ndarray[Any, np.dtype[np.floating[Any]]] = np.zeros(70_000, dtype=dtype)
    x[66_000] = bad  # in the second chunk
    word = "NaN" if math.isnan(bad) else "infinity"
    with pytest.raises(ValueError, match=rf"x .*NaN or infinity \({word} at index 66000"):
        encode(x, CFG, rounding=rounding)


# ---------------------------------------------------------------- stochastic rounding


def test_stochastic_rounds_to_neighbours_and_is_unbiased() -> None:
    n = 200_000
    x = np.full(n, 0.3 * 2.0**-10, dtype=np.float64)  # 0.3 units
    e, _ = encode(x, CFG, rounding=Rounding.STOCHASTIC)
    assert set(np.unique(e).tolist()) == {0, 1}
    mean = float(e.mean())
    sigma = math.sqrt(0.3 * 0.7 / n)
    assert abs(mean - 0.3) < 6 * sigma
    neg, _ = encode(-x, CFG, rounding=Rounding.STOCHASTIC)
    vals = decode_sum(neg, CFG, n=1) * 1024
    assert set(np.unique(vals).tolist()) == {-1.0, 0.0}
    assert abs(float(vals.mean()) + 0.3) < 6 * sigma


def test_stochastic_exact_values_do_not_move() -> None:
    x = np.array([0.5, -0.25, 1.0, 0.0, -1.0])
    for _ in range(5):
        e, _ = encode(x, CFG, rounding=Rounding.STOCHASTIC)
        np.testing.assert_array_equal(decode_sum(e, CFG, n=1), x)


def test_stochastic_randomness_comes_from_prg(monkeypatch: pytest.MonkeyPatch) -> None:
    x = np.array([0.1, -0.1, 0.9999], dtype=np.float64) * 2.0**-10  # fractions of a unit
    monkeypatch.setattr(fp, "random_uint32", lambda n: np.zeros(n, dtype=np.uint32))
    e, _ = encode(x, CFG, rounding=Rounding.STOCHASTIC)  # r = 0 < any fraction: round up
    assert (decode_sum(e, CFG, n=1) * 1024).tolist() == [1.0, 0.0, 1.0]
    monkeypatch.setattr(fp, "random_uint32", lambda n: np.full(n, 2**32 - 1, dtype=np.uint32))
    e, _ = encode(x, CFG, rounding=Rounding.STOCHASTIC)  # r at the top: round down
    assert (decode_sum(e, CFG, n=1) * 1024).tolist() == [0.0, -1.0, 0.0]


def test_module_never_touches_numpy_random() -> None:
    src = inspect.getsource(fp)
    assert "np.random" not in src and "numpy.random" not in src
    assert not re.search(r"^\s*(import random|from random )", src, re.MULTILINE)


# ---------------------------------------------------------------- decode_sum


def test_decode_sum_reduces_and_lifts() -> None:
    e = np.array([0, 1, (1 << 19) - 1, 1 << 19, (1 << 20) - 1], dtype=np.uint32)
    want = np.array([0, 1, (1 << 19) - 1, -(1 << 19), -1], dtype=np.float64) / 1024
    np.testing.assert_array_equal(decode_sum(e, CFG, n=2), want)
    high = e | np.uint32(0xABC << 20)  # bits above the ring are ignored
    np.testing.assert_array_equal(decode_sum(high, CFG, n=2), want)


def test_decode_sum_32_bits() -> None:
    cfg = FixedPointConfig(bits=32, scale=0, clip=1000.0, n_max=1000)
    e = np.array([0, 2**31 - 1, 2**31, 2**32 - 1], dtype=np.uint32)
    assert decode_sum(e, cfg, n=1).tolist() == [0.0, 2**31 - 1, -(2**31), -1.0]


def test_decode_sum_many_chunks() -> None:
    n = 2 * (1 << 16) + 3
    e = np.arange(n, dtype=np.uint32) % (1 << 20)
    got = decode_sum(e, CFG, n=1)
    signed = np.where(e >= 1 << 19, e.astype(np.int64) - (1 << 20), e.astype(np.int64))
    np.testing.assert_array_equal(got, signed / 1024)


def test_decode_sum_checks() -> None:
    e = np.zeros(3, dtype=np.uint32)
    with pytest.raises(ValueError, match="n"):
        decode_sum(e, CFG, n=101)
    with pytest.raises(ValueError, match="n"):
        decode_sum(e, CFG, n=0)
    with pytest.raises(TypeError, match="n"):
        decode_sum(e, CFG, n=1.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="s"):
        decode_sum(np.zeros(3, dtype=np.int32), CFG, n=1)
    with pytest.raises(TypeError, match="s"):
        decode_sum([0, 1], CFG, n=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="s"):
        decode_sum(np.zeros((2, 2), dtype=np.uint32), CFG, n=1)
    with pytest.raises(TypeError, match="cfg"):
        decode_sum(e, {"bits": 20}, n=1)  # type: ignore[arg-type]


def test_encode_checks() -> None:
    x = np.zeros(3, dtype=np.float32)
    with pytest.raises(TypeError, match="x"):
        encode([0.0], CFG, rounding=Rounding.NEAREST)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="x"):
        encode(np.zeros(3, dtype=np.int32), CFG, rounding=Rounding.NEAREST)
    with pytest.raises(TypeError, match="x"):
        encode(np.zeros(3, dtype=np.float16), CFG, rounding=Rounding.NEAREST)
    with pytest.raises(ValueError, match="x"):
        encode(np.zeros((2, 2), dtype=np.float32), CFG, rounding=Rounding.NEAREST)
    with pytest.raises(TypeError, match="cfg"):
        encode(x, None, rounding=Rounding.NEAREST)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="rounding"):
        encode(x, CFG, rounding="nearest")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        encode(x, CFG)  # type: ignore[call-arg]  # rounding has no default
