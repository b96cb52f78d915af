"""``secagg serve`` / ``secagg client`` with a fine-tuning job (no ``--dim``).

Both sides call :func:`prepare_from_args` first (load data and model, resolve DP); the server
wraps :func:`secagg.fl_core.runtime.server_app.serve` with evaluation before and after and writes
the job
summary; the client answers rounds with its training task.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from secagg.fl_core.finetune.app import Prepared, final_summary, prepare, write_summary
from secagg.fl_core.finetune.cli_args import job_from_args
from secagg.fl_core.finetune.client_task import FinetuneClientTask
from secagg.fl_core.finetune.generate import sample_generations
from secagg.fl_core.finetune.job import JobError
from secagg.fl_core.finetune.server_task import FinetuneServerTask
from secagg.fl_core.runtime.checkpoint import Checkpoint
from secagg.models.errors import ModelsError
from secagg.protocols.errors import ConfigError

__all__ = ["client_task_from_args", "finish_server", "prepare_from_args", "server_task_for"]

log = logging.getLogger("secagg.fl_core.finetune")
Emit = Callable[[dict[str, Any]], None]


def prepare_from_args(ns: argparse.Namespace, who: str) -> Prepared | None:
    """Build the job's party state from the flags and set ``ns.dim``/``ns.n``/``ns.rounds``;
    None (after printing why) when the job cannot run."""
    try:
        job = job_from_args(ns, rounds=ns.rounds if who == "serve" else None)
        n = ns.n if ns.n is not None else job.num_clients
        prep = prepare(job, protocol=ns.protocol, n=n, active=not ns.insecure,
                       min_cohort=getattr(ns, "min_clients", None))
    except (JobError, ConfigError, ModelsError, ValueError) as exc:
        print(f"secagg {who}: {exc}", file=sys.stderr)
        return None
    ns.dim, ns.n = prep.dim, n
    if who == "serve":
        ns.rounds = job.rounds
    if prep.dp.warning:
        print(f"secagg {who}: warning: {prep.dp.warning}", file=sys.stderr)
    return prep


def server_task_for(prep: Prepared, emit: Emit) -> FinetuneServerTask:
    """The server task; its initial evaluation is reported through ``emit``."""
    return FinetuneServerTask(prep.job, prep.model, prep.data, prep.dp,
                              cohort=prep.config_args["n"],
                              on_eval=lambda doc: emit({"event": "eval", **doc}))


def finish_server(prep: Prepared, task: FinetuneServerTask, ckpt: Checkpoint,
                  json_path: str | None, emit: Emit) -> dict[str, Any]:
    """Evaluate the final weights, sample generations (causal LM), write the summary."""
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
    doc = final_summary(prep, ckpt, task.evals, extra)
    if json_path:
        write_summary(Path(json_path), doc)
    emit({"event": "final", **{k: v for k, v in doc.items() if k not in ("per_round", "job")}})
    return doc


def client_task_from_args(ns: argparse.Namespace, prep: Prepared) -> FinetuneClientTask:
    """This client's training task (its data part is chosen by ``--id``).

    Raises:
        JobError: the id is not one of the job's clients.
    """
    stats = getattr(ns, "stats", None)
    return FinetuneClientTask(prep.job, ns.client_id, prep.model, prep.data.client(ns.client_id),
                              prep.dp, stats_path=Path(stats) if stats else None)
