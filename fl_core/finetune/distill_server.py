"""The distillation job's server side: the consensus soft labels and the student.

The server sees only the secure sum of the survivors' soft labels on the public transfer set
(:mod:`secagg.fl_core.finetune.distill`). Its state, broadcast every round, is the consensus:
the sum over the survivors divided by their number (``weight_total``), each row put back on the
simplex (the fixed-point grid can leave it off by 2^-16). It then takes ``distill_steps`` AdamW
steps of ``KL(consensus || student)`` on the transfer set with its student (the job's model
and adapter, the server's :class:`secagg.models.AdaptedModel`, kept across rounds):
post-processing of the DP sums. The student is evaluated on the held-out set before round 1
and at the end, and its weights are checkpointed with the task (``student`` array), so a
resumed server keeps its student.

Privacy accounting is :class:`secagg.fl_core.finetune.server_task.FinetuneServerTask`'s: each
round charges ``local_steps`` subsampled-Gaussian steps (every party's own DP-SGD, record level,
local noise), charged before the round can release anything.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from secagg.fl_core.finetune.app import Prepared, final_summary, write_summary
from secagg.fl_core.finetune.distill import DistillData, distill_into
from secagg.fl_core.finetune.job import FinetuneJob
from secagg.fl_core.finetune.privacy import ResolvedDp
from secagg.fl_core.finetune.server_task import FinetuneServerTask
from secagg.fl_core.runtime.checkpoint import Checkpoint
from secagg.fl_core.runtime.driver import RoundOutcome
from secagg.models import AdaptedModel

__all__ = ["DistillServerTask", "distill_summary", "finish_distill"]

log = logging.getLogger("secagg.fl_core.finetune")

Vector = npt.NDArray[np.float64]


class DistillServerTask(FinetuneServerTask):
    """:class:`secagg.fl_core.runtime.tasks.ServerTask` of a distillation job: state =
    consensus soft labels (``transfer_size * K``), ``model`` = the student."""

    def __init__(self, job: FinetuneJob, model: AdaptedModel, data: DistillData, dp: ResolvedDp,
                 *, cohort: int, on_eval: Callable[[dict[str, Any]], None] | None = None,
                 ) -> None:
        super().__init__(job, model, data, dp, cohort=cohort, on_eval=on_eval)
        self.voidable = False  # each party's private local steps persist in its model
        self.transfer_texts = data.transfer_texts
        self.k = int(model.num_labels or 0)
        self.round_dim = len(self.transfer_texts) * self.k
        #: mean KL of the student's steps, per applied round
        self.student_losses: list[float] = []

    def initial_state(self, dim: int) -> Vector:
        """Uniform soft labels ``1/K`` (the clients skip distilling toward them); the student
        is evaluated as it starts (the summary's "before").

        Raises:
            ValueError: ``dim`` is not ``transfer_size * K``.
        """
        if dim != self.round_dim:
            raise ValueError(f"distill: round dim {dim} != transfer_size x classes "
                             f"{self.round_dim}")
        self.evaluate(np.zeros(0), 0)
        return np.full(self.round_dim, 1.0 / self.k)

    def apply(self, state: Vector, out: RoundOutcome) -> Vector | None:
        """The consensus (sum / survivors) after ``distill_steps`` student steps toward it;
        None when the round aborted or its sum is unusable."""
        if out.aggregate is None or out.weight_total <= 0:
            return None
        total = out.aggregate
        if total.shape != (self.round_dim,) or not np.all(np.isfinite(total)):
            log.error("round %d: aggregate of shape %s refused", out.round_id, total.shape)
            return None
        consensus = consensus_of(total, out.weight_total, self.k)
        losses = distill_into(self.model, self.transfer_texts, consensus,
                              steps=self.job.distill_steps, batch_size=self.job.batch_size,
                              lr=self.job.lr, max_length=self.job.max_length,
                              seed=self.job.seed * 1_000_003 + out.round_id)
        self.student_losses.append(round(float(np.mean(losses)), 5))
        return consensus.reshape(-1)

    def _load_for_eval(self, state: Vector) -> None:
        """Nothing: the student is the model (``state``, the consensus, is not a model)."""

    def state_dict(self) -> tuple[dict[str, Any], dict[str, Vector]]:
        """Accountant, evaluations, student losses; the student's weights as ``student``."""
        doc = self._with_accountant({"task": "distill", "job": self.job.digest,
                                     "evals": self.evals,
                                     "student_losses": self.student_losses})
        return doc, {"student": self.model.get_vector().astype(np.float64)}

    def load_state_dict(self, doc: dict[str, Any] | None, arrays: dict[str, Vector]) -> None:
        """Restore from a checkpoint of the same job (the student's weights included).

        Raises:
            ValueError: the checkpoint is of another job or task, or lacks the student.
        """
        if doc is None:
            return
        if doc.get("task") != "distill" or doc.get("job") != self.job.digest:
            raise ValueError("the checkpoint belongs to another job (job digest differs)")
        if "student" not in arrays:
            raise ValueError("the distillation checkpoint holds no student weights")
        self.model.set_vector(arrays["student"])
        self.evals = list(doc.get("evals", []))
        self.student_losses = list(doc.get("student_losses", []))
        self._restore_accountant(doc)


def consensus_of(total: Vector, weight_total: float, k: int) -> npt.NDArray[np.float64]:
    """``total / weight_total`` as a ``(T, K)`` matrix with every row on the simplex."""
    mean = np.clip(np.asarray(total, dtype=np.float64) / weight_total, 0.0, 1.0).reshape(-1, k)
    rows = mean.sum(axis=1, keepdims=True)
    out: npt.NDArray[np.float64] = np.where(rows > 0, mean / np.where(rows > 0, rows, 1.0),
                                            1.0 / k)
    return out


def distill_summary(prep: Prepared, task: DistillServerTask) -> dict[str, Any]:
    """The ``distill`` block of the job summary."""
    return {"transfer_size": len(task.transfer_texts), "classes": task.k,
            "dim": task.round_dim, "student_steps_per_round": prep.job.distill_steps,
            "student_kl_per_round": task.student_losses}


def finish_distill(prep: Prepared, task: DistillServerTask, ckpt: Checkpoint,
                   json_path: str | None, emit: Callable[[dict[str, Any]], None]
                   ) -> dict[str, Any]:
    """Evaluate the final student and write the summary (accuracy before/after: the
    student's)."""
    if not task.evals or task.evals[-1]["step"] != ckpt.step:
        task.evaluate(ckpt.state, ckpt.step)
    doc = final_summary(prep, ckpt, task.evals, {"distill": distill_summary(prep, task)})
    if json_path:
        write_summary(Path(json_path), doc)
    emit({"event": "final", **{k: v for k, v in doc.items() if k not in ("per_round", "job")}})
    return doc
