"""From a job to its DP mechanism, its accountant and the protocol's fixed-point ring.

Four modes (``job.dp`` x ``job.noise``), one public resolution every party computes alike:

- record / distributed: each round every party Poisson-samples its records (rate ``q =
  records_per_round / N`` over all ``N`` records), sums their per-example gradients clipped to
  ``C``, divides by ``C`` and adds a discrete Gaussian share on the grid ``2^-grid_scale``
  (:func:`secagg.fl_core.dp.add_distributed_noise`). The secure sum over at least ``t`` survivors
  (the protocol threshold) carries noise of standard deviation ``sigma`` (in units of ``C``); the
  server divides by ``q N / C`` and takes an Adam step. One accountant step per round, rate ``q``.
- record / local (DP-LoRA): each party adds the full noise ``sigma C`` itself. With one local
  step it sends its noised clipped-gradient sum and the server steps exactly as above (only the
  noise placement differs); with ``local_steps > 1`` it runs that many DP-SGD steps on its own
  records (rate ``q``) and sends the already private update (FedAvg).
- client / distributed and client / local: DP-FedAvg on updates clipped to ``C``. The server
  picks the cohort (``n`` of the live parties) and knows who is in it, so against the server the
  cohort gives NO amplification: the accountant uses rate 1. Only with ``client_sample_rate``
  (each client's own CSPRNG coin, see :class:`FinetuneJob`) is the rate that value.

Accounting (``ResolvedDp.accountant_bound``): distributed noise is a sum of discrete Gaussian
shares, accounted as a zCDP mechanism (KLS21 Thm. 1) amplified by Zhu-Wang's general Poisson
bound (``"zcdp"``); local noise is a continuous Gaussian, accounted with the subsampled-Gaussian
RDP (``"gaussian"``). Record sampling is each party's own Poisson coin over its own records,
which the server cannot steer, so record level keeps its amplification.

Range: every value a client hands the protocol is checked against the fixed-point range; for the
distributed modes the range is set so a clamp happens with probability below
``clamp_probability`` per round. The job's delta is the TOTAL: the RDP conversion gets
``delta - rounds * clamp_probability`` and the reported delta after ``k`` rounds is that plus
``k * clamp_probability``. For local noise clamping is post-processing of an already private
value (probability 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Literal

from secagg.fl_core.dp import (
    DpConfig,
    Placement,
    PrivacyAccountant,
    Unit,
    calibrate_noise_multiplier,
    client_level_warning,
    effective_noise_multiplier,
    exact_noise_multiplier,
)
from secagg.fl_core.finetune.job import FinetuneJob, JobError

__all__ = ["ResolvedDp", "resolve_dp"]

_TAIL = 1e-12  # per-round probability budget for a clamp in the distributed modes
_NOISE_SIGMAS = 10.0  # range kept for the noise share, in share standard deviations
_ACCOUNTING = {
    "zcdp": "KLS21 Thm 1 (zCDP of the discrete Gaussian sum) + ZW19 Thm 6 (Poisson "
            "subsampling, integer orders) + CKS20 Prop 12 (RDP to (eps, delta))",
    "gaussian": "subsampled Gaussian RDP (dp-accounting) + CKS20 Prop 12 (RDP to (eps, delta))",
}


@dataclass(frozen=True)
class ResolvedDp:
    """The job's privacy, resolved for a model of ``dim`` trainable values.

    ``config`` is None when DP is off. ``accountant_rate`` / ``accountant_multiplier`` /
    ``accountant_bound`` / ``accountant_delta`` / ``steps_per_round`` feed
    :class:`secagg.fl_core.dp.PrivacyAccountant`; ``delta`` is the job's total delta (the RDP
    conversion's ``accountant_delta`` plus ``rounds * clamp_probability``); ``protocol_clip``
    and ``protocol_scale`` are the fixed-point range and fractional bits of the protocol config.
    """

    config: DpConfig | None
    delta: float
    accountant_multiplier: float
    accountant_rate: float
    steps_per_round: int
    protocol_clip: float
    protocol_scale: int
    clamp_probability: float
    warning: str | None
    accountant_bound: Literal["gaussian", "zcdp"] = "gaussian"
    accountant_delta: float = 0.0
    amplification: str = "none"
    exact_cohorts: tuple[tuple[int, int], ...] = ()
    """Distributed noise over SecAgg/SecAgg+: the rounds' ``(n, t)`` the exact release
    (:mod:`secagg.fl_core.dp.exact`) is calibrated for; empty: the threshold design."""

    def accountant(self) -> PrivacyAccountant | None:
        """A fresh accountant (None without DP)."""
        if self.config is None:
            return None
        return PrivacyAccountant(noise_multiplier=self.accountant_multiplier,
                                 sample_rate=self.accountant_rate, delta=self.accountant_delta,
                                 bound=self.accountant_bound)

    def delta_after(self, rounds: int) -> float:
        """The delta after ``rounds`` charged rounds: conversion delta plus the clamp terms."""
        return self.accountant_delta + rounds * self.clamp_probability

    def describe(self) -> dict[str, Any]:
        """JSON-able summary for logs and the run summary."""
        cfg = self.config
        return {
            "unit": cfg.unit.value if cfg else "none",
            "noise": cfg.placement.value if cfg else None,
            "noise_multiplier": cfg.noise_multiplier if cfg else 0.0,
            "effective_noise_multiplier": self.accountant_multiplier if cfg else 0.0,
            "sample_rate": self.accountant_rate, "delta": self.delta,
            "delta_conversion": self.accountant_delta,
            "clip": cfg.clip if cfg else None, "threshold": cfg.threshold if cfg else None,
            "clamp_probability_per_round": self.clamp_probability,
            "accounting": _ACCOUNTING.get(self.accountant_bound) if cfg else None,
            "exact_noise": [list(c) for c in self.exact_cohorts] or None,
            "amplification": self.amplification if cfg else None,
            "warning": self.warning,
        }


def _solve(job: FinetuneJob, delta: float, rate: float, steps: int,
           bound: Literal["gaussian", "zcdp"]) -> float:
    if job.noise_multiplier is not None:
        return job.noise_multiplier
    assert job.epsilon is not None
    return calibrate_noise_multiplier(target_epsilon=job.epsilon, delta=delta,
                                      sample_rate=rate, steps=steps, bound=bound)


def _distributed_sigma(base: DpConfig, target: float, dim: int,
                       cohorts: tuple[tuple[int, int], ...] = ()) -> DpConfig:
    """The smallest sigma whose effective multiplier (rounding and tau included) >= target
    (exact release: the worst over ``cohorts`` and survivor counts)."""
    cfg = replace(base, noise_multiplier=target)
    for _ in range(60):
        eff = (exact_noise_multiplier(cfg, dim, cohorts) if cohorts
               else effective_noise_multiplier(cfg, dim))
        if eff >= target * (1 - 1e-9):
            return cfg
        cfg = replace(cfg, noise_multiplier=cfg.noise_multiplier * (target / eff) * (1 + 1e-6))
    raise JobError("could not calibrate the distributed noise")


def _binomial_upper(size: int, rate: float, tail: float) -> float:
    """b with P(Binomial(size, rate) >= b) <= tail (Bernstein: the variance is at most the mean)."""
    mean, log_t = size * rate, math.log(1.0 / tail)
    return mean + log_t / 3 + math.sqrt((log_t / 3) ** 2 + 2 * mean * log_t)


def resolve_dp(job: FinetuneJob, *, dim: int, sizes: tuple[int, ...], cohort: int,
               threshold: int, cohorts: tuple[tuple[int, int], ...] = ()) -> ResolvedDp:
    """Resolve the job's privacy for ``dim`` values, client record counts ``sizes``, cohort
    ``cohort`` and protocol threshold ``threshold``. ``cohorts``: the ``(n, t)`` of every
    round size the federation may run (SecAgg/SecAgg+); with distributed noise the survivors
    then release the excess (:mod:`secagg.fl_core.dp.exact`) and the sum carries exactly
    ``sigma``, and the range is sized for the smallest ``t`` among them.

    Raises:
        JobError: the target epsilon is unreachable, the clamp probability eats the whole
            delta, or the range does not fit the ring.
        DpConfigError: nonsense DP values.
    """
    n_records = sum(sizes)
    if job.dp == "none":
        bound = 4.0 * job.lr * job.local_steps
        return ResolvedDp(None, 0.0, 0.0, 0.0, 0, bound, 20, 0.0, None)
    record = job.dp == "record"
    if record:  # each party's own Poisson coin over its own records
        rate, amplification = min(1.0, job.records_per_round / n_records), "records"
    elif job.client_sample_rate is not None:  # each client's own coin: the server can't steer
        rate, amplification = job.client_sample_rate, "client self-sampling"
    else:  # the server picks the cohort and knows it: no amplification against it
        rate, amplification = 1.0, "none (the server picks the cohort)"
    delta = job.delta if job.delta is not None else 1.0 / (n_records if record
                                                          else job.num_clients) ** 1.1
    local = job.noise == "local"
    accountant_bound: Literal["gaussian", "zcdp"] = "gaussian" if local else "zcdp"
    steps_per_round = job.local_steps if (record and local) else 1
    # per-round clamp probability of the distributed modes: a Bernstein tail for each party's
    # batch plus the noise shares' 10-sigma tails; it does not depend on sigma
    clamp = 0.0 if local else _TAIL * cohort + dim * cohort * math.erfc(
        _NOISE_SIGMAS / math.sqrt(2))
    conversion_delta = delta - job.rounds * clamp
    if conversion_delta <= 0:
        raise JobError(f"delta {delta:.3g} is below the clamp probability of {job.rounds} "
                       f"rounds ({job.rounds * clamp:.3g}); raise delta or grid bits")
    target = _solve(job, conversion_delta, rate, job.rounds * steps_per_round,
                    accountant_bound)
    base = DpConfig(unit=Unit.RECORD if record else Unit.CLIENT,
                    placement=Placement.LOCAL if local else Placement.DISTRIBUTED,
                    clip=job.clip, noise_multiplier=target, delta=conversion_delta,
                    sample_rate=rate, threshold=1 if local else threshold,
                    grid_scale=job.grid_scale, epsilon_budget=job.epsilon_budget)
    expected = cohort * (job.client_sample_rate or 1.0)
    warning = None if record else client_level_warning(job.num_clients,
                                                       expected / job.num_clients)

    def resolved(cfg: DpConfig, steps: int, clip: float, scale: int, clamp_p: float
                 ) -> ResolvedDp:
        return ResolvedDp(cfg, delta, target, rate, steps, clip, scale, clamp_p, warning,
                          accountant_bound=accountant_bound, accountant_delta=conversion_delta,
                          amplification=amplification,
                          exact_cohorts=() if local else tuple(sorted(cohorts)))

    if local and record and job.local_steps == 1:  # a noised clipped-gradient sum, C units
        batch_hi = max(_binomial_upper(size, rate, _TAIL) for size in sizes)
        return resolved(base, 1, float(math.ceil(batch_hi) + _NOISE_SIGMAS * target),
                        job.grid_scale, 0.0)
    if local:  # clamping an already private value is post-processing
        bound = 4.0 * job.lr * job.local_steps if record else 1.0 + 6.0 * target
        return resolved(base, steps_per_round, bound, 20 if record else job.grid_scale, 0.0)
    if cohorts:  # exact release: a party adds sigma^2/t_r in a round with threshold t_r
        threshold = min(t for _, t in cohorts)
        base = replace(base, threshold=threshold)
    cfg = _distributed_sigma(base, target, dim, cohorts)
    share = cfg.noise_multiplier / math.sqrt(threshold)  # in units of C
    # per coordinate: |sum of clipped / C| <= the party's batch size (Bernstein tail of its
    # Binomial(size, q) draw) at record level, <= 1 at client level
    batch_hi = max(_binomial_upper(size, rate, _TAIL) for size in sizes) if record else 1.0
    return resolved(cfg, 1, float(math.ceil(batch_hi) + _NOISE_SIGMAS * share),
                    job.grid_scale, clamp)
