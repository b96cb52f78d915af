"""Tests for secagg.sign: RFC 8032 vectors, tampering, weak keys, argument checks."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.errors import InvalidKeyError, InvalidSignature
from secagg.sign import SIGNATURE_BYTES, SigningKey, VerifyKey

# RFC 8032, section 7.1, TEST 1 (empty message) and TEST 2 (one byte 0x72).
RFC8032 = [
    (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        b"",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
        "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        b"\x72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
        "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
]

# Encodings of the eight small-order points of edwards25519 (y = 1, -1, 0 and the two
# order-8 y values, each with both signs of x where x != 0), plus non-canonical encodings
# (y >= p) that reduce to them.
_Y_ORDER8_A = "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"
_Y_ORDER8_B = "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"
SMALL_ORDER = [
    "01" + "00" * 31,  # identity
    "ec" + "ff" * 30 + "7f",  # (0, -1), order 2
    "00" * 32,  # (sqrt(-1), 0), order 4
    "00" * 31 + "80",  # (-sqrt(-1), 0), order 4
    _Y_ORDER8_A,
    _Y_ORDER8_A[:-2] + "fa",
    _Y_ORDER8_B,
    _Y_ORDER8_B[:-2] + "85",
]
NON_CANONICAL = [
    "ed" + "ff" * 30 + "7f",  # y = p (= 0)
    "ee" + "ff" * 30 + "7f",  # y = p + 1 (= 1)
    "ff" * 31 + "7f",  # y = 2^255 - 1
    "01" + "00" * 30 + "80",  # identity with the sign bit set (x = 0 is never negative)
]


@pytest.mark.parametrize(("seed", "pub", "msg", "sig"), RFC8032)
def test_rfc8032(seed: str, pub: str, msg: bytes, sig: str) -> None:
    sk = SigningKey.from_private_bytes(bytes.fromhex(seed))
    assert sk.private_bytes().hex() == seed
    assert sk.verify_key.to_bytes().hex() == pub
    assert sk.sign(msg).hex() == sig
    vk = VerifyKey.from_bytes(bytes.fromhex(pub))
    assert vk == sk.verify_key
    assert hash(vk) == hash(sk.verify_key)
    vk.verify(bytes.fromhex(sig), msg)  # no exception
    with pytest.raises(InvalidSignature):
        vk.verify(bytes.fromhex(sig), msg + b"\x00")


@settings(max_examples=60, deadline=None)
@given(msg=st.binary(max_size=200), data=st.data())
def test_any_bit_flip_fails(msg: bytes, data: st.DataObject) -> None:
    sk = SigningKey.generate()
    sig = sk.sign(msg)
    vk = sk.verify_key
    vk.verify(sig, msg)
    i = data.draw(st.integers(0, len(sig) - 1))
    bit = data.draw(st.integers(0, 7))
    bad = bytearray(sig)
    bad[i] ^= 1 << bit
    with pytest.raises(InvalidSignature):
        vk.verify(bytes(bad), msg)
    if msg:
        j = data.draw(st.integers(0, len(msg) - 1))
        bad_msg = bytearray(msg)
        bad_msg[j] ^= 1 << bit
        with pytest.raises(InvalidSignature):
            vk.verify(sig, bytes(bad_msg))


def test_wrong_key_and_wrong_length_signatures() -> None:
    a, b = SigningKey.generate(), SigningKey.generate()
    sig = a.sign(b"m")
    with pytest.raises(InvalidSignature):
        b.verify_key.verify(sig, b"m")
    for bad in (b"", sig[:-1], sig + b"\x00", bytes(SIGNATURE_BYTES * 2)):
        with pytest.raises(InvalidSignature):
            a.verify_key.verify(bad, b"m")


@settings(max_examples=50, deadline=None)
@given(seed=st.binary(min_size=32, max_size=32))
def test_honest_keys_round_trip(seed: bytes) -> None:
    sk = SigningKey.from_private_bytes(seed)
    vk = VerifyKey.from_bytes(sk.verify_key.to_bytes())  # never flagged as weak
    vk.verify(sk.sign(b"hello"), b"hello")
    assert SigningKey.from_private_bytes(sk.private_bytes()).verify_key == vk


def test_small_order_key_allows_universal_forgery_in_openssl() -> None:
    # Why from_bytes must refuse these: OpenSSL accepts (R = identity, S = 0) for any message.
    raw = Ed25519PublicKey.from_public_bytes(bytes.fromhex(SMALL_ORDER[0]))
    forged = bytes.fromhex(SMALL_ORDER[0]) + bytes(32)
    raw.verify(forged, b"anything at all")  # no exception: the weakness is real


@pytest.mark.parametrize("enc", SMALL_ORDER + NON_CANONICAL)
def test_weak_public_keys_rejected(enc: str) -> None:
    with pytest.raises(InvalidKeyError):
        VerifyKey.from_bytes(bytes.fromhex(enc))


def test_off_curve_rejected() -> None:
    # y = 2: (y^2 - 1)/(d y^2 + 1) is a non-square, so no x exists.
    with pytest.raises(InvalidKeyError):
        VerifyKey.from_bytes((2).to_bytes(32, "little"))


def test_argument_checks() -> None:
    sk = SigningKey.generate()
    vk = sk.verify_key
    with pytest.raises(TypeError, match="b must be bytes"):
        SigningKey.from_private_bytes("k" * 32)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="b must be exactly 32"):
        SigningKey.from_private_bytes(bytes(33))
    with pytest.raises(TypeError, match="b must be bytes"):
        VerifyKey.from_bytes(list(vk.to_bytes()))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="b must be exactly 32"):
        VerifyKey.from_bytes(vk.to_bytes()[:31])
    with pytest.raises(TypeError, match="msg"):
        sk.sign("text")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="sig"):
        vk.verify("s" * 64, b"m")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="msg"):
        vk.verify(sk.sign(b"m"), None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="key"):
        SigningKey(b"x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="key"):
        VerifyKey(b"x")  # type: ignore[arg-type]


def test_repr_hides_private_key() -> None:
    sk = SigningKey.from_private_bytes(bytes.fromhex(RFC8032[0][0]))
    assert RFC8032[0][0] not in repr(sk)
    assert RFC8032[0][1] in repr(sk)


def test_verify_key_equality() -> None:
    a, b = SigningKey.generate().verify_key, SigningKey.generate().verify_key
    assert a != b
    assert a == VerifyKey.from_bytes(a.to_bytes())
    assert a != a.to_bytes()
    assert len({a, VerifyKey.from_bytes(a.to_bytes()), b}) == 2
