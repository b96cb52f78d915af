"""Tests for secagg.prg: frozen vectors, an independent reference, domain separation,
exact cancellation, chunk boundaries, uniformity and argument checking."""

from __future__ import annotations

import hashlib
import hmac

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg import prg, rng

SEED = bytes(range(32))
CHUNK_WORDS = prg.CHUNK_BYTES // 4

# Frozen: first 8 words of MaskPRG(bytes(range(32)), label=b"test"), as little-endian bytes.
FROZEN_KEY_HEX = "3513401b6df6ef61dd395f9ba7793b1e8e51f2b1259aab7c869e5003b5a77f35"
FROZEN_WORDS_HEX = "60fd1727d447bd39468f6b645cc4771d4a5686d3506d614c9f6dc2a6e48d97b2"
FROZEN_WORDS = [
    0x2717FD60, 0x39BD47D4, 0x646B8F46, 0x1D77C45C,
    0xD386564A, 0x4C616D50, 0xA6C26D9F, 0xB2978DE4,
]  # fmt: skip

# Chi-square critical values for 255 degrees of freedom (scipy.stats.chi2.ppf 0.001 / 0.999).
CHI2_255_LO = 190.867
CHI2_255_HI = 330.520


def _hkdf_reference(seed: bytes, label: bytes) -> bytes:
    """RFC 5869 HKDF-SHA256 (one block) written out with hmac: independent of prg."""
    prk = hmac.new(b"secagg/prg/v1", seed, hashlib.sha256).digest()
    return hmac.new(prk, label + b"\x01", hashlib.sha256).digest()


def _ctr_block(key: bytes, index: int) -> bytes:
    """AES-256 of the big-endian counter block ``index`` (the CTR keystream, via ECB)."""
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return enc.update(index.to_bytes(16, "big")) + enc.finalize()


