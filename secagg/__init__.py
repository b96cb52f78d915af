"""secagg: the hazardous layer of primitives for secure aggregation.

Every security parameter is explicit here and has no default (curve, HKDF ``info`` label,
modulus bits, threshold); the recipe layer, :mod:`secagg.protocols`, chooses them all once in a
validated :class:`secagg.protocols.SecAggConfig`. Use this package directly only to build a new
protocol; to aggregate, use :mod:`secagg.protocols` (or ``fl_core`` over the network).

The import surface is the submodules below plus the exception hierarchy; each submodule
documents its own ``__all__``:

    rng         the only randomness source (OS CSPRNG): ``random_bytes``, ``random_below``
    kex         X25519 + HKDF-SHA256 with mandatory salt and info: ``KeyPair``, ``agree``,
                ``pair_info``
    sign        Ed25519 identity keys: ``SigningKey``, ``VerifyKey``
    aead        AES-256-GCM with associated data; every failure is ``InvalidCiphertext``
    prg         the mask PRG (AES-256-CTR into preallocated vectors mod 2^bits): ``MaskPRG``
    shamir      t-of-n Shamir over GF(2^256 + 297): ``split``, ``combine``, ``Reconstructor``
    fixedpoint  floats <-> Z_(2^bits); ``FixedPointConfig`` makes overflow impossible
    packing     dense bit-packing of b-bit ring elements (b = 8..32): ``pack``, ``unpack``
    ckks        CKKS (TenSEAL) presets, contexts, packed exact integer aggregation
    errors      ``SecAggError`` > ``InvalidCiphertext``, ``InvalidSignature``, ``CkksError``,
                and the ``ValueError`` subclasses ``InvalidKeyError``,
                ``InsufficientSharesError``, ``RangeError``

Examples (run as doctests by ``tests/test_docs.py``).

Two parties agree on a pairwise key; the label binds protocol, round, purpose and both ids:

>>> from secagg import kex
>>> alice, bob = kex.KeyPair.generate(), kex.KeyPair.generate()
>>> info = kex.pair_info(protocol=b"demo", version=1, round_id=7, purpose=b"mask", a=1, b=2)
>>> salt = b"round-7-salt"
>>> k1 = kex.agree(alice, bob.public_bytes(), salt=salt, info=info)
>>> k1 == kex.agree(bob, alice.public_bytes(), salt=salt, info=info), len(k1)
(True, 32)

Shamir: any ``t`` shares open the secret, fewer are refused:

>>> from secagg import rng, shamir
>>> secret = rng.random_bytes(32)
>>> shares = shamir.split(secret, threshold=3, xs=[1, 2, 3, 4, 5])
>>> shamir.combine(shares[2:], threshold=3) == secret
True
>>> shamir.combine(shares[:2], threshold=3)
Traceback (most recent call last):
    ...
secagg.errors.InsufficientSharesError: got 2 shares, need threshold = 3

Mask, sum, unmask: two encodings masked with opposite PRG streams sum to the exact value,
and the fixed-point config refuses a ring the sum could wrap:

>>> import numpy as np
>>> from secagg import fixedpoint, prg
>>> cfg = fixedpoint.FixedPointConfig(bits=24, scale=16, clip=1.0, n_max=2)
>>> seed = rng.random_bytes(prg.SEED_BYTES)
>>> total = np.zeros(3, dtype=np.uint32)
>>> for sign, x in ((False, [0.5, -0.25, 1.0]), (True, [0.25, 0.25, -1.0])):
...     y, _ = fixedpoint.encode(np.array(x), cfg, rounding=fixedpoint.Rounding.NEAREST)
...     prg.MaskPRG(seed, label=b"demo/pair").add_into(y, bits=cfg.bits, subtract=sign)
...     total = (total + y) & np.uint32((1 << cfg.bits) - 1)
>>> fixedpoint.decode_sum(total, cfg, n=2).tolist()
[0.75, 0.0, 0.0]
>>> fixedpoint.FixedPointConfig(bits=16, scale=16, clip=1.0, n_max=20)  # doctest: +ELLIPSIS
Traceback (most recent call last):
    ...
secagg.errors.RangeError: bits=16 can overflow: ... need minimal_bits(...) = 22 bits (...)
"""

import importlib
from typing import TYPE_CHECKING, Any

from secagg import (
    aead,
    errors,
    fixedpoint,
    kex,
    packing,
    prg,
    rng,
    shamir,
    sign,
)
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
    "aead",
    "ckks",
    "errors",
    "fixedpoint",
    "kex",
    "packing",
    "prg",
    "rng",
    "shamir",
    "sign",
]
__version__ = "0.1.0"

if TYPE_CHECKING:
    from secagg import ckks


def __getattr__(name: str) -> Any:
    """``secagg.ckks`` loads on first use: it needs TenSEAL, the ``ckks`` extra.

    Raises:
        AttributeError: for a name this package does not have.
        ImportError: when TenSEAL is missing (``pip install 'secagg[ckks]'``).
    """
    if name != "ckks":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return importlib.import_module("secagg.ckks")

