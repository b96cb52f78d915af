"""One fine-tuning job under the chaos harness (``python -m benchmarks.chaos --finetune``):
the default ``secagg run --rounds 6 --clients 4`` job (a real model, record-level DP), one
client killed with ``kill -9`` at a random moment after a random round (the run stops: every
client is needed), then ``secagg run --resume RUNDIR``; slow (~15 s a round on 2 cores).

Checks, from the server's checkpoint history and each client's own books
(``client-<i>.ledger.json``: ``{"rounds": [...], "voided": [...]}``):

- **ledger**: every applied round a client survived in is in its ledger; its charged rounds
  strictly increase, are disjoint from its voided ones, and each is a round it was sampled for
  (or a round id lost with a killed server);
- **released** / **epsilon**: released rounds >= applied rounds (where the summaries carry
  ``released``); the reported epsilon never decreases;
- **exit_status**: a run in which every round got applied exits with status 0 (not "stopped");
- the job ends with all its rounds applied, and no process of it is left.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.chaos_check import CheckReport, check_released
from benchmarks.chaos_faults import Fault, RunProcs
from benchmarks.chaos_job import RunnerProcess, leftover_processes, stop_tree
from secagg.fl_core.runtime.checkpoint import CheckpointError, resume

__all__ = ["check_ledgers", "run_finetune"]

_OK_LINE = re.compile(r"^round (\d+): ok", re.M)


def check_ledgers(history: list[dict[str, Any]], ledgers: dict[int, dict[str, Any]],
                  rep: CheckReport, last_round_id: int) -> None:
    """The **ledger** check of this module's docstring, recorded in ``rep``."""
    rep.checks.setdefault("ledger", True)
    ids = {int(h["round"]) for h in history}
    lost = set(range(1, last_round_id + 1)) - ids
    for cid, doc in sorted(ledgers.items()):
        charged = [int(r) for r in doc.get("rounds", [])]
        voided = {int(r) for r in doc.get("voided", [])}
        if charged != sorted(set(charged)):
            rep.fail("ledger", f"client {cid}: charged rounds {charged} not strictly increasing")
        if set(charged) & voided:
            rep.fail("ledger", f"client {cid}: rounds {sorted(set(charged) & voided)} both "
                     "charged and voided")
        sampled = {int(h["round"]) for h in history if cid in h.get("sampled", [])}
        if stray := sorted(set(charged) - sampled - lost):
            rep.fail("ledger", f"client {cid}: charged rounds {stray} it was not sampled for")
        for h in history:
            if h.get("ok") and cid in h.get("survivors", []) and int(h["round"]) not in charged:
                rep.fail("ledger", f"client {cid}: applied round {h['round']} (a survivor) "
                         "missing from its ledger")
    eps = [float(h["epsilon"]) for h in history if h.get("ok") and "epsilon" in h]
    if any(b < a - 1e-12 for a, b in itertools.pairwise(eps)):
        rep.fail("ledger", f"reported epsilon decreased: {eps}")


def _start(run_dir: Path, number: int, rounds: int, clients: int) -> RunnerProcess:
    base = [sys.executable, "-m", "secagg.fl_core.cli", "run"]
    cmd = ([*base, "--rounds", str(rounds), "--clients", str(clients), "--run-dir", str(run_dir)]
           if number == 1 else [*base, "--resume", str(run_dir)])
    err = run_dir.parent / f"{run_dir.name}.runner-{number}.err"
    with err.open("wb") as f:
        proc = subprocess.Popen(cmd, cwd=run_dir.parent, stdout=subprocess.DEVNULL, stderr=f,
                                env={**os.environ}, start_new_session=True)
    return RunnerProcess(number, proc, err, time.monotonic(), RunProcs(proc.pid))


