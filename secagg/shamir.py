"""Shamir t-of-n secret sharing of 32-byte secrets over GF(p), p the smallest prime > 2^256.

A secret s (32 bytes, big-endian, so s < 2^256 < p) is the constant term of a random
polynomial of degree t - 1; the share of holder x is (x, f(x)). Any t shares determine f and
s; any t - 1 shares are consistent with every secret (perfect secrecy), since the other
coefficients are uniform in GF(p).

Wire format of a share: its y value as 33 bytes big-endian; x travels as the holder's id.

Note: reconstruction does not detect a wrong share in general (a wrong y yields a wrong
secret, which is < 2^256 with overwhelming probability). Authenticate shares in transit
(:mod:`secagg.aead`) and, where it matters, check the result against a commitment.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from secagg import rng
from secagg._check import check_bytes, check_int
from secagg.errors import InsufficientSharesError

__all__ = [
    "MAX_X",
    "PRIME",
    "SECRET_BYTES",
    "SHARE_BYTES",
    "Reconstructor",
    "Share",
    "combine",
    "split",
]

#: The smallest prime above 2^256 (tests/secagg/test_shamir.py proves both claims).
PRIME = 2**256 + 297
SECRET_BYTES = 32
SHARE_BYTES = 33
#: Evaluation points handed out by :func:`split` lie in ``[1, MAX_X]`` (32-bit holder ids).
MAX_X = 2**32 - 1
_SECRET_LIMIT = 2 ** (8 * SECRET_BYTES)


@dataclass(frozen=True, slots=True)
class Share:
    """One share: the evaluation point ``x`` in ``[1, p)`` and the value ``y`` in ``[0, p)``."""

    x: int
    y: int = field(repr=False)  # secret material: keep it out of logs

    def __post_init__(self) -> None:
        """Validate the coordinates.

        Raises:
            TypeError: ``x`` or ``y`` is not an int.
            ValueError: ``x`` outside ``[1, p)`` or ``y`` outside ``[0, p)``.
        """
        check_int("x", self.x, lo=1, hi=PRIME - 1)
        check_int("y", self.y, lo=0, hi=PRIME - 1)

    def to_bytes(self) -> bytes:
        """Return ``y`` as 33 bytes big-endian (``x`` is implied by the holder)."""
        return self.y.to_bytes(SHARE_BYTES, "big")

    @classmethod
    def from_bytes(cls, x: int, b: bytes) -> Share:
        """Parse the 33-byte encoding of the share held at ``x``.

        Raises:
            TypeError: ``x`` is not an int or ``b`` is not bytes-like.
            ValueError: ``b`` is not 33 bytes, ``y >= p`` or ``x`` outside ``[1, p)``.
        """
        check_int("x", x, lo=1, hi=PRIME - 1)
        raw = check_bytes("b", b, length=SHARE_BYTES)
        y = int.from_bytes(raw, "big")
        if y >= PRIME:
            raise ValueError("b encodes y >= p (not a field element)")
        return cls(x, y)


def _check_sequence(name: str, value: Any) -> Sequence[Any]:
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes, bytearray)):
        raise TypeError(f"{name} must be a sequence, got {type(value).__name__}")
    return value


def _check_xs(xs: Any, *, hi: int) -> list[int]:
    """Type-check every x first, then values and distinctness."""
    seq = _check_sequence("xs", xs)
    for i, x in enumerate(seq):
        check_int(f"xs[{i}]", x)
    for i, x in enumerate(seq):
        check_int(f"xs[{i}]", x, lo=1, hi=hi)
    if len(set(seq)) != len(seq):
        raise InsufficientSharesError("xs must be distinct (duplicate evaluation point)")
    return list(seq)


def _eval_poly(coeffs: Sequence[int], x: int) -> int:
    """Horner evaluation of sum(coeffs[k] * x^k) mod p.

    Reducing only every 8 steps is faster: x is small, so the accumulator grows by a few
    words between reductions instead of paying a division at every step.
    """
    acc = 0
    for i, c in enumerate(reversed(coeffs)):
        acc = acc * x + c
        if i & 7 == 7:
            acc %= PRIME
    return acc % PRIME


def _split_with_coefficients(
    secret: bytes, coeffs: Sequence[int], xs: Sequence[int]
) -> list[Share]:
    """Share ``secret`` with the given non-constant coefficients (degree = len(coeffs)).

    For frozen test vectors only: real sharing must draw the coefficients at random.

    Raises:
        TypeError, ValueError: as :func:`split`; a coefficient outside ``[0, p)``.
    """
    s = int.from_bytes(check_bytes("secret", secret, length=SECRET_BYTES), "big")
    coeff_seq = _check_sequence("coeffs", coeffs)
    for i, c in enumerate(coeff_seq):
        check_int(f"coeffs[{i}]", c, lo=0, hi=PRIME - 1)
    points = _check_xs(xs, hi=MAX_X)
    if len(points) < len(coeff_seq) + 1:
        raise ValueError(f"xs must have at least threshold = {len(coeff_seq) + 1} points")
    poly = [s, *coeff_seq]
    return [Share(x, _eval_poly(poly, x)) for x in points]


def split(secret: bytes, *, threshold: int, xs: Sequence[int]) -> list[Share]:
    """Split a 32-byte ``secret`` into one share per point of ``xs``; any ``threshold`` recover it.

    Raises:
        TypeError: ``secret`` not bytes-like, ``threshold`` not an int, ``xs`` not a sequence
            of ints.
        ValueError: ``secret`` not 32 bytes, ``threshold < 1``, ``len(xs) < threshold``, an x
            outside ``[1, 2^32)``; duplicate xs (as :class:`InsufficientSharesError`).
    """
    check_bytes("secret", secret, length=SECRET_BYTES)
    check_int("threshold", threshold)
    _check_sequence("xs", xs)
    check_int("threshold", threshold, lo=1, hi=max(1, len(xs)))
    coeffs = [rng.random_below(PRIME) for _ in range(threshold - 1)]
    return _split_with_coefficients(secret, coeffs, xs)


def _lagrange_at_zero(xs: Sequence[int]) -> list[int]:
    """Coefficients l_i with f(0) = sum(l_i * f(x_i)) for deg f < len(xs); one inversion.

    ``l_i = N / e_i`` with ``N = prod_j x_j`` and ``e_i = x_i * prod_{j != i} (x_j - x_i)``.
    The ``e_i`` (the only quadratic step) are exact integer products: for holder ids below
    2^31 numpy multiplies the small factors in groups that fit int64, and Python finishes each
    row with one ``math.prod``; the inverses come from one modular inversion (Montgomery).
    """
    t = len(xs)
    n_all = 1
    for x in xs:
        n_all = n_all * x % PRIME
    es = _row_products(xs)
    # Batch inversion (Montgomery's trick): one modular inverse for all e_i.
    running = [1] * (t + 1)
    for i, e in enumerate(es):
        running[i + 1] = (running[i] * e) % PRIME
    inv = pow(running[t], -1, PRIME) * n_all % PRIME
    out = [0] * t
    for i in range(t - 1, -1, -1):
        out[i] = (inv * running[i]) % PRIME
        inv = (inv * es[i]) % PRIME
    return out


def _row_products(xs: Sequence[int]) -> list[int]:
    """``e_i = x_i * prod_{j != i} (x_j - x_i) mod p`` for every i (never 0 for distinct xs)."""
    t = len(xs)
    top = max(xs, default=0)
    if t < 8 or top >= 2**31:  # small or huge points: plain Python products
        return [math.prod([xi, *(xj - xi for xj in xs if xj != xi)]) % PRIME for xi in xs]
    # |x_j - x_i| and x_i are below 2^width; a group of 63 // width factors fits in int64.
    group = max(1, 63 // top.bit_length())
    cols = -(-t // group) * group
    x = np.asarray(xs, dtype=np.int64)
    d = np.ones((t, cols), dtype=np.int64)
    np.subtract(x[None, :], x[:, None], out=d[:, :t])
    d[np.arange(t), np.arange(t)] = x  # the diagonal carries the factor x_i
    rows = d.reshape(t, cols // group, group).prod(axis=2).tolist()
    return [math.prod(r) % PRIME for r in rows]


class Reconstructor:
    """Recovers many secrets shared among one fixed set of ``threshold`` holders.

    The Lagrange coefficients at 0 are computed once in ``__init__``; each :meth:`combine` is
    then ``threshold`` multiplications and one reduction.
    """

    __slots__ = ("_coeffs", "_threshold", "_xs")

    def __init__(self, xs: Sequence[int], *, threshold: int) -> None:
        """Precompute for exactly these evaluation points.

        Raises:
            TypeError: ``threshold`` not an int, ``xs`` not a sequence of ints.
            ValueError: ``threshold < 1``, ``len(xs) != threshold``, an x outside ``[1, p)``.
            InsufficientSharesError: ``xs`` has duplicates, or fewer than ``threshold`` points.
        """
        check_int("threshold", threshold)
        points = _check_xs(xs, hi=PRIME - 1)
        check_int("threshold", threshold, lo=1)
        if len(points) < threshold:
            raise InsufficientSharesError(
                f"xs has {len(points)} points, fewer than threshold = {threshold}"
            )
        if len(points) != threshold:
            raise ValueError(f"xs must have exactly threshold = {threshold} points")
        self._threshold = threshold
        self._xs = tuple(points)
        self._coeffs = _lagrange_at_zero(points)

    @property
    def xs(self) -> tuple[int, ...]:
        """The evaluation points, in the order :meth:`combine` expects the ys."""
        return self._xs

    @property
    def threshold(self) -> int:
        """The number of shares each secret needs."""
        return self._threshold

    def combine(self, ys: Sequence[int]) -> bytes:
        """Return the 32-byte secret whose shares at ``self.xs`` are ``ys`` (same order).

        Raises:
            TypeError: ``ys`` not a sequence of ints.
            ValueError: a y outside ``[0, p)``, or more ys than ``threshold``.
            InsufficientSharesError: fewer ys than ``threshold``, or the result does not fit
                in 32 bytes (the shares are inconsistent).
        """
        seq = _check_sequence("ys", ys)
        for i, y in enumerate(seq):
            if type(y) is not int:  # fast path; check_int gives the precise error
                check_int(f"ys[{i}]", y)
            if not 0 <= y < PRIME:
                check_int(f"ys[{i}]", y, lo=0, hi=PRIME - 1)
        if len(seq) < self._threshold:
            raise InsufficientSharesError(
                f"got {len(seq)} shares, need threshold = {self._threshold}"
            )
        if len(seq) > self._threshold:
            raise ValueError(f"ys must have exactly threshold = {self._threshold} values")
        s: int = sum(map(operator.mul, self._coeffs, seq)) % PRIME
        if s >= _SECRET_LIMIT:
            raise InsufficientSharesError("inconsistent shares: the secret does not fit 32 bytes")
        return s.to_bytes(SECRET_BYTES, "big")

    def __repr__(self) -> str:
        return f"Reconstructor(threshold={self._threshold}, xs={list(self._xs)})"


def combine(shares: Sequence[Share], *, threshold: int) -> bytes:
    """Recover the 32-byte secret from the first ``threshold`` of ``shares``.

    Raises:
        TypeError: ``threshold`` not an int, ``shares`` not a sequence of :class:`Share`.
        ValueError: ``threshold < 1``.
        InsufficientSharesError: fewer than ``threshold`` shares, two shares with the same
            x, or a result that does not fit in 32 bytes (inconsistent shares).
    """
    check_int("threshold", threshold)
    seq = _check_sequence("shares", shares)
    for i, sh in enumerate(seq):
        if not isinstance(sh, Share):
            raise TypeError(f"shares[{i}] must be Share, got {type(sh).__name__}")
    check_int("threshold", threshold, lo=1)
    if len(seq) < threshold:
        raise InsufficientSharesError(f"got {len(seq)} shares, need threshold = {threshold}")
    if len({sh.x for sh in seq}) != len(seq):
        raise InsufficientSharesError("shares must have distinct x (duplicate holder)")
    used = seq[:threshold]
    return Reconstructor([sh.x for sh in used], threshold=threshold).combine([sh.y for sh in used])
