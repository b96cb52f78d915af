"""One chaos job (:mod:`benchmarks.chaos`): a synthetic ``secagg run`` driven to its target
rounds through faults, resumed with ``secagg run --resume RUNDIR`` whenever it stops, and
checked (:mod:`benchmarks.chaos_check`) after every run of it.

A job's faults are a shuffled plan of kinds (:data:`benchmarks.chaos_faults.FAULT_KINDS`), each
fired when the run reaches a random round id, after a further random delay (so that it lands
anywhere in a round or between rounds). The runner's clients connect through a
:class:`benchmarks.chaos_proxy.ChaosProxy` (:mod:`benchmarks.chaos_launch`).

A run ends with one of: ``done`` (status 0, all rounds applied), a clear cause on the runner's
stderr (``stopped: ...`` too few clients left; the server gave up after aborts in a row; the
server was killed), or a failure of the harness's bounds: no new round for ``stall_s`` seconds
(a *hang*) or the job's wall-clock limit. After each run, every process the run started must be
gone (an *orphan* otherwise).
"""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]

from benchmarks.chaos_check import CheckReport, Limits, check_history, check_stable
from benchmarks.chaos_faults import FAULT_KINDS, Fault, Injector, RunProcs
from benchmarks.chaos_proxy import ChaosProxy
from secagg.fl_core.runtime.checkpoint import CheckpointError, resume

__all__ = ["JobSpec", "RunnerProcess", "leftover_processes", "plan_faults", "run_job",
           "stop_tree"]

_ROUND_LINE = re.compile(r"^round (\d+): ", re.M)
_STOPPED = re.compile(r"^secagg run: stopped: (.*)$", re.M)
STAGES = 6  # secagg+ round stages: advertise .. unmask


@dataclass
class JobSpec:
    """What one job runs and which faults it gets."""

    index: int
    rounds: int = 40
    n: int = 5
    min_clients: int = 3
    dim: int = 64
    deadline_s: float = 2.0
    join_timeout_s: float = 10.0
    faults: list[str] = field(default_factory=list)
    max_runs: int = 12
    job_timeout_s: float = 420.0

    @property
    def limits(self) -> Limits:
        """The bounds the checker holds the job's rounds to."""
        return Limits(dim=self.dim, deadline_s=self.deadline_s, join_timeout_s=self.join_timeout_s)

    @property
    def stall_s(self) -> float:
        """No new round for this long while the runner lives: a hang."""
        return self.join_timeout_s + 3.0 + STAGES * self.deadline_s + 40.0


def plan_faults(rng: random.Random, count: int, required: list[str] | None = None) -> list[str]:
    """``required`` kinds plus kinds drawn by weight up to ``count``, shuffled."""
    plan = list(required or [])
    kinds, weights = list(FAULT_KINDS), list(FAULT_KINDS.values())
    while len(plan) < count:
        plan.append(rng.choices(kinds, weights)[0])
    rng.shuffle(plan)
    return plan


def _triggers(rng: random.Random, rounds: int, count: int) -> list[int]:
    """Round ids at which to fire ``count`` faults: distinct while there is room, in
    ``[2, 0.8 * rounds]`` (the run must still have rounds to go when a fault lands)."""
    top = max(3, int(rounds * 0.8))
    ids = list(range(2, top + 1))
    picked = rng.sample(ids, count) if count <= len(ids) else [rng.choice(ids)
                                                               for _ in range(count)]
    return sorted(picked)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


