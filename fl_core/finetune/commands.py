"""``secagg serve`` / ``secagg client`` with a fine-tuning job (no ``--dim``).

Both sides call :func:`prepare_from_args` first (load data and model, resolve DP); the server
wraps :func:`secagg.fl_core.runtime.server_app.serve` with evaluation before and after and writes
the job
summary; the client answers rounds with its training task.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from secagg.fl_core.errors import FlCoreError
from secagg.fl_core.finetune.app import Prepared, final_summary, prepare, write_summary
from secagg.fl_core.finetune.chunked import ChunkedClientTask, ChunkedServerTask
from secagg.fl_core.finetune.cli_args import job_from_args
from secagg.fl_core.finetune.client_task import FinetuneClientTask
from secagg.fl_core.finetune.continual_tasks import (
    ContinualClientTask,
    ContinualServerTask,
    continual_summary,
)
from secagg.fl_core.finetune.generate import sample_generations
from secagg.fl_core.finetune.job import JobError
from secagg.fl_core.finetune.ledger import PrivacyLedger
from secagg.fl_core.finetune.server_task import FinetuneServerTask
from secagg.fl_core.identity.keyfiles import load_allowlist
from secagg.fl_core.runtime.checkpoint import Checkpoint
from secagg.models.errors import ModelsError
from secagg.protocols.errors import ConfigError

__all__ = ["client_task_from_args", "finish_server", "prepare_from_args", "server_task_for"]

log = logging.getLogger("secagg.fl_core.finetune")
Emit = Callable[[dict[str, Any]], None]


def _cards(ns: argparse.Namespace) -> int:
    """How many client cards the party's own key folder holds (0 when insecure or none)."""
    keys = getattr(ns, "keys", None)
    if ns.insecure or not keys or not Path(keys).is_dir():
        return 0
    return len(load_allowlist(keys))


def prepare_from_args(ns: argparse.Namespace, who: str) -> Prepared | None:
    """Build the job's party state from the flags and set ``ns.dim``/``ns.n``/``ns.rounds``;
    None (after printing why) when the job cannot run."""
    try:
        job = job_from_args(ns, rounds=ns.rounds if who == "serve" else None)
        n = ns.n if ns.n is not None else job.num_clients
        prep = prepare(job, protocol=ns.protocol, n=n, active=not ns.insecure,
                       min_cohort=getattr(ns, "min_clients", None), cards=_cards(ns))
    except (JobError, ConfigError, ModelsError, ValueError, OSError, FlCoreError) as exc:
        print(f"secagg {who}: {exc}", file=sys.stderr)
        return None
    ns.dim, ns.n = prep.dim, n
    if who == "serve":
        ns.rounds = job.rounds
        if job.objective == "pretrain":  # full weights: K sub-rounds per training round
            from secagg.fl_core.finetune.pretrain import chunks_per_round

            ns.rounds = job.rounds * chunks_per_round(job, prep.model)
    if prep.dp.warning:
        print(f"secagg {who}: warning: {prep.dp.warning}", file=sys.stderr)
    return prep


def server_task_for(prep: Prepared, emit: Emit) -> FinetuneServerTask | ChunkedServerTask:
    """The server task; its initial evaluation is reported through ``emit``."""
    if prep.round_dim is not None and prep.job.objective == "pretrain":  # chunked full weights
        return ChunkedServerTask(prep.job, prep.model, prep.data, chunk_size=prep.round_dim,
                                 on_eval=lambda doc: emit({"event": "eval", **doc}))
    if prep.job.objective == "distill":
        from secagg.fl_core.finetune.distill import DistillData
        from secagg.fl_core.finetune.distill_server import DistillServerTask

        assert isinstance(prep.data, DistillData)
        return DistillServerTask(prep.job, prep.model, prep.data, prep.dp,
                                 cohort=prep.config_args["n"],
                                 on_eval=lambda doc: emit({"event": "eval", **doc}))
    if prep.plan is not None:
        return ContinualServerTask(prep.job, prep.model, prep.data, prep.dp, prep.plan,
                                   cohort=prep.config_args["n"],
                                   on_eval=lambda doc: emit({"event": "eval", **doc}))
    return FinetuneServerTask(prep.job, prep.model, prep.data, prep.dp,
                              cohort=prep.config_args["n"],
                              on_eval=lambda doc: emit({"event": "eval", **doc}))


