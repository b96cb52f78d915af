"""Our protocols on Flower's deployment runtime: a SuperLink and SuperNodes as real processes.

Flower 1.42 carries the Fleet, Control and Runtime APIs over HTTP(S) on one SuperLink port; the
launcher (:mod:`secagg.fl_core.flower.deployment`) starts ``flower-superlink``,
``flower-supernode`` and ``flwr run`` from this environment. Each SuperNode polls every 3 s and
starts a fresh ClientApp process per message, so a protocol stage costs a few seconds: the
file keeps to two full federations (a minute or more each on two busy cores) and one SuperLink
whose SuperNode cannot start. The process checks read /proc (Linux).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import flwr
import numpy as np
import pytest

from secagg.fl_core.flower import _procs
from secagg.fl_core.flower.apps import demo_update
from secagg.fl_core.flower.demo import check_round
from secagg.fl_core.flower.deployment import Federation, ProcessStartError

ROOT = Path(__file__).resolve().parents[3]
N, KILLED, TIMEOUT = 4, 2, 20.0


def _wait_for(path: Path, seconds: float, log: Path) -> None:
    end = time.monotonic() + seconds
    while not path.exists():
        assert time.monotonic() < end, f"{path.name} not written; run log:\n{log.read_text()}"
        time.sleep(0.05)


def _flower_processes_under(folder: Path) -> list[int]:
    """Live processes whose FLWR_HOME lies in ``folder`` (every Flower process we start)."""
    found: list[int] = []
    if not Path("/proc").is_dir():
        return found
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes()
        except OSError:
            continue
        if f"FLWR_HOME={folder}".encode() in env and _procs.alive(int(entry.name)):
            found.append(int(entry.name))
    return found


@pytest.mark.slow
def test_supernode_killed_mid_round(tmp_path: Path) -> None:
    """SIGKILL one SuperNode (and its SuperExec and ClientApp) while it holds the masked-input
    stage of a secagg+ round: the round ends after the workflow's timeout with the exact sum of
    the other three, and closing the federation leaves no process behind."""
    marks = tmp_path / "marks"
    marks.mkdir()
    hook = {KILLED: {"marker-dir": str(marks), "hold-at": "1:3"}}
    with Federation(tmp_path / "fed", clients=N, tls=False, node_config=hook) as fed:
        run = fed.submit(protocol="secagg+", rounds=1, dim=32, timeout=TIMEOUT)
        # It answered stages 1 and 2 (keys advertised, shares sent) and now holds stage 3.
        _wait_for(marks / "r1-s3.in", 120, run.log_path)
        assert (marks / "r1-s2.out").exists()
        victims = fed.node_pids(KILLED)
        assert len(victims) >= 3  # SuperNode, SuperExec, the ClientApp holding the stage
        t_kill = time.monotonic()
        fed.kill_node(KILLED)
        assert not any(_procs.alive(p) for p in victims)
        doc = run.wait(TIMEOUT + 60)
        after_kill = time.monotonic() - t_kill
        everyone = fed.pids()
    assert not any(_procs.alive(p) for p in everyone)
    assert _flower_processes_under(tmp_path / "fed") == []
    (r,) = doc["rounds"]
    assert r["survivors"] == [p for p in range(N) if p != KILLED]
    assert str(fed.node_ids[KILLED]) in r["nodes"]  # it was in the round, then dropped
    ok, err = check_round(r, dim=32, clients=N)
    assert ok and err == 0.0
    want = sum(demo_update(p, 1, 32).astype(np.float64) for p in r["survivors"])
    assert np.array_equal(np.asarray(r["aggregate"]), want)
    # The stage waited out the timeout for the dead node, then the round finished.
    assert TIMEOUT - 5 < after_kill < TIMEOUT + 45, after_kill
    assert all(b > 32 for p, b in r["bytes_up"].items() if int(p) != KILLED)


@pytest.mark.slow
def test_demo_command_json_active_over_tls(tmp_path: Path) -> None:
    """``secagg flower demo --deployment --active`` (TLS on with a throwaway CA; every node
    pins its own policy file and identity key) writes the report; the round is the exact sum
    of all clients, and no Flower process outlives the command."""
    out, run_dir = tmp_path / "demo.json", tmp_path / "run"
    cmd = [sys.executable, "-m", "secagg.fl_core.cli", "flower", "demo", "--deployment",
           "--clients", "3", "--rounds", "1", "--protocol", "secagg", "--tls", "--active",
           "--run-dir", str(run_dir), "--json", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(out.read_text())
    assert doc["engine"] == "deployment" and doc["protocol"] == "secagg"
    assert doc["rounds"] == 1 and doc["clients"] == 3 and doc["tls"] is True
    assert doc["mode"] == "active"
    assert doc["flower_version"] == flwr.__version__
    assert doc["correct"] is True
    (r,) = doc["per_round"]
    assert r["survivors"] == [0, 1, 2] and r["correct"] and r["max_abs_error"] == 0.0
    assert r["seconds"] > 0 and doc["wall_seconds"] >= r["seconds"]
    assert set(doc["bytes_up_per_client"]) == {"0", "1", "2"}
    assert all(b > doc["dim"] for b in doc["bytes_up_per_client"].values())
    assert (run_dir / "tls" / "ca.pem").exists()
    assert (run_dir / "active" / "node-1" / "policy.json").exists()
    assert not (run_dir / "active" / "all").exists()  # secrets only in their nodes' folders
    assert "Uvicorn running on https://" in (run_dir / "superlink.log").read_text()
    assert _flower_processes_under(run_dir) == []


@pytest.mark.slow
def test_a_supernode_that_cannot_start_is_reported_with_its_log(tmp_path: Path) -> None:
    fed = Federation(tmp_path / "fed", clients=1, tls=False,
                     supernode_args=["--max-retries", "not-a-number"])
    with pytest.raises(ProcessStartError, match=r"(?s)supernode 0 exited.*not-a-number"):
        fed.start()
    assert _flower_processes_under(tmp_path / "fed") == []


def test_documented_demo_command_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/flower.md shows the demo in a console block (docs tests run every bash-block
    command for real): the command there parses with today's CLI."""
    from secagg.fl_core.cli import entry
    from secagg.fl_core.flower import demo

    lines = [line.removeprefix("$ ") for line in (ROOT / "docs" / "flower.md").read_text()
             .splitlines() if line.startswith("$ secagg flower demo")]
    assert lines
    seen: list[object] = []
    monkeypatch.setattr(demo, "demo_main", lambda ns: seen.append(ns) or 0)
    for line in lines:
        assert entry.main(shlex.split(line)[1:]) == 0
    (ns,) = seen
    assert (ns.engine, ns.clients, ns.rounds, ns.protocol, ns.tls) == (
        "deployment", 3, 2, "secagg+", True)


