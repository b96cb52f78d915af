"""Federated continued pre-training (``--objective pretrain``): the causal-LM loss on the
parties' unlabeled private text.

Data (:func:`load_pretrain_data`): a packaged data set's texts (labels ignored; e.g.
``drug-reviews``: drug reviews, a medical domain) or a user file (``.txt`` one document per
line, or ``.csv``/``.tsv``/``.jsonl`` with a ``text`` column), as
:class:`secagg.models.TextData`. The held-out split is a seeded fraction (``test_fraction``) of
the documents, capped at ``eval_size``; the rest is split IID over the parties. Held-out
perplexity = exp(mean token NLL) over the held-out documents, each cut to ``max_length``
tokens.

Two ways to train, chosen by ``adapter``:

- ``lora`` (default): the fine-tuning job's machinery unchanged (every DP mode; record level:
  one document is a record); the aggregated vector is the LoRA weights (921,600 values for
  SmolLM2 r=8 on q/k/v/o).
- ``full``: all 134.5M weights, streamed through secure aggregation in chunks of
  ``chunk_size`` values (:mod:`secagg.fl_core.finetune.chunked`); no DP
  (:func:`secagg.fl_core.finetune.preflight.check_pretrain` says why).

Every party reports its peak resident memory (:func:`secagg.fl_core.finetune.memory.peak_rss_mb`):
clients in their stats lines, the server in the summary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from secagg.fl_core.finetune.chunked import ChunkedClientTask, ChunkLayout
from secagg.fl_core.finetune.client_task import FinetuneClientTask
from secagg.fl_core.finetune.job import FinetuneJob, JobError
from secagg.fl_core.finetune.ledger import ChunkAnswers, PrivacyLedger, chunk_answers_path
from secagg.fl_core.finetune.memory import peak_rss_mb
from secagg.fl_core.finetune.party import JobData
from secagg.fl_core.finetune.preflight import inspect_text
from secagg.models import (
    AdaptedModel,
    ClassificationData,
    InstructionData,
    TextData,
    iid_partition,
    load_packaged,
    load_text_file,
    train_test_split,
)

__all__ = ["PretrainClientTask", "chunk_round_dim", "is_chunked", "load_pretrain_data",
           "packaged_text", "pretrain_summary"]


def packaged_text(name: str) -> TextData:
    """The texts of a packaged data set as unlabeled documents: classification texts (labels
    ignored), or prompt and response joined by a newline (instruction data).

    Raises:
        AssetNotFoundError, DataFormatError: see :func:`secagg.models.load_packaged`.
    """
    data = load_packaged(name)
    if isinstance(data, ClassificationData):
        return TextData(name, data.texts)
    if isinstance(data, InstructionData):
        return TextData(name, tuple(f"{p}\n{r}" for p, r in
                                    zip(data.prompts, data.responses, strict=True)))
    return TextData(name, data.texts)


def load_pretrain_data(job: FinetuneJob) -> JobData:
    """The job's documents, split and partitioned like every party does (seeded by the job).

    Raises:
        PreflightError: unknown data set, missing or malformed file.
        DataFormatError, PartitionError: malformed data, or too few documents to split.
    """
    info = inspect_text(job.data)
    data = packaged_text(job.data) if info.packaged else load_text_file(job.data)
    train, test = train_test_split(data, test_fraction=job.test_fraction, seed=job.seed)
    parts = iid_partition(len(train), num_clients=job.num_clients, seed=job.seed)
    if len(test) > job.eval_size:  # the same seeded subsample as load_job_data
        keep = np.sort(np.random.default_rng(job.seed + 1).permutation(len(test))[:job.eval_size])
        test = test.subset(keep)
    return JobData(train, test, tuple(np.asarray(p, dtype=np.int64) for p in parts))


def is_chunked(job: FinetuneJob) -> bool:
    """Whether the job streams full weights in chunks (pretrain with ``--adapter full``)."""
    return job.objective == "pretrain" and job.adapter == "full"


def chunk_round_dim(job: FinetuneJob, model: AdaptedModel, n: int) -> int | None:
    """Values per secure-aggregation round of a chunked job (``chunk_size``), else None.

    Raises:
        JobError: a chunked job whose cohort is not every party (a party left out of a
            training round's chunk 0 holds no update for its other chunks).
    """
    if not is_chunked(job):
        return None
    if n != job.num_clients:
        raise JobError(f"--adapter full streams chunks: every party takes part in every "
                       f"sub-round (--n {n} must equal --clients {job.num_clients})")
    ChunkLayout(model.num_trainable, job.chunk_size)  # validates
    return job.chunk_size


def chunks_per_round(job: FinetuneJob, model: AdaptedModel) -> int:
    """Sub-rounds per training round (1 unless chunked)."""
    return ChunkLayout(model.num_trainable, job.chunk_size).chunks if is_chunked(job) else 1


class PretrainClientTask(FinetuneClientTask):
    """The fine-tuning client task (LoRA pretrain) with the peak resident memory in each
    stats line."""

    def _record(self, info: dict[str, Any]) -> None:
        super()._record(info | {"peak_rss_mb": peak_rss_mb()})


def client_task(job: FinetuneJob, client_id: int, model: AdaptedModel, data: JobData,
                dp: Any, protocol_clip: float, stats_path: Path | None,
                ledger: PrivacyLedger | None = None) -> PretrainClientTask | ChunkedClientTask:
    """This party's pretrain task (LoRA: the fine-tuning task, with this party's privacy
    ``ledger``; full: the chunked one, which has no DP, with the chunks it answered kept in
    :func:`secagg.fl_core.finetune.ledger.chunk_answers_path` beside the ledger's file).

    Raises:
        JobError: the id is not one of the job's clients.
        LedgerError: the chunk answers file is unreadable or of another job or party.
    """
    mine = data.client(client_id)
    if is_chunked(job):
        path = ledger.path if ledger is not None else None
        answers = ChunkAnswers(job, client_id, chunk_answers_path(path) if path else None)
        return ChunkedClientTask(job, client_id, model, mine, chunk_size=job.chunk_size,
                                 protocol_clip=protocol_clip, protocol_scale=dp.protocol_scale,
                                 stats_path=stats_path, answers=answers)
    return PretrainClientTask(job, client_id, model, mine, dp, stats_path=stats_path,
                              ledger=ledger)


def pretrain_summary(doc: dict[str, Any], *, model: AdaptedModel, job: FinetuneJob,
                     training_rounds: int) -> dict[str, Any]:
    """Pretrain fields of the summary: the full and aggregated dims, bytes per client per
    TRAINING round (all ``K`` sub-rounds), the server's peak memory."""
    k = chunks_per_round(job, model)
    per_round = [r for r in doc.get("per_round", []) if r.get("ok")]
    up = sum(r["bytes_up"] / max(len(r.get("survivors", [])), 1) for r in per_round)
    down = sum(r["bytes_down"] / max(len(r.get("survivors", [])), 1) for r in per_round)
    extra: dict[str, Any] = {
        "objective": "pretrain", "dim": model.num_trainable, "aggregated_dim": doc["dim"],
        "chunks_per_round": k, "sub_rounds": doc["rounds"], "rounds": training_rounds,
        "peak_rss_mb": {"server": peak_rss_mb()},
    }
    if training_rounds:
        extra["bytes_up_per_client_per_round"] = round(up / training_rounds, 1)
        extra["bytes_down_per_client_per_round"] = round(down / training_rounds, 1)
        extra["seconds_per_round"] = round(
            sum(float(r["seconds"]) for r in per_round) / training_rounds, 3)
    return doc | extra
