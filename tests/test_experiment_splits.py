"""The experiments' split discipline (issue 23): validation carved out of the parties' records,
choices only on validation, the test set read once per reported row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.experiments.sim import run_job
from benchmarks.experiments.splits import SelectedOnTest, TestReads, TestReread, choose
from secagg.fl_core.finetune.job import FinetuneJob
from secagg.fl_core.finetune.party import carve_validation, load_job_data


def test_validation_is_carved_out_of_the_parties_records_and_nothing_else() -> None:
    job = FinetuneJob()
    data = load_job_data(job)
    carved, val = carve_validation(data, 300, job.seed)
    before, after = np.concatenate(data.parts), np.concatenate(carved.parts)
    assert len(val) == 300 and len(after) == len(before) - 300
    assert len(set(after.tolist())) == len(after)  # still a partition
    # the validation records are no party's, and the test set is untouched
    owned = set(after.tolist())
    val_idx = np.setdiff1d(before, after)
    assert not owned & set(val_idx.tolist())
    assert carved.test is data.test and carved.train is data.train
    _, val2 = carve_validation(data, 300, job.seed)  # seeded: the same carve
    assert list(val2.texts) == list(val.texts)
    with pytest.raises(ValueError):
        carve_validation(data, len(before), job.seed)


def test_a_row_reads_the_test_set_once(tmp_path: Path) -> None:
    book = TestReads(tmp_path)
    book.claim("lora-eps8-seed0")
    book.claim("lora-eps8-seed1")
    with pytest.raises(TestReread, match="already read the test set"):
        TestReads(tmp_path).claim("lora-eps8-seed0")  # another process, the same book
    assert set(book.rows()) == {"lora-eps8-seed0", "lora-eps8-seed1"}
    (tmp_path / "test_reads.json").write_text("{broken")
    with pytest.raises(TestReread, match="unreadable"):
        book.claim("new-row")


def test_choices_are_refused_on_test_runs() -> None:
    runs = [{"label": "a", "split": "val", "accuracy_after": 0.8},
            {"label": "b", "split": "val", "accuracy_after": 0.85}]
    assert choose(runs, key=lambda r: r["accuracy_after"])["label"] == "b"
    with pytest.raises(SelectedOnTest):
        choose([*runs, {"label": "c", "split": "test", "accuracy_after": 0.9}],
               key=lambda r: r["accuracy_after"])
    with pytest.raises(SelectedOnTest):  # a run that does not say is refused too
        choose([{"label": "old", "accuracy_after": 0.9}], key=lambda r: r["accuracy_after"])


@pytest.mark.slow
def test_run_job_evaluates_validation_by_default_and_test_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECAGG_EXPERIMENTS_OUT", str(tmp_path))
    job = FinetuneJob(rounds=1, eval_size=16, records_per_round=8, max_length=16,
                      batch_size=4, dp="none", epsilon=None)
    val = run_job(job, label="tiny")
    assert val["split"] == "val" and val["evaluations"][-1]["examples"] == 16
    test = run_job(job, label="tiny", split="test")
    assert test["split"] == "test"
    with pytest.raises(TestReread):
        run_job(job, label="tiny", split="test")
    with pytest.raises(ValueError, match="row key"):
        run_job(job, split="test")
