"""secagg.prg's fast paths give the words of the plain AES-256-CTR definition: the GCM body of
long streams (checked byte for byte against ``cryptography``'s CTR mode and against single
ECB blocks), and :func:`add_masks_into` (checked against one ``add_into`` per mask)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from secagg import prg

KEY = bytes(range(32))
LONG = prg.GCM_MIN_BYTES + 4 * 4099  # long enough for the GCM body, not a chunk multiple
CHUNK_WORDS = prg.CHUNK_BYTES // 4


def _ctr(key: bytes, nbytes: int) -> bytes:
    """The definition: AES-256-CTR from counter block 0 over zeros, via cryptography."""
    return Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update(bytes(nbytes))


def _block(key: bytes, index: int) -> bytes:
    """Counter block ``index`` encrypted on its own (ECB): independent of any stream code."""
    return Cipher(algorithms.AES(key), modes.ECB()).encryptor().update(index.to_bytes(16, "big"))


@pytest.mark.parametrize("nbytes", [prg.GCM_MIN_BYTES, LONG, 3 * prg.GCM_MIN_BYTES + 20])
def test_long_keystream_is_ctr_from_block_zero(nbytes: int) -> None:
    out = bytearray(nbytes)
    prg.keystream_into(KEY, out)
    assert bytes(out) == _ctr(KEY, nbytes)
    for block in (0, 1, 2, 3, prg.CHUNK_BYTES // 16, nbytes // 16 - 1):
        assert out[16 * block : 16 * block + 16] == _block(KEY, block), block


# Frozen: SHA-256 of the first LONG bytes of AES-256-CTR(KEY) from counter block 0.
FROZEN_LONG_SHA256 = "a79b2131f9b96b9291a5644daefcf64a13fd27e0b242244512aa6655d91b1a4f"


def test_frozen_long_stream_digest() -> None:
    out = bytearray(LONG)
    prg.keystream_into(KEY, out)
    assert hashlib.sha256(out).hexdigest() == FROZEN_LONG_SHA256


@pytest.mark.parametrize("bits", [5, 22, 32])
def test_long_mask_add_and_fill_match_reference(bits: int) -> None:
    n = LONG // 4
    p = prg.MaskPRG(KEY, label=b"long")
    words = np.frombuffer(_ctr(prg.derive_key(KEY, b"long"), 4 * n), dtype="<u4").astype(np.uint32)
    base = (np.arange(n, dtype=np.uint64) * 2654435761 % 2**32).astype(np.uint32)
    got = base.copy()
    p.add_into(got, bits=bits)
    want = ((base.astype(np.uint64) + words) % (1 << bits)).astype(np.uint32)
    np.testing.assert_array_equal(got, want)
    p.add_into(got, bits=bits, subtract=True)
    np.testing.assert_array_equal(got, base & np.uint32((1 << bits) - 1))
    filled = np.empty(n, dtype=np.uint32)
    p.fill(filled, bits=bits)
    np.testing.assert_array_equal(filled, words & np.uint32((1 << bits) - 1))


def _masks(count: int) -> list[tuple[prg.MaskPRG, bool]]:
    return [(prg.MaskPRG(bytes([i % 256]) * 32, label=b"m%d" % i), i % 3 == 0)
            for i in range(count)]


@pytest.mark.parametrize("n", [0, 1, 7, 9, CHUNK_WORDS - 1, CHUNK_WORDS + 5, LONG // 4])
@pytest.mark.parametrize("bits", [1, 20, 32])
def test_add_masks_into_equals_one_add_per_mask(n: int, bits: int) -> None:
    masks = _masks(70)  # more than one pass of encryptors
    base = np.random.default_rng(n + bits).integers(0, 2**32, n, dtype=np.uint32)
    want = base.copy()
    for m, sub in masks:
        m.add_into(want, bits=32, subtract=sub)
    want &= np.uint32((1 << bits) - 1)
    for workers in (1, 2, 3):
        got = base.copy()
        prg.add_masks_into(got, masks, bits=bits, workers=workers)
        np.testing.assert_array_equal(got, want)


def test_add_masks_into_threads_really_split() -> None:
    """Enough words for three workers: the split path itself must give the same words."""
    n = CHUNK_WORDS
    masks = _masks(3 * (1 << 22) // n + 3)
    base = np.zeros(n, dtype=np.uint32)
    want = base.copy()
    for m, sub in masks:
        m.add_into(want, bits=32, subtract=sub)
    got = base.copy()
    prg.add_masks_into(got, masks, bits=32, workers=3)
    np.testing.assert_array_equal(got, want)


def test_add_masks_into_without_masks_only_reduces() -> None:
    x = np.full(10, 0xFFFFFFFF, dtype=np.uint32)
    prg.add_masks_into(x, [], bits=20)
    assert x.tolist() == [0xFFFFF] * 10


def test_add_masks_into_argument_checks() -> None:
    out = np.zeros(4, dtype=np.uint32)
    good = _masks(1)
    with pytest.raises(TypeError):
        prg.add_masks_into([0, 0], good, bits=32)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        prg.add_masks_into(np.zeros(4, dtype=np.int64), good, bits=32)
    with pytest.raises(TypeError, match="masks\\[0\\]"):
        prg.add_masks_into(out, [(KEY, True)], bits=32)  # type: ignore[list-item]
    with pytest.raises(TypeError, match="masks\\[0\\]"):
        prg.add_masks_into(out, [(good[0][0], 1)], bits=32)  # type: ignore[list-item]
    with pytest.raises(ValueError):
        prg.add_masks_into(out, good, bits=0)
    with pytest.raises(ValueError):
        prg.add_masks_into(out, good, bits=32, workers=0)
    with pytest.raises(ValueError):
        prg.add_masks_into(np.zeros(4, dtype=np.uint32)[::2], good, bits=32)
    assert not out.any()
