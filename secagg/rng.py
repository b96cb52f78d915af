"""The only source of randomness in ``secagg`` and ``protocols``.

Everything comes from the operating system's CSPRNG (``os.urandom`` / ``secrets``). Bulk
randomness (for stochastic rounding, say) comes from an AES-CTR stream keyed with 32 fresh
bytes from here: see :func:`secagg.prg.random_uint32`.
"""

from __future__ import annotations

import os
import secrets

__all__ = ["random_below", "random_bytes"]


def random_bytes(n: int) -> bytes:
    """Return ``n`` bytes from the OS CSPRNG.

    Raises:
        TypeError: ``n`` is not an int.
        ValueError: ``n`` is negative.
    """
    if not isinstance(n, int) or isinstance(n, bool):
        raise TypeError(f"n must be int, got {type(n).__name__}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return os.urandom(n)


def random_below(upper: int) -> int:
    """Return a uniform integer in ``[0, upper)`` from the OS CSPRNG.

    Raises:
        TypeError: ``upper`` is not an int.
        ValueError: ``upper`` is not positive.
    """
    if not isinstance(upper, int) or isinstance(upper, bool):
        raise TypeError(f"upper must be int, got {type(upper).__name__}")
    if upper <= 0:
        raise ValueError(f"upper must be > 0, got {upper}")
    return secrets.randbelow(upper)
