"""Argument checks shared by the primitives: type first (TypeError), then value (ValueError)."""

from __future__ import annotations

from typing import Any

__all__ = ["check_bytes", "check_int"]


def check_int(name: str, value: Any, *, lo: int | None = None, hi: int | None = None) -> int:
    """Check that ``value`` is an int (not a bool) within ``[lo, hi]``.

    Raises:
        TypeError: not an int.
        ValueError: outside the bounds.
    """
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be int, got {type(value).__name__}")
    if lo is not None and value < lo:
        raise ValueError(f"{name} must be >= {lo}, got {value}")
    if hi is not None and value > hi:
        raise ValueError(f"{name} must be <= {hi}, got {value}")
    return value


def check_bytes(name: str, value: Any, *, length: int | None = None, min_length: int = 0) -> bytes:
    """Check that ``value`` is bytes-like and of the exact (or minimum) length; return bytes.

    Raises:
        TypeError: not bytes, bytearray or memoryview.
        ValueError: wrong length.
    """
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"{name} must be bytes, got {type(value).__name__}")
    b = bytes(value)
    if length is not None and len(b) != length:
        raise ValueError(f"{name} must be exactly {length} bytes, got {len(b)}")
    if len(b) < min_length:
        raise ValueError(f"{name} must be at least {min_length} bytes, got {len(b)}")
    return b