@dataclass
class RunnerProcess:
    """One ``secagg run`` process of the job."""

    number: int
    proc: subprocess.Popen[bytes]
    err: Path
    started: float
    procs: RunProcs
    _offset: int = 0

    def stderr(self) -> str:
        """Everything the runner (and, through it, its clients) wrote to stderr."""
        return self.err.read_text(errors="replace")

    def new_lines(self) -> str:
        """What the runner wrote since the last call (whole lines only)."""
        with self.err.open("rb") as f:
            f.seek(self._offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self._offset += end
        return data[:end].decode(errors="replace")


def _start(spec: JobSpec, run_dir: Path, proxy: ChaosProxy, number: int) -> RunnerProcess:
    port = _free_port()
    proxy.upstream_port = port
    where = ["--resume", str(run_dir)] if number > 1 else ["--run-dir", str(run_dir)]
    cmd = [sys.executable, "-m", "benchmarks.chaos_launch", proxy.endpoint, "run",
           "--dim", str(spec.dim), "--n", str(spec.n), "--min-clients", str(spec.min_clients),
           "--rounds", str(spec.rounds), "--deadline", str(spec.deadline_s),
           "--join-timeout", str(spec.join_timeout_s), "--port", str(port), *where]
    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")]))}
    err = run_dir.parent / f"{run_dir.name}.runner-{number}.err"
    with err.open("wb") as f:
        proc = subprocess.Popen(cmd, cwd=run_dir.parent, env=env, stdout=subprocess.DEVNULL,
                                stderr=f, start_new_session=True)
    return RunnerProcess(number, proc, err, time.monotonic(), RunProcs(proc.pid))


def stop_tree(run: RunnerProcess) -> None:
    """SIGTERM the runner (it stops its children), then SIGKILL whatever is left."""
    run.procs.find()
    if run.proc.poll() is None:
        run.proc.send_signal(signal.SIGTERM)
        try:
            run.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            run.proc.kill()
            run.proc.wait(timeout=10)
    for pid in run.procs.seen:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def leftover_processes(run: RunnerProcess) -> list[str]:
    """Processes of ``run`` still alive 3 s after the runner exited (then killed)."""
    deadline = time.monotonic() + 3.0
    while any(_alive(p) for p in run.procs.seen) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = []
    for pid in sorted(run.procs.seen):
        if _alive(pid):
            try:
                left.append(f"{pid}: {' '.join(psutil.Process(pid).cmdline())[:200]}")
                os.kill(pid, signal.SIGKILL)
            except (psutil.Error, ProcessLookupError):
                pass
    return left


Pending = list[tuple[int, float, str, int]]


def _drive(run: RunnerProcess, spec: JobSpec, inj: Injector, pending: Pending,
           skipped: list[str], job_end: float) -> str | None:
    """Watch ``run`` until it exits, firing the faults in ``pending`` (round id, extra delay,
    kind, tries) as the run reaches their round (``skipped``: kinds that found no target); return a
    harness failure (hang, job timeout)."""
    last_round, last_change, due_at = 0, time.monotonic(), None
    while run.proc.poll() is None:
        time.sleep(0.1)
        now = time.monotonic()
        inj.procs.find()
        inj.reap_busy()
        ids = [int(m) for m in _ROUND_LINE.findall(run.new_lines())]
        if ids and ids[-1] != last_round:
            last_round, last_change = ids[-1], now
        if pending and due_at is None and last_round >= pending[0][0]:
            due_at = now + pending[0][1]
        if due_at is not None and now >= due_at:
            _, delay, kind, tries = pending.pop(0)
            if inj.inject(kind) is None:  # no target now (the server just died): retry later
                if tries < 5:
                    pending.insert(0, (last_round + 1, delay, kind, tries + 1))
                else:
                    skipped.append(kind)
            due_at = None
        if now - max(last_change, run.started) > spec.stall_s:
            stop_tree(run)
            return f"hang: no new round for {spec.stall_s:g} s (last round {last_round})"
        if now > job_end:
            stop_tree(run)
            return f"job timeout ({spec.job_timeout_s:g} s)"
    return None


def _cause(run: RunnerProcess, killed_server: bool) -> str:
    text = run.stderr()
    code = run.proc.returncode
    if (m := _STOPPED.findall(text)):
        return f"stopped: {m[-1]}"
    if code == 0:
        return "done"
    if killed_server:
        return "server killed (kill -9)"
    if "giving up" in text or "aborted rounds in a row" in text:
        return "server gave up after aborts in a row"
    return f"exit status {code}: {text.strip().splitlines()[-1][:200] if text.strip() else ''}"


def _read(run_dir: Path) -> tuple[Any, list[dict[str, Any]]]:
    ckpt = resume(run_dir / "checkpoint")
    return ckpt, [dict(h) for h in ckpt.history]


def _check_run(spec: JobSpec, run_dir: Path, prev: list[dict[str, Any]],
               problems: list[str]) -> tuple[CheckReport | None, list[dict[str, Any]]]:
    """Check the job's books after one run; return the report and the history."""
    try:
        ckpt, history = _read(run_dir)
    except CheckpointError as exc:
        problems.append(f"checkpoint unreadable: {exc}")
        return None, prev
    rep = check_history(history, limits=spec.limits, step=ckpt.step, state=ckpt.state,
                        last_round_id=ckpt.last_round_id)
    if (changed := check_stable(prev, history)) is not None:
        rep.fail("stable", changed)
    summary = run_dir / "run_summary.json"
    if summary.is_file():
        import json

        rounds = json.loads(summary.read_text()).get("rounds", [])
        if rounds != history[:len(rounds)] or len(rounds) < len(history) - 1:
            rep.fail("stable", "run_summary.json disagrees with the checkpoint's history")
    problems.extend(rep.problems)
    return rep, history


def run_job(spec: JobSpec, work: Path, rng: random.Random) -> dict[str, Any]:
    """Run one job to its target rounds (resuming after every stop) and check it; return its
    JSON record."""
    run_dir = work / f"job-{spec.index}"
    proxy = ChaosProxy(upstream_port=0)
    t0 = time.monotonic()
    job_end = t0 + spec.job_timeout_s
    faults: list[Fault] = []
    pending = [(t, rng.uniform(0.0, 0.15), k, 0) for t, k in
               zip(_triggers(rng, spec.rounds, len(spec.faults)), spec.faults, strict=True)]
    runs: list[dict[str, Any]] = []
    skipped: list[str] = []
    problems: list[str] = []
    orphans: list[str] = []
    history: list[dict[str, Any]] = []
    report: CheckReport | None = None
    failure: str | None = None
    done = False
    try:
        for number in range(1, spec.max_runs + 1):
            run = _start(spec, run_dir, proxy, number)
            inj = Injector(run.procs, proxy, t0=t0, deadline_s=spec.deadline_s, rng=rng,
                           log=faults)
            n_before = len(faults)
            failure = _drive(run, spec, inj, pending, skipped, job_end)
            inj.settle()
            killed_server = any(f.kind == "kill_server" for f in faults[n_before:])
            left = leftover_processes(run)
            orphans += left
            cause = failure or _cause(run, killed_server)
            report, history = _check_run(spec, run_dir, history, problems)
            step = sum(1 for h in history if h.get("ok"))
            runs.append({"run": number, "resumed": number > 1, "exit": run.proc.returncode,
                         "cause": cause, "seconds": round(time.monotonic() - run.started, 2),
                         "faults": len(faults) - n_before, "orphans": left,
                         "step_after": step})
            if failure is not None:
                break
            if step >= spec.rounds and (run.proc.returncode == 0 or not killed_server):
                # (a server killed after its last round: the resume must end at once, done)
                done = run.proc.returncode == 0
                if not done:
                    failure = f"all rounds applied but the runner exited with {cause}"
                break
            if run.proc.returncode == 2:  # bad input: a resume the runner refused
                failure = f"the runner refused the run: {cause}"
                break
        else:
            failure = f"not done after {spec.max_runs} runs"
    finally:
        proxy.close()
    not_fired = skipped + [k for _, _, k, _ in pending]
    rec = _record(spec, report, runs, faults, not_fired, problems, orphans, failure, done,
                  time.monotonic() - t0)
    rec["proxy"] = {"accepted": proxy.accepted, "refused": proxy.refused}
    rec["checks"]["via_proxy"] = proxy.accepted >= spec.n  # the clients did connect through it
    rec["passed"] = all(rec["checks"].values())
    return rec


def _record(spec: JobSpec, report: CheckReport | None, runs: list[dict[str, Any]],
            faults: list[Fault], not_fired: list[str], problems: list[str],
            orphans: list[str], failure: str | None, done: bool, wall: float) -> dict[str, Any]:
    checks = dict(report.checks) if report is not None else {"checkpoint": False}
    checks["finished"] = done and failure is None
    checks["no_orphans"] = not orphans
    return {
        "job": spec.index, "rounds_target": spec.rounds, "n": spec.n,
        "min_clients": spec.min_clients, "dim": spec.dim, "deadline_s": spec.deadline_s,
        "applied": report.applied if report else 0,
        "aborted": sum(report.aborted.values()) if report else 0,
        "aborted_by_reason": dict(report.aborted) if report else {},
        "lost": report.lost if report else [],
        "faults": [f.to_json() for f in faults],
        "faults_not_fired": not_fired,
        "runs": runs, "resumes": max(0, len(runs) - 1), "failure": failure,
        "wall_s": round(wall, 2), "checks": checks, "passed": all(checks.values()),
        "problems": problems[:50], "orphans": orphans,
    }
