"""The fine-tuning job over real processes, real loopback sockets with CurveZMQ, the real
pretrained MiniLM and real data: ``secagg run`` end to end, and a server killed with SIGKILL
after a checkpoint and resumed without losing or repeating a step of the privacy accountant."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from secagg.fl_core.finetune.job import FinetuneJob
from secagg.fl_core.runtime.checkpoint import resume
from secagg.protocols.config import SecAggConfig
from tests.fl_core._reap import reap
from tests.fl_core.finetune._procs import free_port, write_keys

pytestmark = pytest.mark.slow

PY = [sys.executable, "-m", "secagg.fl_core.cli"]
CLIENTS = 3
TINY = ["--clients", str(CLIENTS), "--records-per-round", "24", "--eval-size", "48",
        "--max-length", "32", "--epsilon", "6"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def test_secagg_run_fine_tunes_with_distributed_dp(tmp_path: Path) -> None:
    summary = tmp_path / "summary.json"
    proc = subprocess.run(
        [*PY, "run", "--rounds", "2", *TINY, "--keys", str(tmp_path / "keys"),
         "--checkpoint", str(tmp_path / "ckpt"), "--json", str(summary)],
        capture_output=True, text=True, timeout=420, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(summary.read_text())
    assert doc["rounds"] == 2 and doc["dp"]["unit"] == "record"
    assert doc["dp"]["noise"] == "distributed"
    # exact noise: calibrated for every round size down to --min-clients (by default the
    # cohort floor, 3 of 3 here: a round of 2 would hand one party's update to the other,
    # tests/fl_core/test_cohort_floor.py), the threshold per round size from the config rule
    # (Bell et al.: 3 at n=3, active)
    assert doc["dp"]["exact_noise"] == [[3, 3]] and "threshold" not in doc["protocol"]
    assert [r["threshold"] for r in doc["per_round"]] == [3, 3]
    assert 0.9 * 6 < doc["epsilon"] <= 6 * (1 + 1e-6)  # solved for exactly these 2 rounds
    assert 0.0 <= doc["accuracy_before"] <= 1.0 and 0.0 <= doc["accuracy_after"] <= 1.0
    # the upload is the packed ring vector: dim * bits / 8 plus framing, nothing per-value more
    bits = SecAggConfig(**doc["protocol"]).bits
    assert doc["dim"] * bits / 8 < doc["bytes_up_per_client_per_round"] < (
        doc["dim"] * bits / 8 * 1.05 + 20_000)
    split = doc["time_split"]
    assert split["training_s"] > 0 and split["protocol_s"] > 0
    assert "federated fine-tuning" in proc.stderr and "accuracy before -> after" in proc.stderr


def test_killed_server_resumes_with_the_accountant(tmp_path: Path) -> None:
    key_dir = tmp_path / "keys"
    write_keys(key_dir, CLIENTS)
    job_file = tmp_path / "job.json"
    FinetuneJob(num_clients=CLIENTS, rounds=3, records_per_round=24, eval_size=48,
                max_length=32, epsilon=6.0).save(job_file)
    port, ckpt, summary = free_port(), tmp_path / "ckpt", tmp_path / "summary.json"
    common = ["--job", str(job_file), "--keys", str(key_dir)]
    server = [*PY, "serve", *common, "--bind", f"tcp://127.0.0.1:{port}", "--checkpoint",
              str(ckpt), "--json", str(summary), "--stage-deadline", "advertise=120"]
    procs: list[subprocess.Popen[Any]] = []
    try:
        first = subprocess.Popen([*server, "--crash-after", "checkpoint:2"], env=ENV)
        procs.append(first)
        procs += [subprocess.Popen(
            [*PY, "client", *common, "--connect", f"tcp://127.0.0.1:{port}", "--id", str(c),
             "--idle-timeout", "240"], env=ENV) for c in range(1, CLIENTS + 1)]
        assert first.wait(timeout=300) == -9
        mid = resume(ckpt)
        assert mid.step == 2 and mid.accountant is not None
        assert mid.accountant["accountant"]["steps"] == 2
        assert set(mid.extra) == {"adam_m", "adam_v"} and mid.extra["adam_v"].any()
        second = subprocess.Popen([*server, "--resume"], env=ENV)
        procs.append(second)
        assert second.wait(timeout=300) == 0
    finally:
        reap(procs)
    final = resume(ckpt)
    doc = json.loads(summary.read_text())
    assert final.step == 3 and doc["rounds"] == 3
    assert final.accountant is not None and final.accountant["accountant"]["steps"] == 3
    assert 0.9 * 6 < doc["epsilon"] <= 6 * (1 + 1e-6)  # 3 steps, none lost or doubled
    assert [e["step"] for e in doc["evaluations"]] == [0, 3]
