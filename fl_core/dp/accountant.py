"""Privacy accounting: one stateful accountant over two bounds, each the theorem for its mechanism.

``bound="gaussian"`` (local placement: each party adds continuous Gaussian noise): each step is a
Poisson-subsampled Gaussian mechanism, accounted with Google's ``dp-accounting`` (RDP of the
subsampled Gaussian, Mironov, Talwar, Zhang 2019; PLD optional), or at sample rate 1 a plain
Gaussian mechanism.

``bound="zcdp"`` (distributed placement: a sum of discrete Gaussian shares): the mechanism is only
known to be ``rho``-zCDP with ``rho = 1 / (2 sigma^2)``, ``sigma`` being
:func:`secagg.fl_core.dp.mechanism.effective_noise_multiplier` (KLS21 Thm. 1). A step at sample
rate ``q < 1`` is accounted with Zhu-Wang's general Poisson-subsampling bound at integer orders
(:mod:`secagg.fl_core.dp.rdp`); at ``q = 1`` the unsampled curve ``alpha * rho`` holds at every
order and equals the Gaussian one, so the ``dp-accounting`` path is used. Both convert RDP to
``(epsilon, delta)`` with Canonne-Kamath-Steinke 2020 Prop. 12 (dp-accounting's conversion).
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Any, Literal

import dp_accounting  # type: ignore[import-untyped]
import numpy as np

from secagg.fl_core.dp.errors import DpConfigError
from secagg.fl_core.dp.rdp import ZCDP_ORDERS, epsilon_from_rdp, zcdp_subsampled_rdp

__all__ = ["PrivacyAccountant", "calibrate_noise_multiplier", "client_level_warning"]

# dp-accounting logs (through absl) a warning each time an RDP order fails to converge and is
# left out of the minimum; harmless (the bound stays valid) but it floods progress output.
logging.getLogger("absl").setLevel(logging.ERROR)

_STATE_VERSION = 2
_READABLE_STATES = (1, 2)  # version 1 had no "bound": it was always the Gaussian one
Bound = Literal["gaussian", "zcdp"]
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
    kind: str, noise_multiplier: float, sample_rate: float, delta: float, steps: int,
    bound: Bound = "gaussian",
) -> float:
    if steps == 0:
        return 0.0
    if bound == "zcdp" and sample_rate < 1.0:
        rho = 1.0 / (2.0 * noise_multiplier**2)
        rdp = np.asarray(zcdp_subsampled_rdp(sample_rate, rho)) * steps
        return epsilon_from_rdp(ZCDP_ORDERS, rdp, delta)[0]
    if kind == "rdp":
        orders, rdp = _one_step_rdp(noise_multiplier, sample_rate)
        compute = dp_accounting.rdp.rdp_privacy_accountant.compute_epsilon
        return float(compute(orders, rdp * steps, delta)[0])
    accountant = _fresh(kind)
    accountant.compose(_step_event(noise_multiplier, sample_rate), steps)
    return float(accountant.get_epsilon(delta))


class PrivacyAccountant:
    """Steps taken and the epsilon they spend, under ``bound`` (see the module docstring).

    ``noise_multiplier`` is the continuous Gaussian's sigma (``bound="gaussian"``) or the
    effective multiplier ``1/sqrt(2 rho)`` of a ``rho``-zCDP mechanism (``bound="zcdp"``).

    Raises:
        DpConfigError: on a non-positive or non-finite parameter, ``sample_rate > 1``,
            ``delta >= 1``, an unknown ``kind`` or ``bound``, or PLD with ``bound="zcdp"``
            (a PLD needs the mechanism's exact privacy loss, which zCDP does not give).
    """

    def __init__(
        self,
        *,
        noise_multiplier: float,
        sample_rate: float,
        delta: float,
        kind: Literal["rdp", "pld"] = "rdp",
        bound: Bound = "gaussian",
    ) -> None:
        _check_params(noise_multiplier, sample_rate, delta)
        if kind not in ("rdp", "pld"):
            raise DpConfigError(f"kind must be 'rdp' or 'pld', got {kind!r}")
        _check_bound(bound)
        if bound == "zcdp" and kind == "pld":
            raise DpConfigError("bound 'zcdp' is accounted with RDP only, not PLD")
        self.bound: Bound = bound
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

    def unstep(self, n: int = 1) -> None:
        """Take back ``n`` recorded steps whose mechanism never ran (a round that aborted
        before any input was asked for).

        Raises:
            TypeError: ``n`` is not an int.
            ValueError: ``n`` is negative or more than the steps recorded.
        """
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"n must be int, got {type(n).__name__}")
        if not 0 <= n <= self._steps:
            raise ValueError(f"n must be in [0, {self._steps}], got {n}")
        self._steps -= n

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
        return _epsilon(self.kind, self.noise_multiplier, self.sample_rate, self.delta, n,
                        self.bound)

    def would_exceed(self, budget: float) -> bool:
        """True when one more step would take epsilon above ``budget``."""
        return self.epsilon(self._steps + 1) > budget

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state for checkpoints."""
        return {
            "version": _STATE_VERSION,
            "kind": self.kind,
            "bound": self.bound,
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
            if d["version"] not in _READABLE_STATES:
                raise DpConfigError(f"unsupported accountant state version {d['version']!r}")
            mine = self.state_dict()
            d = {"bound": "gaussian", **d}
            for key in ("kind", "bound", "noise_multiplier", "sample_rate", "delta"):
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
    *, target_epsilon: float, delta: float, sample_rate: float, steps: int,
    bound: Bound = "gaussian",
) -> float:
    """Smallest noise multiplier whose epsilon after ``steps`` under ``bound`` is at most
    ``target_epsilon`` (the same accounting :class:`PrivacyAccountant` reports).

    Bisection on a bracket found by doubling (epsilon falls as sigma grows under both bounds);
    the result is on the private side, within a relative 1e-6 of the exact value.

    Raises:
        DpConfigError: a non-positive parameter, ``steps < 1``, an unknown ``bound``, or a
            target that no sigma up to 1e6 reaches.
    """
    _check_params(1.0, sample_rate, delta)
    _check_bound(bound)
    if (
        isinstance(target_epsilon, bool)
        or not isinstance(target_epsilon, (int, float))
        or not (math.isfinite(target_epsilon) and target_epsilon > 0)
    ):
        raise DpConfigError(f"target_epsilon must be finite and > 0, got {target_epsilon!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise DpConfigError(f"steps must be an int >= 1, got {steps!r}")

    def eps_of(sigma: float) -> float:
        return _epsilon("rdp", sigma, sample_rate, delta, steps, bound)

    hi = 1.0
    while eps_of(hi) > target_epsilon:
        hi *= 2.0
        if hi > _SIGMA_MAX:
            raise DpConfigError(
                f"epsilon {target_epsilon} at delta {delta} is unreachable after {steps} steps"
            )
    lo = hi / 2.0
    while eps_of(lo) <= target_epsilon:
        if lo < 1e-3:
            return lo
        hi, lo = lo, lo / 2.0
    while hi - lo > hi * 1e-6:  # invariant: eps_of(lo) > target >= eps_of(hi)
        mid = (lo + hi) / 2.0
        if eps_of(mid) > target_epsilon:
            lo = mid
        else:
            hi = mid
    return hi


def _check_bound(bound: object) -> None:
    if bound not in ("gaussian", "zcdp"):
        raise DpConfigError(f"bound must be 'gaussian' or 'zcdp', got {bound!r}")


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
