"""What every party of a job builds the same way: the model, the hold-out split, the partition.

Data sets load offline (packaged real data or a user CSV/JSONL); the hold-out split is
stratified and seeded by the job, so the server's evaluation set is disjoint from every
client's training part. Client ``i`` (ids ``1..num_clients``) trains on part ``i - 1`` of a
seeded IID or Dirichlet(alpha) label-skewed split of the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from secagg.fl_core.finetune.job import FinetuneJob, JobError
from secagg.fl_core.finetune.preflight import inspect_data
from secagg.models import (
    AdaptedModel,
    AdapterConfig,
    ClassificationData,
    Dataset,
    build_model,
    load_file,
    load_packaged,
    train_test_split,
)
from secagg.models.loading import TaskKind
from secagg.models.partition import dirichlet_partition, iid_partition

__all__ = ["JobData", "adapter_config", "build_job_model", "carve_validation", "load_job_data",
           "task_kind"]


@dataclass(frozen=True)
class JobData:
    """The split every party derives: train/test and each client's indices into train."""

    train: Dataset
    test: Dataset
    parts: tuple[npt.NDArray[np.int64], ...]

    def client(self, client_id: int) -> Dataset:
        """Client ``client_id``'s private training part.

        Raises:
            JobError: no such client in this job.
        """
        if not 1 <= client_id <= len(self.parts):
            raise JobError(f"client id {client_id} is not in 1..{len(self.parts)}")
        return self.train.subset(self.parts[client_id - 1])

    @property
    def sizes(self) -> tuple[int, ...]:
        """Records per client."""
        return tuple(len(p) for p in self.parts)


def task_kind(data: Dataset) -> TaskKind:
    """Classification for labelled text, causal LM for prompt/response pairs."""
    return TaskKind.CLASSIFICATION if isinstance(data, ClassificationData) else TaskKind.CAUSAL_LM


def _load(name: str) -> Dataset:
    # the checks secagg run made before starting any party, and the file's task from its columns
    info = inspect_data(name)
    if info.packaged:
        return load_packaged(name)
    return load_file(name, task=TaskKind(info.task))


def load_job_data(job: FinetuneJob) -> JobData:
    """Load, split and partition the job's data (deterministic in ``job.seed``).

    Raises:
        JobError: unknown data set, missing or malformed file (a
            :class:`secagg.fl_core.finetune.preflight.PreflightError`).
        DataFormatError, PartitionError: malformed data, or too few examples to split.
    """
    data = _load(job.data)
    train, test = train_test_split(data, test_fraction=job.test_fraction, seed=job.seed)
    if job.partition == "iid" or task_kind(data) is TaskKind.CAUSAL_LM:
        parts = iid_partition(len(train), num_clients=job.num_clients, seed=job.seed)
    else:
        parts = dirichlet_partition(train.labels, num_clients=job.num_clients,
                                    alpha=job.alpha, seed=job.seed)
    if len(test) > job.eval_size:  # a fixed, seeded, stratification-free subsample
        keep = np.sort(np.random.default_rng(job.seed + 1).permutation(len(test))[:job.eval_size])
        test = test.subset(keep)
    return JobData(train, test, tuple(np.asarray(p, dtype=np.int64) for p in parts))


def carve_validation(data: JobData, size: int, seed: int) -> tuple[JobData, Dataset]:
    """Take ``size`` of the parties' training records out of their parts (seeded by ``seed``
    on a stream of its own, not the partition's) and return the data without them and the
    validation set they form: choices are made on it, never on ``data.test``, and no party
    trains on it. ``data.train`` and ``data.test`` are untouched (parts index ``train``).

    Raises:
        ValueError: ``size`` is not positive, or would take more than half the records.
    """
    owned = np.concatenate(data.parts)
    if size < 1 or 2 * size > len(owned):
        raise ValueError(f"a validation set of {size} from {len(owned)} training records")
    rng = np.random.default_rng([seed, 0x7A1])
    val_idx = np.sort(rng.choice(owned, size=size, replace=False))
    parts = tuple(np.setdiff1d(p, val_idx).astype(np.int64) for p in data.parts)
    return replace(data, parts=parts), data.train.subset(val_idx)


def adapter_config(job: FinetuneJob) -> AdapterConfig:
    """The job's adapter (library defaults for rank and virtual tokens)."""
    if job.adapter == "lora":
        return AdapterConfig.lora()
    if job.adapter == "prefix":
        return AdapterConfig.prefix()
    if job.adapter == "prompt":
        return AdapterConfig.prompt()
    return AdapterConfig.full()


def build_job_model(job: FinetuneJob, data: JobData) -> AdaptedModel:
    """The pretrained model with the job's adapter, initialised identically by every party.

    Raises:
        AssetNotFoundError, UnsupportedModelError: see :func:`secagg.models.build_model`.
    """
    kind = task_kind(data.train)
    return build_model(job.model, task=kind, adapter=adapter_config(job), init_seed=job.seed,
                       num_labels=data.train.num_labels if kind is TaskKind.CLASSIFICATION
                       else None)