def _words_at(key: bytes, word_index: int) -> int:
    block = _ctr_block(key, word_index // 4)
    off = 4 * (word_index % 4)
    return int.from_bytes(block[off : off + 4], "little")


def _chi2_256(samples: np.ndarray) -> float:
    counts = np.bincount(samples, minlength=256).astype(np.float64)
    assert counts.shape == (256,)
    expected = samples.size / 256
    return float(((counts - expected) ** 2 / expected).sum())


# ---------------------------------------------------------------- known answers


def test_frozen_vector() -> None:
    out = np.zeros(8, dtype=np.uint32)
    prg.MaskPRG(SEED, label=b"test").add_into(out, bits=32)
    assert out.tolist() == FROZEN_WORDS
    assert out.astype("<u4").tobytes().hex() == FROZEN_WORDS_HEX


def test_frozen_vector_via_fill_and_keystream() -> None:
    out = np.empty(8, dtype=np.uint32)
    prg.MaskPRG(SEED, label=b"test").fill(out, bits=32)
    assert out.tolist() == FROZEN_WORDS
    raw = bytearray(32)
    prg.keystream_into(bytes.fromhex(FROZEN_KEY_HEX), raw)
    assert raw.hex() == FROZEN_WORDS_HEX


def test_derive_key_matches_independent_hkdf() -> None:
    assert prg.derive_key(SEED, b"test").hex() == FROZEN_KEY_HEX
    assert _hkdf_reference(SEED, b"test").hex() == FROZEN_KEY_HEX
    assert prg.derive_key(SEED, b"other") == _hkdf_reference(SEED, b"other")


def test_keystream_is_aes256_ctr_from_counter_zero() -> None:
    key = bytes.fromhex(FROZEN_KEY_HEX)
    expected = b"".join(_ctr_block(key, i) for i in range(4))
    out = bytearray(64)
    prg.keystream_into(key, out)
    assert bytes(out) == expected


# ---------------------------------------------------------------- separation


def test_labels_separate_streams() -> None:
    a = np.zeros(64, dtype=np.uint32)
    b = np.zeros(64, dtype=np.uint32)
    prg.MaskPRG(SEED, label=b"test").add_into(a, bits=32)
    prg.MaskPRG(SEED, label=b"test2").add_into(b, bits=32)
    assert not np.array_equal(a, b)
    assert np.count_nonzero(a == b) < 4


def test_seeds_separate_streams() -> None:
    a = np.zeros(64, dtype=np.uint32)
    b = np.zeros(64, dtype=np.uint32)
    prg.MaskPRG(SEED, label=b"x").add_into(a, bits=32)
    prg.MaskPRG(bytes(32), label=b"x").add_into(b, bits=32)
    assert not np.array_equal(a, b)


def test_every_seed_byte_matters() -> None:
    base = prg.derive_key(SEED, b"x")
    for i in range(32):
        flipped = bytearray(SEED)
        flipped[i] ^= 1
        assert prg.derive_key(bytes(flipped), b"x") != base


# ---------------------------------------------------------------- masking arithmetic


@pytest.mark.parametrize("bits", [1, 8, 20, 31, 32])
def test_add_then_subtract_restores(bits: int) -> None:
    n = 2 * CHUNK_WORDS + 13  # two full chunks and a tail
    mask = (1 << bits) - 1
    orig = (np.arange(n, dtype=np.uint64) * 2654435761 % (mask + 1)).astype(np.uint32)
    x = orig.copy()
    p = prg.MaskPRG(SEED, label=b"pair")
    p.add_into(x, bits=bits)
    assert not np.array_equal(x, orig)
    p.add_into(x, bits=bits, subtract=True)
    np.testing.assert_array_equal(x, orig)


def test_add_into_zeros_then_subtract_gives_zeros() -> None:
    x = np.zeros(1000, dtype=np.uint32)
    p = prg.MaskPRG(SEED, label=b"self")
    p.add_into(x, bits=20)
    assert np.count_nonzero(x) > 990
    p.add_into(x, bits=20, subtract=True)
    assert not x.any()


def test_same_prg_same_mask_twice() -> None:
    p = prg.MaskPRG(SEED, label=b"x")
    a = np.zeros(100, dtype=np.uint32)
    b = np.zeros(100, dtype=np.uint32)
    p.add_into(a, bits=24)
    p.add_into(b, bits=24)
    np.testing.assert_array_equal(a, b)


def test_add_into_is_modular_and_reduces_input() -> None:
    n = 1000
    x = np.full(n, 0xFFFFFFFF, dtype=np.uint32)  # high bits set: must be reduced too
    mask = np.empty(n, dtype=np.uint32)
    p = prg.MaskPRG(SEED, label=b"x")
    p.fill(mask, bits=32)
    p.add_into(x, bits=20)
    expected = ((0xFFFFFFFF + mask.astype(np.uint64)) % (1 << 20)).astype(np.uint32)
    np.testing.assert_array_equal(x, expected)


@pytest.mark.parametrize("bits", [5, 20, 32])
def test_fill_equals_add_into_zeros_and_is_reduced(bits: int) -> None:
    n = CHUNK_WORDS + 7
    p = prg.MaskPRG(SEED, label=b"x")
    a = np.zeros(n, dtype=np.uint32)
    b = np.full(n, 12345, dtype=np.uint32)  # fill must overwrite
    p.add_into(a, bits=bits)
    p.fill(b, bits=bits)
    np.testing.assert_array_equal(a, b)
    assert int(a.max()) < (1 << bits)


def test_chunk_boundaries_match_reference() -> None:
    n = 3 * CHUNK_WORDS + 5
    key = prg.derive_key(SEED, b"x")
    out = np.zeros(n, dtype=np.uint32)
    prg.MaskPRG(SEED, label=b"x").add_into(out, bits=32)
    for i in (0, CHUNK_WORDS - 1, CHUNK_WORDS, 2 * CHUNK_WORDS + 1, n - 1):
        assert int(out[i]) == _words_at(key, i), i
    raw = np.empty(n, dtype=np.uint32)
    prg.keystream_into(key, raw)
    np.testing.assert_array_equal(raw, out)


def test_empty_vector() -> None:
    x = np.zeros(0, dtype=np.uint32)
    prg.MaskPRG(SEED, label=b"x").add_into(x, bits=32)
    prg.MaskPRG(SEED, label=b"x").fill(x, bits=8)
    prg.keystream_into(bytes(32), bytearray())
    assert prg.random_uint32(0).shape == (0,)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(0, 300),
    bits=st.integers(1, 32),
    label=st.binary(min_size=1, max_size=40),
)
def test_prefix_consistency(n: int, bits: int, label: bytes) -> None:
    """A shorter vector gets a prefix of a longer vector's mask (the stream is positional)."""
    p = prg.MaskPRG(SEED, label=label)
    long = np.zeros(n + 50, dtype=np.uint32)
    short = np.zeros(n, dtype=np.uint32)
    p.add_into(long, bits=bits)
    p.add_into(short, bits=bits)
    np.testing.assert_array_equal(long[:n], short)


# ---------------------------------------------------------------- uniformity


def test_chi_square_statistic_can_fail() -> None:
    too_regular = (np.arange(1 << 16) % 256).astype(np.intp)  # perfectly flat: suspicious
    assert _chi2_256(too_regular) < CHI2_255_LO
    biased = np.concatenate([too_regular, np.zeros(2000, dtype=np.intp)])
    assert _chi2_256(biased) > CHI2_255_HI


def test_uniform_low_8_bits() -> None:
    out = np.empty(1 << 20, dtype=np.uint32)
    prg.MaskPRG(SEED, label=b"chi2/low8").fill(out, bits=32)
    stat = _chi2_256((out & 0xFF).astype(np.intp))
    assert CHI2_255_LO < stat < CHI2_255_HI, stat


