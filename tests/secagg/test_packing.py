"""Tests for secagg.packing: round trips for every width, an independent big-integer
reference, a frozen vector, exact lengths, canonical padding and argument checking, and the
fused unpack_add_into (equal to acc + unpack at every width, across chunk boundaries)."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg import packing
from secagg.packing import pack, packed_size, unpack, unpack_add_into

# Frozen: pack([0, 1, 0xFFFFF, 0x12345, 0xABCDE], bits=20).
FROZEN_VALUES = [0, 1, 0xFFFFF, 0x12345, 0xABCDE]
FROZEN_B20_HEX = "0000100000ffff5f3412debc0a"


def _reference_pack(values: list[int], bits: int) -> bytes:
    """Obviously correct: value i is bits [i*bits, (i+1)*bits) of one little-endian integer."""
    acc = 0
    for i, v in enumerate(values):
        acc |= v << (i * bits)
    return acc.to_bytes((len(values) * bits + 7) // 8, "little")


@st.composite
def _values(draw: st.DrawFn, bits: int, max_size: int = 70) -> list[int]:
    return draw(st.lists(st.integers(0, (1 << bits) - 1), max_size=max_size))


def test_frozen_vector_b20() -> None:
    data = pack(np.array(FROZEN_VALUES, dtype=np.uint32), 20)
    assert data.hex() == FROZEN_B20_HEX
    assert len(data) == 13  # 5 values * 2.5 bytes, rounded up
    assert unpack(bytes.fromhex(FROZEN_B20_HEX), 20, 5).tolist() == FROZEN_VALUES
    assert _reference_pack(FROZEN_VALUES, 20).hex() == FROZEN_B20_HEX


@pytest.mark.parametrize("bits", range(8, 33))
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_round_trip_every_width(bits: int, data: st.DataObject) -> None:
    values = data.draw(_values(bits))
    arr = np.array(values, dtype=np.uint32)
    packed = pack(arr, bits)
    assert packed == _reference_pack(values, bits)
    assert len(packed) == packed_size(len(values), bits)
    out = unpack(packed, bits, len(values))
    assert out.dtype == np.uint32 and out.shape == (len(values),)
    assert out.tolist() == values


@settings(max_examples=40, deadline=None)
@given(bits=st.integers(1, 7), data=st.data())
def test_round_trip_narrow_widths(bits: int, data: st.DataObject) -> None:
    values = data.draw(_values(bits))
    packed = pack(np.array(values, dtype=np.uint32), bits)
    assert packed == _reference_pack(values, bits)
    assert unpack(packed, bits, len(values)).tolist() == values


@pytest.mark.parametrize("bits", [8, 12, 16, 17, 20, 24, 31, 32])
def test_large_round_trip_with_tail(bits: int) -> None:
    n = 100_003
    gen = np.random.default_rng(bits)
    arr = gen.integers(0, 1 << bits, n, dtype=np.uint64).astype(np.uint32)
    arr[:3] = (1 << bits) - 1  # all ones at the edges
    arr[-3:] = (1 << bits) - 1
    packed = pack(arr, bits)
    assert len(packed) == packed_size(n, bits)
    assert packed[:64] == _reference_pack(arr[:512].tolist(), bits)[:64]
    np.testing.assert_array_equal(unpack(packed, bits, n), arr)


def test_all_ones_and_non_contiguous_input() -> None:
    arr = np.full(2 * 9, (1 << 20) - 1, dtype=np.uint32)
    assert pack(arr, 20) == b"\xff" * 45
    strided = np.arange(40, dtype=np.uint32)[::2]
    assert pack(strided, 20) == pack(np.ascontiguousarray(strided), 20)


def test_unpack_output_is_writeable_and_owned() -> None:
    for bits in (8, 16, 20, 32):
        out = unpack(bytes(packed_size(4, bits)), bits, 4)
        out[0] = 1  # must not be a read-only view of the input bytes
        assert out.tolist() == [1, 0, 0, 0]


def test_unpack_accepts_bytes_like() -> None:
    packed = pack(np.array(FROZEN_VALUES, dtype=np.uint32), 20)
    assert unpack(bytearray(packed), 20, 5).tolist() == FROZEN_VALUES
    assert unpack(memoryview(packed), 20, 5).tolist() == FROZEN_VALUES


def test_packed_size() -> None:
    assert packed_size(0, 20) == 0
    assert packed_size(1, 20) == 3
    assert packed_size(2, 20) == 5
    assert packed_size(10**6, 20) == 2_500_000
    assert packed_size(3, 7) == 3
    assert packed_size(5, 32) == 20
    with pytest.raises(ValueError, match="count"):
        packed_size(-1, 20)
    with pytest.raises(ValueError, match="bits"):
        packed_size(1, 33)
    with pytest.raises(TypeError, match="bits"):
        packed_size(1, 2.5)  # type: ignore[arg-type]


def test_empty() -> None:
    for bits in (8, 20, 32):
        assert pack(np.zeros(0, dtype=np.uint32), bits) == b""
        assert unpack(b"", bits, 0).shape == (0,)


@pytest.mark.parametrize("bits", [8, 16, 20, 31])
def test_unpack_exact_length(bits: int) -> None:
    count = 7
    good = bytes(packed_size(count, bits))
    unpack(good, bits, count)
    for bad in (good[:-1], good + b"\0", b""):
        with pytest.raises(ValueError, match="data"):
            unpack(bad, bits, count)


def test_unpack_rejects_non_zero_padding() -> None:
    good = pack(np.array([1, 2, 3], dtype=np.uint32), 20)  # 60 bits in 8 bytes: 4 spare
    bad = good[:-1] + bytes([good[-1] | 0x10])
    with pytest.raises(ValueError, match="padding"):
        unpack(bad, 20, 3)


def test_pack_rejects_out_of_range_values() -> None:
    arr = np.array([0, 5, 1 << 20, 7], dtype=np.uint32)
    with pytest.raises(ValueError, match=r"values\[2\]"):
        pack(arr, 20)
    with pytest.raises(ValueError, match="values"):
        pack(np.array([256], dtype=np.uint32), 8)
    pack(np.array([0xFFFFFFFF], dtype=np.uint32), 32)


def test_argument_checks() -> None:
    arr = np.zeros(4, dtype=np.uint32)
    with pytest.raises(TypeError, match="values"):
        pack([1, 2], 20)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="values"):
        pack(np.zeros(4, dtype=np.int64), 20)
    with pytest.raises(ValueError, match="values"):
        pack(np.zeros((2, 2), dtype=np.uint32), 20)
    with pytest.raises(TypeError, match="bits"):
        pack(arr, 20.0)  # type: ignore[arg-type]
    for bad in (0, 33):
        with pytest.raises(ValueError, match="bits"):
            pack(arr, bad)
        with pytest.raises(ValueError, match="bits"):
            unpack(b"", bad, 0)
    with pytest.raises(TypeError, match="data"):
        unpack("abc", 8, 3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="count"):
        unpack(b"abc", 8, 3.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="count"):
        unpack(b"", 8, -1)


# -- chunk boundaries and the fused accumulate ---------------------------------------------

CHUNK = packing._CHUNK  # values per chunk for the power-of-two block sizes g = 1, 2, 4, 8


def _block_values(bits: int) -> int:
    """g: values per block, the period of the bit positions."""
    return 8 // math.gcd(bits, 8)


def _random_values(bits: int, n: int, seed: int, ones: bool) -> npt.NDArray[np.uint32]:
    if ones:
        return np.full(n, (1 << bits) - 1, dtype=np.uint32)
    gen = np.random.default_rng(seed)
    return gen.integers(0, 1 << bits, n, dtype=np.uint64).astype(np.uint32)


@st.composite
def _length(draw: st.DrawFn, bits: int) -> int:
    g = _block_values(bits)
    special = [0, 1, g - 1, g, g + 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + g - 1]
    return draw(st.one_of(st.sampled_from(special), st.integers(0, 3 * g + 40)))


@pytest.mark.parametrize("bits", range(8, 33))
@settings(max_examples=12, deadline=None)
@given(data=st.data())
def test_unpack_add_into_equals_acc_plus_unpack(bits: int, data: st.DataObject) -> None:
    n = data.draw(_length(bits), label="n")
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    ones = data.draw(st.booleans(), label="ones")
    values = _random_values(bits, n, seed, ones)
    packed = pack(values, bits)
    acc = _random_values(32, n, seed + 1, ones=False)
    expected = acc + unpack(packed, bits, n)  # wraps mod 2^32
    np.testing.assert_array_equal(unpack(packed, bits, n), values)
    unpack_add_into(acc, packed, bits, n)
    np.testing.assert_array_equal(acc, expected)
    if n <= 64:
        assert packed == _reference_pack(values.tolist(), bits)


@pytest.mark.parametrize("bits", [17, 20, 22, 24, 27, 29, 30, 31])
def test_pack_matches_reference_across_chunk_boundaries(bits: int) -> None:
    n = 2 * CHUNK + 13
    arr = _random_values(bits, n, bits, ones=False)
    arr[CHUNK - 5 : CHUNK + 5] = (1 << bits) - 1
    packed = pack(arr, bits)
    assert len(packed) == packed_size(n, bits)
    for start in (0, CHUNK - 64, CHUNK - 8, CHUNK, 2 * CHUNK - 8):  # multiples of 8 values
        ref = _reference_pack(arr[start : start + 64].tolist(), bits)  # start on a byte
        first = start * bits // 8
        assert packed[first : first + len(ref) - 1] == ref[:-1]  # the last byte is shared
    start = n - n % 8 - 64
    assert packed[start * bits // 8 :] == _reference_pack(arr[start:].tolist(), bits)
    np.testing.assert_array_equal(unpack(packed, bits, n), arr)


def test_unpack_add_into_wraps_and_accumulates() -> None:
    n, bits = 1000, 22
    acc = np.full(n, 0xFFFFFFFF, dtype=np.uint32)
    ones = pack(np.full(n, 1, dtype=np.uint32), bits)
    for _ in range(3):
        unpack_add_into(acc, ones, bits, n)
    assert acc.tolist() == [2] * n


def test_unpack_add_into_argument_checks() -> None:
    n, bits = 10, 20
    good = pack(np.arange(n, dtype=np.uint32), bits)
    acc = np.zeros(n, dtype=np.uint32)
    with pytest.raises(TypeError, match="acc"):
        unpack_add_into([0] * n, good, bits, n)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="acc"):
        unpack_add_into(np.zeros(n, dtype=np.int64), good, bits, n)
    with pytest.raises(TypeError, match="data"):
        unpack_add_into(acc, "abc", bits, n)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="bits"):
        unpack_add_into(acc, good, 20.0, n)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="count"):
        unpack_add_into(acc, good, bits, 10.0)  # type: ignore[arg-type]
    for bad_bits in (0, 33):
        with pytest.raises(ValueError, match="bits"):
            unpack_add_into(np.zeros(0, dtype=np.uint32), b"", bad_bits, 0)
    with pytest.raises(ValueError, match="count"):
        unpack_add_into(acc, b"", bits, -1)
    for bad in (good[:-1], good + b"\0", b""):
        with pytest.raises(ValueError, match="data"):
            unpack_add_into(acc, bad, bits, n)
    padded = pack(np.array([1, 2, 3], dtype=np.uint32), 20)  # 4 spare bits
    with pytest.raises(ValueError, match="padding"):
        unpack_add_into(np.zeros(3, dtype=np.uint32), padded[:-1] + b"\x10", 20, 3)
    with pytest.raises(ValueError, match="acc"):
        unpack_add_into(np.zeros(n + 1, dtype=np.uint32), good, bits, n)
    with pytest.raises(ValueError, match="acc"):
        unpack_add_into(np.zeros((2, 5), dtype=np.uint32), good, bits, n)
    with pytest.raises(ValueError, match="acc"):
        unpack_add_into(np.zeros(2 * n, dtype=np.uint32)[::2], good, bits, n)
    frozen = np.zeros(n, dtype=np.uint32)
    frozen.setflags(write=False)
    with pytest.raises(ValueError, match="acc"):
        unpack_add_into(frozen, good, bits, n)
    assert acc.tolist() == [0] * n  # every failure left acc untouched
    unpack_add_into(acc, bytearray(good), bits, n)
    unpack_add_into(acc, memoryview(good), bits, n)
    assert acc.tolist() == [2 * i for i in range(n)]


@pytest.mark.parametrize("index", [3, CHUNK + 7, 2 * CHUNK + 1])
def test_pack_names_first_out_of_range_index_in_any_chunk(index: int) -> None:
    arr = np.zeros(2 * CHUNK + 3, dtype=np.uint32)  # with bits=27: 2 chunks and a tail block
    arr[index] = 1 << 27
    arr[-1] = 1 << 30
    with pytest.raises(ValueError, match=rf"values\[{index}\] = {1 << 27}"):
        pack(arr, 27)
