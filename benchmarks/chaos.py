"""Chaos and soak harness for ``secagg run`` (issue 22): many rounds of real jobs (real
processes, ZeroMQ over CurveZMQ, real keys) under faults injected at random, with every
applied round checked against an independent computation.

Each job is a synthetic federation (``secagg run --dim 64 --n 5 --min-clients 3``; a client's
update is :func:`secagg.fl_core.runtime.rounds.synthetic_update` of its id and the round id, so
any round's sum can be recomputed here). While it runs, the harness (:mod:`benchmarks.chaos_job`)

- kills clients and the server with ``kill -9``, and resumes the run with
  ``secagg run --resume RUNDIR`` whenever it stops, as a user would;
- pauses clients with SIGSTOP/SIGCONT, short of and past the stage deadline;
- starves the machine with busy loops (two per core) for a few seconds;
- delays and drops messages in a TCP proxy between the clients and the server
  (:mod:`benchmarks.chaos_proxy`; the clients are pointed at it by
  :mod:`benchmarks.chaos_launch`).

After each run of a job the checks of :mod:`benchmarks.chaos_check` hold the server's books to
account (exact sums, nothing applied twice, typed abort reasons, rounds within their deadlines,
nothing rewritten by a resume), and every process of the run must be gone. Faults and times are
drawn with :class:`random.SystemRandom` (no seed: a failure is reproduced from the JSON record
of its faults, not by replaying a seed).

Usage::

    python -m benchmarks.chaos                  # 5 jobs x 40 rounds (~5-10 min on 2 cores)
    python -m benchmarks.chaos --quick          # 1 job x 15 rounds, 4 faults (~1-2 min)
    python -m benchmarks.chaos --jobs 8 --rounds 60 --faults 12 --out /tmp/chaos.json
    python -m benchmarks.chaos --jobs 0 --finetune  # only the fine-tuning job (~3-5 min)

Writes ``benchmarks/results/chaos.json`` (``--out``) and prints a table; exits 1 when a check
failed.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.chaos_faults import FAULT_KINDS
from benchmarks.chaos_finetune import run_finetune
from benchmarks.chaos_job import JobSpec, plan_faults, run_job

__all__ = ["main", "quick_spec", "run_chaos"]

RESULTS = Path(__file__).resolve().parent / "results" / "chaos.json"
#: the quick mode's faults: what the slow test asserts on
QUICK_FAULTS = ["kill_client", "pause_long", "kill_server", "drop"]


def quick_spec() -> JobSpec:
    """The quick mode's single job: 15 rounds, a client killed, a client paused past the
    stage deadline, the server killed (then resumed), the connections cut."""
    return JobSpec(index=1, rounds=15, faults=list(QUICK_FAULTS), job_timeout_s=240.0)


def _specs(ns: argparse.Namespace, rng: random.Random) -> list[JobSpec]:
    if ns.quick:
        return [quick_spec()]
    count = ns.faults if ns.faults is not None else max(len(FAULT_KINDS), ns.rounds // 4)
    return [JobSpec(index=i, rounds=ns.rounds, deadline_s=ns.deadline,
                    faults=plan_faults(rng, count, required=list(FAULT_KINDS)))
            for i in range(1, ns.jobs + 1)]


def run_chaos(specs: list[JobSpec], *, work: Path | None = None, keep: bool = False,
              log: Any = None, finetune: bool = False) -> dict[str, Any]:
    """Run ``specs`` one after another in ``work`` (default: a fresh temporary folder,
    removed afterwards unless ``keep``), then the fine-tuning job if ``finetune``
    (:mod:`benchmarks.chaos_finetune`); return the results document."""
    rng = random.SystemRandom()
    folder = Path(tempfile.mkdtemp(prefix="secagg-chaos-")) if work is None else work
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    jobs = []
    ft: dict[str, Any] | None = None
    try:
        for spec in specs:
            if log is not None:
                print(f"job {spec.index}: {spec.rounds} rounds, faults {spec.faults}",
                      file=log, flush=True)
            rec = run_job(spec, folder, rng)
            jobs.append(rec)
            if log is not None:
                print(f"job {spec.index}: {'passed' if rec['passed'] else 'FAILED'} in "
                      f"{rec['wall_s']} s: {rec['applied']} applied, {rec['aborted']} aborted, "
                      f"{len(rec['lost'])} lost, {len(rec['faults'])} faults, "
                      f"{rec['resumes']} resumes", file=log, flush=True)
        if finetune:
            if log is not None:
                print("fine-tuning job: 6 rounds, 4 clients, one client killed",
                      file=log, flush=True)
            ft = run_finetune(folder, rng)
    finally:
        if not keep and work is None:
            shutil.rmtree(folder, ignore_errors=True)
    doc = _totals(jobs, time.monotonic() - t0, folder if keep or work else None)
    doc["passed"] = doc["totals"]["passed"]  # the synthetic jobs' checks, and:
    if ft is not None:
        doc["finetune"] = ft
        doc["passed"] = doc["passed"] and ft["passed"]
    return doc


def _totals(jobs: list[dict[str, Any]], wall: float, kept: Path | None) -> dict[str, Any]:
    by_reason: dict[str, int] = {}
    by_kind: dict[str, int] = {}
    for j in jobs:
        for reason, n in j["aborted_by_reason"].items():
            by_reason[reason] = by_reason.get(reason, 0) + n
        for f in j["faults"]:
            by_kind[f["kind"]] = by_kind.get(f["kind"], 0) + 1
    return {
        "issue": 22, "host": platform.node(), "python": platform.python_version(),
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - wall)),
        "wall_s": round(wall, 2), "work_dir": str(kept) if kept else None,
        "totals": {
            "jobs": len(jobs), "applied": sum(j["applied"] for j in jobs),
            "aborted": sum(j["aborted"] for j in jobs), "aborted_by_reason": by_reason,
            "lost": sum(len(j["lost"]) for j in jobs),
            "faults": sum(len(j["faults"]) for j in jobs), "faults_by_kind": by_kind,
            "resumes": sum(j["resumes"] for j in jobs),
            "passed": all(j["passed"] for j in jobs),
        },
        "jobs": jobs,
    }


def table(doc: dict[str, Any]) -> str:
    """The results as a plain-text table (one line per job, then the totals)."""
    head = (f"{'job':>3} {'applied':>7} {'aborted':>7} {'lost':>4} {'faults':>6} "
            f"{'resumes':>7} {'wall s':>7}  checks")
    lines = [head, "-" * len(head)]
    for j in doc["jobs"]:
        failed = [k for k, v in j["checks"].items() if not v]
        lines.append(f"{j['job']:>3} {j['applied']:>7} {j['aborted']:>7} {len(j['lost']):>4} "
                     f"{len(j['faults']):>6} {j['resumes']:>7} {j['wall_s']:>7.1f}  "
                     f"{'all passed' if not failed else 'FAILED: ' + ', '.join(failed)}")
    t = doc["totals"]
    lines += ["-" * len(head),
              f"{'all':>3} {t['applied']:>7} {t['aborted']:>7} {t['lost']:>4} "
              f"{t['faults']:>6} {t['resumes']:>7} {doc['wall_s']:>7.1f}  "
              f"{'all passed' if t['passed'] else 'FAILED'}",
              "", "faults: " + ", ".join(f"{k} {v}" for k, v in
                                         sorted(t["faults_by_kind"].items())),
              "aborts by reason:"]
    lines += [f"  {n:>4}  {reason}" for reason, n in
              sorted(t["aborted_by_reason"].items(), key=lambda kv: -kv[1])]
    if (ft := doc.get("finetune")) is not None:
        failed = [k for k, v in ft["checks"].items() if not v]
        lines += ["", f"fine-tuning job: {ft.get('applied', 0)} applied, "
                  f"{ft.get('aborted', 0)} aborted, {len(ft.get('lost', []))} lost, "
                  f"{len(ft.get('faults', []))} client kill, {ft.get('resumes', 0)} resumes, "
                  f"{ft.get('wall_s', 0)} s: "
                  f"{'all passed' if not failed else 'FAILED: ' + ', '.join(failed)}"]
        lines += [f"fine-tuning job: {p}" for p in ft["problems"]]
    for j in doc["jobs"]:
        lines += [f"job {j['job']}: {p}" for p in j["problems"]]
        if j["failure"]:
            lines.append(f"job {j['job']}: {j['failure']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.chaos``; return 0 when every check passed."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.chaos", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=5, help="jobs to run (default 5)")
    p.add_argument("--rounds", type=int, default=40, help="applied rounds per job (default 40)")
    p.add_argument("--faults", type=int, default=None,
                   help="faults per job (default: max(8, rounds / 4); every kind at least once)")
    p.add_argument("--deadline", type=float, default=2.0, help="stage deadline, s (default 2)")
    p.add_argument("--quick", action="store_true",
                   help="one 15-round job with 4 faults (~1-2 min)")
    p.add_argument("--out", type=Path, default=RESULTS, help=f"results JSON (default {RESULTS})")
    p.add_argument("--work", type=Path, default=None,
                   help="folder for the run folders (default: a temporary one, removed)")
    p.add_argument("--keep", action="store_true", help="keep the temporary run folders")
    p.add_argument("--finetune", action="store_true",
                   help="also run one fine-tuning job (secagg run --rounds 6 --clients 4, a real "
                   "model: ~3-5 min) with a client killed, and check the clients' ledgers")
    ns = p.parse_args(argv)
    specs = _specs(ns, random.SystemRandom())
    doc = run_chaos(specs, work=ns.work, keep=ns.keep, log=sys.stderr, finetune=ns.finetune)
    doc["mode"] = "quick" if ns.quick else "full"
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    ns.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(table(doc))
    print(f"\nwritten: {ns.out}")
    return 0 if doc["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
