"""Exact distributed noise: add, then remove the excess once the survivors are known.

The threshold design (:func:`secagg.fl_core.dp.add_distributed_noise`) has every party add
``sigma^2 / t`` so that any ``t`` survivors carry ``sigma^2``; when more survive, the sum
carries ``s sigma^2 / t``, up to ``n / t`` times the noise the accountant needs. Here (after
Dordis, Jiang et al., EuroSys 2024, "XNoise") each party of a round of ``n`` with threshold
``t`` adds independent discrete Gaussian components on the grid:

- a base of variance ``sigma^2 / n``, drawn from its own CSPRNG source, never revealed;
- for each level ``j = 1 .. n - t`` a component of variance
  ``sigma^2 (1/(n-j) - 1/(n-j+1))``, expanded from a fresh 32-byte seed by a keyed AES-CTR
  stream (:meth:`NoiseSource.from_seed`).

Its total is ``sigma^2 / t``, the same as the threshold design, so the fixed-point range and
what a party can be made to reveal are unchanged. Once ``s >= t`` inputs are in the sum, levels
``j > n - s`` are excess: each survivor releases those seeds in its unmask answer
(:meth:`secagg.protocols.client.SecAggClient.hold_removable`, which releases only on a
survivor count it can trust) and the server expands and subtracts them
(:func:`released_noise`). Each survivor keeps ``sigma^2/n + sum_{j <= n-s}`` = ``sigma^2 / s``,
so the ``s`` survivors' sum carries exactly ``sigma^2``. A survivor that drops before its
answer keeps all its levels: more noise, never less.

What the server learns: the released components, which are independent of the components
kept, so the sum minus what was released is the sum of the clipped inputs plus independent
discrete Gaussian components of total variance ``sigma^2`` (in units of ``C``). Its privacy is
bounded in :func:`exact_noise_multiplier`.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Mapping

import numpy as np
from numpy.typing import NDArray

from secagg.fl_core.dp.config import DpConfig, Placement
from secagg.fl_core.dp.mechanism import grid_unit, integer_sensitivity, to_grid
from secagg.fl_core.dp.noise import NoiseSource
from secagg.rng import random_bytes

__all__ = [
    "add_exact_noise",
    "exact_noise_multiplier",
    "level_fractions",
    "released_noise",
    "retained_fraction",
]

SEED_BYTES = 32
_LABEL = b"secagg.fl_core.dp.exact/level/v1"


def _check_cohort(n: int, t: int) -> None:
    for name, v in (("n", n), ("t", t)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name} must be int, got {type(v).__name__}")
    if not 1 <= t <= n:
        raise ValueError(f"need 1 <= t <= n, got n={n}, t={t}")


def level_fractions(n: int, t: int) -> tuple[float, ...]:
    """Variances as fractions of ``sigma^2``: index 0 the base ``1/n``, index ``j`` (1 to
    ``n - t``) the level ``1/(n-j) - 1/(n-j+1)``. They sum to ``1/t``.

    Raises:
        TypeError, ValueError: not ``1 <= t <= n`` ints.
    """
    _check_cohort(n, t)
    return (1.0 / n, *(1.0 / (n - j) - 1.0 / (n - j + 1) for j in range(1, n - t + 1)))


def retained_fraction(n: int, t: int, survivors: int) -> float:
    """What one survivor keeps after the release for ``survivors`` inputs, as a fraction of
    ``sigma^2``: the base and levels ``1 .. n - survivors`` (``1/survivors`` when
    ``t <= survivors <= n``).

    Raises:
        ValueError: ``survivors`` outside ``[t, n]``.
    """
    fr = level_fractions(n, t)
    if not t <= survivors <= n:
        raise ValueError(f"survivors must be in [t={t}, n={n}], got {survivors}")
    return math.fsum(fr[: n - survivors + 1])


def _level_stds(cfg: DpConfig, n: int, t: int) -> tuple[float, ...]:
    """Std of the base (index 0) and of each level, in grid units."""
    sigma_grid = cfg.noise_multiplier * cfg.clip / grid_unit(cfg)
    return tuple(sigma_grid * math.sqrt(f) for f in level_fractions(n, t))


def _expand(seed: bytes, level: int, std: float, dim: int) -> NDArray[np.int64]:
    source = NoiseSource.from_seed(seed, _LABEL + struct.pack(">I", level))
    return source.discrete_gaussian(dim, std)


def _check_distributed(cfg: DpConfig) -> None:
    if cfg.placement is not Placement.DISTRIBUTED:
        raise ValueError("exact noise is for the distributed placement")


def add_exact_noise(vec: NDArray[np.floating], cfg: DpConfig, n: int, t: int,
                    source: NoiseSource) -> tuple[NDArray[np.float64], dict[int, bytes]]:
    """Round ``vec`` to the grid and add one party's base and level components.

    Returns the noised vector (``k * u``, float64, re-encoded exactly by a fixed-point
    encoder of scale ``1/u``) and the level seeds ``{j: seed}`` for ``j = 1 .. n - t`` to hand
    to the protocol client. ``cfg.threshold`` is not used: the round's ``n`` and ``t`` are.

    Raises:
        ValueError: ``vec`` is not 1-D, not finite, or too large for the grid; the placement
            is not distributed; the smallest component is under 1/2 grid unit.
        TypeError: ``n`` or ``t`` not ints.
    """
    _check_distributed(cfg)
    stds = _level_stds(cfg, n, t)
    if min(stds) < 0.5:
        raise ValueError("a noise component is under 1/2 grid unit: raise grid_scale")
    k = to_grid(vec, cfg)
    k += source.discrete_gaussian(k.size, stds[0])
    seeds: dict[int, bytes] = {}
    for j in range(1, n - t + 1):
        seeds[j] = random_bytes(SEED_BYTES)
        k += _expand(seeds[j], j, stds[j], k.size)
    return k.astype(np.float64) * grid_unit(cfg), seeds


def released_noise(released: Mapping[int, Mapping[int, bytes]], cfg: DpConfig, n: int, t: int,
                   dim: int) -> NDArray[np.float64]:
    """The sum of the released components (value units), to subtract from the aggregate.

    Raises:
        ValueError: a level outside ``1 .. n - t`` or a seed that is not 32 bytes.
    """
    _check_distributed(cfg)
    stds = _level_stds(cfg, n, t)
    total = np.zeros(dim, dtype=np.int64)
    for owner in sorted(released):
        for j, seed in sorted(released[owner].items()):
            if not 1 <= j <= n - t or not isinstance(seed, bytes) or len(seed) != SEED_BYTES:
                raise ValueError(f"client {owner}: bad released level {j!r}")
            total += _expand(seed, j, stds[j], dim)
    return total.astype(np.float64) * grid_unit(cfg)


def exact_noise_multiplier(cfg: DpConfig, dim: int, cohorts: Iterable[tuple[int, int]]) -> float:
    """The noise multiplier ``1/eps`` of the zCDP bound ``eps^2/2`` of the sum after the
    release, the worst over the rounds' ``(n, t)`` in ``cohorts`` and every survivor count.

    After the release the sum carries ``m = s (1 + n - s)`` independent discrete Gaussian
    components of total variance ``S = (sigma C / u)^2`` grid units. KLS21's Thm 1 is stated
    for ``t`` identical shares; its proof adds them one at a time, each time bounding how far
    the sum of two independent discrete Gaussians of variances ``a`` and ``b`` is from one of
    variance ``a + b`` by ``10 exp(-2 pi^2 ab/(a+b))`` (with identical shares that gives its
    ``tau = 10 sum_k exp(-2 pi^2 s^2 k/(k+1))``). The same iteration over unequal components
    gives ``tau <= 10 (m - 1) exp(-pi^2 v_min)`` (``ab/(a+b) >= min(a, b)/2``), ``v_min`` the
    smallest component, and the theorem's bound with ``t s^2`` replaced by ``S``::

        eps = min( sqrt(D2^2/S + tau dim / 2),
                   sqrt(D2^2/S + 2 D1 tau / sqrt(S) + tau^2 dim),
                   D2/sqrt(S) + tau sqrt(dim) ).

    At our grids ``v_min`` is thousands of grid units squared and ``tau`` underflows to 0, so
    this is ``D2 / sqrt(S)``: the same as the threshold design with exactly ``t`` survivors.

    Raises:
        ValueError: ``dim`` not a positive int, no cohort, or not the distributed placement.
    """
    _check_distributed(cfg)
    d2 = integer_sensitivity(cfg, dim)
    d1 = min(math.sqrt(dim) * d2, d2 * d2)
    big = (cfg.noise_multiplier * cfg.clip / grid_unit(cfg)) ** 2
    worst: float | None = None
    for n, t in cohorts:
        fr = level_fractions(n, t)
        for s in range(t, n + 1):
            kept = fr[: n - s + 1]
            m = s * len(kept)
            tau = 10.0 * (m - 1) * math.exp(-math.pi**2 * big * min(kept))
            l2 = d2 / math.sqrt(big)
            eps = min(math.sqrt(l2**2 + tau * dim / 2.0),
                      math.sqrt(l2**2 + 2.0 * d1 * tau / math.sqrt(big) + tau**2 * dim),
                      l2 + tau * math.sqrt(dim))
            worst = eps if worst is None else max(worst, eps)
    if worst is None:
        raise ValueError("no cohort given")
    return 1.0 / worst
