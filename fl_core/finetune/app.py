"""Wiring a fine-tuning job into ``secagg serve`` / ``secagg client``: build, run, summarise.

:func:`prepare` is what every party does first, identically: load the data and the model, fix
the protocol's threshold, resolve the DP mechanism and from it the fixed-point range of the
protocol. The server then evaluates the initial weights, runs the rounds with
:class:`secagg.fl_core.finetune.server_task.FinetuneServerTask` and evaluates again; the clients
answer rounds with :class:`secagg.fl_core.finetune.client_task.FinetuneClientTask`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from secagg.fl_core.finetune.continual import StagePlan
from secagg.fl_core.finetune.continual_tasks import build_plan
from secagg.fl_core.finetune.job import FinetuneJob
from secagg.fl_core.finetune.party import (
    JobData,
    build_job_model,
    carve_validation,
    load_job_data,
)
from secagg.fl_core.finetune.preflight import check_min_clients, check_protocol
from secagg.fl_core.finetune.privacy import ResolvedDp, resolve_dp
from secagg.fl_core.runtime.checkpoint import Checkpoint
from secagg.fl_core.runtime.cohort import population_args
from secagg.models import AdaptedModel, Dataset
from secagg.protocols.config import SecAggConfig
from secagg.protocols.errors import ConfigError

__all__ = ["Prepared", "final_summary", "prepare", "round_cohorts", "write_summary"]


@dataclass
class Prepared:
    """A party's view of the job, ready to run."""

    job: FinetuneJob
    data: JobData
    model: AdaptedModel
    dp: ResolvedDp
    config_args: dict[str, Any]
    plan: StagePlan | None = None
    """A continual job's stages (:mod:`secagg.fl_core.finetune.continual`); None otherwise."""
    round_dim: int | None = None
    """Values per round when they are not the trainable weights (distillation: the transfer
    set's soft labels, :mod:`secagg.fl_core.finetune.distill`); None otherwise."""
    val: Dataset | None = None
    """A validation set carved out of the parties' training records (``prepare(val_size=)``,
    experiments only: :func:`secagg.fl_core.finetune.party.carve_validation`); None otherwise."""

    @property
    def dim(self) -> int:
        """Values aggregated per round (the trainable weights, or ``round_dim``)."""
        return self.round_dim if self.round_dim is not None else self.model.num_trainable


def round_cohorts(protocol: str, n: int, active: bool, min_cohort: int | None,
                  population: int | None = None) -> tuple[tuple[int, int], ...]:
    """``(m, t_m)`` for every round size ``m`` from ``min_cohort`` (default ``n``) to ``n``,
    ``t_m`` the threshold the config rule gives a round of ``m`` (what every party's policy
    derives, :func:`secagg.fl_core.runtime.cohort.round_config_args`).

    Raises:
        ConfigError: ``min_cohort`` outside ``[2, n]``, or no valid config for some ``m``.
    """
    low = n if min_cohort is None else min_cohort
    if not 2 <= low <= n:
        raise ConfigError(f"min clients must be in [2, {n}], got {low}")
    return tuple((m, SecAggConfig(protocol=protocol, n=m, active=active,
                                  population=population).threshold)
                 for m in range(low, n + 1))