def finish_server(prep: Prepared, task: FinetuneServerTask | ChunkedServerTask,
                  ckpt: Checkpoint, json_path: str | None, emit: Emit) -> dict[str, Any]:
    """Evaluate the final weights, sample generations (causal LM), write the summary."""
    if prep.job.objective == "pretrain" or isinstance(task, ChunkedServerTask):
        return _finish_pretrain(prep, task, ckpt, json_path, emit)
    if prep.job.objective == "distill":
        from secagg.fl_core.finetune.distill_server import DistillServerTask, finish_distill

        assert isinstance(task, DistillServerTask)
        return finish_distill(prep, task, ckpt, json_path, emit)
    if not task.evals or task.evals[-1]["step"] != ckpt.step:
        task.evaluate(ckpt.state, ckpt.step)
    extra: dict[str, Any] = {}
    prep.model.set_vector(task.initial_vector)
    generations_before = sample_generations(prep.model, prep.data.test, prep.job.generations)
    if generations_before:
        prep.model.set_vector(ckpt.state)
        after = sample_generations(prep.model, prep.data.test, prep.job.generations)
        extra["generations"] = [{**b, "before": b["output"], "after": a["output"]} for b, a in
                                zip(generations_before, after, strict=True)]
    if isinstance(task, ContinualServerTask):
        extra |= continual_summary(task, ckpt.last_round_id)
    if os.environ.get("SECAGG_BASELINES", "on") != "off":
        from secagg.fl_core.finetune.baselines import job_baselines

        emit({"event": "baselines"})
        prep.model.set_vector(task.initial_vector)  # the probe reads the pretrained features
        if (baselines := job_baselines(prep.job, prep.model, prep.data)) is not None:
            extra["baselines"] = baselines
        prep.model.set_vector(ckpt.state)
    doc = final_summary(prep, ckpt, task.evals, extra)
    if json_path:
        write_summary(Path(json_path), doc)
    emit({"event": "final", **{k: v for k, v in doc.items() if k not in ("per_round", "job")}})
    return doc


def _finish_pretrain(prep: Prepared, task: FinetuneServerTask | ChunkedServerTask,
                     ckpt: Checkpoint, json_path: str | None, emit: Emit) -> dict[str, Any]:
    """Perplexity after, bytes per training round, the server's peak memory."""
    from secagg.fl_core.finetune.pretrain import pretrain_summary

    if isinstance(task, ChunkedServerTask):
        if not task.evals or task.evals[-1]["step"] != ckpt.step:
            task.evaluate(ckpt.step)
        trained = task.training_rounds
    else:
        if not task.evals or task.evals[-1]["step"] != ckpt.step:
            task.evaluate(ckpt.state, ckpt.step)
        trained = ckpt.step
    doc = pretrain_summary(final_summary(prep, ckpt, task.evals), model=prep.model,
                           job=prep.job, training_rounds=trained)
    if json_path:
        write_summary(Path(json_path), doc)
    emit({"event": "final", **{k: v for k, v in doc.items() if k not in ("per_round", "job")}})
    return doc


def client_task_from_args(ns: argparse.Namespace, prep: Prepared
                          ) -> FinetuneClientTask | ChunkedClientTask:
    """This client's training task (its data part is chosen by ``--id``).

    Raises:
        JobError: the id is not one of the job's clients.
        LedgerError: ``--ledger`` names an unreadable ledger or another job's.
    """
    stats = getattr(ns, "stats", None)
    ledger_file = getattr(ns, "ledger", None)
    ledger = PrivacyLedger(prep.job, prep.dp, ns.client_id,
                           Path(ledger_file) if ledger_file else None)
    if prep.job.objective == "pretrain":
        from secagg.fl_core.finetune.pretrain import client_task

        return client_task(prep.job, ns.client_id, prep.model, prep.data, prep.dp,
                           prep.dp.protocol_clip, Path(stats) if stats else None, ledger)
    if prep.job.objective == "distill":
        from secagg.fl_core.finetune.distill import DistillClientTask, DistillData

        assert isinstance(prep.data, DistillData)
        return DistillClientTask(prep.job, ns.client_id, prep.model,  # type: ignore[return-value]
                                 prep.data.client(ns.client_id), prep.data.transfer_texts,
                                 prep.dp, stats_path=Path(stats) if stats else None,
                                 ledger=ledger)
    if prep.plan is not None:
        return ContinualClientTask(prep.job, ns.client_id, prep.model, prep.data, prep.dp,
                                   prep.plan, stats_path=Path(stats) if stats else None,
                                   ledger=ledger)
    return FinetuneClientTask(prep.job, ns.client_id, prep.model, prep.data.client(ns.client_id),
                              prep.dp, stats_path=Path(stats) if stats else None, ledger=ledger)
