"""CKKS presets and slot-layout maths (no encryption except the security-table cross-check)."""

from __future__ import annotations

import numpy as np
import pytest
import tenseal as ts
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.ckks_layout import SlotLayout, choose_preset
from secagg.ckks_params import (
    EXACT_PAYLOAD_BITS_MAX,
    MAX_SCALE_BITS,
    MODULUS_HEADROOM_BITS,
    PRESETS,
    SECURE_COEFF_BITS_128,
    CkksPreset,
    min_scale_bits,
    payload_limit,
)
from secagg.errors import RangeError

EXACT = PRESETS["exact-4096"]
WIDE = PRESETS["exact-4096-wide"]


def _preset(n: int, bits: tuple[int, ...], scale: int | None = None) -> CkksPreset:
    return CkksPreset(
        name="t", poly_modulus_degree=n, coeff_mod_bit_sizes=bits, scale_bits=scale, note=""
    )


def test_named_presets() -> None:
    assert {"exact-4096", "float-4096", "nvflare-8192"} <= set(PRESETS)
    assert EXACT.coeff_mod_bit_sizes == (60, 49) and EXACT.scale_bits is None
    assert PRESETS["float-4096"].coeff_mod_bit_sizes == (60, 40)
    assert PRESETS["float-4096"].scale_bits == 40
    nv = PRESETS["nvflare-8192"]
    assert (nv.poly_modulus_degree, nv.coeff_mod_bit_sizes, nv.scale_bits) == (
        8192,
        (60, 40, 40),
        40,
    )
    for p in PRESETS.values():
        assert sum(p.coeff_mod_bit_sizes) <= SECURE_COEFF_BITS_128[p.poly_modulus_degree]


def test_insecure_and_invalid_presets_rejected() -> None:
    with pytest.raises(ValueError, match="insecure"):
        _preset(4096, (60, 50))
    with pytest.raises(ValueError, match="insecure"):
        _preset(8192, (60, 60, 60, 39))
    with pytest.raises(ValueError, match="two primes"):
        _preset(2048, (54,))
    with pytest.raises(ValueError, match="poly_modulus_degree"):
        _preset(3000, (30, 20))
    with pytest.raises(ValueError):
        _preset(4096, (61, 40))
    with pytest.raises(TypeError):
        _preset(4096, [60, 49])  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        _preset(4096, (60, 40), scale=57)  # no room left for values
    with pytest.raises(ValueError, match="float preset"):
        SlotLayout.for_values(preset=PRESETS["float-4096"], value_bits=8, n_max=2)


@pytest.mark.parametrize(
    ("n", "ok", "bad"),
    [(2048, (30, 24), (30, 25)), (4096, (60, 49), (60, 50)), (8192, (60, 60, 60, 38), None)],
)
def test_security_table_agrees_with_seal(
    n: int, ok: tuple[int, ...], bad: tuple[int, ...] | None
) -> None:
    # Our table's maximum is accepted by SEAL (via TenSEAL) and one bit more is refused.
    sym = ts.ENCRYPTION_TYPE.SYMMETRIC
    ts.context(ts.SCHEME_TYPE.CKKS, n, coeff_mod_bit_sizes=list(ok), encryption_type=sym)
    assert sum(ok) == SECURE_COEFF_BITS_128[n]
    if bad is not None:
        with pytest.raises(ValueError):
            ts.context(ts.SCHEME_TYPE.CKKS, n, coeff_mod_bit_sizes=list(bad), encryption_type=sym)


def test_single_prime_contexts_fail_in_tenseal() -> None:
    # Why CkksPreset demands two primes: TenSEAL always generates key-switching keys.
    with pytest.raises(RuntimeError, match="keyswitching"):
        ts.context(ts.SCHEME_TYPE.CKKS, 2048, coeff_mod_bit_sizes=[54])


def test_known_layouts() -> None:
    lay = SlotLayout.for_values(preset=EXACT, value_bits=12, n_max=100)
    assert (lay.lane_bits, lay.lanes_per_slot, lay.slots_per_ciphertext) == (19, 2, 2048)
    assert lay.values_per_ciphertext == 4096 and lay.payload_bits == 38
    assert lay.scale_bits == 58 - 38
    assert SlotLayout.for_values(preset=EXACT, value_bits=16, n_max=16).lanes_per_slot == 2
    assert SlotLayout.for_values(preset=EXACT, value_bits=8, n_max=10).lanes_per_slot == 3
    # The limit moves with n_max: more summands need a larger scale, which eats payload bits.
    assert payload_limit(preset=EXACT, n_max=1) == EXACT_PAYLOAD_BITS_MAX
    assert payload_limit(preset=EXACT, n_max=100) == 42
    assert payload_limit(preset=EXACT, n_max=1000) == 40
    assert payload_limit(preset=WIDE, n_max=2**32 - 1) == EXACT_PAYLOAD_BITS_MAX


def test_choose_preset() -> None:
    assert choose_preset(value_bits=12, n_max=100).preset is EXACT
    assert choose_preset(value_bits=12, n_max=100).lanes_per_slot == 2
    # 44-bit lanes do not fit exact-4096 at n_max=10^4 (39 bits) but fit the wide preset.
    wide = choose_preset(value_bits=30, n_max=10_000)
    assert wide.preset is WIDE and wide.lanes_per_slot == 1
    with pytest.raises(RangeError, match="no preset"):
        choose_preset(value_bits=40, n_max=64)