def prepare(job: FinetuneJob, *, protocol: str, n: int, active: bool,
            min_cohort: int | None = None, cards: int = 0, val_size: int = 0) -> Prepared:
    """Build the model and data, and resolve DP and the protocol config for cohort ``n``
    (rounds of ``min_cohort`` to ``n`` parties when the sampler refills after a loss).
    ``cards``: the client cards of the party's key folder; more than ``n`` sizes the config
    for the population (:func:`secagg.fl_core.runtime.cohort.population_args`). ``val_size``
    (experiments): carve a validation set of that many records out of the parties' parts
    before DP is calibrated on their sizes (:attr:`Prepared.val`; not for distillation).

    Distributed noise over SecAgg/SecAgg+ uses the exact release
    (:mod:`secagg.fl_core.dp.exact`): it is calibrated for every round size allowed, and the
    threshold follows the config rule per round size. Other protocols keep the threshold
    design and pin the full cohort's threshold (no round may have fewer noise shares).

    Raises:
        JobError: a protocol the job cannot run over, unreachable DP targets, or (CohortError)
            ``min_cohort`` below the cohort floor (:func:`preflight.check_min_clients`).
        ConfigError: the protocol config does not validate.
        AssetNotFoundError, DataFormatError: the model or data cannot be loaded.
        ScheduleError: a continual schedule that does not fit the data.
    """
    check_protocol(job, protocol)
    check_min_clients(job, protocol=protocol, n=n, active=active, min_clients=min_cohort)
    _quiet_transformers()
    if job.objective == "distill":
        from secagg.fl_core.finetune.distill import prepare_distill

        return prepare_distill(job, protocol=protocol, n=n, active=active)
    base: dict[str, Any] = {"protocol": protocol, "n": n}
    if protocol != "plain":
        base["active"] = active
    base = population_args(base, cards)
    threshold = SecAggConfig(**base).threshold
    exact = protocol in ("secagg", "secagg+") and job.dp != "none" and job.noise == "distributed"
    cohorts = round_cohorts(protocol, n, active, min_cohort,
                            base.get("population")) if exact else ()
    if job.objective == "pretrain":  # unlabeled documents; full weights travel in chunks
        from secagg.fl_core.finetune.pretrain import chunk_round_dim, load_pretrain_data

        data = load_pretrain_data(job)
    else:
        data = load_job_data(job)
    val = None
    if val_size:
        data, val = carve_validation(data, val_size, job.seed)
    model = build_job_model(job, data)
    dp = resolve_dp(job, dim=model.num_trainable, sizes=data.sizes, cohort=n,
                    threshold=threshold, cohorts=cohorts)
    args = {**base, "clip": dp.protocol_clip, "scale": dp.protocol_scale}
    if protocol != "plain" and not exact:
        args["threshold"] = threshold  # explicit: the DP noise shares are calibrated to it
    SecAggConfig(**args)  # validate now, with a clear error, rather than in round 1
    plan = build_plan(job, data) if job.continual is not None else None
    round_dim = chunk_round_dim(job, model, n) if job.objective == "pretrain" else None
    return Prepared(job, data, model, dp, args, plan, round_dim=round_dim, val=val)


def _quiet_transformers() -> None:
    """No per-process load reports or progress bars (the fresh head is expected)."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]


def final_summary(prep: Prepared, ckpt: Checkpoint, evals: list[dict[str, Any]],
                  extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The machine-readable summary of a finished job."""
    rounds = [r for r in ckpt.history if r.get("ok")]
    n_clients = [max(len(r.get("survivors", [])), 1) for r in rounds]
    up = [r["bytes_up"] / k for r, k in zip(rounds, n_clients, strict=True)]
    down = [r["bytes_down"] / k for r, k in zip(rounds, n_clients, strict=True)]
    first, last = (evals[0] if evals else {}), (evals[-1] if evals else {})
    metric = "accuracy" if "accuracy" in first else "perplexity"
    doc: dict[str, Any] = {
        "job": json.loads(prep.job.to_json()), "job_digest": prep.job.digest,
        "protocol": prep.config_args, "dim": prep.dim, "dp": prep.dp.describe(),
        "rounds": ckpt.step, "rounds_attempted": len(ckpt.history),
        f"{metric}_before": first.get(metric), f"{metric}_after": last.get(metric),
        "evaluations": evals,
        "epsilon": rounds[-1].get("epsilon", 0.0) if rounds else 0.0,
        "delta": prep.dp.delta,
        "bytes_up_per_client_per_round": round(sum(up) / len(up), 1) if up else 0.0,
        "bytes_down_per_client_per_round": round(sum(down) / len(down), 1) if down else 0.0,
        "round_seconds": [r.get("seconds") for r in rounds],
        "per_round": list(ckpt.history),
    }
    if prep.dp.config is None:
        doc["epsilon"] = None  # no DP: no finite epsilon (JSON has no infinity)
    return doc | (extra or {})


def write_summary(path: str | Path, doc: dict[str, Any]) -> None:
    """Write ``doc`` as JSON, atomically."""
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=str))
    os.replace(tmp, target)
