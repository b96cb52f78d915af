"""The issue's scenario with the real job (MiniLM, real data, real processes): a run is
interrupted after its first round, the next ``secagg run`` in the same folder starts fresh in a
run folder of its own instead of tripping over the old checkpoint, and ``--resume RUN`` finishes
the interrupted run without repeating a step of its privacy accountant."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from secagg.fl_core.cli.run_folder import RUNS_ROOT
from secagg.fl_core.runtime.checkpoint import resume
from tests.fl_core.finetune.test_preflight import secagg_run

pytestmark = pytest.mark.slow

TINY = ["--clients", "2", "--records-per-round", "16", "--eval-size", "16", "--max-length", "16",
        "--epsilon", "6"]


def test_job_runs_start_fresh_and_resume_continues(tmp_path: Path) -> None:
    interrupted, _ = secagg_run(tmp_path, "--rounds", "2", *TINY, "--crash-after",
                                "checkpoint:1", timeout=420)
    assert interrupted.returncode != 0
    (first,) = sorted((tmp_path / RUNS_ROOT).iterdir())
    assert resume(first / "checkpoint").step == 1
    fresh, _ = secagg_run(tmp_path, "--rounds", "1", *TINY, timeout=420)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    first_again, second = sorted((tmp_path / RUNS_ROOT).iterdir())
    assert first_again == first and f"run folder {RUNS_ROOT / second.name}" in fresh.stderr
    assert json.loads((second / "run_summary.json").read_text())["rounds"] == 1
    # no flag repeated: the job, cohort and protocol come from the run folder
    resumed, _ = secagg_run(tmp_path, "--resume", first.name, timeout=420)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming run {first.name} after 1 applied rounds" in resumed.stderr
    final = resume(first / "checkpoint")
    assert final.step == 2 and final.accountant is not None
    assert final.accountant["accountant"]["steps"] == 2  # none lost or doubled
    doc = json.loads((first / "run_summary.json").read_text())
    assert doc["rounds"] == 2 and 0.9 * 6 < doc["epsilon"] <= 6 * (1 + 1e-6)
    assert {p.name for p in first.iterdir()} >= {"job.json", "run.json", "keys", "checkpoint",
                                                 "run_summary.json", "client-1.stats.jsonl"}