def _wait(run: RunnerProcess, timeout: float, kill_after: int | None, delay: float,
          rng: random.Random, faults: list[Fault], t0: float) -> str | None:
    """Follow ``run``; kill one client ``delay`` s after round ``kill_after`` is applied."""
    fire_at = None
    end = time.monotonic() + timeout
    while run.proc.poll() is None:
        time.sleep(0.2)
        _, clients = run.procs.find()
        oks = [int(m) for m in _OK_LINE.findall(run.stderr())]
        if kill_after is not None and fire_at is None and oks and oks[-1] >= kill_after:
            fire_at = time.monotonic() + delay
        if fire_at is not None and time.monotonic() >= fire_at and clients:
            cid = rng.choice(sorted(clients))
            os.kill(clients[cid], signal.SIGKILL)
            faults.append(Fault(time.monotonic() - t0, "kill_client", f"client {cid}",
                                {"pid": clients[cid], "after_round": kill_after}))
            kill_after, fire_at = None, None
        if time.monotonic() > end:
            stop_tree(run)
            return f"timeout ({timeout:g} s)"
    return None


def _step(run_dir: Path) -> int:
    try:
        return resume(run_dir / "checkpoint").step
    except CheckpointError:
        return 0


def run_finetune(work: Path, rng: random.Random, *, rounds: int = 6, clients: int = 4,
                 timeout: float = 600.0) -> dict[str, Any]:
    """Run the fine-tuning job with one client kill and a resume; return its JSON record."""
    run_dir = work / "finetune"
    t0 = time.monotonic()
    faults: list[Fault] = []
    rep = CheckReport(checks={"finished": False, "no_orphans": True, "exit_status": True})
    runs: list[dict[str, Any]] = []
    kill_after: int | None = rng.randint(1, rounds - 2)
    for number in (1, 2, 3):
        run = _start(run_dir, number, rounds, clients)
        failure = _wait(run, timeout, kill_after, rng.uniform(0.0, 8.0), rng, faults, t0)
        kill_after = None
        left = leftover_processes(run)
        if left:
            rep.fail("no_orphans", f"left running: {left}")
        step = _step(run_dir)
        stopped = re.findall(r"^secagg run: stopped: (.*)$", run.stderr(), re.M)
        runs.append({"run": number, "exit": run.proc.returncode, "failure": failure,
                     "seconds": round(time.monotonic() - run.started, 1), "orphans": left,
                     "step_after": step, "stopped": stopped[-1] if stopped else None})
        if step >= rounds and run.proc.returncode != 0:
            rep.fail("exit_status", f"run {number}: all {rounds} rounds applied, yet the runner "
                     f"exited with status {run.proc.returncode}: {stopped[-1] if stopped else ''}")
        if failure is not None or run.proc.returncode == 0:
            break
    try:
        ckpt = resume(run_dir / "checkpoint")
    except CheckpointError as exc:
        rep.fail("finished", f"no checkpoint: {exc}")
        return {"runs": runs, "checks": rep.checks, "problems": rep.problems, "passed": False}
    history = [dict(h) for h in ckpt.history]
    rep.checks["finished"] = ckpt.step == rounds and runs[-1]["exit"] == 0
    ledgers = {}
    for cid in range(1, clients + 1):
        path = run_dir / f"client-{cid}.ledger.json"
        ledgers[cid] = json.loads(path.read_text()) if path.is_file() else {}
    check_ledgers(history, ledgers, rep, ckpt.last_round_id)
    check_released(history, rep)
    applied = sum(bool(h.get("ok")) for h in history)
    return {
        "job": "finetune", "rounds_target": rounds, "clients": clients, "applied": applied,
        "aborted": len(history) - applied,
        "errors": [h.get("error") for h in history if not h.get("ok")],
        "lost": sorted(set(range(1, ckpt.last_round_id + 1)) - {h["round"] for h in history}),
        "epsilon": [h.get("epsilon") for h in history if h.get("ok")],
        "ledgers": {str(c): d.get("rounds", []) for c, d in ledgers.items()},
        "voided": {str(c): d.get("voided", []) for c, d in ledgers.items() if d.get("voided")},
        "faults": [f.to_json() for f in faults], "runs": runs, "resumes": len(runs) - 1,
        "wall_s": round(time.monotonic() - t0, 1), "checks": rep.checks,
        "problems": rep.problems, "passed": rep.ok,
    }
