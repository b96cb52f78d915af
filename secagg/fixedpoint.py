"""Fixed-point encoding of float vectors into the ring ``Z / 2^bits`` and back.

A value ``x`` is clipped to ``[-clip, clip]``, scaled by ``2^scale`` (``scale`` fractional
bits), rounded to an integer (to nearest, or stochastically for an unbiased sum) and stored
in two's complement mod ``2^bits`` in a uint32 word. Summing ``n`` encodings mod ``2^bits``
and lifting the result back to a signed integer gives the exact sum of the rounded values,
provided the sum cannot wrap. :class:`FixedPointConfig` makes wrapping impossible by
construction: it refuses any ``(bits, scale, clip, n_max)`` for which ``n_max`` clipped,
rounded values could leave the signed range.

Clipping is never silent: :func:`encode` returns a :class:`ClipReport` and the caller decides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from fractions import Fraction
from typing import Any

import numpy as np
import numpy.typing as npt

from secagg._check import check_int
from secagg.errors import RangeError
from secagg.prg import random_uint32

__all__ = ["ClipReport", "FixedPointConfig", "Rounding", "decode_sum", "encode"]

_CHUNK_VALUES = 1 << 16  # 64K values: float64 scratch of 512 KiB stays in L2
_MAX_SCALE = 1023  # 2^scale must be a finite float64
_TWO_POW_32 = 2.0**32


class Rounding(Enum):
    """How a scaled value is turned into an integer."""

    NEAREST = "nearest"
    """Round half to even: error at most half a unit, deterministic, slightly biased sums."""
    STOCHASTIC = "stochastic"
    """Round up with probability equal to the fraction: unbiased, error below one unit."""


def _clip_units(clip: float, scale: int) -> int:
    """The largest magnitude an encoded value can take: ``ceil(clip * 2^scale)``."""
    return math.ceil(Fraction(clip) * (1 << scale))


def _check_clip(clip: Any) -> float:
    if isinstance(clip, bool) or not isinstance(clip, (int, float)):
        raise TypeError(f"clip must be float, got {type(clip).__name__}")
    c = float(clip)
    if not math.isfinite(c) or c <= 0.0:
        raise ValueError(f"clip must be finite and > 0, got {clip!r}")
    return c


@dataclass(frozen=True, kw_only=True)
class FixedPointConfig:
    """Ring size, precision, clip range and the most encodings that may be summed.

    Attributes:
        bits: ring is ``Z / 2^bits``, in [8, 32].
        scale: fractional bits; resolution ``2^-scale``. In [0, 1023].
        clip: values are clamped to ``[-clip, clip]``; finite, > 0.
        n_max: the most encodings that will ever be summed, >= 1.

    Raises (on construction):
        TypeError: a field has the wrong type.
        ValueError: a field is out of its own range.
        RangeError: ``2 * n_max * ceil(clip * 2^scale) >= 2^bits``, i.e. a sum of ``n_max``
            encodings could wrap. The message names :meth:`minimal_bits`.
    """

    bits: int
    scale: int
    clip: float
    n_max: int

    def __post_init__(self) -> None:
        check_int("bits", self.bits, lo=8, hi=32)
        check_int("scale", self.scale, lo=0, hi=_MAX_SCALE)
        object.__setattr__(self, "clip", _check_clip(self.clip))
        check_int("n_max", self.n_max, lo=1)
        need = self.minimal_bits(n_max=self.n_max, clip=self.clip, scale=self.scale)
        if need > self.bits:
            raise RangeError(
                f"bits={self.bits} can overflow: n_max={self.n_max} values clipped to "
                f"+-{self.clip} at scale={self.scale} need "
                f"minimal_bits(n_max={self.n_max}, clip={self.clip}, scale={self.scale}) = "
                f"{need} bits (condition 2 * n_max * ceil(clip * 2^scale) < 2^bits)"
                + ("; more than 32: lower scale, clip or n_max" if need > 32 else "")
            )

    @staticmethod
    def minimal_bits(*, n_max: int, clip: float, scale: int) -> int:
        """Fewest ring bits for which ``n_max`` encodings can never wrap.

        The smallest ``b`` with ``2 * n_max * ceil(clip * 2^scale) < 2^b`` (the signed range
        of ``b`` bits then holds every possible sum; the ceiling accounts for a value at the
        clip bound rounding up). At least 1; may exceed 32, which no config accepts.

        Raises:
            TypeError: an argument has the wrong type.
            ValueError: ``n_max < 1``, ``clip`` not finite and > 0, or ``scale`` not in
                [0, 1023].
        """
        check_int("n_max", n_max, lo=1)
        c = _check_clip(clip)
        check_int("scale", scale, lo=0, hi=_MAX_SCALE)
        return max(1, (2 * n_max * _clip_units(c, scale)).bit_length())

    @property
    def resolution(self) -> float:
        """The value of one unit in the last place, ``2^-scale``."""
        return math.ldexp(1.0, -self.scale)


@dataclass(frozen=True)
class ClipReport:
    """What clipping did to one encoded vector.

    Attributes:
        n_clipped: how many values lay outside ``[-clip, clip]`` and were clamped.
        max_abs: the largest magnitude seen before clipping (0.0 for an empty vector).
    """

    n_clipped: int
    max_abs: float


def _check_cfg(cfg: Any) -> FixedPointConfig:
    if not isinstance(cfg, FixedPointConfig):
        raise TypeError(f"cfg must be FixedPointConfig, got {type(cfg).__name__}")
    return cfg


def encode(
    x: npt.NDArray[np.floating[Any]], cfg: FixedPointConfig, *, rounding: Rounding
) -> tuple[npt.NDArray[np.uint32], ClipReport]:
    """Encode a float vector into ring elements in ``[0, 2^bits)`` (two's complement).

    Works through ``x`` in chunks of 64K values with reused float64 scratch, so no float64
    copy of the whole vector is made. Stochastic rounding draws its randomness from
    :func:`secagg.prg.random_uint32` (a fresh OS-keyed AES stream).

    Raises:
        TypeError: ``x`` is not a float32/float64 ndarray, ``cfg`` not a FixedPointConfig,
            or ``rounding`` not a Rounding.
        ValueError: ``x`` is not 1-D, or contains NaN or infinity (the message says which
            and where).
    """
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x must be a numpy.ndarray, got {type(x).__name__}")
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"x must have dtype float32 or float64, got {x.dtype}")
    if x.ndim != 1:
        raise ValueError(f"x must be 1-D, got {x.ndim} dimensions")
    cfg = _check_cfg(cfg)
    if not isinstance(rounding, Rounding):
        raise TypeError(f"rounding must be Rounding, got {type(rounding).__name__}")

    # Scaling by a power of two, clipping and rint are exact in float32, so float32 input
    # rounded to nearest is worked on in float32 when the bound clip * 2^scale is itself a
    # float32. Otherwise (float64 input, a bound float32 cannot hold, or stochastic rounding,
    # whose fraction must be exact) the work is done in float64, exact for float32 input.
    stochastic = rounding is Rounding.STOCHASTIC
    exact_bound = math.ldexp(cfg.clip, cfg.scale)  # exact: clip * 2^scale < 2^31 by the config
    narrow = (
        x.dtype == np.float32 and not stochastic and float(np.float32(exact_bound)) == exact_bound
    )
    work = np.dtype(np.float32) if narrow else np.dtype(np.float64)
    bound = work.type(exact_bound)
    two_pow_scale = work.type(math.ldexp(1.0, cfg.scale))
    n = x.shape[0]
    out = np.empty(n, dtype=np.uint32)
    out_i = out.view(np.int32)
    c = min(n, _CHUNK_VALUES)
    y_buf = np.empty(c, dtype=work)
    f_buf = np.empty(c, dtype=np.float64) if stochastic else y_buf
    up_buf = np.empty(c if stochastic else 0, dtype=np.bool_)
    mask = np.uint32((1 << cfg.bits) - 1)
    n_clipped = 0
    max_abs = 0.0
    for start in range(0, n, _CHUNK_VALUES):
        stop = min(start + _CHUNK_VALUES, n)
        m = stop - start
        y = y_buf[:m]
        with np.errstate(over="ignore"):  # a huge value may overflow to inf: it is clipped
            np.multiply(x[start:stop], two_pow_scale, out=y)  # exact: a power of two
        hi, lo = float(y.max()), float(y.min())
        if math.isfinite(hi) and math.isfinite(lo):
            max_abs = max(max_abs, math.ldexp(max(hi, -lo), -cfg.scale))
        else:  # NaN or inf in x, or a huge finite value that overflowed when scaled
            max_abs = max(max_abs, _finite_max_abs(x, start, stop))
        if hi > bound or lo < -bound:
            n_clipped += int(np.count_nonzero(y > bound)) + int(np.count_nonzero(y < -bound))
            np.clip(y, -bound, bound, out=y)
        dst = out_i[start:stop]
        if not stochastic:
            np.rint(y, out=dst, casting="unsafe")  # integral, |v| < 2^31 by the config check
        else:
            f = f_buf[:m]
            np.floor(y, out=f)
            np.subtract(y, f, out=y)  # fraction in [0, 1), exact
            np.multiply(y, _TWO_POW_32, out=y)
            # Round up iff r < fraction * 2^32 for r uniform in [0, 2^32): P = fraction,
            # to within 2^-32.
            up = np.less(random_uint32(m), y, out=up_buf[:m])
            np.add(f, up, out=f)
            np.copyto(dst, f, casting="unsafe")
        if cfg.bits < 32:  # two's complement mod 2^bits
            ring = out[start:stop]
            np.bitwise_and(ring, mask, out=ring)
    return out, ClipReport(n_clipped=n_clipped, max_abs=max_abs)


def _finite_max_abs(x: npt.NDArray[np.floating[Any]], start: int, stop: int) -> float:
    """Largest magnitude in ``x[start:stop]``.

    Raises:
        ValueError: the chunk holds NaN or infinity (says which and where).
    """
    chunk = x[start:stop]
    bad = np.flatnonzero(~np.isfinite(chunk))
    if bad.size:
        i = int(bad[0])
        kind = "NaN" if math.isnan(float(chunk[i])) else "infinity"
        raise ValueError(
            f"x must be finite: contains NaN or infinity ({kind} at index {start + i}, "
            f"{bad.size} non-finite value(s) in values {start}..{stop - 1})"
        )
    return float(np.max(np.abs(chunk)))


def decode_sum(
    s: npt.NDArray[np.uint32], cfg: FixedPointConfig, *, n: int
) -> npt.NDArray[np.float64]:
    """Decode the ring sum of ``n`` encodings to float64.

    Each word is reduced mod ``2^bits``, lifted to the signed range
    ``[-2^(bits-1), 2^(bits-1))`` and divided by ``2^scale``.

    Raises:
        TypeError: ``s`` is not a uint32 ndarray, ``cfg`` not a FixedPointConfig, or ``n``
            not an int.
        ValueError: ``s`` is not 1-D, or ``n`` is not in [1, cfg.n_max] (the config only
            guarantees no wrap-around for at most ``n_max`` summands).
    """
    if not isinstance(s, np.ndarray):
        raise TypeError(f"s must be a numpy.ndarray, got {type(s).__name__}")
    if s.dtype != np.uint32:
        raise TypeError(f"s must have dtype uint32, got {s.dtype}")
    if s.ndim != 1:
        raise ValueError(f"s must be 1-D, got {s.ndim} dimensions")
    cfg = _check_cfg(cfg)
    check_int("n", n, lo=1, hi=cfg.n_max)

    total = s.shape[0]
    out = np.empty(total, dtype=np.float64)
    c = min(total, _CHUNK_VALUES)
    u_buf = np.empty(c, dtype=np.uint32)
    i_view = u_buf.view(np.int32)
    shift = np.uint32(32 - cfg.bits)
    ishift = np.int32(32 - cfg.bits)
    inv_scale = math.ldexp(1.0, -cfg.scale)
    for start in range(0, total, _CHUNK_VALUES):
        stop = min(start + _CHUNK_VALUES, total)
        m = stop - start
        # Shift the ring element to the top of the word, then shift back arithmetically:
        # this drops bits above ``bits`` and sign-extends in two passes.
        np.left_shift(s[start:stop], shift, out=u_buf[:m])
        np.right_shift(i_view[:m], ishift, out=i_view[:m])
        np.multiply(i_view[:m], inv_scale, out=out[start:stop])
    return out