def test_check_round_wants_the_exact_sum() -> None:
    good = {"round": 3, "survivors": [0, 2],
            "aggregate": list(demo_update(0, 3, 8).astype(float) + demo_update(2, 3, 8))}
    assert check_round(good, dim=8, clients=3) == (True, 0.0)
    off = {**good, "aggregate": [v + 2**-16 for v in good["aggregate"]]}
    assert check_round(off, dim=8, clients=3)[0] is False
    assert check_round({**good, "survivors": [0, 5]}, dim=8, clients=3) == (False, None)
    assert check_round({**good, "aggregate": None}, dim=8, clients=3) == (False, None)


def test_stop_trees_reaches_processes_in_other_sessions(tmp_path: Path) -> None:
    """A child that started its own session (as Flower's SuperExec does) and ignores SIGTERM
    is still found through /proc and killed after the grace period."""
    pidfile = tmp_path / "grandchild"
    script = ("import os, signal, subprocess, sys, time\n"
              "c = subprocess.Popen([sys.executable, '-c', 'import signal, time; "
              "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)'], "
              "start_new_session=True)\n"
              f"open({str(pidfile)!r}, 'w').write(str(c.pid))\n"
              "time.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    end = time.monotonic() + 20
    while not pidfile.exists() or not pidfile.read_text():
        assert time.monotonic() < end
        time.sleep(0.05)
    child = int(pidfile.read_text())
    assert child in _procs.descendants(parent.pid)
    t0 = time.monotonic()
    _procs.stop_trees([parent], grace=1.0)
    assert parent.poll() is not None
    assert not _procs.alive(child)
    assert time.monotonic() - t0 < 10
