"""A party killed in the middle of a fine-tuning job: the survivors carry on with exact noise.

Real processes, CurveZMQ on loopback, active SecAgg+, MiniLM on TREC. Four clients with
``--min-clients 3`` (the cohort floor of 4 with DP); client 4 SIGKILLs itself when round 2
starts (after the server sampled it).
The server's pings find the dead pipe, so round 2's first stage closes in about a second, not
at its 120 s deadline, and the round completes with the three survivors; later rounds sample
the three live clients. Round 1 (all four in the sum, threshold 3) has every survivor release
its one removable noise level, which the server subtracts: the sum carries exactly sigma.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from secagg.fl_core.finetune.job import FinetuneJob
from tests.fl_core._reap import reap
from tests.fl_core.finetune._procs import free_port, write_keys

pytestmark = pytest.mark.slow

PY = [sys.executable, "-m", "secagg.fl_core.cli"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
CLIENTS = 4


def test_a_killed_party_costs_one_probe_not_a_deadline(tmp_path: Path) -> None:
    key_dir = tmp_path / "keys"
    write_keys(key_dir, CLIENTS)
    job_file = tmp_path / "job.json"
    FinetuneJob(num_clients=CLIENTS, rounds=3, records_per_round=24, eval_size=48,
                max_length=32, epsilon=6.0).save(job_file)
    port, summary = free_port(), tmp_path / "summary.json"
    common = ["--job", str(job_file), "--keys", str(key_dir), "--min-clients", "3"]
    server = [*PY, "serve", *common, "--bind", f"tcp://127.0.0.1:{port}", "--checkpoint",
              str(tmp_path / "ckpt"), "--json", str(summary), "--stage-deadline",
              "advertise=120", "--join-timeout", "120"]
    procs: list[subprocess.Popen[Any]] = []
    t0 = time.monotonic()
    try:
        procs.append(subprocess.Popen(server, env=ENV))
        for c in range(1, CLIENTS + 1):
            extra = ["--crash-at", "start:2"] if c == CLIENTS else []
            procs.append(subprocess.Popen(
                [*PY, "client", *common, "--connect", f"tcp://127.0.0.1:{port}", "--id",
                 str(c), "--idle-timeout", "240", *extra], env=ENV))
        assert procs[0].wait(timeout=400) == 0
    finally:
        reap(procs)
    wall = time.monotonic() - t0
    doc = json.loads(summary.read_text())
    rounds = doc["per_round"]
    assert [r["ok"] for r in rounds] == [True, True, True], [r["error"] for r in rounds]
    assert doc["rounds"] == 3 and doc["dp"]["exact_noise"] is not None
    first, second, third = rounds
    assert len(first["survivors"]) == 4 and first["noise_released_by"] == 4
    assert CLIENTS in second["sampled"] and CLIENTS not in second["survivors"]
    assert len(second["survivors"]) == 3 and "noise_released_by" not in second  # s = t = 3
    assert second["seconds"] < 60, second["stages"]  # not the 120 s advertise deadline
    assert CLIENTS not in third["sampled"] and len(third["sampled"]) == 3
    assert 0.9 * 6 < doc["epsilon"] <= 6 * (1 + 1e-6)
    assert wall < 300
