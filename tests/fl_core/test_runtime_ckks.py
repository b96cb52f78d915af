"""CKKS over real OS processes and loopback sockets, CurveZMQ on, active mode: the key setup
session runs over the transport before the first round, the server relays and adds
ciphertexts only, every client decrypts the sum itself (checked here from each client's
``--aggregates`` file against the plaintext sum of the survivors). 8 clients x 5 rounds; one
client is killed by SIGKILL at a random round and stage (at its round start: left out of that
round's sum; or on receiving the encrypted sum: in the sum, never decrypts it) and stays dead;
with ``--min-clients 7`` the later rounds run with the 7 live clients under a new key epoch."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from secagg.fl_core.identity import keyfiles, keys
from secagg.fl_core.runtime.checkpoint import resume
from secagg.fl_core.runtime.rounds import STAGE_NUMBERS, synthetic_update
from secagg.fl_core.runtime.server_app import encsum_path
from secagg.protocols.transitions import ServerStage
from tests.fl_core.test_runtime_processes import free_port

pytestmark = pytest.mark.slow

PY = [sys.executable, "-m", "secagg.fl_core.cli"]
N = 8
ROUNDS = 5
DIM = 48
TOL = 1e-3
VICTIM = 3
SUM_STAGE = STAGE_NUMBERS[ServerStage.DONE]  # the encrypted sum reaches clients at this stage


def _run(tmp_path: Path, crash: str) -> list[subprocess.Popen[Any]]:
    key_dir = tmp_path / "keys"
    keyfiles.write_server_keys(key_dir, keys.CurveKeyPair.generate())
    for cid in range(1, N + 1):
        keyfiles.write_client_keys(key_dir, keys.ClientKeys.generate(cid))
    port = free_port()
    common = ["--protocol", "ckks", "--n", str(N), "--dim", str(DIM), "--keys", str(key_dir)]
    procs: list[subprocess.Popen[Any]] = []
    try:
        server = subprocess.Popen([*PY, "serve", *common, "--bind", f"tcp://127.0.0.1:{port}",
                                   "--rounds", str(ROUNDS), "--checkpoint",
                                   str(tmp_path / "s.ckpt"), "--json",
                                   str(tmp_path / "rounds.json"), "--join-timeout", "30",
                                   "--deadline", "4", "--min-clients", str(N - 1)])
        procs.append(server)
        for cid in range(1, N + 1):
            extra = ["--crash-at", crash] if cid == VICTIM else []
            procs.append(subprocess.Popen(
                [*PY, "client", *common, "--connect", f"tcp://127.0.0.1:{port}", "--id",
                 str(cid), "--idle-timeout", "40", "--min-clients", str(N - 1), "--aggregates",
                 str(tmp_path / f"agg{cid}.jsonl"), *extra]))
        assert server.wait(timeout=150) == 0
        for p in procs[1:]:
            p.wait(timeout=20)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
    return procs


def test_ckks_8_clients_5_rounds_one_killed_at_random_stage(tmp_path: Path) -> None:
    seed = random.SystemRandom().randrange(2**32)
    draw = random.Random(seed)
    kill_round = draw.randint(2, ROUNDS - 1)
    stage = draw.choice(["start", str(SUM_STAGE)])
    where = f"seed {seed}: client {VICTIM} killed at {stage}:{kill_round}"
    procs = _run(tmp_path, f"{stage}:{kill_round}")
    assert procs[VICTIM].returncode == -9, where
    ckpt = tmp_path / "s.ckpt"
    rounds = json.loads((tmp_path / "rounds.json").read_text())["rounds"]
    assert [r["round"] for r in rounds] == list(range(1, ROUNDS + 1)), where
    assert all(r["ok"] for r in rounds), (where, [r["error"] for r in rounds])
    assert all("aggregate" not in r for r in rounds)  # the server never sees a plaintext sum
    assert rounds[0]["key_epoch"] == 0
    assert any(s["stage"] == "keys/distribute" for s in rounds[0]["stages"])
    everyone = list(range(1, N + 1))
    live = [c for c in everyone if c != VICTIM]
    for r in rounds:
        rid = r["round"]
        if rid < kill_round:
            assert r["sampled"] == r["survivors"] == everyone, (where, r)
        elif rid == kill_round:
            assert r["sampled"] == everyone, (where, r)
            assert r["survivors"] == (live if stage == "start" else everyone), (where, r)
        elif rid == kill_round + 1 and VICTIM in r["sampled"]:
            # Killed on receiving round R's sum, it may still have been connected when
            # round R + 1 drew its cohort: then it is simply missing from that sum.
            assert stage != "start" and r["survivors"] == live, (where, r)
        else:
            assert r["sampled"] == r["survivors"] == live, (where, r)
            assert r["key_epoch"] >= 1, (where, r)  # the dead member forced a new epoch
        assert r["encrypted_sum_bytes"] > 0
    assert encsum_path(ckpt).stat().st_size == rounds[-1]["encrypted_sum_bytes"]
    assert resume(ckpt).step == ROUNDS
    for r in rounds:
        want = np.sum([synthetic_update(c, r["round"], DIM) for c in r["survivors"]], axis=0)
        for cid in r["survivors"]:
            if cid == VICTIM and r["round"] >= kill_round:
                continue  # it died before decrypting this sum
            lines = (tmp_path / f"agg{cid}.jsonl").read_text().splitlines()
            got = {d["round"]: d for d in map(json.loads, lines)}[r["round"]]
            assert got["included"] == r["survivors"], (where, cid)
            assert np.abs(np.array(got["sum"]) - want).max() < TOL, (where, cid, r["round"])
