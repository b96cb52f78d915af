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
- client / distributed and client / local: DP-FedAvg on updates clipped to ``C``; the cohort is
  ``n`` of ``num_clients`` parties (rate ``n / num_clients``).

Range: every value a client hands the protocol is checked against the fixed-point range; for the
distributed modes the range is set so a clamp happens with probability below
``clamp_probability`` per round (added to the reported delta); for local noise clamping is
post-processing of an already private value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from secagg.fl_core.dp import (
    DpConfig,
    Placement,
    PrivacyAccountant,
    Unit,
    calibrate_noise_multiplier,
    client_level_warning,
    effective_noise_multiplier,
)
from secagg.fl_core.finetune.job import FinetuneJob, JobError

__all__ = ["ResolvedDp", "resolve_dp"]

_TAIL = 1e-12  # per-round probability budget for a clamp in the distributed modes
_NOISE_SIGMAS = 10.0  # range kept for the noise share, in share standard deviations


@dataclass(frozen=True)
class ResolvedDp:
    """The job's privacy, resolved for a model of ``dim`` trainable values.

    ``config`` is None when DP is off. ``accountant_rate`` / ``accountant_multiplier`` /
    ``steps_per_round`` feed :class:`secagg.fl_core.dp.PrivacyAccountant`; ``protocol_clip`` and
    ``protocol_scale`` are the fixed-point range and fractional bits of the protocol config.
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

    def accountant(self) -> PrivacyAccountant | None:
        """A fresh accountant (None without DP)."""
        if self.config is None:
            return None
        return PrivacyAccountant(noise_multiplier=self.accountant_multiplier,
                                 sample_rate=self.accountant_rate, delta=self.delta)

    def describe(self) -> dict[str, Any]:
        """JSON-able summary for logs and the run summary."""
        cfg = self.config
        return {
            "unit": cfg.unit.value if cfg else "none",
            "noise": cfg.placement.value if cfg else None,
            "noise_multiplier": cfg.noise_multiplier if cfg else 0.0,
            "effective_noise_multiplier": self.accountant_multiplier if cfg else 0.0,
            "sample_rate": self.accountant_rate, "delta": self.delta,
            "clip": cfg.clip if cfg else None, "threshold": cfg.threshold if cfg else None,
            "clamp_probability_per_round": self.clamp_probability,
            "warning": self.warning,
        }


def _solve(job: FinetuneJob, delta: float, rate: float, steps: int) -> float:
    if job.noise_multiplier is not None:
        return job.noise_multiplier
    assert job.epsilon is not None
    return calibrate_noise_multiplier(target_epsilon=job.epsilon, delta=delta,
                                      sample_rate=rate, steps=steps)


def _distributed_sigma(base: DpConfig, target: float, dim: int) -> DpConfig:
    """The smallest sigma whose effective multiplier (rounding and tau included) >= target."""
    cfg = replace(base, noise_multiplier=target)
    for _ in range(60):
        eff = effective_noise_multiplier(cfg, dim)
        if eff >= target * (1 - 1e-9):
            return cfg
        cfg = replace(cfg, noise_multiplier=cfg.noise_multiplier * (target / eff) * (1 + 1e-6))
    raise JobError("could not calibrate the distributed noise")


def _binomial_upper(size: int, rate: float, tail: float) -> float:
    """b with P(Binomial(size, rate) >= b) <= tail (Bernstein: the variance is at most the mean)."""
    mean, log_t = size * rate, math.log(1.0 / tail)
    return mean + log_t / 3 + math.sqrt((log_t / 3) ** 2 + 2 * mean * log_t)


def resolve_dp(job: FinetuneJob, *, dim: int, sizes: tuple[int, ...], cohort: int,
               threshold: int) -> ResolvedDp:
    """Resolve the job's privacy for ``dim`` values, client record counts ``sizes``, cohort
    ``cohort`` and protocol threshold ``threshold``.

    Raises:
        JobError: the target epsilon is unreachable or the range does not fit the ring.
        DpConfigError: nonsense DP values.
    """
    n_records = sum(sizes)
    if job.dp == "none":
        bound = 4.0 * job.lr * job.local_steps
        return ResolvedDp(None, 0.0, 0.0, 0.0, 0, bound, 20, 0.0, None)
    record = job.dp == "record"
    rate = min(1.0, job.records_per_round / n_records) if record else cohort / job.num_clients
    delta = job.delta if job.delta is not None else 1.0 / (n_records if record
                                                          else job.num_clients) ** 1.1
    local = job.noise == "local"
    steps_per_round = job.local_steps if (record and local) else 1
    target = _solve(job, delta, rate, job.rounds * steps_per_round)
    base = DpConfig(unit=Unit.RECORD if record else Unit.CLIENT,
                    placement=Placement.LOCAL if local else Placement.DISTRIBUTED,
                    clip=job.clip, noise_multiplier=target, delta=delta, sample_rate=rate,
                    threshold=1 if local else threshold, grid_scale=job.grid_scale,
                    epsilon_budget=job.epsilon_budget)
    warning = None if record else client_level_warning(job.num_clients, rate)
    if local and record and job.local_steps == 1:  # a noised clipped-gradient sum, C units
        batch_hi = max(_binomial_upper(size, rate, _TAIL) for size in sizes)
        bound = float(math.ceil(batch_hi) + _NOISE_SIGMAS * target)
        return ResolvedDp(base, delta, target, rate, 1, bound, job.grid_scale, 0.0, warning)
    if local:  # clamping an already private value is post-processing
        bound = 4.0 * job.lr * job.local_steps if record else 1.0 + 6.0 * target
        return ResolvedDp(base, delta, target, rate, steps_per_round, bound,
                          20 if record else job.grid_scale, 0.0, warning)
    cfg = _distributed_sigma(base, target, dim)
    share = cfg.noise_multiplier / math.sqrt(threshold)  # in units of C
    # per coordinate: |sum of clipped / C| <= the party's batch size (Bernstein tail of its
    # Binomial(size, q) draw) at record level, <= 1 at client level
    batch_hi = max(_binomial_upper(size, rate, _TAIL) for size in sizes) if record else 1.0
    bound = float(math.ceil(batch_hi) + _NOISE_SIGMAS * share)
    noise_tail = dim * cohort * math.erfc(_NOISE_SIGMAS / math.sqrt(2))
    return ResolvedDp(cfg, delta, target, rate, 1, bound, job.grid_scale,
                      _TAIL * cohort + noise_tail, warning)
