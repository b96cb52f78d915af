"""Tests for secagg.aead: GCM vectors, round trips, tampering anywhere, argument checks."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg import aead
from secagg.aead import KEY_BYTES, NONCE_BYTES, OVERHEAD, TAG_BYTES, Aead
from secagg.errors import InvalidCiphertext

KEY = bytes(range(32))
AD = b"secagg/test/ad"

# McGrew & Viega, "The Galois/Counter Mode of Operation", test cases 13 and 14 (AES-256,
# zero key, zero 96-bit IV, no AD). The blob layout is nonce || ciphertext || tag.
GCM_VECTORS = [
    (b"", "530f8afbc74536b9a963b4f1c4cb738b"),
    (bytes(16), "cea7403d4d606b6e074ec5d3baf39d18d0d1c8a799996bf0265b98b5d48ab919"),
]


def test_constants() -> None:
    assert (KEY_BYTES, NONCE_BYTES, TAG_BYTES, OVERHEAD) == (32, 12, 16, 28)


@pytest.mark.parametrize(("plaintext", "ct_tag"), GCM_VECTORS)
def test_known_answer_decrypt(plaintext: bytes, ct_tag: str) -> None:
    box = Aead(bytes(32))
    blob = bytes(12) + bytes.fromhex(ct_tag)
    assert box.decrypt(blob, b"") == plaintext
    with pytest.raises(InvalidCiphertext):
        box.decrypt(blob, b"\x00")  # the AD is authenticated


@settings(max_examples=100, deadline=None)
@given(pt=st.binary(max_size=300), ad=st.binary(max_size=40))
def test_round_trip(pt: bytes, ad: bytes) -> None:
    box = Aead(KEY)
    blob = box.encrypt(pt, ad)
    assert len(blob) == len(pt) + OVERHEAD
    assert box.decrypt(blob, ad) == pt
    assert box.decrypt(bytearray(blob), bytearray(ad)) == pt  # type: ignore[arg-type]
    assert Aead(bytearray(KEY)).decrypt(memoryview(blob), ad) == pt  # type: ignore[arg-type]


def test_fresh_nonce_each_time() -> None:
    box = Aead(KEY)
    blobs = {box.encrypt(b"same", AD) for _ in range(64)}
    assert len(blobs) == 64
    assert len({b[:NONCE_BYTES] for b in blobs}) == 64


@settings(max_examples=200, deadline=None)
@given(pt=st.binary(max_size=64), ad=st.binary(max_size=16), data=st.data())
def test_flip_any_blob_bit_fails(pt: bytes, ad: bytes, data: st.DataObject) -> None:
    # Covers the nonce (first 12 bytes), the ciphertext and the tag (last 16 bytes).
    box = Aead(KEY)
    blob = bytearray(box.encrypt(pt, ad))
    i = data.draw(st.integers(0, len(blob) - 1), label="byte")
    blob[i] ^= 1 << data.draw(st.integers(0, 7), label="bit")
    with pytest.raises(InvalidCiphertext):
        box.decrypt(bytes(blob), ad)


@settings(max_examples=100, deadline=None)
@given(pt=st.binary(max_size=64), ad=st.binary(min_size=1, max_size=32), data=st.data())
def test_flip_any_ad_bit_fails(pt: bytes, ad: bytes, data: st.DataObject) -> None:
    box = Aead(KEY)
    blob = box.encrypt(pt, ad)
    bad = bytearray(ad)
    bad[data.draw(st.integers(0, len(ad) - 1))] ^= 1 << data.draw(st.integers(0, 7))
    with pytest.raises(InvalidCiphertext):
        box.decrypt(blob, bytes(bad))


@settings(max_examples=100, deadline=None)
@given(pt=st.binary(max_size=64), data=st.data())
def test_truncate_or_extend_fails(pt: bytes, data: st.DataObject) -> None:
    box = Aead(KEY)
    blob = box.encrypt(pt, AD)
    cut = data.draw(st.integers(0, len(blob) - 1))
    with pytest.raises(InvalidCiphertext):
        box.decrypt(blob[:cut], AD)
    extra = data.draw(st.binary(min_size=1, max_size=4))
    with pytest.raises(InvalidCiphertext):
        box.decrypt(blob + extra, AD)
    with pytest.raises(InvalidCiphertext):
        box.decrypt(blob, AD + extra)


def test_wrong_key_and_short_blobs() -> None:
    blob = Aead(KEY).encrypt(b"secret share", AD)
    with pytest.raises(InvalidCiphertext):
        Aead(bytes(32)).decrypt(blob, AD)
    for n in (0, 1, NONCE_BYTES, OVERHEAD - 1):
        with pytest.raises(InvalidCiphertext):
            Aead(KEY).decrypt(bytes(n), AD)
    # Exactly OVERHEAD bytes is a well-formed (empty) message that fails authentication.
    with pytest.raises(InvalidCiphertext):
        Aead(KEY).decrypt(bytes(OVERHEAD), AD)


def test_errors_are_indistinguishable() -> None:
    box = Aead(KEY)
    blob = box.encrypt(b"x", AD)
    messages = set()
    for bad_blob, bad_ad in [(blob[:5], AD), (blob, AD + b"!"), (bytes(len(blob)), AD)]:
        with pytest.raises(InvalidCiphertext) as info:
            box.decrypt(bad_blob, bad_ad)
        messages.add(str(info.value))
        err = info.value
        assert err.__cause__ is None  # no chained InvalidTag to tell the cases apart
        assert err.__context__ is None or err.__suppress_context__
    assert len(messages) == 1


@pytest.mark.parametrize(
    ("call", "exc", "name"),
    [
        (lambda: Aead("k" * 32), TypeError, "key"),  # type: ignore[arg-type]
        (lambda: Aead(bytes(16)), ValueError, "key"),
        (lambda: Aead(bytes(33)), ValueError, "key"),
        (lambda: Aead(KEY).encrypt("pt", AD), TypeError, "plaintext"),  # type: ignore[arg-type]
        (lambda: Aead(KEY).encrypt(b"pt", None), TypeError, "associated_data"),  # type: ignore[arg-type]
        (lambda: Aead(KEY).decrypt("blob", AD), TypeError, "blob"),  # type: ignore[arg-type]
        (lambda: Aead(KEY).decrypt(bytes(40), "ad"), TypeError, "associated_data"),  # type: ignore[arg-type]
    ],
)
def test_argument_checks(call: object, exc: type[Exception], name: str) -> None:
    with pytest.raises(exc, match=name):
        call()  # type: ignore[operator]


def test_cipher_object_is_reused_and_key_hidden() -> None:
    box = Aead(KEY)
    first = box._aesgcm
    box.encrypt(b"a", AD)
    box.decrypt(box.encrypt(b"b", AD), AD)
    assert box._aesgcm is first
    assert KEY.hex() not in repr(box)
    assert aead.OVERHEAD == NONCE_BYTES + TAG_BYTES
