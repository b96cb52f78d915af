"""Continual learning: the parties' data arrive in stages, and one model learns them in turn.

A schedule (``secagg run --continual SCHEDULE``) lists stages. Each stage names what is new —
some labels (``labels``: class-incremental learning) or a time slice of every party's records
(``slice``: the records between two fractions of the data set's order) — and how many rounds
it trains. Every party derives its stage pools from the job alone: its partition part filtered
to the stage, plus, with ``replay R``, a local replay buffer of up to ``R`` records of each
earlier stage (chosen once per party with a seed of the job, the party and the stage: which
records are kept does not depend on their content). The server evaluates the global weights on
every stage's held-out examples after each stage: row ``i`` of the accuracy matrix is the model
after stage ``i``, column ``j`` stage ``j``'s held-out set, so forgetting is a column falling
below its diagonal.

Privacy over the whole life: the schedule is one job of ``sum(rounds)`` rounds with ONE
accountant (:class:`secagg.fl_core.finetune.server_task.FinetuneServerTask`'s). At record level
every party samples each record of its current pool with the job's rate ``q = records_per_round
/ N`` (``N`` the parties' records over all stages), so in every round each record is in the
batch with probability ``q`` or (absent from the pool) 0: the accountant's ``sum(rounds)``
subsampled steps at rate ``q`` bound every record, a replayed one included. The run stops when
the rounds are charged or ``epsilon_budget`` would be exceeded; the stages not reached are
reported as such.

Stage of a round: round ids are consecutive reservations (an aborted round keeps its id and
is charged), so stage ``s`` owns round ids ``start_s + 1 .. start_s + rounds_s``.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from secagg.fl_core.finetune.job import FinetuneJob, JobError

__all__ = ["PACKAGED_SCHEDULES", "ScheduleError", "StagePlan", "check_continual",
           "forgetting", "resolve_schedule",
           "schedule_rounds", "validate_schedule"]

IntArray = npt.NDArray[np.int64]


class ScheduleError(JobError):
    """A continual-learning schedule is unreadable or invalid (the message names the field)."""


#: Packaged schedules (``--continual NAME``).
PACKAGED_SCHEDULES: dict[str, dict[str, Any]] = {
    "trec-classes": {
        "name": "trec-classes",
        "description": "TREC question types, class-incremental: descriptions and entities, "
                       "then people and places, then numbers and abbreviations",
        "stages": [
            {"name": "DESC+ENTY", "labels": ["DESC", "ENTY"], "rounds": 6},
            {"name": "HUM+LOC", "labels": ["HUM", "LOC"], "rounds": 6},
            {"name": "NUM+ABBR", "labels": ["NUM", "ABBR"], "rounds": 6},
        ],
    },
    "trec-slices": {
        "name": "trec-slices",
        "description": "TREC question types in three time slices of the data set's order "
                       "(every label in every stage: little to forget)",
        "stages": [
            {"name": "first third", "slice": [0.0, 1 / 3], "rounds": 6},
            {"name": "second third", "slice": [1 / 3, 2 / 3], "rounds": 6},
            {"name": "last third", "slice": [2 / 3, 1.0], "rounds": 6},
        ],
    },
}


def resolve_schedule(spec: str) -> dict[str, Any]:
    """The canonical schedule for ``spec``: a packaged name or a ``.json``/``.toml`` file
    (``[[stages]]`` tables with ``name``, ``rounds`` and one of ``labels`` / ``slice``).

    Raises:
        ScheduleError: an unknown name, an unreadable file, or an invalid schedule.
    """
    if spec in PACKAGED_SCHEDULES:
        doc: Any = PACKAGED_SCHEDULES[spec]
    else:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise ScheduleError(f"--continual {spec!r} is neither a packaged schedule "
                                f"({', '.join(PACKAGED_SCHEDULES)}) nor an existing file")
        try:
            text = path.read_text()
            doc = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ScheduleError(f"--continual {spec}: cannot read the schedule: {exc}") from None
        doc = {"name": path.stem, **doc} if isinstance(doc, dict) else doc
    return validate_schedule(doc)


def validate_schedule(doc: Any) -> dict[str, Any]:
    """Check a schedule document and return its canonical form (floats for slices).

    Raises:
        ScheduleError: not an object with a non-empty ``stages`` list of valid stages.
    """
    if not isinstance(doc, dict) or not isinstance(doc.get("stages"), list) or not doc["stages"]:
        raise ScheduleError("a schedule must be an object with a non-empty 'stages' list")
    unknown = sorted(set(doc) - {"name", "description", "stages"})
    if unknown:
        raise ScheduleError(f"unknown schedule keys {unknown}")
    stages = [_stage(i, s) for i, s in enumerate(doc["stages"])]
    kinds = {("labels" in s) for s in stages}
    if len(kinds) > 1:
        raise ScheduleError("stages must all name labels or all name slices, not a mix")
    return {"name": str(doc.get("name", "schedule")), "stages": stages}


def _stage(i: int, s: Any) -> dict[str, Any]:
    where = f"stage {i + 1}"
    if not isinstance(s, dict):
        raise ScheduleError(f"{where}: must be an object")
    unknown = sorted(set(s) - {"name", "labels", "slice", "rounds"})
    if unknown:
        raise ScheduleError(f"{where}: unknown keys {unknown}")
    rounds = s.get("rounds")
    if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 1:
        raise ScheduleError(f"{where}: 'rounds' must be a positive int, got {rounds!r}")
    out: dict[str, Any] = {"name": str(s.get("name", f"stage {i + 1}")), "rounds": rounds}
    if ("labels" in s) == ("slice" in s):
        raise ScheduleError(f"{where}: give exactly one of 'labels' and 'slice'")
    if "labels" in s:
        labels = s["labels"]
        if not isinstance(labels, list) or not labels or not all(
                isinstance(x, str) and x for x in labels) or len(set(labels)) != len(labels):
            raise ScheduleError(f"{where}: 'labels' must be a non-empty list of distinct "
                                "label names")
        out["labels"] = list(labels)
    else:
        sl = s["slice"]
        if not (isinstance(sl, list) and len(sl) == 2
                and all(isinstance(x, int | float) and not isinstance(x, bool) for x in sl)
                and 0.0 <= sl[0] < sl[1] <= 1.0):
            raise ScheduleError(f"{where}: 'slice' must be [a, b] with 0 <= a < b <= 1")
        out["slice"] = [float(sl[0]), float(sl[1])]
    return out


def schedule_rounds(schedule: dict[str, Any]) -> int:
    """The rounds of all stages together (the job's ``rounds``)."""
    return sum(int(s["rounds"]) for s in schedule["stages"])


@dataclass(frozen=True)
class StagePlan:
    """Which round ids belong to which stage, and which examples each stage holds.

    ``train_masks[s]`` / ``test_masks[s]``: stage ``s``'s examples among the job's train / test
    split (boolean masks in the split's order).
    """

    names: tuple[str, ...]
    rounds: tuple[int, ...]
    train_masks: tuple[npt.NDArray[np.bool_], ...]
    test_masks: tuple[npt.NDArray[np.bool_], ...]
    described: tuple[dict[str, Any], ...]

    @property
    def num_stages(self) -> int:
        """Stages in the schedule."""
        return len(self.rounds)

    def last_round(self, stage: int) -> int:
        """The last round id of ``stage`` (ids start at 1)."""
        return sum(self.rounds[: stage + 1])

    def stage_of(self, round_id: int) -> int:
        """The stage that round id ``round_id`` trains (ids past the schedule: the last)."""
        for s in range(self.num_stages):
            if round_id <= self.last_round(s):
                return s
        return self.num_stages - 1

    def pool(self, part: IntArray, stage: int, *, replay: int, seed: Sequence[int]) -> IntArray:
        """The train-split indices a party with partition ``part`` trains on in ``stage``: its
        stage examples, plus up to ``replay`` of each earlier stage's (a fixed choice per
        party and stage, seeded by ``seed``, e.g. the job's seed and the party's id; it does
        not look at the records' content)."""
        own = [part[self.train_masks[stage][part]]]
        for earlier in range(stage if replay else 0):
            members = part[self.train_masks[earlier][part]]
            rng = np.random.default_rng([*seed, earlier])
            keep = rng.permutation(len(members))[: min(replay, len(members))]
            own.append(np.sort(members[keep]))
        return np.concatenate(own).astype(np.int64)

    @classmethod
    def build(cls, schedule: dict[str, Any], train_labels: IntArray, test_labels: IntArray,
              label_names: tuple[str, ...]) -> StagePlan:
        """The plan for a job's split (labels in the split's order; slices by position, the
        split keeping the data set's order).

        Raises:
            ScheduleError: a label the data set does not have, or a stage with no train or no
                test examples.
        """
        train_masks, test_masks, described = [], [], []
        for stage in schedule["stages"]:
            if "labels" in stage:
                missing = [x for x in stage["labels"] if x not in label_names]
                if missing:
                    raise ScheduleError(f"stage {stage['name']!r}: labels {missing} are not in "
                                        f"the data set's {list(label_names)}")
                ids = [label_names.index(x) for x in stage["labels"]]
                tr, te = np.isin(train_labels, ids), np.isin(test_labels, ids)
            else:
                a, b = stage["slice"]
                tr, te = _slice_mask(len(train_labels), a, b), _slice_mask(len(test_labels), a, b)
            if not tr.any() or not te.any():
                raise ScheduleError(f"stage {stage['name']!r} has no "
                                    f"{'training' if not tr.any() else 'held-out'} examples")
            train_masks.append(tr)
            test_masks.append(te)
            described.append({**stage, "train_examples": int(tr.sum()),
                              "test_examples": int(te.sum())})
        return cls(tuple(s["name"] for s in schedule["stages"]),
                   tuple(int(s["rounds"]) for s in schedule["stages"]),
                   tuple(train_masks), tuple(test_masks), tuple(described))


def forgetting(matrix: Sequence[Sequence[float]]) -> float:
    """Mean forgetting after the last row: for every earlier stage ``j``, its best accuracy
    after any stage before the last minus its accuracy after the last (Chaudhry et al. 2018);
    0.0 with fewer than two rows.

    Raises:
        ValueError: a row shorter than the number of rows.
    """
    last = len(matrix) - 1
    if any(len(row) < last + 1 for row in matrix):
        raise ValueError("row i of the accuracy matrix needs at least i + 1 columns")
    drops = [max(matrix[i][j] for i in range(j, last)) - matrix[last][j] for j in range(last)]
    return float(np.mean(drops)) if drops else 0.0


def _slice_mask(n: int, a: float, b: float) -> npt.NDArray[np.bool_]:
    pos = np.arange(n)
    return (pos >= round(a * n)) & (pos < round(b * n))


def check_continual(job: FinetuneJob) -> None:
    """A continual job's rounds must be its schedule's.

    Raises:
        ScheduleError: they differ.
    """
    if job.continual is not None and job.rounds != schedule_rounds(job.continual):
        raise ScheduleError(f"--rounds {job.rounds} differs from the schedule's "
                            f"{schedule_rounds(job.continual)} rounds (leave --rounds out)")
