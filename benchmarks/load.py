"""A job beside busy loops (issue 22, "Load"): does every round complete with every client when
the machine is oversubscribed?

``python -m benchmarks.load --busy 12 --rounds 10`` starts ``--busy`` processes that spin
forever, runs the default fine-tuning job (``secagg run``, real model, real processes and
CurveZMQ) beside them, stops the loops, and writes ``benchmarks/results/load.json``: per round
ok, survivors, seconds, and whether it was charged; the wall time; the load averages seen. The
check is the issue's target: every round applied, each with every client.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def _spin() -> None:  # pragma: no cover - a busy loop
    while True:
        pass


def run(busy: int, rounds: int, keys: Path, extra: list[str]) -> dict[str, Any]:
    """Run the job beside ``busy`` busy loops; return the result document."""
    loops = [mp.Process(target=_spin, daemon=True) for _ in range(busy)]
    for p in loops:
        p.start()
    loads: list[float] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            run_dir, summary = Path(tmp) / "run", Path(tmp) / "summary.json"
            cmd = [sys.executable, "-m", "secagg.fl_core.cli", "run", "--keys", str(keys),
                   "--run-dir", str(run_dir), "--rounds", str(rounds), "--json", str(summary),
                   *extra]
            t0 = time.monotonic()
            # the summary's baselines (a linear probe) are not what is measured here
            env = {**os.environ, "SECAGG_BASELINES": "off"}
            err_path = Path(tmp) / "stderr.txt"
            with err_path.open("w") as err_file:  # a file: a full pipe would block the job
                proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err_file,
                                        env=env)
                while proc.poll() is None:
                    loads.append(os.getloadavg()[0])
                    time.sleep(5.0)
            err = err_path.read_text(errors="replace")
            wall = time.monotonic() - t0
            doc = json.loads(summary.read_text()) if summary.exists() else {}
    finally:
        for p in loops:
            p.kill()
    per_round = [{"round": r["round"], "ok": r["ok"], "survivors": len(r["survivors"]),
                  "sampled": len(r["sampled"]), "seconds": r["seconds"],
                  "released": r.get("released"), "voided": r.get("voided", False),
                  "error": r["error"]} for r in doc.get("per_round", [])]
    applied = [r for r in per_round if r["ok"]]
    return {
        "busy_loops": busy, "cores": os.cpu_count(), "rounds_planned": rounds,
        "exit_status": proc.returncode, "wall_s": round(wall, 1),
        "load_average_max": round(max(loads, default=0.0), 2),
        "load_average_mean": round(sum(loads) / len(loads), 2) if loads else 0.0,
        "rounds_applied": len(applied),
        "every_round_with_every_client": len(applied) == rounds and all(
            r["survivors"] == r["sampled"] for r in applied),
        "accuracy_after": doc.get("accuracy_after"), "epsilon": doc.get("epsilon"),
        "per_round": per_round, "stderr_tail": err.splitlines()[-5:],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--busy", type=int, default=12, help="busy loops beside the job")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--keys", type=Path, default=Path(".secagg/keys"))
    ap.add_argument("--out", type=Path, default=RESULTS / "load.json")
    ns, extra = ap.parse_known_args(argv)
    doc = run(ns.busy, ns.rounds, ns.keys, extra)
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    ns.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"{ns.busy} busy loops on {doc['cores']} cores (load avg max "
          f"{doc['load_average_max']}): {doc['rounds_applied']}/{ns.rounds} rounds applied, "
          f"every round with every client: {doc['every_round_with_every_client']}, wall "
          f"{doc['wall_s']} s, exit {doc['exit_status']}")
    return 0 if doc["every_round_with_every_client"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