def test_uniform_ring_values_bits_20() -> None:
    out = np.zeros(1 << 20, dtype=np.uint32)
    prg.MaskPRG(SEED, label=b"chi2/ring20").add_into(out, bits=20)
    assert int(out.max()) < (1 << 20)
    top = _chi2_256((out >> 12).astype(np.intp))  # the 8 high bits of the 20-bit ring value
    low = _chi2_256((out & 0xFF).astype(np.intp))
    assert CHI2_255_LO < top < CHI2_255_HI, top
    assert CHI2_255_LO < low < CHI2_255_HI, low


# ---------------------------------------------------------------- random_uint32


def test_random_uint32_fresh_and_shaped() -> None:
    a = prg.random_uint32(1000)
    b = prg.random_uint32(1000)
    assert a.dtype == np.uint32 and a.shape == (1000,)
    assert not np.array_equal(a, b)


def test_random_uint32_keyed_by_rng(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rng, "random_bytes", lambda n: bytes(n))
    a = prg.random_uint32(16)
    raw = bytearray(64)
    prg.keystream_into(bytes(32), raw)
    assert a.astype("<u4").tobytes() == bytes(raw)


# ---------------------------------------------------------------- argument checks


def test_keystream_into_buffer_kinds() -> None:
    key = bytes(32)
    ref = bytearray(40)
    prg.keystream_into(key, ref)
    mv = memoryview(bytearray(40))
    prg.keystream_into(key, mv)
    assert bytes(mv) == bytes(ref)
    arr = np.empty(5, dtype=np.uint64)
    prg.keystream_into(key, arr)
    assert arr.tobytes() == bytes(ref)


@pytest.mark.parametrize(
    ("kwargs", "exc", "name"),
    [
        ({"seed": "x" * 32, "label": b"l"}, TypeError, "seed"),
        ({"seed": bytes(31), "label": b"l"}, ValueError, "seed"),
        ({"seed": bytes(33), "label": b"l"}, ValueError, "seed"),
        ({"seed": bytes(32), "label": "l"}, TypeError, "label"),
        ({"seed": bytes(32), "label": b""}, ValueError, "label"),
    ],
)
def test_constructor_checks(kwargs: dict[str, object], exc: type[Exception], name: str) -> None:
    with pytest.raises(exc, match=name):
        prg.MaskPRG(kwargs["seed"], label=kwargs["label"])  # type: ignore[arg-type]
    with pytest.raises(exc, match=name):
        prg.derive_key(kwargs["seed"], kwargs["label"])  # type: ignore[arg-type]


def test_add_into_checks() -> None:
    p = prg.MaskPRG(SEED, label=b"x")
    ok = np.zeros(4, dtype=np.uint32)
    with pytest.raises(TypeError, match="out"):
        p.add_into([0, 0], bits=8)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="out"):
        p.add_into(np.zeros(4, dtype=np.int64), bits=8)
    with pytest.raises(ValueError, match="out"):
        p.add_into(np.zeros((2, 2), dtype=np.uint32), bits=8)
    with pytest.raises(ValueError, match="out"):
        p.add_into(np.zeros(8, dtype=np.uint32)[::2], bits=8)
    ro = np.zeros(4, dtype=np.uint32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out"):
        p.add_into(ro, bits=8)
    for bad in (0, 33):
        with pytest.raises(ValueError, match="bits"):
            p.add_into(ok, bits=bad)
        with pytest.raises(ValueError, match="bits"):
            p.fill(ok, bits=bad)
    with pytest.raises(TypeError, match="bits"):
        p.add_into(ok, bits=True)
    with pytest.raises(TypeError, match="bits"):
        p.add_into(ok, bits=20.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="subtract"):
        p.add_into(ok, bits=20, subtract=1)  # type: ignore[arg-type]
    assert not ok.any()  # nothing was written by a rejected call


def test_keystream_into_checks() -> None:
    with pytest.raises(TypeError, match="key"):
        prg.keystream_into("k" * 32, bytearray(4))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="key"):
        prg.keystream_into(bytes(16), bytearray(4))
    with pytest.raises(TypeError, match="out"):
        prg.keystream_into(bytes(32), bytes(4))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="out"):
        prg.keystream_into(bytes(32), memoryview(bytes(4)))
    with pytest.raises(ValueError, match="out"):
        prg.keystream_into(bytes(32), np.zeros((4, 4), dtype=np.uint8)[:, 0])


def test_random_uint32_checks() -> None:
    with pytest.raises(TypeError, match="n"):
        prg.random_uint32(3.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n"):
        prg.random_uint32(-1)


def test_repr_hides_key() -> None:
    p = prg.MaskPRG(SEED, label=b"test")
    assert FROZEN_KEY_HEX not in repr(p)
    assert "secret" in repr(p)
