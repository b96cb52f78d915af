"""The job summary's baselines (issue 23): majority class and the non-private linear probe on
the job's own held-out set, computed once per machine and read from the cache after."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from secagg.fl_core.finetune.baselines import baseline_key, job_baselines
from secagg.fl_core.finetune.job import FinetuneJob
from secagg.fl_core.finetune.party import JobData, build_job_model, load_job_data
from secagg.fl_core.finetune.report import _show


@pytest.fixture(scope="module")
def small() -> tuple[FinetuneJob, JobData]:
    """The default job's data cut to 160 training and 60 held-out records."""
    job = FinetuneJob(max_length=16)
    data = load_job_data(job)
    rng = np.random.default_rng(0)
    train = data.train.subset(np.sort(rng.permutation(len(data.train))[:160]))
    test = data.test.subset(np.arange(60))
    return job, JobData(train, test, (np.arange(160),))


def test_baselines_are_measured_on_the_held_out_set_and_cached(
        small: tuple[FinetuneJob, JobData], tmp_path: Path) -> None:
    job, data = small
    model = build_job_model(job, data)
    first = job_baselines(job, model, data, cache=tmp_path)
    assert first is not None and first["cached"] is False
    labels = np.asarray(data.test.labels)
    majority = int(np.bincount(np.asarray(data.train.labels)).argmax())
    assert first["majority"] == pytest.approx(float(np.mean(labels == majority)), abs=1e-4)
    assert first["majority"] < first["linear_probe"] <= 1.0  # frozen features do carry signal
    assert first["test_examples"] == 60
    again = job_baselines(job, model, data, cache=tmp_path)
    assert again is not None and again["cached"] is True
    assert {k: again[k] for k in ("majority", "linear_probe", "linear_probe_l2")} == {
        k: first[k] for k in ("majority", "linear_probe", "linear_probe_l2")}
    path = tmp_path / "baselines" / f"{baseline_key(job, model)}.json"
    path.write_text("{broken")  # a broken cache entry is measured again
    third = job_baselines(job, model, data, cache=tmp_path)
    assert third is not None and third["cached"] is False
    assert json.loads(path.read_text())["linear_probe"] == first["linear_probe"]


def test_the_printed_summary_shows_the_baselines_beside_the_accuracy() -> None:
    from rich.console import Console

    console = Console(record=True, width=200)
    doc = {"job": {}, "dp": {"unit": "record", "noise": "distributed", "noise_multiplier": 0.8},
           "accuracy_before": 0.164, "accuracy_after": 0.85, "epsilon": 8.0, "delta": 1e-4,
           "rounds": 20, "bytes_up_per_client_per_round": 1e5,
           "bytes_down_per_client_per_round": 1e5,
           "baselines": {"majority": 0.238, "linear_probe": 0.872}}
    _show(console, doc)
    text = console.export_text()
    assert "majority class 0.238, non-private linear probe 0.872" in text
