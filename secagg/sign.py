"""Ed25519 signatures (RFC 8032) through ``cryptography``.

:meth:`VerifyKey.from_bytes` additionally refuses non-canonical and small-order public keys.
OpenSSL accepts them, and under a small-order key (the identity point, say) one fixed
signature verifies for every message, so a party could later disown or replay what it signed.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature as _CryptoInvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from secagg import rng
from secagg._check import check_bytes
from secagg.errors import InvalidKeyError, InvalidSignature

__all__ = [
    "PRIVATE_KEY_BYTES",
    "PUBLIC_KEY_BYTES",
    "SIGNATURE_BYTES",
    "SigningKey",
    "VerifyKey",
]

PRIVATE_KEY_BYTES = 32
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64

# Edwards25519: -x^2 + y^2 = 1 + d x^2 y^2 over GF(2^255 - 19).
_P = 2**255 - 19
_D = (-121665 * pow(121666, -1, _P)) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)


def _decode_point(b: bytes) -> tuple[int, int] | None:
    """Decode a point as in RFC 8032 section 5.1.3; None if not canonical or not on the curve."""
    y = int.from_bytes(b, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    if y >= _P:
        return None
    u = (y * y - 1) % _P
    v = (_D * y * y + 1) % _P
    v3 = v * v * v % _P
    x = u * v3 * pow(u * v3 * v3 * v, (_P - 5) // 8, _P) % _P
    vx2 = v * x * x % _P
    if vx2 == (-u) % _P:
        x = x * _SQRT_M1 % _P
    elif vx2 != u:
        return None
    if x == 0 and sign:
        return None
    if x & 1 != sign:
        x = _P - x
    return x, y


def _is_weak_public_key(b: bytes) -> bool:
    """True if ``b`` is not a canonical curve point, or is a point of order dividing 8."""
    point = _decode_point(b)
    if point is None:
        return True
    # Three doublings in projective coordinates (dbl-2008-bbjlp, a = -1; complete on this
    # curve), then compare with the neutral element (0 : Z : Z).
    x, y, z = point[0], point[1], 1
    for _ in range(3):
        bb = (x + y) * (x + y) % _P
        c = x * x % _P
        d = y * y % _P
        f = (d - c) % _P
        j = (f - 2 * z * z) % _P
        x, y, z = (bb - c - d) * j % _P, f * (-c - d) % _P, f * j % _P
    return x == 0 and y == z


class VerifyKey:
    """An Ed25519 public key. Build one with :meth:`from_bytes` or :attr:`SigningKey.verify_key`."""

    __slots__ = ("_bytes", "_key")

    def __init__(self, key: Ed25519PublicKey) -> None:
        """Wrap a ``cryptography`` public key (prefer :meth:`from_bytes`).

        Raises:
            TypeError: ``key`` is not an ``Ed25519PublicKey``.
        """
        if not isinstance(key, Ed25519PublicKey):
            raise TypeError(f"key must be Ed25519PublicKey, got {type(key).__name__}")
        self._key = key
        self._bytes = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    @classmethod
    def from_bytes(cls, b: bytes) -> VerifyKey:
        """Load a public key from its 32-byte encoding.

        Raises:
            TypeError: ``b`` is not bytes-like.
            ValueError: ``b`` is not exactly 32 bytes.
            InvalidKeyError: ``b`` is not a canonical point encoding, or is a small-order point.
        """
        raw = check_bytes("b", b, length=PUBLIC_KEY_BYTES)
        if _is_weak_public_key(raw):
            raise InvalidKeyError(
                "b is not a valid Ed25519 public key (non-canonical or small order)"
            )
        return cls(Ed25519PublicKey.from_public_bytes(raw))

    def to_bytes(self) -> bytes:
        """Return the 32-byte encoding."""
        return self._bytes

    def verify(self, sig: bytes, msg: bytes) -> None:
        """Check that ``sig`` is a valid signature of ``msg`` under this key.

        Raises:
            TypeError: ``sig`` or ``msg`` is not bytes-like.
            InvalidSignature: any failure, including a signature of the wrong length.
        """
        sig_b = check_bytes("sig", sig)
        msg_b = check_bytes("msg", msg)
        if len(sig_b) != SIGNATURE_BYTES:
            raise InvalidSignature("signature does not verify")
        try:
            self._key.verify(sig_b, msg_b)
        except _CryptoInvalidSignature:
            raise InvalidSignature("signature does not verify") from None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, VerifyKey):
            return NotImplemented
        return self._bytes == other._bytes

    def __hash__(self) -> int:
        return hash(self._bytes)

    def __repr__(self) -> str:
        return f"VerifyKey({self._bytes.hex()})"


class SigningKey:
    """An Ed25519 private key. Build one with :meth:`generate` or :meth:`from_private_bytes`."""

    __slots__ = ("_key", "_verify_key")

    def __init__(self, key: Ed25519PrivateKey) -> None:
        """Wrap a ``cryptography`` private key (prefer the classmethods).

        Raises:
            TypeError: ``key`` is not an ``Ed25519PrivateKey``.
        """
        if not isinstance(key, Ed25519PrivateKey):
            raise TypeError(f"key must be Ed25519PrivateKey, got {type(key).__name__}")
        self._key = key
        self._verify_key = VerifyKey(key.public_key())

    @classmethod
    def generate(cls) -> SigningKey:
        """Return a fresh signing key from the OS CSPRNG (via :mod:`secagg.rng`)."""
        return cls.from_private_bytes(rng.random_bytes(PRIVATE_KEY_BYTES))

    @classmethod
    def from_private_bytes(cls, b: bytes) -> SigningKey:
        """Load a signing key from its 32-byte seed.

        Raises:
            TypeError: ``b`` is not bytes-like.
            ValueError: ``b`` is not exactly 32 bytes.
        """
        raw = check_bytes("b", b, length=PRIVATE_KEY_BYTES)
        return cls(Ed25519PrivateKey.from_private_bytes(raw))

    def private_bytes(self) -> bytes:
        """Return the 32-byte seed (secret: handle with care)."""
        return self._key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )

    def sign(self, msg: bytes) -> bytes:
        """Return the 64-byte Ed25519 signature of ``msg`` (deterministic).

        Raises:
            TypeError: ``msg`` is not bytes-like.
        """
        return self._key.sign(check_bytes("msg", msg))

    @property
    def verify_key(self) -> VerifyKey:
        """The matching public key."""
        return self._verify_key

    def __repr__(self) -> str:
        # Never print the private half.
        return f"SigningKey(verify_key={self._verify_key.to_bytes().hex()})"
