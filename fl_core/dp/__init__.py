"""Differential privacy: config, CSPRNG noise, mechanisms (local Gaussian, distributed discrete
Gaussian) and accounting with dp-accounting."""

from __future__ import annotations

from secagg.fl_core.dp.accountant import (
    PrivacyAccountant,
    calibrate_noise_multiplier,
    client_level_warning,
)
from secagg.fl_core.dp.config import DpConfig, Placement, Unit
from secagg.fl_core.dp.errors import DpConfigError
from secagg.fl_core.dp.exact import (
    add_exact_noise,
    exact_noise_multiplier,
    level_fractions,
    released_noise,
    retained_fraction,
)
from secagg.fl_core.dp.mechanism import (
    add_distributed_noise,
    add_local_noise,
    clip_l2,
    effective_noise_multiplier,
    grid_unit,
    integer_sensitivity,
    tail_probability,
)
from secagg.fl_core.dp.noise import NoiseSource

__all__ = [
    "DpConfig",
    "DpConfigError",
    "NoiseSource",
    "Placement",
    "PrivacyAccountant",
    "Unit",
    "add_distributed_noise",
    "add_exact_noise",
    "add_local_noise",
    "calibrate_noise_multiplier",
    "client_level_warning",
    "clip_l2",
    "effective_noise_multiplier",
    "exact_noise_multiplier",
    "grid_unit",
    "integer_sensitivity",
    "level_fractions",
    "released_noise",
    "retained_fraction",
    "tail_probability",
]
