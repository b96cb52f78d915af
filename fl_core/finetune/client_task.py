"""The fine-tuning job's client side: from the global weights to this party's contribution.

Called once per round by :func:`secagg.fl_core.runtime.client_app.run_client` with the global
adapter
weights the server broadcast; returns the vector the secure aggregation protocol sums (see
:mod:`secagg.fl_core.finetune.privacy` for the four DP modes). Noise comes from a
:class:`secagg.fl_core.dp.NoiseSource` (AES-CTR keyed from the OS CSPRNG); record sampling uses the
same source. The training data never leaves this object.

Client-level self-sampling (``job.client_sample_rate``): every round the party flips its own
CSPRNG coin and, when it loses, hands the protocol its noise share on a ZERO update. It still
trains (the same time) and still adds its share (the sum keeps its full noise), so the server
can neither steer the coin nor see it; only this makes client-level sampling amplify privacy.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from secagg.fl_core.dp import (
    NoiseSource,
    Placement,
    Unit,
    add_distributed_noise,
    add_exact_noise,
    add_local_noise,
    clip_l2,
)
from secagg.fl_core.finetune.job import FinetuneJob
from secagg.fl_core.finetune.ledger import PrivacyLedger
from secagg.fl_core.finetune.privacy import ResolvedDp
from secagg.models import AdaptedModel, Dataset, TrainConfig, train_local
from secagg.models.dp_grad import clipped_grad_sum, poisson_indices
from secagg.models.dp_train import DpSgdConfig, train_local_dp

__all__ = ["FinetuneClientTask"]

log = logging.getLogger("secagg.fl_core.finetune")

Vector = npt.NDArray[np.float64]
_LOCAL_OPTIMIZER: dict[str, Literal["adamw", "sgd"]] = {"adamw": "adamw", "sgd": "sgd"}


class FinetuneClientTask:
    """``update(round_id, global_state) -> contribution`` for one party."""

    def __init__(self, job: FinetuneJob, client_id: int, model: AdaptedModel, data: Dataset,
                 dp: ResolvedDp, *, stats_path: Path | None = None,
                 ledger: PrivacyLedger | None = None) -> None:
        """``ledger``: this party's record of its releases (default: one in memory); a round
        past the job's rounds or ``epsilon_budget`` is refused
        (:mod:`secagg.fl_core.finetune.ledger`)."""
        self.job, self.client_id, self.model, self.data, self.dp = job, client_id, model, data, dp
        self.ledger = ledger if ledger is not None else PrivacyLedger(job, dp, client_id)
        self.noise = NoiseSource()
        self.stats_path = stats_path
        cfg = dp.config
        # Clients hand the protocol values in units of C: sensitivity 1, grid 2^-grid_scale.
        self.unit_cfg = replace(cfg, clip=1.0) if cfg is not None else None
        self._cohort: tuple[int, int] | None = None
        self._seeds: dict[int, bytes] | None = None
        self._charged_here: int | None = None

    def __call__(self, round_id: int, state: Vector) -> Vector:
        """This party's contribution to round ``round_id`` starting from ``state``
        (distributed noise: the threshold design, each party ``sigma^2 / t``).

        Raises:
            BudgetExhausted: this party's ledger refuses the round.
            VectorLengthError: ``state`` is not the model's length.
        """
        return self._run(round_id, state, None)[0]

    def for_round(self, round_id: int, state: Vector, *, n: int, t: int
                  ) -> tuple[Vector, dict[int, bytes] | None]:
        """The contribution to a SecAgg/SecAgg+ round of ``n`` parties with threshold ``t``,
        and the seeds of its removable noise (distributed noise with exact release: see
        :mod:`secagg.fl_core.dp.exact`; None otherwise).

        Raises:
            ValueError: the job's DP was not calibrated for a round of ``(n, t)``.
            VectorLengthError: ``state`` is not the model's length.
        """
        if not self.dp.exact_cohorts:
            return self._run(round_id, state, None)[0], None
        if (n, t) not in self.dp.exact_cohorts:
            raise ValueError(f"DP is calibrated for rounds {list(self.dp.exact_cohorts)}, "
                             f"not n={n}, t={t}")
        return self._run(round_id, state, (n, t))

    def void(self, round_id: int) -> bool:
        """Un-charge round ``round_id``, which ended before this party's input left it (the
        client session decides: :class:`secagg.fl_core.runtime.updates.VoidableUpdate`).
        Sound here because a contribution is computed from the broadcast state alone and
        leaves nothing data-dependent behind. True when a charge was removed.

        Raises:
            OSError: the ledger file cannot be written (the round stays charged).
        """
        if self._charged_here != round_id:  # charged by another call or process: keep it
            return False
        self._charged_here = None
        voided = self.ledger.void(round_id)
        if voided:
            self._record({"round": round_id, "client": self.client_id, "voided": True})
        return voided

    def _run(self, round_id: int, state: Vector, cohort: tuple[int, int] | None
             ) -> tuple[Vector, dict[int, bytes] | None]:
        self._charged_here = None
        self.ledger.charge(round_id)  # before any noised value exists (BudgetExhausted)
        self._charged_here = round_id  # the one charge :meth:`void` may take back
        start = time.perf_counter()
        self.model.set_vector(state)
        self._cohort, self._seeds = cohort, None
        out, info = self._contribution(round_id)
        bound = self.dp.protocol_clip
        clamped = int(np.count_nonzero(np.abs(out) > bound))
        if clamped:
            log.warning("round %d: %d values beyond the protocol range +-%g clamped", round_id,
                        clamped, bound)
            np.clip(out, -bound, bound, out=out)
        info |= {"round": round_id, "client": self.client_id, "clamped": clamped,
                 "train_s": round(time.perf_counter() - start, 4)}
        self._record(info)
        seeds, self._seeds = self._seeds, None
        return out, seeds

    def _distributed(self, vec: Vector) -> Vector:
        """Distributed noise on ``vec`` (units of C): exact levels in a round of known
        ``(n, t)``, else one share of ``sigma^2 / t``."""
        assert self.unit_cfg is not None
        if self._cohort is None:
            return add_distributed_noise(vec, self.unit_cfg, self.noise)
        out, self._seeds = add_exact_noise(vec, self.unit_cfg, *self._cohort, self.noise)
        return out

    def _contribution(self, round_id: int) -> tuple[Vector, dict[str, Any]]:
        job, cfg = self.job, self.dp.config
        if cfg is not None and cfg.unit is Unit.RECORD and (
                cfg.placement is Placement.DISTRIBUTED or job.local_steps == 1):
            # distributed: a discrete Gaussian share on the grid; local with one step: this
            # party's own DP-SGD gradient release (the full sigma*C), the server steps alike
            idx = poisson_indices(len(self.data), cfg.sample_rate, self.noise.uniform)
            cs = clipped_grad_sum(self.model, self.data, idx, clip=cfg.clip,
                                  max_length=job.max_length)
            assert self.unit_cfg is not None
            noised = (self._distributed(cs.vector / cfg.clip)
                      if cfg.placement is Placement.DISTRIBUTED
                      else add_local_noise(cs.vector / cfg.clip, self.unit_cfg, self.noise))
            return noised, {"examples": cs.count, "loss": cs.loss,
                            "frac_clipped": cs.frac_clipped}
        if cfg is not None and cfg.unit is Unit.RECORD:  # local DP-SGD steps (DP-LoRA)
            res = train_local_dp(self.model, self.data, DpSgdConfig(
                steps=job.local_steps, sample_rate=cfg.sample_rate, clip=cfg.clip,
                noise_std=cfg.noise_multiplier * cfg.clip, learning_rate=job.lr,
                optimizer="adam" if job.optimizer == "adam" else "sgd",
                max_length=job.max_length), uniform=self.noise.uniform,
                gaussian=self.noise.gaussian)
            return res.update.astype(np.float64), _train_info(res.losses, res.examples_seen)
        res_plain = train_local(self.model, self.data, TrainConfig(
            steps=job.local_steps, batch_size=job.batch_size, learning_rate=job.lr,
            max_length=job.max_length, optimizer=_LOCAL_OPTIMIZER[job.local_optimizer]),
            seed=_round_seed(job, self.client_id, round_id))
        update = res_plain.update.astype(np.float64)
        info = _train_info(res_plain.losses, res_plain.examples_seen)
        if cfg is None:
            return update, info
        clipped, norm = clip_l2(update, cfg.clip)
        assert self.unit_cfg is not None
        scaled = clipped / cfg.clip
        if not self._sampled_in():
            scaled = np.zeros_like(scaled)  # sits out: the noise share alone, same timing
        if cfg.placement is Placement.DISTRIBUTED:
            return self._distributed(scaled), info | {"norm": norm}
        return add_local_noise(scaled, self.unit_cfg, self.noise), info | {"norm": norm}

    def _sampled_in(self) -> bool:
        """This round's own coin (client level with ``client_sample_rate``; else always in).
        Drawn every round whatever the outcome; never logged (the stats file is not private
        from whoever runs ``secagg run``)."""
        rate = self.job.client_sample_rate
        if rate is None:
            return True
        return bool(self.noise.uniform(1)[0] < rate)

    def _record(self, info: dict[str, Any]) -> None:
        if self.stats_path is None:
            return
        with self.stats_path.open("a") as f:
            f.write(json.dumps(info) + "\n")


def _train_info(losses: tuple[float, ...], examples: int) -> dict[str, Any]:
    return {"examples": examples, "loss": float(np.mean(losses)) if losses else None}


def _round_seed(job: FinetuneJob, client_id: int, round_id: int) -> int:
    """Batch order for non-private local training (public; no DP claim rests on it)."""
    return (job.seed * 1_000_003 + client_id) * 1_000_003 + round_id
