"""Experiment: federated continued pre-training of SmolLM2-135M on the parties' domain text.

Three parties hold the packaged drug reviews (a medical domain; labels ignored, the texts are
the unlabeled corpus), split IID; 10% of the documents (seeded) are held out and the server
reports their perplexity before and after. Every run is a real ``secagg run`` (server and
three clients as OS processes, SecAgg+ over CurveZMQ), so bytes, peak memory and round time are
those of the real system. Rows, each over seeds 0, 1, 2:

- ``lora_dp_eps8``: LoRA (r=8, q/k/v/o), record-level distributed DP at epsilon 8 (one review
  is a record): Poisson-sampled per-example clipped gradients, discrete Gaussian shares under
  SecAgg+, the server's Adam step at ``LORA_LR``.
- ``lora_nonprivate``: the same procedure with noise multiplier 0.001 (clipping and sampling
  kept, the noise negligible: not private, epsilon astronomically large), the baseline that
  shows what DP costs.
- ``full_nonprivate``: all 134,515,008 weights, no DP, ``LOCAL_STEPS`` local AdamW step(s)
  (batch 2) per round and FedAvg, streamed through SecAgg+ in chunks of ``CHUNK`` values.

Sizes are kept small so that a client's work per round stays under about 13 s on this 2-core
machine with 3 clients: a client busy longer was dropped by the runtime's liveness probe (see
the experiments README). Run it under the machine's lock (``flock /tmp/secagg-cpu.lock python -m
benchmarks.experiments.pretrain``); ``--rows`` picks rows, ``--seeds`` seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.experiments.common import mean_se
from benchmarks.experiments.sim import results_dir

NAME = "pretrain"
DATA = "drug-reviews"
ROUNDS = 3
MAX_LENGTH = 64
LORA_LR = 5e-3  # server Adam on the noised mean gradient (experiment "generative"'s rate)
RECORDS_PER_ROUND = 24
LOCAL_STEPS = 1
FULL_LR = 1e-4
CHUNK = 1 << 24  # 16.8M values: 9 sub-rounds per training round

COMMON = ["--objective", "pretrain", "--model", "smollm2", "--data", DATA, "--clients", "3",
          "--partition", "iid", "--rounds", str(ROUNDS), "--max-length", str(MAX_LENGTH),
          "--eval-size", "60"]
ROWS: dict[str, list[str]] = {
    "lora_dp_eps8": ["--adapter", "lora", "--dp", "record", "--epsilon", "8",
                     "--records-per-round", str(RECORDS_PER_ROUND), "--lr", str(LORA_LR)],
    "lora_nonprivate": ["--adapter", "lora", "--dp", "record", "--noise-multiplier", "0.001",
                        "--records-per-round", str(RECORDS_PER_ROUND), "--lr", str(LORA_LR)],
    "full_nonprivate": ["--adapter", "full", "--dp", "none", "--local-steps", str(LOCAL_STEPS),
                        "--batch-size", "2", "--lr", str(FULL_LR), "--chunk-size", str(CHUNK)],
}


def run_one(row: str, seed: int) -> dict[str, Any]:
    """One ``secagg run`` of ``row`` with ``seed``; the fields the table reports."""
    with tempfile.TemporaryDirectory(prefix="secagg-pretrain-") as tmp:
        summary = Path(tmp) / "summary.json"
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "secagg.fl_core.cli", "run", *COMMON, *ROWS[row], "--seed",
             str(seed), "--run-dir", str(Path(tmp) / "run"), "--keys", str(Path(tmp) / "keys"),
             "--json", str(summary)],
            capture_output=True, text=True, timeout=1800,
            env={**os.environ, "OMP_NUM_THREADS": "1"})
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"{row} seed {seed} failed:\n{proc.stderr[-3000:]}")
        doc = json.loads(summary.read_text())
        if doc["rounds"] < ROUNDS:
            raise RuntimeError(f"{row} seed {seed}: {doc['rounds']} of {ROUNDS} rounds "
                               f"completed:\n{proc.stderr[-4000:]}")
    rss = doc["peak_rss_mb"]
    return {"row": row, "seed": seed, "perplexity_before": doc["perplexity_before"],
            "perplexity_after": doc["perplexity_after"], "epsilon": doc["epsilon"],
            "rounds": doc["rounds"], "sub_rounds": doc["sub_rounds"],
            "dim": doc["dim"], "aggregated_dim": doc["aggregated_dim"],
            "bytes_up_per_client_per_round": doc["bytes_up_per_client_per_round"],
            "bytes_down_per_client_per_round": doc["bytes_down_per_client_per_round"],
            "seconds_per_round": doc.get("seconds_per_round"), "wall_s": round(wall, 1),
            "peak_rss_mb": rss, "time_split": doc.get("time_split"),
            "evaluations": doc["evaluations"], "dp": doc["dp"]}


def summarise(row: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean +- standard error over seeds of every reported number."""
    def stat(key: str) -> dict[str, Any]:
        return mean_se([float(r[key]) for r in runs if r[key] is not None])

    parties = sorted({p for r in runs for p in r["peak_rss_mb"]})
    return {"row": row, "args": COMMON + ROWS[row], "seeds": [r["seed"] for r in runs],
            "perplexity_before": stat("perplexity_before"),
            "perplexity_after": stat("perplexity_after"),
            "bytes_up_per_client_per_round": stat("bytes_up_per_client_per_round"),
            "seconds_per_round": stat("seconds_per_round"), "wall_s": stat("wall_s"),
            "peak_rss_mb": {p: mean_se([float(r["peak_rss_mb"][p]) for r in runs])
                            for p in parties},
            "epsilon": runs[0]["epsilon"], "dim": runs[0]["dim"],
            "aggregated_dim": runs[0]["aggregated_dim"], "sub_rounds": runs[0]["sub_rounds"],
            "runs": runs}


def main(argv: list[str] | None = None) -> None:
    """Run the rows over the seeds; one JSON per row in ``benchmarks/results/experiments``
    (runs of other seeds already there are kept)."""
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    args = p.parse_args(argv)
    out = Path(results_dir())
    for seed in args.seeds:  # seed-major: every row gets seed 0 before any gets seed 1
        for row in args.rows:
            path = out / f"{NAME}_{row}.json"
            old = json.loads(path.read_text())["runs"] if path.exists() else []
            try:
                res = run_one(row, seed)
            except (RuntimeError, subprocess.TimeoutExpired, KeyError, ValueError) as exc:
                print(f"{row} seed {seed}: FAILED: {exc}", flush=True)  # the next run goes on
                continue
            runs = sorted([r for r in old if r["seed"] != seed] + [res],
                          key=lambda r: int(r["seed"]))
            print(f"{row} seed {seed}: perplexity {res['perplexity_before']:.2f} -> "
                  f"{res['perplexity_after']:.2f}, {res['bytes_up_per_client_per_round'] / 1e6:.1f}"
                  f" MB up/client/round, {res['seconds_per_round']} s/round, "
                  f"wall {res['wall_s']} s, rss {res['peak_rss_mb']}", flush=True)
            path.write_text(json.dumps(summarise(row, runs), indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
