"""Clipping and noising: the continuous Gaussian (local) and the distributed discrete Gaussian.

Distributed placement follows Kairouz, Liu and Steinke, "The Distributed Discrete Gaussian
Mechanism for Federated Learning with Secure Aggregation" (ICML 2021, KLS21): each party rounds
its clipped vector to the grid ``u = C * 2^-grid_scale`` and adds a discrete Gaussian share
(Canonne, Kamath, Steinke, NeurIPS 2020) of std ``sigma * C / (u * sqrt(t))`` grid units, so the
integer sum over at least ``t`` parties carries discrete noise of std at least ``sigma * C``.
KLS21 Theorem 1 bounds the zCDP of that sum; :func:`effective_noise_multiplier` expresses the
bound as ``1/eps`` (``rho = eps^2/2``), which the accountant takes as a zCDP bound and amplifies
by Poisson subsampling with Zhu-Wang's general bound (:mod:`secagg.fl_core.dp.rdp`), not with the
subsampled-Gaussian formula (the sum of discrete Gaussians is not a Gaussian).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from secagg.fl_core.dp.config import DpConfig, Placement, Unit
from secagg.fl_core.dp.noise import NoiseSource

__all__ = [
    "add_distributed_noise",
    "add_local_noise",
    "clip_l2",
    "effective_noise_multiplier",
    "grid_unit",
    "integer_sensitivity",
    "tail_probability",
]

_INT_LIMIT = 2.0**62


def _as_float_vector(vec: NDArray[np.floating]) -> NDArray[np.float64]:
    arr = np.asarray(vec, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"vec must be 1-D, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("vec holds NaN or infinite values")
    return arr


def clip_l2(vec: NDArray[np.floating], clip: float) -> tuple[NDArray[np.float64], float]:
    """Return (copy of ``vec`` scaled to L2 norm <= ``clip``, original L2 norm).

    Raises:
        ValueError: ``vec`` is not 1-D or not finite, or ``clip`` is not finite and > 0.
    """
    if not math.isfinite(clip) or clip <= 0:
        raise ValueError(f"clip must be finite and > 0, got {clip!r}")
    arr = _as_float_vector(vec)
    norm = float(np.linalg.norm(arr))
    factor = min(1.0, clip / norm) if norm > 0 else 1.0
    return arr * factor, norm


def add_local_noise(
    vec: NDArray[np.floating], cfg: DpConfig, source: NoiseSource
) -> NDArray[np.float64]:
    """Return ``vec + N(0, (sigma C)^2 I)``: the whole noise, added by one party.

    Raises:
        ValueError: ``vec`` is not 1-D or not finite.
    """
    arr = _as_float_vector(vec)
    return arr + source.gaussian(arr.size, cfg.noise_multiplier * cfg.clip)


def grid_unit(cfg: DpConfig) -> float:
    """The grid step ``u = C * 2^-grid_scale`` of the distributed mechanism, in value units."""
    return cfg.clip * 2.0**-cfg.grid_scale


def add_distributed_noise(
    vec: NDArray[np.floating], cfg: DpConfig, source: NoiseSource
) -> NDArray[np.float64]:
    """Round ``vec`` to the grid and add one party's discrete Gaussian noise share.

    Returns ``k * u`` (float64) with integer ``k = round(vec / u) + N_Z(0, s^2)`` and
    ``s = sigma * C / (u * sqrt(t))``, so a fixed-point encoder whose scale is ``1/u``
    re-encodes it to ``k`` exactly. ``vec`` should already be clipped.

    Raises:
        ValueError: ``vec`` is not 1-D, not finite, or too large for int64 grid values.
    """
    k = to_grid(vec, cfg)
    k += source.discrete_gaussian(k.size, cfg.share_std() / grid_unit(cfg))
    return k.astype(np.float64) * grid_unit(cfg)


def to_grid(vec: NDArray[np.floating], cfg: DpConfig) -> NDArray[np.int64]:
    """``vec`` rounded to the nearest multiple of the grid unit, as int64 grid values.

    Raises:
        ValueError: ``vec`` is not 1-D, not finite, or too large for int64 grid values.
    """
    scaled = _as_float_vector(vec) / grid_unit(cfg)
    if scaled.size and float(np.max(np.abs(scaled))) >= _INT_LIMIT:
        raise ValueError("vec is too large for the integer grid; clip it first")
    return np.rint(scaled).astype(np.int64)


def integer_sensitivity(cfg: DpConfig, dim: int) -> float:
    """L2 sensitivity, in grid units, of one party's rounded vector (deterministic bound).

    A clipped contribution has norm ``<= 2^grid_scale`` grid units; nearest rounding moves each
    coordinate by at most 1/2. CLIENT unit: a neighbour adds or removes one rounded clipped
    update, so ``2^s + sqrt(dim)/2``. RECORD unit: the party rounds the SUM of its clipped
    per-record vectors, and the two neighbouring sums are rounded separately, so each coordinate
    of the difference can move by up to 1: ``2^s + sqrt(dim)``.

    Raises:
        ValueError: ``dim`` is not a positive int.
    """
    if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
        raise ValueError(f"dim must be a positive int, got {dim!r}")
    slack = math.sqrt(dim) if cfg.unit is Unit.RECORD else math.sqrt(dim) / 2
    return 2.0**cfg.grid_scale + slack


def _kls21_tau(share_sigma: float, parties: int) -> float:
    return 10.0 * sum(
        math.exp(-2.0 * math.pi**2 * share_sigma**2 * k / (k + 1)) for k in range(1, parties)
    )


def effective_noise_multiplier(cfg: DpConfig, dim: int) -> float:
    """The noise multiplier ``1/eps`` of the mechanism's zCDP bound ``rho = eps^2 / 2``.

    Local placement: ``sigma`` (a continuous Gaussian). Distributed: KLS21 Thm. 1 for the sum
    of ``t`` discrete Gaussians of std ``s`` grid units, L2 sensitivity ``D2``
    (:func:`integer_sensitivity`) and L1 sensitivity ``D1 <= min(sqrt(dim) D2, D2^2)`` (an
    integer vector's L1 norm is at most its squared L2 norm) gives ``eps^2/2``-zCDP with::

        eps = min( sqrt(D2^2/(t s^2) + tau dim / 2),
                   sqrt(D2^2/(t s^2) + 2 D1 tau / (sqrt(t) s) + tau^2 dim),
                   D2/(sqrt(t) s) + tau sqrt(dim) ),
        tau = 10 sum_{k=1}^{t-1} exp(-2 pi^2 s^2 k/(k+1)),

    i.e. RDP ``alpha eps^2 / 2`` at every order ``alpha > 1``. That is not a Gaussian
    mechanism: the accountant must treat ``1/eps`` as a zCDP bound (``bound="zcdp"``), never feed
    it to the subsampled-Gaussian formula. More than ``t`` survivors only add noise.

    Raises:
        ValueError: ``dim`` is not a positive int.
    """
    if cfg.placement is Placement.LOCAL:
        return cfg.noise_multiplier
    d2 = integer_sensitivity(cfg, dim)
    d1 = min(math.sqrt(dim) * d2, d2 * d2)
    s = cfg.share_std() / grid_unit(cfg)
    t = cfg.threshold
    tau = _kls21_tau(s, t)
    l2 = d2 / (math.sqrt(t) * s)
    eps = min(math.sqrt(l2**2 + tau * dim / 2.0),
              math.sqrt(l2**2 + 2.0 * d1 * tau / (math.sqrt(t) * s) + tau**2 * dim),
              l2 + tau * math.sqrt(dim))
    return 1.0 / eps


def tail_probability(cfg: DpConfig, dim: int, bound: float) -> float:
    """Upper bound on P(any of ``dim`` coordinates of ONE party's noise share has |x| > bound).

    ``bound`` is in value units. Union bound over coordinates; per coordinate the Gaussian tail
    ``erfc(b / (std sqrt 2))`` (local) or the discrete Gaussian's sub-Gaussian tail
    ``2 exp(-m^2 / (2 s^2))`` in grid units (CKS20, distributed). The caller adds it to delta
    when a range check would reject such a share.

    Raises:
        ValueError: ``dim`` is not a positive int, or ``bound`` is negative or not finite.
    """
    if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
        raise ValueError(f"dim must be a positive int, got {dim!r}")
    if not math.isfinite(bound) or bound < 0:
        raise ValueError(f"bound must be finite and >= 0, got {bound!r}")
    if cfg.placement is Placement.LOCAL:
        per_coordinate = math.erfc(bound / (cfg.share_std() * math.sqrt(2.0)))
    else:
        u = grid_unit(cfg)
        m = math.floor(bound / u)  # |x| > bound  <=>  |x| >= m + 1 grid units
        s = cfg.share_std() / u
        per_coordinate = 2.0 * math.exp(-((m + 1) ** 2) / (2.0 * s * s))
    return min(1.0, dim * per_coordinate)