def test_layout_constructor_rechecks_invariants() -> None:
    lay = SlotLayout.for_values(preset=EXACT, value_bits=12, n_max=100)
    with pytest.raises(RangeError):
        SlotLayout(**{**lay.__dict__, "lanes_per_slot": 3})  # 57 payload bits
    with pytest.raises(RangeError):
        SlotLayout(**{**lay.__dict__, "scale_bits": 12})  # too little noise margin
    with pytest.raises(ValueError):
        SlotLayout(**{**lay.__dict__, "lane_bits": 18})
    with pytest.raises(TypeError):
        SlotLayout.for_values(preset=EXACT, value_bits=12.0, n_max=100)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(
    value_bits=st.integers(1, EXACT_PAYLOAD_BITS_MAX),
    log_n=st.integers(0, 31),
    frac=st.floats(0, 1),
    preset=st.sampled_from([EXACT, WIDE]),
)
def test_layout_maths(value_bits: int, log_n: int, frac: float, preset: CkksPreset) -> None:
    n_max = max(1, min(2**32 - 1, int(2 ** (log_n + frac))))
    limit = payload_limit(preset=preset, n_max=n_max)
    lane = value_bits + (n_max - 1).bit_length()
    try:
        lay = SlotLayout.for_values(preset=preset, value_bits=value_bits, n_max=n_max)
    except RangeError:
        assert lane > limit
        return
    assert lay.lane_bits == lane
    assert lay.lanes_per_slot * lay.lane_bits <= limit  # fits the measured exact limit
    assert (lay.lanes_per_slot + 1) * lay.lane_bits > limit  # and lanes are maximised
    assert lay.scale_bits >= min_scale_bits(poly_modulus_degree=4096, n_max=n_max)
    assert lay.scale_bits <= MAX_SCALE_BITS
    assert lay.payload_bits + lay.scale_bits <= preset.data_bits - MODULUS_HEADROOM_BITS
    # The lane holds the extreme sums of n_max values.
    assert n_max * 2 ** (value_bits - 1) <= 2 ** (lane - 1)


@st.composite
def _packing_case(draw: st.DrawFn) -> tuple[SlotLayout, list[np.ndarray], int]:
    value_bits = draw(st.integers(1, 24))
    n_max = draw(st.integers(1, 300))
    lay = SlotLayout.for_values(preset=EXACT, value_bits=value_bits, n_max=n_max)
    n = draw(st.integers(1, n_max if n_max <= 8 else 8))
    count = draw(st.integers(1, 40))
    lo, hi = -(2 ** (value_bits - 1)), 2 ** (value_bits - 1) - 1
    elems = st.one_of(st.integers(lo, hi), st.sampled_from([lo, hi, 0, -1 if lo < 0 else 0]))
    vecs = [np.array(draw(st.lists(elems, min_size=count, max_size=count))) for _ in range(n)]
    return lay, vecs, count


@settings(max_examples=120, deadline=None)
@given(_packing_case())
def test_pack_unpack_sum_round_trip(case: tuple[SlotLayout, list[np.ndarray], int]) -> None:
    lay, vecs, count = case
    slots = sum(lay.pack(v) for v in vecs)
    assert isinstance(slots, np.ndarray) and slots.size == lay.slots_for(count)
    # Every lane sum lies in [-2^(lb-1), 2^(lb-1)), so a slot stays within about 2^(P-1).
    lb = lay.lane_bits
    bound = 2 ** (lb - 1) * (2**lay.payload_bits - 1) // (2**lb - 1)
    assert int(np.abs(slots).max()) <= bound
    out = lay.unpack(slots, count=count, n=len(vecs))
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, np.sum(vecs, axis=0))


def test_pack_extremes_all_lanes_negative() -> None:
    lay = SlotLayout.for_values(preset=EXACT, value_bits=8, n_max=10)
    assert lay.lanes_per_slot == 3
    v = np.full(7, -128, dtype=np.int64)
    s = 10 * lay.pack(v)
    np.testing.assert_array_equal(lay.unpack(s, count=7, n=10), np.full(7, -1280))
    w = np.full(7, 127, dtype=np.int8)
    np.testing.assert_array_equal(lay.unpack(lay.pack(w), count=7, n=1), w)


def test_pack_and_unpack_reject() -> None:
    lay = SlotLayout.for_values(preset=EXACT, value_bits=8, n_max=10)
    with pytest.raises(RangeError):
        lay.pack(np.array([128]))
    with pytest.raises(RangeError):
        lay.pack(np.array([-129]))
    with pytest.raises(TypeError):
        lay.pack(np.array([1.0]))
    with pytest.raises(TypeError):
        lay.pack([1, 2])  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        lay.pack(np.array([], dtype=np.int64))
    s = lay.pack(np.array([100, 100, 100, 5, 6, 7]))
    with pytest.raises(RangeError, match="lane sum"):
        lay.unpack(s * 2, count=6, n=1)  # 200 is not a sum of one 8-bit value
    with pytest.raises(RangeError, match="padding"):
        lay.unpack(s, count=5, n=1)  # the 6th lane should be zero padding
    with pytest.raises(ValueError):
        lay.unpack(s, count=6, n=11)  # n > n_max
    with pytest.raises(ValueError):
        lay.unpack(s, count=7, n=1)  # wrong number of slots
