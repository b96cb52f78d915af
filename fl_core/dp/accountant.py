"""Privacy accounting with Google's maintained ``dp-accounting`` library (RDP, PLD optional).

Each step is a Poisson-subsampled Gaussian mechanism (records for record-level DP, clients for
client-level DP) or, at sample rate 1, a plain Gaussian mechanism. For the distributed discrete
Gaussian the caller passes :func:`secagg.fl_core.dp.mechanism.effective_noise_multiplier`: Kairouz,
Liu and Steinke (ICML 2021, Thm. 1) bound the sum of discrete Gaussian shares by the zCDP of a
continuous Gaussian with that multiplier up to ``tau`` (< 1e-100 at our grid scales), and zCDP of
that size is the RDP curve the Gaussian accounting uses. Discrete sampler: Canonne, Kamath, Steinke
(NeurIPS 2020).
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Any, Literal

import dp_accounting  # type: ignore[import-untyped]

from secagg.fl_core.dp.errors import DpConfigError

__all__ = ["PrivacyAccountant", "calibrate_noise_multiplier", "client_level_warning"]

# dp-accounting logs (through absl) a warning each time an RDP order fails to converge and is
# left out of the minimum; harmless (the bound stays valid) but it floods progress output.
logging.getLogger("absl").setLevel(logging.ERROR)

_STATE_VERSION = 1
_SIGMA_MAX = 1e6
_FEW_PARTIES = 100


def _check_params(noise_multiplier: float, sample_rate: float, delta: float) -> None:
    for name, value in (
        ("noise_multiplier", noise_multiplier),
        ("sample_rate", sample_rate),
        ("delta", delta),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise DpConfigError(f"{name} must be a number, got {type(value).__name__}")
        if not math.isfinite(value) or value <= 0:
            raise DpConfigError(f"{name} must be finite and > 0, got {value!r}")
    if sample_rate > 1:
        raise DpConfigError(f"sample_rate must be <= 1, got {sample_rate!r}")
    if delta >= 1:
        raise DpConfigError(f"delta must be < 1, got {delta!r}")


def _step_event(noise_multiplier: float, sample_rate: float) -> dp_accounting.DpEvent:
    gaussian = dp_accounting.GaussianDpEvent(noise_multiplier)
    if sample_rate >= 1.0:
        return gaussian
    return dp_accounting.PoissonSampledDpEvent(sample_rate, gaussian)


def _fresh(kind: str) -> dp_accounting.PrivacyAccountant:
    if kind == "pld":
        return dp_accounting.pld.PLDAccountant()
    return dp_accounting.rdp.RdpAccountant()


@functools.lru_cache(maxsize=256)
def _one_step_rdp(noise_multiplier: float, sample_rate: float) -> tuple[Any, Any]:
    """(orders, RDP of one step): RDP composes additively, so k steps cost one multiply."""
    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(_step_event(noise_multiplier, sample_rate), 1)
    return accountant.orders, accountant.rdp


@functools.lru_cache(maxsize=4096)
def _epsilon(
    kind: str, noise_multiplier: float, sample_rate: float, delta: float, steps: int
) -> float:
    if steps == 0:
        return 0.0
    if kind == "rdp":
        orders, rdp = _one_step_rdp(noise_multiplier, sample_rate)
        compute = dp_accounting.rdp.rdp_privacy_accountant.compute_epsilon
        return float(compute(orders, rdp * steps, delta)[0])
    accountant = _fresh(kind)
    accountant.compose(_step_event(noise_multiplier, sample_rate), steps)
    return float(accountant.get_epsilon(delta))


class PrivacyAccountant:
    """dp-accounting RDP accountant (PLD optional) over Poisson-subsampled Gaussian steps.

    Raises:
        DpConfigError: on a non-positive or non-finite parameter, ``sample_rate > 1``,
            ``delta >= 1`` or an unknown ``kind``.
    """

    def __init__(
        self,
        *,
        noise_multiplier: float,
        sample_rate: float,
        delta: float,
        kind: Literal["rdp", "pld"] = "rdp",
    ) -> None:
        _check_params(noise_multiplier, sample_rate, delta)
        if kind not in ("rdp", "pld"):
            raise DpConfigError(f"kind must be 'rdp' or 'pld', got {kind!r}")
        self.noise_multiplier = float(noise_multiplier)
        self.sample_rate = float(sample_rate)
        self.delta = float(delta)
        self.kind: Literal["rdp", "pld"] = kind
        self._steps = 0

    def step(self, n: int = 1) -> None:
        """Record ``n`` more steps (rounds).

        Raises:
            TypeError: ``n`` is not an int.
            ValueError: ``n`` is negative.
        """
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"n must be int, got {type(n).__name__}")
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        self._steps += n

    @property
    def steps(self) -> int:
        """Steps recorded so far."""
        return self._steps

    def epsilon(self, steps: int | None = None) -> float:
        """Epsilon at ``self.delta`` after ``steps`` steps (default: the steps taken).

        Raises:
            ValueError: ``steps`` is negative.
        """
        n = self._steps if steps is None else steps
        if n < 0:
            raise ValueError(f"steps must be >= 0, got {n}")
        return _epsilon(self.kind, self.noise_multiplier, self.sample_rate, self.delta, n)

    def would_exceed(self, budget: float) -> bool:
        """True when one more step would take epsilon above ``budget``."""
        return self.epsilon(self._steps + 1) > budget

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state for checkpoints."""
        return {
            "version": _STATE_VERSION,
            "kind": self.kind,
            "noise_multiplier": self.noise_multiplier,
            "sample_rate": self.sample_rate,
            "delta": self.delta,
            "steps": self._steps,
        }

    def load_state_dict(self, d: dict[str, Any]) -> None:
        """Restore the step count from :meth:`state_dict` output of an identical accountant.

        Raises:
            DpConfigError: wrong version, missing fields, or parameters differing from ours
                (resuming under other noise would make the reported epsilon wrong).
        """
        try:
            if d["version"] != _STATE_VERSION:
                raise DpConfigError(f"unsupported accountant state version {d['version']!r}")
            mine = self.state_dict()
            for key in ("kind", "noise_multiplier", "sample_rate", "delta"):
                if d[key] != mine[key]:
                    raise DpConfigError(
                        f"accountant state has {key}={d[key]!r}, this run uses {mine[key]!r}"
                    )
            steps = d["steps"]
        except KeyError as exc:
            raise DpConfigError(f"accountant state lacks field {exc.args[0]!r}") from exc
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise DpConfigError(f"accountant state has invalid steps {steps!r}")
        self._steps = steps


