"""The continual-learning job's client and server tasks (:mod:`secagg.fl_core.finetune.continual`).

They are the fine-tuning tasks with a stage per round: the client trains on its stage pool (its
stage records plus its replay buffer), the server rescales by the stage's expected batch and,
after each stage's last round, evaluates the global weights on every stage's held-out set (one
row of the accuracy matrix). Privacy is the fine-tuning task's: the same accountant, charged
before every round, over the whole schedule.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from secagg.fl_core.dp import Placement
from secagg.fl_core.finetune.client_task import FinetuneClientTask
from secagg.fl_core.finetune.continual import StagePlan, forgetting
from secagg.fl_core.finetune.job import FinetuneJob
from secagg.fl_core.finetune.ledger import PrivacyLedger
from secagg.fl_core.finetune.party import JobData
from secagg.fl_core.finetune.privacy import ResolvedDp
from secagg.fl_core.finetune.server_task import FinetuneServerTask
from secagg.fl_core.runtime.driver import RoundOutcome
from secagg.models import AdaptedModel, Dataset, evaluate

__all__ = ["ContinualClientTask", "ContinualServerTask", "build_plan", "continual_summary"]

log = logging.getLogger("secagg.fl_core.finetune")

Vector = npt.NDArray[np.float64]


def build_plan(job: FinetuneJob, data: JobData) -> StagePlan:
    """The job's stage plan over its split.

    Raises:
        ScheduleError: the schedule does not fit the data (unknown labels, an empty stage),
            or the data has no labels (a label schedule on instruction data).
    """
    from secagg.fl_core.finetune.continual import ScheduleError
    from secagg.models import ClassificationData

    assert job.continual is not None
    if not isinstance(data.train, ClassificationData) or not isinstance(data.test,
                                                                        ClassificationData):
        raise ScheduleError("continual learning needs labelled (classification) data")
    return StagePlan.build(job.continual, data.train.labels, data.test.labels,
                           data.train.label_names)


def _pool_indices(job: FinetuneJob, data: JobData, plan: StagePlan, client_id: int,
                  stage: int) -> npt.NDArray[np.int64]:
    return plan.pool(data.parts[client_id - 1], stage, replay=job.replay_buffer,
                     seed=(job.seed, client_id))


class ContinualClientTask(FinetuneClientTask):
    """A party of a continual job: in round ``r`` it trains on stage ``stage_of(r)``'s pool."""

    def __init__(self, job: FinetuneJob, client_id: int, model: AdaptedModel, data: JobData,
                 dp: ResolvedDp, plan: StagePlan, *, stats_path: Path | None = None,
                 ledger: PrivacyLedger | None = None) -> None:
        """Raises:
            JobError: ``client_id`` is not one of the job's parties."""
        data.client(client_id)  # the id check
        self.plan = plan
        self.pools: tuple[Dataset, ...] = tuple(
            data.train.subset(_pool_indices(job, data, plan, client_id, s))
            for s in range(plan.num_stages))
        super().__init__(job, client_id, model, self.pools[0], dp, stats_path=stats_path,
                         ledger=ledger)

    def _run(self, round_id: int, state: Vector, cohort: tuple[int, int] | None
             ) -> tuple[Vector, dict[int, bytes] | None]:
        self.data = self.pools[self.plan.stage_of(round_id)]
        return super()._run(round_id, state, cohort)

    def _contribution(self, round_id: int) -> tuple[Vector, dict[str, Any]]:
        if len(self.data):
            out, info = super()._contribution(round_id)
            return out, info | {"stage": self.plan.stage_of(round_id)}
        # no records in this stage (label skew): nothing of its own to protect, but a
        # distributed noise share is still owed to the sum (the others' privacy needs t shares)
        zeros = np.zeros(self.model.num_trainable)
        cfg = self.dp.config
        out = self._distributed(zeros) if (
            cfg is not None and cfg.placement is Placement.DISTRIBUTED) else zeros
        return out, {"examples": 0, "loss": None, "stage": self.plan.stage_of(round_id)}


