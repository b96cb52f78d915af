"""From a client's float vector to ring elements, and from the ring sum back to floats.

Shared by every protocol (the plaintext baseline encodes exactly like SecAgg), so the
baseline differs only in the masking. Weighted FedAvg (``config.weighted``): with
``w' = w / max_weight`` in ``[0, 1]`` a client encodes ``(w' x, w' clip)``, one vector of
``dim + 1`` values all within ``[-clip, clip]``; the server decodes ``sum w x`` and
``sum w`` and the weighted mean is their ratio.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from secagg.fixedpoint import decode_sum, encode
from secagg.protocols.context import RoundContext
from secagg.protocols.errors import InputError

__all__ = ["Aggregate", "check_input", "decode_aggregate", "encode_input"]

FloatVector = npt.NDArray[np.floating[Any]]


@dataclass(frozen=True)
class Aggregate:
    """The outcome of a round.

    Attributes:
        values: float64 sum of the included inputs (weighted mode: ``sum w x``).
        weight_total: ``sum w`` (weighted) or the number of included clients.
        included: ids whose input is in the sum, ascending.
        ring: the unmasked ring sum the values were decoded from (uint32).
    """

    values: npt.NDArray[np.float64] = field(repr=False)
    weight_total: float
    included: tuple[int, ...]
    ring: npt.NDArray[np.uint32] = field(repr=False)

    @property
    def mean(self) -> npt.NDArray[np.float64]:
        """``values / weight_total``: the (weighted) FedAvg update.

        Raises:
            ZeroDivisionError: the total weight is zero.
        """
        if self.weight_total == 0:
            raise ZeroDivisionError("total weight is zero")
        return self.values / self.weight_total


def check_input(ctx: RoundContext, x: Any, weight: float | None) -> tuple[FloatVector, float]:
    """Validate a client's input vector and weight; return them (weight 1.0 if unweighted).

    Two passes (min, max), no temporaries: NaN propagates through both.

    Raises:
        TypeError: ``x`` is not a float32/float64 numpy array, or ``weight`` not a number.
        InputError: ``x`` not 1-D of length ``ctx.dim``, holds NaN/inf or values beyond
            ``+-clip``; a weight outside ``[0, max_weight]``, or given in unweighted mode.
    """
    cfg = ctx.config
    if not isinstance(x, np.ndarray) or x.dtype not in (np.float32, np.float64):
        raise TypeError(f"input must be a float32/float64 numpy array, got {type(x).__name__}")
    if x.ndim != 1 or x.shape[0] != ctx.dim:
        raise InputError(f"input must be 1-D of length {ctx.dim}, got shape {x.shape}")
    lo, hi = float(x.min()), float(x.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise InputError("input holds NaN or infinity")
    if lo < -cfg.clip or hi > cfg.clip:
        raise InputError(f"input exceeds the clip range +-{cfg.clip} (min {lo}, max {hi})")
    if not cfg.weighted:
        if weight is not None:
            raise InputError("a weight was given but the config is unweighted")
        return x, 1.0
    if weight is None:
        return x, cfg.max_weight
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise TypeError(f"weight must be float, got {type(weight).__name__}")
    w = float(weight)
    if not (math.isfinite(w) and 0.0 <= w <= cfg.max_weight):
        raise InputError(f"weight must be in [0, {cfg.max_weight}], got {weight}")
    return x, w


def encode_input(ctx: RoundContext, x: FloatVector, weight: float) -> npt.NDArray[np.uint32]:
    """Fixed-point encode a checked input into ``ctx.vector_length`` ring elements.

    Raises:
        InputError: values were clipped or non-finite (the array changed after the check).
    """
    cfg = ctx.config
    vec: FloatVector = x
    if cfg.weighted:
        scaled = weight / cfg.max_weight
        vec = np.empty(ctx.dim + 1, dtype=np.float64)
        np.multiply(x, scaled, out=vec[: ctx.dim])
        vec[ctx.dim] = scaled * cfg.clip
    try:
        ring, report = encode(vec, ctx.fixed_point, rounding=cfg.rounding)
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    if report.n_clipped:
        raise InputError(f"{report.n_clipped} values exceed +-{cfg.clip} (max {report.max_abs})")
    return ring


def decode_aggregate(
    ctx: RoundContext, ring: npt.NDArray[np.uint32], included: tuple[int, ...]
) -> Aggregate:
    """Decode the unmasked ring sum of ``included`` clients.

    Raises:
        ValueError: ``included`` is empty or larger than ``config.n``.
    """
    cfg = ctx.config
    total = decode_sum(ring, ctx.fixed_point, n=len(included))
    if not cfg.weighted:
        return Aggregate(total, float(len(included)), included, ring)
    weight_total = float(total[ctx.dim]) / cfg.clip * cfg.max_weight
    values = total[: ctx.dim] * cfg.max_weight if cfg.max_weight != 1.0 else total[: ctx.dim]
    return Aggregate(values, weight_total, included, ring)