def calibrate_noise_multiplier(
    *, target_epsilon: float, delta: float, sample_rate: float, steps: int
) -> float:
    """Smallest noise multiplier whose RDP epsilon after ``steps`` is at most ``target_epsilon``.

    Uses :func:`dp_accounting.calibrate_dp_mechanism` (bisection) on a bracket found by doubling;
    the result is on the private side, within a relative 1e-5 of the exact value.

    Raises:
        DpConfigError: a non-positive parameter, ``steps < 1``, or a target that no sigma up to
            1e6 reaches.
    """
    _check_params(1.0, sample_rate, delta)
    if (
        isinstance(target_epsilon, bool)
        or not isinstance(target_epsilon, (int, float))
        or not (math.isfinite(target_epsilon) and target_epsilon > 0)
    ):
        raise DpConfigError(f"target_epsilon must be finite and > 0, got {target_epsilon!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise DpConfigError(f"steps must be an int >= 1, got {steps!r}")

    def eps_of(sigma: float) -> float:
        return _epsilon("rdp", sigma, sample_rate, delta, steps)

    hi = 1.0
    while eps_of(hi) > target_epsilon:
        hi *= 2.0
        if hi > _SIGMA_MAX:
            raise DpConfigError(
                f"epsilon {target_epsilon} at delta {delta} is unreachable after {steps} steps"
            )
    lo = hi / 2.0
    while eps_of(lo) <= target_epsilon and lo > 1e-3:
        hi, lo = lo, lo / 2.0
    sigma = dp_accounting.calibrate_dp_mechanism(
        dp_accounting.rdp.RdpAccountant,
        lambda s: (
            _step_event(s, sample_rate)
            if steps == 1
            else dp_accounting.SelfComposedDpEvent(_step_event(s, sample_rate), steps)
        ),
        target_epsilon,
        delta,
        bracket_interval=dp_accounting.ExplicitBracketInterval(lo, hi),
        tol=hi * 1e-5,
    )
    return float(sigma)


def client_level_warning(num_parties: int, sample_rate: float) -> str | None:
    """A sentence for the CLI when too few parties make client-level DP useless, else None.

    Raises:
        ValueError: ``num_parties < 1`` or ``sample_rate`` outside (0, 1].
    """
    if num_parties < 1:
        raise ValueError(f"num_parties must be >= 1, got {num_parties}")
    if not 0 < sample_rate <= 1:
        raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate!r}")
    cohort = num_parties * sample_rate
    if num_parties >= _FEW_PARTIES:
        return None
    return (
        f"client-level DP with {num_parties} parties (about {cohort:.0f} per round) will give "
        f"little utility: the mean of ~{cohort:.0f} clipped updates (each of norm <= C) carries "
        f"noise of std sigma*C/{cohort:.0f} per coordinate, i.e. about sigma*sqrt(dim)/"
        f"{cohort:.0f} times an update's norm, so a useful epsilon needs hundreds to thousands "
        "of parties per round; with a few data-rich parties use record-level DP instead"
    )