class ContinualServerTask(FinetuneServerTask):
    """The server of a continual job: per-stage batch scale and the accuracy matrix."""

    def __init__(self, job: FinetuneJob, model: AdaptedModel, data: JobData, dp: ResolvedDp,
                 plan: StagePlan, *, cohort: int,
                 on_eval: Callable[[dict[str, Any]], None] | None = None) -> None:
        super().__init__(job, model, data, dp, cohort=cohort, on_eval=on_eval)
        self.plan = plan
        self.stage_tests = tuple(data.test.subset(np.flatnonzero(m)) for m in plan.test_masks)
        #: records in every party's pools per stage (stage records plus replay buffers)
        self.stage_records = tuple(
            sum(len(_pool_indices(job, data, plan, cid, s)) for cid in range(1, len(data.parts)
                                                                              + 1))
            for s in range(plan.num_stages))
        #: the expected batch of a stage's round: each record of a pool is in with rate q
        self.stage_batch = tuple(dp.accountant_rate * r for r in self.stage_records)
        self.rows: list[dict[str, Any]] = []
        self.before: list[float] = []
        self._state: Vector | None = None

    def initial_state(self, dim: int) -> Vector:
        """The initial weights, evaluated on the whole hold-out set and on every stage's."""
        state = super().initial_state(dim)
        self._state = state.copy()
        self.before = self._per_stage(state)
        return state

    def apply(self, state: Vector, out: RoundOutcome) -> Vector | None:
        """The fine-tuning step, rescaled by the round's stage's expected batch."""
        self.expected_batch = self.stage_batch[self.plan.stage_of(out.round_id)]
        new = super().apply(state, out)
        if new is not None:
            self._state = new
        return new

    def report(self, out: RoundOutcome) -> dict[str, Any]:
        """The fine-tuning report, plus the accuracy on every stage after a stage's last
        round (aborted or not: the stage has ended)."""
        doc = super().report(out)
        stage = self.plan.stage_of(out.round_id)
        doc["stage"] = stage
        if out.round_id == self.plan.last_round(stage) and self.row_of(stage) is None:
            row = self.end_stage(stage, round_id=out.round_id, complete=True)
            doc["stage_accuracy"] = row["accuracy"]
        return doc

    def end_stage(self, stage: int, *, round_id: int, complete: bool) -> dict[str, Any]:
        """Evaluate the current weights on every stage's held-out set as ``stage``'s row
        (after round ``round_id``)."""
        assert self._state is not None
        row = {"stage": stage, "name": self.plan.names[stage], "complete": complete,
               "round_id": round_id, "accuracy": self._per_stage(self._state)}
        self.rows.append(row)
        if self.on_eval is not None:
            self.on_eval({"stage": self.plan.names[stage], "round_id": round_id,
                          "complete": complete, "accuracy_per_stage": row["accuracy"]})
        return row

    def row_of(self, stage: int) -> dict[str, Any] | None:
        """``stage``'s row of the accuracy matrix, or None before the stage has ended."""
        return next((r for r in self.rows if r["stage"] == stage), None)

    def _per_stage(self, state: Vector) -> list[float]:
        self.model.set_vector(state)
        return [round(float(evaluate(self.model, test, max_length=self.job.max_length).accuracy
                            or 0.0), 5) for test in self.stage_tests]

    def state_dict(self) -> tuple[dict[str, Any], dict[str, Vector]]:
        """The fine-tuning state, the matrix rows so far and the weights they evaluate."""
        doc, arrays = super().state_dict()
        doc |= {"continual_rows": self.rows, "continual_before": self.before}
        if self._state is not None:
            arrays = arrays | {"continual_state": self._state}
        return doc, arrays

    def load_state_dict(self, doc: dict[str, Any] | None, arrays: dict[str, Vector]) -> None:
        """Restore, see :meth:`FinetuneServerTask.load_state_dict`.

        Raises:
            ValueError: the checkpoint is of another job.
        """
        super().load_state_dict(doc, arrays)
        if doc is None:
            return
        self.rows = list(doc.get("continual_rows", []))
        self.before = list(doc.get("continual_before", []))
        if "continual_state" in arrays:
            self._state = arrays["continual_state"].copy()


def continual_summary(task: ContinualServerTask, last_round_id: int) -> dict[str, Any]:
    """The JSON fields of a continual run: ``stages``, ``accuracy_matrix`` (row ``i``: after
    stage ``i``; column ``j``: stage ``j``'s held-out set), ``average_accuracy`` and
    ``forgetting`` over the stages reached. A stage cut short (the budget ran out) gets a row
    marked incomplete; stages never reached get none."""
    plan = task.plan
    for s in range(plan.num_stages):
        first = plan.last_round(s) - plan.rounds[s] + 1
        if task.row_of(s) is None and last_round_id >= first:
            task.end_stage(s, round_id=last_round_id, complete=False)
    rows = sorted(task.rows, key=lambda r: r["stage"])
    matrix = [r["accuracy"] for r in rows]
    stages = []
    for s, described in enumerate(plan.described):
        first = plan.last_round(s) - plan.rounds[s] + 1
        row = task.row_of(s)
        stages.append({**described, "round_ids": [first, plan.last_round(s)],
                       "records_with_replay": task.stage_records[s],
                       "reached": row is not None,
                       "completed": bool(row and row["complete"]),
                       "accuracy_after": row["accuracy"] if row else None})
    doc: dict[str, Any] = {"continual": {"schedule": task.job.continual,
                                         "replay": task.job.replay_buffer},
                           "stages": stages, "accuracy_matrix": matrix,
                           "accuracy_before_stages": task.before}
    if matrix:
        last = len(matrix) - 1
        seen = matrix[last][: last + 1]
        doc["average_accuracy"] = round(float(np.mean(seen)), 5)
        doc["forgetting"] = round(forgetting(matrix), 5)
    return doc
