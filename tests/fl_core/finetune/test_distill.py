"""Federated knowledge distillation (``--objective distill``): the split, the refused DP modes,
the consensus through the real secure aggregation round, the student's checkpoint, and
``secagg run --objective distill`` over real processes with the real MiniLM and TREC."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from secagg.fl_core.finetune.app import prepare
from secagg.fl_core.finetune.distill import DistillClientTask, DistillData, load_distill_data
from secagg.fl_core.finetune.distill_server import DistillServerTask
from secagg.fl_core.finetune.job import FinetuneJob, JobError
from secagg.fl_core.finetune.party import build_job_model
from secagg.fl_core.finetune.preflight import PreflightError, check_distill, check_job
from secagg.fl_core.runtime.driver import RoundOutcome
from secagg.models import ClassificationData
from secagg.protocols.config import SecAggConfig
from secagg.protocols.harness import run_round

PY = [sys.executable, "-m", "secagg.fl_core.cli"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TINY = dict(objective="distill", noise="local", num_clients=3, transfer_size=40, eval_size=32,
            records_per_round=24, distill_steps=2, max_length=24, rounds=2, epsilon=6.0)


def test_split_is_disjoint_seeded_and_covers_the_training_split() -> None:
    job = FinetuneJob(objective="distill", noise="local", transfer_size=300)
    a, b = load_distill_data(job), load_distill_data(job)
    assert isinstance(a, DistillData) and len(a.transfer_texts) == 300
    np.testing.assert_array_equal(a.transfer_indices, b.transfer_indices)
    for pa, pb in zip(a.parts, b.parts, strict=True):
        np.testing.assert_array_equal(pa, pb)
    pieces = [a.transfer_indices, *a.parts]
    joined = np.concatenate(pieces)
    assert len(joined) == len(set(joined.tolist())) == len(a.train)  # disjoint, everything
    assert isinstance(a.train, ClassificationData)
    assert a.transfer_texts == tuple(a.train.texts[i] for i in a.transfer_indices)
    other = load_distill_data(FinetuneJob(objective="distill", noise="local",
                                          transfer_size=300, seed=1))
    assert not np.array_equal(other.transfer_indices, a.transfer_indices)


def test_wrong_dp_modes_and_data_are_refused() -> None:
    check_distill(FinetuneJob(objective="distill", noise="local"))  # record, local: fine
    check_distill(FinetuneJob(objective="distill", dp="none"))  # the non-private control
    with pytest.raises(PreflightError, match="unbounded"):
        check_distill(FinetuneJob(objective="distill"))  # distributed noise (the default)
    with pytest.raises(PreflightError, match="--dp client is not implemented"):
        check_distill(FinetuneJob(objective="distill", dp="client", noise="local"))
    with pytest.raises(PreflightError, match="classification data"):
        check_job(FinetuneJob(objective="distill", noise="local", data="chatterbot"),
                  protocol="secagg+", n=4, active=False)
    with pytest.raises(JobError, match="--transfer-size 5000 leaves"):
        load_distill_data(FinetuneJob(objective="distill", noise="local", transfer_size=5000))


def test_secagg_run_refuses_distributed_noise_before_any_process(tmp_path: Path) -> None:
    # distillation defaults to local noise; asking for distributed noise is refused
    proc = subprocess.run([*PY, "run", "--objective", "distill", "--noise", "distributed",
                           "--insecure", "--checkpoint",
                           str(tmp_path / "ckpt"), "--json", str(tmp_path / "s.json")],
                          capture_output=True, text=True, timeout=120, env=ENV)
    assert proc.returncode == 2
    assert "--noise local" in proc.stderr and "unbounded" in proc.stderr
    assert not (tmp_path / "s.json").exists()


def test_consensus_is_the_mean_of_the_clients_soft_labels_and_the_student_learns() -> None:
    job = FinetuneJob(**TINY)  # type: ignore[arg-type]
    prep = prepare(job, protocol="secagg+", n=3, active=False)
    assert isinstance(prep.data, DistillData)
    k = int(prep.model.num_labels or 0)
    assert prep.dim == 40 * k and prep.config_args["clip"] == 1.0
    server = DistillServerTask(job, prep.model, prep.data, prep.dp, cohort=3)
    state = server.initial_state(prep.dim)
    np.testing.assert_allclose(state, 1.0 / k)
    student0 = prep.model.get_vector().copy()
    clients = [DistillClientTask(job, c, build_job_model(job, prep.data), prep.data.client(c),
                                 prep.data.transfer_texts, prep.dp) for c in (1, 2, 3)]
    config = SecAggConfig(**prep.config_args)
    for r in (1, 2):
        server.begin_round(r)
        inputs = {c.client_id: c(r, state) for c in clients}
        for x in inputs.values():  # probabilities: in range, rows on the simplex
            assert x.shape == (prep.dim,) and x.min() >= 0 and x.max() <= 1
            np.testing.assert_allclose(x.reshape(-1, k).sum(axis=1), 1.0, atol=1e-5)
        rr = run_round(config, inputs, round_id=r)
        out = RoundOutcome(r, (1, 2, 3), aggregate=rr.aggregate, weight_total=rr.weight_total,
                           included=rr.included)
        new = server.apply(state, out)
        assert new is not None
        mean = np.mean(list(inputs.values()), axis=0)
        # the fixed-point grid (2^-16 per value) and the row renormalisation, nothing more
        assert np.abs(new - mean).max() < 5e-5
        report = server.report(out)
        state = new
    assert 0.9 * 6 < report["epsilon"] <= 6 * (1 + 1e-6)
    assert not np.array_equal(prep.model.get_vector(), student0)  # the student moved
    assert len(server.student_losses) == 2
    # the server's student is checkpointed: a fresh task on a fresh model resumes it
    doc, arrays = server.state_dict()
    again = DistillServerTask(job, build_job_model(job, prep.data), prep.data, prep.dp, cohort=3)
    again.load_state_dict(json.loads(json.dumps(doc)), arrays)
    np.testing.assert_array_equal(again.model.get_vector(), prep.model.get_vector())
    assert again.accountant is not None and again.charged_rounds == 2
    with pytest.raises(ValueError, match="another job"):
        DistillServerTask(FinetuneJob(**{**TINY, "seed": 3}),  # type: ignore[arg-type]
                          prep.model, prep.data, prep.dp, cohort=3).load_state_dict(doc, arrays)


@pytest.mark.slow
def test_secagg_run_distills_over_real_processes(tmp_path: Path) -> None:
    summary = tmp_path / "summary.json"
    proc = subprocess.run(
        [*PY, "run", "--objective", "distill", "--noise", "local", "--clients", "3",
         "--rounds", "2", "--transfer-size", "60", "--eval-size", "48", "--records-per-round",
         "24", "--distill-steps", "3", "--max-length", "24", "--epsilon", "6",
         "--keys", str(tmp_path / "keys"), "--checkpoint", str(tmp_path / "ckpt"),
         "--json", str(summary)],
        capture_output=True, text=True, timeout=300, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(summary.read_text())
    k = doc["distill"]["classes"]
    assert k == 6 and doc["distill"]["transfer_size"] == 60 and doc["dim"] == 60 * k
    assert doc["distill"]["dim"] == doc["dim"] and len(doc["distill"]["student_kl_per_round"]) == 2
    assert doc["rounds"] == 2 and doc["dp"]["unit"] == "record" and doc["dp"]["noise"] == "local"
    assert 0.9 * 6 < doc["epsilon"] <= 6 * (1 + 1e-6) and 0 < doc["delta"] < 1e-3
    assert 0.0 <= doc["accuracy_before"] <= 1.0 and 0.0 <= doc["accuracy_after"] <= 1.0
    assert [e["step"] for e in doc["evaluations"]] == [0, 2]
    # soft labels, not weights, travel: 360 values of the 16-fraction-bit ring plus framing
    bits = SecAggConfig(**doc["protocol"]).bits
    assert doc["protocol"]["clip"] == 1.0 and doc["protocol"]["scale"] == 16
    assert doc["dim"] * bits / 8 < doc["bytes_up_per_client_per_round"] < (
        doc["dim"] * bits / 8 + 20_000)
    assert "accuracy before -> after" in proc.stderr


def test_the_distill_flag_defaults_to_its_only_dp_mode() -> None:
    import argparse

    from secagg.fl_core.finetune.cli_args import add_job_args, job_from_args

    ap = argparse.ArgumentParser()
    add_job_args(ap)
    assert job_from_args(ap.parse_args(["--objective", "distill"])).noise == "local"
    assert job_from_args(ap.parse_args([])).noise == "distributed"  # other jobs unchanged
    assert job_from_args(ap.parse_args(["--objective", "distill", "--noise", "distributed"])
                         ).noise == "distributed"  # an explicit choice is kept (and refused)
