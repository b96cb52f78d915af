"""secagg: the hazardous layer of primitives for secure aggregation.

Every security parameter is explicit here; the recipe layer (:mod:`protocols`) chooses them.

Modules:
    rng         the only randomness source (OS CSPRNG)
    kex         X25519 key agreement + HKDF-SHA256 with mandatory salt and info labels
    sign        Ed25519 identity keys
    aead        AES-256-GCM with associated data; every failure is InvalidCiphertext
    prg         the mask PRG: AES-256-CTR expanded into preallocated vectors mod 2^bits
    shamir      t-of-n Shamir sharing over GF(2^256 + 297) with precomputed Lagrange
    fixedpoint  floats <-> Z_(2^bits) with a config that makes overflow impossible
    packing     dense bit-packing of b-bit ring elements (b = 8..32)
    ckks        CKKS (TenSEAL) presets, contexts and packed, exact integer aggregation
    errors      the exception hierarchy
"""

from secagg import errors
from secagg.errors import (
    CkksError,
    InsufficientSharesError,
    InvalidCiphertext,
    InvalidKeyError,
    InvalidSignature,
    RangeError,
    SecAggError,
)

__all__ = [
    "CkksError",
    "InsufficientSharesError",
    "InvalidCiphertext",
    "InvalidKeyError",
    "InvalidSignature",
    "RangeError",
    "SecAggError",
    "errors",
]
__version__ = "0.1.0"
