"""One federated fine-tuning run, simulated in process with the objects the runtime uses.

Per round every sampled client is a :class:`secagg.fl_core.finetune.client_task.FinetuneClientTask`
(all share one :class:`secagg.models.AdaptedModel`: each call starts with ``set_vector(state)``),
the sum goes through the real secure aggregation :func:`secagg.protocols.harness.run_round` and
:class:`secagg.fl_core.finetune.server_task.FinetuneServerTask` takes the step and the accountant's.
``centralized=True`` runs one party holding all the data (every party's part) and skips the
aggregation. Without DP (``dp="none"``) that party runs the federated round's procedure itself:
as many local trainings per round as the federated cohort has parties (the same client ids, so
the same batch seeds; the same local steps, batch, local optimizer), each from the global
weights over ALL the data, and the server optimizer steps on their mean; only the data split
differs from the federated run. (Before, it ran one local training per round, and on party 1's
part only when the job had several parties.) With DP on it is one party sampling from all the
data, adding the whole noise itself.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from benchmarks.experiments.splits import Split, TestReads
from secagg.fl_core.finetune.app import Prepared, prepare
from secagg.fl_core.finetune.client_task import FinetuneClientTask
from secagg.fl_core.finetune.job import FinetuneJob
from secagg.fl_core.finetune.party import (
    JobData,
    build_job_model,
    carve_validation,
    load_job_data,
)
from secagg.fl_core.finetune.privacy import resolve_dp
from secagg.fl_core.finetune.server_task import FinetuneServerTask
from secagg.fl_core.runtime.driver import RoundOutcome
from secagg.protocols.config import SecAggConfig
from secagg.protocols.harness import run_round

__all__ = ["RESULTS", "Contribute", "prepare_run", "run_job", "save"]

RESULTS = Path(__file__).resolve().parents[1] / "results" / "experiments"
Vector = npt.NDArray[np.float64]
Contribute = Callable[[Prepared, int, list[int], Vector], dict[int, Vector]]
"""Optional replacement of the per-client loop: ``(prep, round, cohort, state) -> inputs``."""


def results_dir() -> Path:
    """Where results go (``SECAGG_EXPERIMENTS_OUT`` overrides, for the smoke test)."""
    out = Path(os.environ.get("SECAGG_EXPERIMENTS_OUT", str(RESULTS)))
    out.mkdir(parents=True, exist_ok=True)
    return out


def save(name: str, doc: dict[str, Any]) -> Path:
    """Write ``doc`` to ``<results>/<name>.json`` atomically; return the path."""
    path = results_dir() / f"{name}.json"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    os.replace(tmp, path)
    return path


def prepare_run(job: FinetuneJob, *, cohort: int, centralized: bool = False) -> Prepared:
    """``app.prepare(job, protocol="secagg+", n=cohort, active=False, val_size=eval_size)``;
    centralized: the same pieces for a single party with threshold 1 (it adds the whole noise)
    and no protocol. Either way ``job.eval_size`` training records are carved out as the
    validation set (:mod:`benchmarks.experiments.splits`) before DP sees the parties' sizes."""
    if not centralized:
        return prepare(job, protocol="secagg+", n=cohort, active=False, val_size=job.eval_size)
    data, val = carve_validation(load_job_data(job), job.eval_size, job.seed)
    model = build_job_model(job, data)
    dp = resolve_dp(job, dim=model.num_trainable, sizes=data.sizes, cohort=1, threshold=1)
    return Prepared(job, data, model, dp, {}, val=val)


def _cohort(job: FinetuneJob, n: int, round_id: int) -> list[int]:
    """``n`` of the ``num_clients`` ids, uniformly without replacement (public sampling)."""
    if n >= job.num_clients:
        return list(range(1, job.num_clients + 1))
    rng = np.random.default_rng([job.seed, round_id])
    return sorted(int(c) + 1 for c in rng.choice(job.num_clients, size=n, replace=False))


def _client_loop(tasks: dict[int, FinetuneClientTask],
                 removable: dict[int, dict[int, bytes]] | None = None) -> Contribute:
    """Each member's contribution; with exact distributed noise (``prep.dp.exact_cohorts``)
    through ``for_round`` with the round's ``(n, t)``, its noise seeds put in ``removable``."""
    def contribute(prep: Prepared, round_id: int, cohort: list[int], state: Vector
                   ) -> dict[int, Vector]:
        if not prep.dp.exact_cohorts or removable is None:
            return {cid: tasks[cid](round_id, state) for cid in cohort}
        t = SecAggConfig(**{**prep.config_args, "n": len(cohort)}).threshold
        inputs: dict[int, Vector] = {}
        for cid in cohort:
            inputs[cid], seeds = tasks[cid].for_round(round_id, state, n=len(cohort), t=t)
            if seeds:
                removable[cid] = seeds
        return inputs
    return contribute


