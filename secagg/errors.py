"""One small exception hierarchy for the whole library.

Every error the library raises on purpose derives from :class:`SecAggError`. Errors that are
also a misuse of a value derive from :class:`ValueError` as well, so ordinary ``except
ValueError`` handlers keep working.
"""

from __future__ import annotations

__all__ = [
    "CkksError",
    "InsufficientSharesError",
    "InvalidCiphertext",
    "InvalidKeyError",
    "InvalidSignature",
    "RangeError",
    "SecAggError",
]


class SecAggError(Exception):
    """Base class of every error raised by secagg."""


class InvalidCiphertext(SecAggError):
    """An AEAD ciphertext failed to open.

    Deliberately carries no detail: a wrong key, a wrong nonce, a flipped byte, wrong
    associated data and truncation all look the same to the caller (and to an attacker).
    """


class InvalidSignature(SecAggError):
    """A signature did not verify under the claimed public key."""


class InvalidKeyError(SecAggError, ValueError):
    """Key material is malformed or degenerate (for example an all-zero X25519 shared secret)."""


class InsufficientSharesError(SecAggError, ValueError):
    """Fewer Shamir shares than the threshold were offered, or they were inconsistent."""


class RangeError(SecAggError, ValueError):
    """A fixed-point or ring configuration cannot hold the values it must (overflow by design)."""


class CkksError(SecAggError):
    """A CKKS ciphertext or context was malformed, truncated, bound to another context,
    out of order, of the wrong count, or decrypted to values outside the layout's range."""
