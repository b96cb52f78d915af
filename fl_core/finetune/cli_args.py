"""The fine-tuning flags of ``secagg run`` / ``serve`` / ``client`` and the job they describe.

A job is chosen when ``--dim`` is absent (``--dim N`` runs the synthetic federation of
length-``N`` vectors used by the runtime tests and benchmarks). ``--job FILE`` loads a job file
(``secagg run`` writes one for its processes); each flag given overrides it.
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from typing import Any

from secagg.fl_core.finetune.continual import check_continual, resolve_schedule, schedule_rounds
from secagg.fl_core.finetune.job import FinetuneJob

__all__ = ["add_job_args", "job_from_args"]

# flag -> (FinetuneJob field, type, help)
_FLAGS: dict[str, tuple[str, Any, str]] = {
    "--model": ("model", str, "minilm (default), smollm2, a HF folder or a GGUF file"),
    "--data": ("data", str, "packaged data set (default trec: question types) or a CSV/JSONL file"),
    "--adapter": ("adapter", str, "lora (default), prefix, prompt or full"),
    "--clients": ("num_clients", int, "parties holding data (default 4)"),
    "--partition": ("partition", str, "iid or dirichlet (default, label skew)"),
    "--alpha": ("alpha", float, "Dirichlet concentration (default 0.5)"),
    "--seed": ("seed", int, "public seed: split, partition, initial weights"),
    "--lr": ("lr", float, "server Adam step (record/distributed) or local rate"),
    "--server-lr": ("server_lr", float, "the server's rate on the mean update (other modes)"),
    "--server-optimizer": ("server_optimizer", str, "avg (FedAvg, default), avgm (FedAvgM) or "
                           "adam (FedAdam): the server's step on the mean update (other modes)"),
    "--server-momentum": ("server_momentum", float, "FedAvgM momentum / FedAdam beta1 "
                          "(default 0.9)"),
    "--local-optimizer": ("local_optimizer", str, "adamw (default) or sgd: the clients' local "
                          "training without record-level DP"),
    "--optimizer": ("optimizer", str, "adam (default) or sgd: the step on the noised gradient "
                    "(server side for distributed noise, local DP-SGD for local noise)"),
    "--records-per-round": ("records_per_round", int,
                            "expected records sampled per round, all parties (record level)"),
    "--local-steps": ("local_steps", int, "local steps per round"),
    "--batch-size": ("batch_size", int, "local batch size (client level / no DP)"),
    "--max-length": ("max_length", int, "tokens per example"),
    "--eval-size": ("eval_size", int, "hold-out examples evaluated by the server"),
    "--dp": ("dp", str, "record (default), client or none"),
    "--noise": ("noise", str, "distributed (default: shares under secure aggregation) or local"),
    "--clip": ("clip", float, "L2 clip C"),
    "--epsilon": ("epsilon", float, "target epsilon for the planned rounds (solves sigma)"),
    "--noise-multiplier": ("noise_multiplier", float, "sigma (instead of --epsilon)"),
    "--delta": ("delta", float, "delta (default 1/N^1.1)"),
    "--epsilon-budget": ("epsilon_budget", float, "stop before exceeding this epsilon"),
    "--generations": ("generations", int, "causal LM: prompts shown before/after"),
    "--objective": ("objective", str, "finetune (default), pretrain (causal LM on unlabeled "
                    "text: continued pre-training) or distill (soft labels on a public "
                    "transfer set, distilled into a student by the server)"),
    "--replay-buffer": ("replay_buffer", int, "continual: records of each earlier stage "
                        "every party keeps in a local replay buffer (default 0: none)"),
    "--chunk-size": ("chunk_size", int, "full weights: values per secure-aggregation round "
                     "(default 4194304)"),
    "--transfer-size": ("transfer_size", int, "distill: examples in the public transfer set"),
    "--distill-steps": ("distill_steps", int, "distill: KL steps per round toward the "
                        "consensus (every party's, and the server's student's)"),
}


def add_job_args(p: argparse.ArgumentParser) -> None:
    """Add ``--job`` and the job flags to ``p`` (all default to None: the job's default)."""
    g = p.add_argument_group("fine-tuning job (used when --dim is not given)")
    g.add_argument("--job", metavar="FILE", help="job file (JSON) written by secagg run")
    g.add_argument("--continual", metavar="SCHEDULE", default=None,
                   help="continual learning: a packaged schedule (trec-classes, trec-slices) "
                   "or a JSON/TOML schedule file; the rounds are the stages' rounds")
    for flag, (_, kind, text) in _FLAGS.items():
        g.add_argument(flag, type=kind, default=None, help=text)


def job_from_args(ns: argparse.Namespace, *, rounds: int | None = None) -> FinetuneJob:
    """The job the flags describe (``--job`` file, then flags; ``rounds`` from ``--rounds``).

    Raises:
        JobError: an unreadable job file or an invalid combination (a ScheduleError: an
            unreadable continual schedule, or ``--rounds`` other than its rounds).
    """
    base = FinetuneJob.load(ns.job) if getattr(ns, "job", None) else FinetuneJob()
    doc: dict[str, Any] = {f.name: getattr(base, f.name) for f in fields(FinetuneJob)}
    for field_name, _, _ in _FLAGS.values():
        value = getattr(ns, field_name if field_name != "num_clients" else "clients", None)
        if value is not None:
            doc[field_name] = value
    if doc.get("noise_multiplier") is not None and getattr(ns, "epsilon", None) is None:
        doc["epsilon"] = None
    if doc["objective"] == "distill" and getattr(ns, "noise", None) is None and not getattr(
            ns, "job", None):
        doc["noise"] = "local"  # distillation's only DP mode (each party's own DP-SGD)
    if getattr(ns, "continual", None) is not None:
        doc["continual"] = resolve_schedule(ns.continual)
        if rounds is None:
            rounds = schedule_rounds(doc["continual"])
    if rounds is not None:
        doc["rounds"] = rounds
    job = FinetuneJob.from_dict(doc)
    check_continual(job)
    return job
