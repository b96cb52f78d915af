"""Tests for secagg.kex: RFC 7748 and RFC 5869 vectors, low-order points, pair_info, checks."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg import kex
from secagg.errors import InvalidKeyError
from secagg.kex import KeyPair, agree, pair_info

# RFC 7748, section 6.1.
ALICE_PRIV = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
ALICE_PUB = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
BOB_PRIV = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
BOB_PUB = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
SHARED_K = bytes.fromhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")

# RFC 5869, appendix A, test cases 1-3 (SHA-256): (ikm, salt, info, length, prk, okm).
RFC5869 = [
    (
        bytes([0x0B] * 22),
        bytes(range(0x00, 0x0D)),
        bytes(range(0xF0, 0xFA)),
        42,
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865",
    ),
    (
        bytes(range(0x00, 0x50)),
        bytes(range(0x60, 0xB0)),
        bytes(range(0xB0, 0x100)),
        82,
        "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c"
        "59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71"
        "cc30c58179ec3e87c14c01d5c1f3434f1d87",
    ),
    (bytes([0x0B] * 22), b"", b"", 42,
     "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"),
]  # fmt: skip

# X25519 low-order u-coordinates (and non-canonical encodings of them): all give a zero secret.
LOW_ORDER = [
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0100000000000000000000000000000000000000000000000000000000000000",
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
    "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "0000000000000000000000000000000000000000000000000000000000000080",  # 0, top bit set
]

SALT = b"secagg/test/salt"
INFO = pair_info(protocol=b"secagg+", version=1, round_id=7, purpose=b"mask", a=3, b=9)


def test_rfc7748_public_keys() -> None:
    assert KeyPair.from_private_bytes(ALICE_PRIV).public_bytes() == ALICE_PUB
    assert KeyPair.from_private_bytes(BOB_PRIV).public_bytes() == BOB_PUB
    assert KeyPair.from_private_bytes(ALICE_PRIV).private_bytes() == ALICE_PRIV


def test_rfc7748_shared_secret_feeds_hkdf() -> None:
    alice, bob = KeyPair.from_private_bytes(ALICE_PRIV), KeyPair.from_private_bytes(BOB_PRIV)
    expected = HKDF(hashes.SHA256(), 32, SALT, INFO).derive(SHARED_K)
    assert agree(alice, BOB_PUB, salt=SALT, info=INFO) == expected
    assert agree(bob, ALICE_PUB, salt=SALT, info=INFO) == expected


@pytest.mark.parametrize(("ikm", "salt", "info", "length", "okm"), RFC5869)
def test_rfc5869_hkdf_wiring(ikm: bytes, salt: bytes, info: bytes, length: int, okm: str) -> None:
    assert kex._hkdf_sha256(ikm, salt=salt, info=info, length=length).hex() == okm


def test_rfc5869_case1_through_agree() -> None:
    # agree == HKDF(salt, info) over the X25519 secret: the RFC 7748 K with RFC 5869 case 1 params.
    _, salt, info, length, _ = RFC5869[0]
    alice = KeyPair.from_private_bytes(ALICE_PRIV)
    got = agree(alice, BOB_PUB, salt=salt, info=info, length=length)
    assert got == kex._hkdf_sha256(SHARED_K, salt=salt, info=info, length=length)
    assert len(got) == length


@pytest.mark.parametrize("point", LOW_ORDER)
def test_low_order_peer_rejected(point: str) -> None:
    with pytest.raises(InvalidKeyError, match="low-order"):
        agree(KeyPair.generate(), bytes.fromhex(point), salt=SALT, info=INFO)


def test_generated_pairs_agree_and_differ() -> None:
    a, b, c = KeyPair.generate(), KeyPair.generate(), KeyPair.generate()
    k_ab = agree(a, b.public_bytes(), salt=SALT, info=INFO)
    assert k_ab == agree(b, a.public_bytes(), salt=SALT, info=INFO)
    assert k_ab != agree(a, c.public_bytes(), salt=SALT, info=INFO)
    assert k_ab != agree(a, b.public_bytes(), salt=SALT + b"2", info=INFO)
    other = pair_info(protocol=b"secagg+", version=1, round_id=8, purpose=b"mask", a=3, b=9)
    assert k_ab != agree(a, b.public_bytes(), salt=SALT, info=other)
    assert len(agree(a, b.public_bytes(), salt=SALT, info=INFO, length=64)) == 64
    assert a.public_bytes() != b.public_bytes()


def test_repr_hides_private_key() -> None:
    kp = KeyPair.from_private_bytes(ALICE_PRIV)
    assert ALICE_PRIV.hex() not in repr(kp)
    assert ALICE_PUB.hex() in repr(kp)


def test_pair_info_symmetric_and_layout() -> None:
    kw = {"protocol": b"p", "version": 2, "round_id": 5, "purpose": b"q"}
    assert pair_info(**kw, a=1, b=2) == pair_info(**kw, a=2, b=1)  # type: ignore[arg-type]
    info = pair_info(**kw, a=2, b=1)  # type: ignore[arg-type]
    tag = b"secagg/pair-info/v1"
    assert info == (
        len(tag).to_bytes(4, "big") + tag
        + b"\x00\x00\x00\x01p" + b"\x00\x00\x00\x02" + (5).to_bytes(8, "big")
        + b"\x00\x00\x00\x01q" + (1).to_bytes(8, "big") + (2).to_bytes(8, "big")
    )  # fmt: skip


_fields = st.tuples(
    st.binary(min_size=1, max_size=6),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**64 - 1),
    st.binary(min_size=1, max_size=6),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**64 - 1),
).filter(lambda f: f[4] != f[5])


def _norm(f: tuple[bytes, int, int, bytes, int, int]) -> tuple[bytes, int, int, bytes, int, int]:
    return (f[0], f[1], f[2], f[3], min(f[4], f[5]), max(f[4], f[5]))


@settings(max_examples=300, deadline=None)
@given(_fields, _fields)
def test_pair_info_injective(f1: tuple, g1: tuple) -> None:  # type: ignore[type-arg]
    def enc(f: tuple) -> bytes:  # type: ignore[type-arg]
        return pair_info(protocol=f[0], version=f[1], round_id=f[2], purpose=f[3], a=f[4], b=f[5])

    assert (enc(f1) == enc(g1)) == (_norm(f1) == _norm(g1))


def test_pair_info_shifting_bytes_between_fields_changes_label() -> None:
    x = pair_info(protocol=b"ab", version=1, round_id=1, purpose=b"c", a=0, b=1)
    y = pair_info(protocol=b"a", version=1, round_id=1, purpose=b"bc", a=0, b=1)
    assert x != y


GOOD_PI = {"protocol": b"p", "version": 1, "round_id": 1, "purpose": b"q", "a": 1, "b": 2}


@pytest.mark.parametrize(
    ("field", "value", "exc", "match"),
    [
        ("protocol", "p", TypeError, "protocol"),
        ("protocol", b"", ValueError, "protocol"),
        ("version", 1.0, TypeError, "version"),
        ("version", True, TypeError, "version"),
        ("version", -1, ValueError, "version"),
        ("version", 2**32, ValueError, "version"),
        ("round_id", "1", TypeError, "round_id"),
        ("round_id", 2**64, ValueError, "round_id"),
        ("purpose", None, TypeError, "purpose"),
        ("purpose", b"", ValueError, "purpose"),
        ("a", 1.5, TypeError, "a must be int"),
        ("a", -1, ValueError, "a must be >= 0"),
        ("b", 2**64, ValueError, "b must be <="),
        ("b", 1, ValueError, "distinct"),  # a == b
    ],
)
def test_pair_info_checks(field: str, value: object, exc: type[Exception], match: str) -> None:
    kwargs = dict(GOOD_PI, **{field: value})
    with pytest.raises(exc, match=match):
        pair_info(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "exc", "name"),
    [
        ({"private": ALICE_PRIV}, TypeError, "private"),
        ({"peer_public": "x" * 32}, TypeError, "peer_public"),
        ({"peer_public": BOB_PUB[:31]}, ValueError, "peer_public"),
        ({"peer_public": BOB_PUB + b"\x00"}, ValueError, "peer_public"),
        ({"salt": None}, TypeError, "salt"),
        ({"salt": b""}, ValueError, "salt"),
        ({"info": "info"}, TypeError, "info"),
        ({"info": b""}, ValueError, "info"),
        ({"length": 32.0}, TypeError, "length"),
        ({"length": 0}, ValueError, "length"),
        ({"length": 255 * 32 + 1}, ValueError, "length"),
    ],
)
def test_agree_checks(kwargs: dict[str, object], exc: type[Exception], name: str) -> None:
    args: dict[str, object] = {
        "private": KeyPair.from_private_bytes(ALICE_PRIV),
        "peer_public": BOB_PUB,
        "salt": SALT,
        "info": INFO,
    }
    args.update(kwargs)
    with pytest.raises(exc, match=name):
        agree(**args)  # type: ignore[arg-type]


def test_keypair_checks() -> None:
    with pytest.raises(TypeError, match="b must be bytes"):
        KeyPair.from_private_bytes("0" * 32)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="b must be exactly 32"):
        KeyPair.from_private_bytes(bytes(31))
    with pytest.raises(TypeError, match="private"):
        KeyPair(ALICE_PRIV)  # type: ignore[arg-type]
    assert KeyPair.from_private_bytes(bytearray(ALICE_PRIV)).public_bytes() == ALICE_PUB  # type: ignore[arg-type]
