"""Pairwise key agreement: X25519 followed by HKDF-SHA256.

Hazardous layer: the caller chooses the HKDF ``salt`` and ``info`` (there are no defaults). Use
:func:`pair_info` to build an ``info`` label that binds the protocol, version, round, purpose
and the (unordered) pair of parties, so that keys for different rounds, purposes or pairs are
independent.
"""

from __future__ import annotations

import hmac

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from secagg import rng
from secagg._check import check_bytes, check_int
from secagg.errors import InvalidKeyError

__all__ = [
    "MAX_OUTPUT_BYTES",
    "PRIVATE_KEY_BYTES",
    "PUBLIC_KEY_BYTES",
    "KeyPair",
    "agree",
    "pair_info",
]

PRIVATE_KEY_BYTES = 32
PUBLIC_KEY_BYTES = 32
#: HKDF-SHA256 can expand to at most 255 blocks of 32 bytes (RFC 5869, section 2.3).
MAX_OUTPUT_BYTES = 255 * 32

_PAIR_INFO_TAG = b"secagg/pair-info/v1"
_U32_MAX = 2**32 - 1
_U64_MAX = 2**64 - 1
_ZERO_SECRET = bytes(32)


class KeyPair:
    """An X25519 key pair. Build one with :meth:`generate` or :meth:`from_private_bytes`."""

    __slots__ = ("_private", "_public")

    def __init__(self, private: X25519PrivateKey) -> None:
        """Wrap a ``cryptography`` private key (prefer the classmethods).

        Raises:
            TypeError: ``private`` is not an ``X25519PrivateKey``.
        """
        if not isinstance(private, X25519PrivateKey):
            raise TypeError(f"private must be X25519PrivateKey, got {type(private).__name__}")
        self._private = private
        self._public = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @classmethod
    def generate(cls) -> KeyPair:
        """Return a fresh key pair from the OS CSPRNG (via :mod:`secagg.rng`)."""
        return cls.from_private_bytes(rng.random_bytes(PRIVATE_KEY_BYTES))

    @classmethod
    def from_private_bytes(cls, b: bytes) -> KeyPair:
        """Load a key pair from its 32-byte raw private key.

        Raises:
            TypeError: ``b`` is not bytes-like.
            ValueError: ``b`` is not exactly 32 bytes.
        """
        raw = check_bytes("b", b, length=PRIVATE_KEY_BYTES)
        return cls(X25519PrivateKey.from_private_bytes(raw))

    def private_bytes(self) -> bytes:
        """Return the 32-byte raw private key (secret: handle with care)."""
        return self._private.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )

    def public_bytes(self) -> bytes:
        """Return the 32-byte raw public key."""
        return self._public

    def __repr__(self) -> str:
        # Never print the private half.
        return f"KeyPair(public={self._public.hex()})"


def _length_prefixed(field: bytes) -> bytes:
    return len(field).to_bytes(4, "big") + field


def pair_info(
    *, protocol: bytes, version: int, round_id: int, purpose: bytes, a: int, b: int
) -> bytes:
    """Return the canonical HKDF ``info`` label for the key shared by parties ``a`` and ``b``.

    The encoding is injective: a fixed tag, then ``protocol`` and ``purpose`` each prefixed by
    their 4-byte big-endian length, ``version`` as 4 bytes, ``round_id`` and the two party ids
    as 8 bytes each (big-endian). The ids are sorted ascending, so both parties derive the same
    label: ``pair_info(..., a=x, b=y) == pair_info(..., a=y, b=x)``.

    Raises:
        TypeError: a field has the wrong type (the message names it).
        ValueError: ``protocol`` or ``purpose`` is empty, ``version`` is outside
            ``[0, 2^32)``, ``round_id``, ``a`` or ``b`` outside ``[0, 2^64)``, or ``a == b``.
    """
    protocol = check_bytes("protocol", protocol, min_length=1)
    version = check_int("version", version, lo=0, hi=_U32_MAX)
    round_id = check_int("round_id", round_id, lo=0, hi=_U64_MAX)
    purpose = check_bytes("purpose", purpose, min_length=1)
    a = check_int("a", a, lo=0, hi=_U64_MAX)
    b = check_int("b", b, lo=0, hi=_U64_MAX)
    if a == b:
        raise ValueError(f"a and b must be distinct parties, got a == b == {a}")
    lo, hi = (a, b) if a < b else (b, a)
    return b"".join(
        (
            _length_prefixed(_PAIR_INFO_TAG),
            _length_prefixed(protocol),
            version.to_bytes(4, "big"),
            round_id.to_bytes(8, "big"),
            _length_prefixed(purpose),
            lo.to_bytes(8, "big"),
            hi.to_bytes(8, "big"),
        )
    )


def agree(
    private: KeyPair, peer_public: bytes, *, salt: bytes, info: bytes, length: int = 32
) -> bytes:
    """Derive ``length`` bytes shared with the owner of ``peer_public``.

    Computes the X25519 shared secret, then HKDF-SHA256 with the given ``salt`` and ``info``.

    Raises:
        TypeError: ``private`` is not a :class:`KeyPair`, or ``peer_public``, ``salt``,
            ``info`` are not bytes-like, or ``length`` is not an int.
        ValueError: ``peer_public`` is not 32 bytes, ``salt`` or ``info`` is empty, or
            ``length`` is outside ``[1, 8160]``.
        InvalidKeyError: the shared secret is all zero (``peer_public`` is a low-order
            point): a peer could otherwise force a key known to everyone.
    """
    if not isinstance(private, KeyPair):
        raise TypeError(f"private must be KeyPair, got {type(private).__name__}")
    peer = check_bytes("peer_public", peer_public, length=PUBLIC_KEY_BYTES)
    salt = check_bytes("salt", salt, min_length=1)
    info = check_bytes("info", info, min_length=1)
    length = check_int("length", length, lo=1, hi=MAX_OUTPUT_BYTES)
    try:
        shared = private._private.exchange(X25519PublicKey.from_public_bytes(peer))
    except ValueError:
        # OpenSSL refuses an all-zero result; report it as what it is.
        raise InvalidKeyError("peer_public is a low-order point (all-zero shared secret)") from None
    if hmac.compare_digest(shared, _ZERO_SECRET):  # belt and braces for other backends
        raise InvalidKeyError("peer_public is a low-order point (all-zero shared secret)")
    return _hkdf_sha256(shared, salt=salt, info=info, length=length)


def _hkdf_sha256(ikm: bytes, *, salt: bytes, info: bytes, length: int) -> bytes:
    """HKDF-SHA256 (RFC 5869) as :func:`agree` wires it; unchecked (tests feed RFC vectors)."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)
