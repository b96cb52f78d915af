"""Validated differential-privacy settings shared by the client, the server and the accountant.

Two units of privacy (a training record, or a party's whole data) and two placements of the
noise (each party adds all of it, or each adds a share so that the secure sum carries all of it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from secagg.fl_core.dp.errors import DpConfigError

__all__ = ["DpConfig", "Placement", "Unit"]

_MAX_GRID_SCALE = 40  # keeps 2^scale * |value / C| far inside int64 for clipped values


class Unit(StrEnum):
    """What one neighbouring dataset differs by."""

    RECORD = "record"
    CLIENT = "client"


class Placement(StrEnum):
    """Who adds the noise."""

    LOCAL = "local"
    DISTRIBUTED = "distributed"


def _positive_finite(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DpConfigError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise DpConfigError(f"{name} must be finite and > 0, got {value!r}")


@dataclass(frozen=True)
class DpConfig:
    """One DP configuration.

    ``noise_multiplier`` is sigma: the noise that reaches the aggregate has standard deviation
    ``sigma * clip`` per coordinate. With ``Placement.LOCAL`` every party adds all of it; with
    ``Placement.DISTRIBUTED`` each party adds a discrete Gaussian share of std
    ``sigma * clip / sqrt(threshold)`` on the grid ``clip * 2**-grid_scale``, so that the secure
    sum over at least ``threshold`` survivors carries at least ``sigma * clip``.

    Raises:
        DpConfigError: on any value outside its meaningful range (see the field comments).
    """

    unit: Unit
    placement: Placement
    clip: float  # L2 clip C (per record for RECORD, per client update for CLIENT), > 0
    noise_multiplier: float  # sigma > 0
    delta: float  # in (0, 1)
    sample_rate: float  # q in (0, 1]: Poisson rate of records (RECORD) / clients (CLIENT)
    threshold: int = 1  # distributed: min number of parties whose noise shares are summed
    grid_scale: int = 14  # distributed: grid unit is clip * 2**-grid_scale
    epsilon_budget: float | None = None  # stop before epsilon would exceed this

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "unit", Unit(self.unit))
            object.__setattr__(self, "placement", Placement(self.placement))
        except ValueError as exc:
            raise DpConfigError(str(exc)) from exc
        _positive_finite("clip", self.clip)
        _positive_finite("noise_multiplier", self.noise_multiplier)
        _positive_finite("delta", self.delta)
        if self.delta >= 1:
            raise DpConfigError(f"delta must be < 1, got {self.delta!r}")
        _positive_finite("sample_rate", self.sample_rate)
        if self.sample_rate > 1:
            raise DpConfigError(f"sample_rate must be <= 1, got {self.sample_rate!r}")
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, int):
            raise DpConfigError(f"threshold must be int, got {type(self.threshold).__name__}")
        if self.threshold < 1:
            raise DpConfigError(f"threshold must be >= 1, got {self.threshold}")
        if isinstance(self.grid_scale, bool) or not isinstance(self.grid_scale, int):
            raise DpConfigError(f"grid_scale must be int, got {type(self.grid_scale).__name__}")
        if not 1 <= self.grid_scale <= _MAX_GRID_SCALE:
            raise DpConfigError(
                f"grid_scale must be in [1, {_MAX_GRID_SCALE}], got {self.grid_scale}"
            )
        if self.epsilon_budget is not None:
            _positive_finite("epsilon_budget", self.epsilon_budget)
        if self.placement is Placement.DISTRIBUTED:
            share = self.noise_multiplier * 2.0**self.grid_scale / math.sqrt(self.threshold)
            if share < 0.5:  # KLS21 Thm. 1 needs each share's sigma >= 1/2 grid units
                raise DpConfigError(
                    f"noise share of {share:.3g} grid units is below 1/2: raise grid_scale "
                    "or noise_multiplier, or lower threshold"
                )

    def share_std(self) -> float:
        """Std of ONE party's noise (value units): sigma*C/sqrt(t) distributed, sigma*C local."""
        full = self.noise_multiplier * self.clip
        if self.placement is Placement.DISTRIBUTED:
            return full / math.sqrt(self.threshold)
        return full