def run_job(job: FinetuneJob, *, cohort: int | None = None, centralized: bool = False,
            contribute: Contribute | None = None, label: str = "",
            eval_before: bool = True,
            on_round: Callable[[dict[str, Any]], None] | None = None,
            split: Split = "val", row: str | None = None) -> dict[str, Any]:
    """Run ``job.rounds`` rounds; return a JSON-able summary (accuracy before/after, epsilon,
    per-round seconds split into training and secure aggregation, bytes per client).

    ``split``: what the evaluations read. ``"val"`` (the default: what every choice is made
    on) is the validation set carved out of the parties' records; ``"test"`` is the job's
    held-out set, read for a reported row only: ``row`` (default ``label``) is claimed in the
    results folder's :class:`benchmarks.experiments.splits.TestReads` before the run, and a
    row that read it before is refused. The summary says which (``"split"``).

    Raises:
        JobError, ConfigError, ProtocolError: as :func:`prepare` and :func:`run_round`.
        TestReread: ``split="test"`` for a row that already read the test set.
        ValueError: another ``split``, or ``split="test"`` without a row key.
    """
    if split not in ("val", "test"):
        raise ValueError(f"split must be 'val' or 'test', got {split!r}")
    if split == "test":
        key = row or label
        if not key:
            raise ValueError("a test read needs a row key (row= or label=)")
        TestReads(results_dir()).claim(key)
    n = 1 if centralized else (cohort or job.num_clients)
    # centralized without DP: the one party runs the cohort's local trainings (see above)
    workers = (cohort or job.num_clients) if centralized and job.dp == "none" else 1
    t0 = time.perf_counter()
    prep = prepare_run(job, cohort=n, centralized=centralized)
    assert prep.val is not None
    seen = prep.data if split == "test" else JobData(prep.data.train, prep.val, prep.data.parts)
    server = FinetuneServerTask(job, prep.model, seen, prep.dp, cohort=n)
    # the "before" evaluation is the same for every run of one model/data/seed: skippable
    state = server.initial_state(prep.dim) if eval_before else server.initial_vector.copy()
    removable: dict[int, dict[int, bytes]] = {}
    if contribute is None:
        if centralized:
            pooled = prep.data.train.subset(np.concatenate(prep.data.parts))
            tasks = {cid: FinetuneClientTask(job, cid, prep.model, pooled, prep.dp)
                     for cid in range(1, workers + 1)}
        else:
            tasks = {cid: FinetuneClientTask(job, cid, prep.model, prep.data.client(cid),
                                             prep.dp) for cid in range(1, job.num_clients + 1)}
        contribute = _client_loop(tasks, removable)
    rounds: list[dict[str, Any]] = []
    for r in range(1, job.rounds + 1):
        members = list(range(1, workers + 1)) if centralized else _cohort(job, n, r)
        t_train = time.perf_counter()
        inputs = contribute(prep, r, members, state)
        train_s = time.perf_counter() - t_train
        rec: dict[str, Any] = {"round": r, "clients": len(members),
                               "train_s_total": round(train_s, 4),
                               "train_s_per_client": round(train_s / len(members), 4)}
        if centralized:
            total = np.sum([inputs[cid] for cid in members], axis=0)
            out = RoundOutcome(r, tuple(members), aggregate=total,
                               weight_total=float(len(members)), included=tuple(members))
        else:
            config = SecAggConfig(**{**prep.config_args, "n": len(members)})
            rr = run_round(config, inputs, round_id=r, removable=dict(removable) or None)
            removable.clear()
            out = RoundOutcome(r, tuple(members), aggregate=rr.aggregate,
                               weight_total=rr.weight_total, included=rr.included,
                               threshold=config.threshold, released_noise=rr.released_noise)
            rec |= {"secagg_server_s": round(rr.server_s, 4),
                    "secagg_client_s_mean": round(rr.client_s_mean, 4),
                    "secagg_total_compute_s": round(rr.total_compute_s, 4),
                    "bytes_up_per_client": rr.bytes_up_per_client,
                    "bytes_down_per_client": rr.bytes_down_per_client}
        new = server.apply(state, out)
        if new is None:
            raise RuntimeError(f"round {r}: the server refused the aggregate")
        state = new
        rec |= server.report(out)
        rounds.append(rec)
        if on_round is not None:
            on_round(rec)
    server.evaluate(state, job.rounds)
    return _summary(job, prep, server, rounds, label, split, centralized, n,
                    time.perf_counter() - t0) | {"local_trainings_per_round": (
                        workers if centralized else n), "_prep": prep}


def _summary(job: FinetuneJob, prep: Prepared, server: FinetuneServerTask,
             rounds: list[dict[str, Any]], label: str, split: Split, centralized: bool,
             n: int, wall: float) -> dict[str, Any]:
    first = server.evals[0] if len(server.evals) > 1 else {}
    last = server.evals[-1]
    doc: dict[str, Any] = {
        "label": label, "split": split, "centralized": centralized, "cohort": n,
        "job": asdict(job), "dim": prep.dim, "dp": prep.dp.describe(),
        "protocol": prep.config_args,
        "accuracy_before": first.get("accuracy"), "accuracy_after": last.get("accuracy"),
        "macro_f1_after": last.get("macro_f1"), "evaluations": server.evals,
        "epsilon": rounds[-1].get("epsilon") if rounds else None,
        "delta": prep.dp.delta if prep.dp.config is not None else None,
        "wall_s": round(wall, 1), "rounds": rounds,
    }
    if not centralized and rounds:
        train = float(np.mean([r["train_s_per_client"] for r in rounds]))
        sa = float(np.mean([r["secagg_client_s_mean"] + r["secagg_server_s"] for r in rounds]))
        doc |= {"bytes_up_per_client_per_round": float(np.mean(
                    [r["bytes_up_per_client"] for r in rounds])),
                "train_s_per_client_per_round": round(train, 4),
                "secagg_s_per_round": round(sa, 4),
                "secagg_fraction_of_round": round(sa / (train + sa), 5)}
    return doc


def with_(job: FinetuneJob, **kw: Any) -> FinetuneJob:
    """``dataclasses.replace`` (re-validates)."""
    return replace(job, **kw)


def finite(x: float | None) -> float | None:
    """JSON-safe float."""
    return None if x is None or not math.isfinite(x) else x
