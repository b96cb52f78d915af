"""CKKS over real OS processes and loopback sockets, CurveZMQ on, active mode: the key setup
session runs over the transport before the first round, the server relays and adds
ciphertexts only, every client decrypts the sum itself (checked here from each client's
``--aggregates`` file against the plaintext sum of the survivors), and a client killed by
SIGKILL at a round start is left out of that round's sum without stalling it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fl_core import keyfiles, keys
from fl_core.checkpoint import resume
from fl_core.rounds import synthetic_update
from fl_core.server_app import encsum_path
from tests.fl_core.test_runtime_processes import free_port

pytestmark = pytest.mark.slow

PY = [sys.executable, "-m", "fl_core.cli"]
N = 5
DIM = 48
TOL = 1e-3
VICTIM = 3


def test_ckks_5_clients_2_rounds_one_killed(tmp_path: Path) -> None:
    key_dir = tmp_path / "keys"
    keyfiles.write_server_keys(key_dir, keys.CurveKeyPair.generate())
    for cid in range(1, N + 1):
        keyfiles.write_client_keys(key_dir, keys.ClientKeys.generate(cid))
    port = free_port()
    common = ["--protocol", "ckks", "--n", str(N), "--dim", str(DIM), "--keys", str(key_dir)]
    ckpt, out = tmp_path / "s.ckpt", tmp_path / "rounds.json"
    procs: list[subprocess.Popen[Any]] = []
    try:
        server = subprocess.Popen([*PY, "serve", *common, "--bind", f"tcp://127.0.0.1:{port}",
                                   "--rounds", "2", "--checkpoint", str(ckpt), "--json",
                                   str(out), "--join-timeout", "30", "--deadline", "3"])
        procs.append(server)
        for cid in range(1, N + 1):
            extra = ["--crash-at", "start:2"] if cid == VICTIM else []
            procs.append(subprocess.Popen(
                [*PY, "client", *common, "--connect", f"tcp://127.0.0.1:{port}", "--id",
                 str(cid), "--idle-timeout", "30", "--aggregates",
                 str(tmp_path / f"agg{cid}.jsonl"), *extra]))
        assert server.wait(timeout=90) == 0
        for p in procs[1:]:
            p.wait(timeout=20)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
    assert procs[VICTIM].returncode == -9
    rounds = json.loads(out.read_text())["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    assert all(r["ok"] for r in rounds)
    assert "aggregate" not in rounds[0]  # the server never sees a plaintext sum
    assert rounds[0]["key_epoch"] == 0 and rounds[1]["key_epoch"] == 0
    assert any(s["stage"] == "keys/distribute" for s in rounds[0]["stages"])
    assert sorted(rounds[0]["survivors"]) == list(range(1, N + 1))
    assert sorted(rounds[1]["survivors"]) == [c for c in range(1, N + 1) if c != VICTIM]
    assert rounds[1]["encrypted_sum_bytes"] > 0
    assert encsum_path(ckpt).stat().st_size == rounds[1]["encrypted_sum_bytes"]
    assert resume(ckpt).step == 2
    for r in rounds:
        want = np.sum([synthetic_update(c, r["round"], DIM) for c in r["survivors"]], axis=0)
        for cid in r["survivors"]:
            if cid == VICTIM and r["round"] == 2:
                continue
            lines = (tmp_path / f"agg{cid}.jsonl").read_text().splitlines()
            got = {d["round"]: d for d in map(json.loads, lines)}[r["round"]]
            assert got["included"] == r["survivors"]
            assert np.abs(np.array(got["sum"]) - want).max() < TOL, (cid, r["round"])
