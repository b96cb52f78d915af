"""``secagg run --continual`` end to end: a server and client processes over CurveZMQ with
active SecAgg+, the real MiniLM and TREC, stages of new labels, one accountant over them all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from secagg.fl_core.finetune.app import prepare
from secagg.fl_core.finetune.continual import resolve_schedule
from secagg.fl_core.finetune.job import FinetuneJob

pytestmark = pytest.mark.slow

PY = [sys.executable, "-m", "secagg.fl_core.cli", "run"]
TINY = ["--clients", "3", "--records-per-round", "24", "--eval-size", "60", "--max-length", "16",
        "--epsilon", "6"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _schedule(tmp_path: Path, rounds: tuple[int, int]) -> Path:
    path = tmp_path / "schedule.toml"
    path.write_text(f'[[stages]]\nname = "questions"\nlabels = ["DESC", "ENTY"]\n'
                    f'rounds = {rounds[0]}\n[[stages]]\nname = "people and places"\n'
                    f'labels = ["HUM", "LOC"]\nrounds = {rounds[1]}\n')
    return path


def _run(tmp_path: Path, *flags: str) -> tuple[dict[str, Any], str]:
    summary = tmp_path / "summary.json"
    proc = subprocess.run([*PY, *TINY, *flags, "--run-dir", str(tmp_path / "run"), "--json",
                           str(summary)], capture_output=True, text=True, timeout=420, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(summary.read_text()), proc.stderr


def test_continual_run_reports_the_accuracy_matrix(tmp_path: Path) -> None:
    doc, stderr = _run(tmp_path, "--continual", str(_schedule(tmp_path, (1, 1))),
                       "--replay-buffer", "8")
    assert doc["rounds"] == 2 and doc["job"]["rounds"] == 2
    assert [s["name"] for s in doc["stages"]] == ["questions", "people and places"]
    assert all(s["completed"] for s in doc["stages"])
    assert [s["round_ids"] for s in doc["stages"]] == [[1, 1], [2, 2]]
    # the second stage's pools hold its records plus at most 8 of the first stage's per party
    second = doc["stages"][1]
    assert second["train_examples"] < second["records_with_replay"] <= (
        second["train_examples"] + 3 * 8)
    matrix = doc["accuracy_matrix"]
    assert len(matrix) == 2 and all(len(row) == 2 for row in matrix)
    assert all(0.0 <= a <= 1.0 for row in matrix for a in row)
    assert [s["accuracy_after"] for s in doc["stages"]] == matrix
    # one accountant over both stages: the job's epsilon is spent by its last round
    assert 0.9 * 6 < doc["epsilon"] <= 6 * (1 + 1e-6)
    assert [r["stage"] for r in doc["per_round"]] == [0, 1]
    assert [r["stage_accuracy"] for r in doc["per_round"]] == matrix
    assert "after stage 'questions' (round 1)" in stderr


def test_the_budget_cuts_a_stage_short_and_later_stages_never_start(tmp_path: Path) -> None:
    schedule = _schedule(tmp_path, (2, 1))
    job = FinetuneJob(num_clients=3, records_per_round=24, eval_size=60, max_length=16,
                      epsilon=6.0, continual=resolve_schedule(str(schedule)), rounds=3)
    # min_cohort: the cohort floor secagg run passes (tests/fl_core/test_cohort_floor.py)
    prep = prepare(job, protocol="secagg+", n=3, active=True, min_cohort=3)
    acc = prep.dp.accountant()
    assert acc is not None
    one, two = acc.epsilon(1), acc.epsilon(2)
    budget = (one + two) / 2  # affords one round, not two
    doc, stderr = _run(tmp_path, "--continual", str(schedule), "--epsilon-budget", f"{budget}")
    assert doc["rounds"] == 1 and doc["epsilon"] == pytest.approx(one, rel=1e-3)
    first, second = doc["stages"]
    assert first["reached"] and not first["completed"]  # cut short after its first round
    assert not second["reached"] and second["accuracy_after"] is None
    assert len(doc["accuracy_matrix"]) == 1
    assert "stopped: privacy budget" in stderr
