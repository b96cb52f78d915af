"""Continual learning over secure aggregation: forgetting with and without a replay buffer.

Every row is the real command, ``secagg run --continual trec-classes`` (a server and 4 client
processes over ZeroMQ with CurveZMQ, active SecAgg+, record-level distributed DP with exact
noise, one accountant over the 18 rounds of the 3 stages at epsilon 8), once per seed; rows differ
only in ``--replay-buffer``. A third row, ``joint``, is the same job size without stages (all
labels every round, 18 rounds): the reference a continual learner would like to reach.

Run: ``python -m benchmarks.experiments.continual --seeds 0 1 2`` (``--tiny``: the smoke size).
Writes ``benchmarks/results/experiments/continual.json`` (every run's summary fields, and per
row the mean +- standard error of the accuracy matrix, the average accuracy after the last stage
and the forgetting) and ``continual.png``.
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

import numpy as np

from benchmarks.experiments.common import mean_se
from benchmarks.experiments.sim import save

__all__ = ["main"]

def rows(replay: int) -> dict[str, list[str]]:
    """The rows: no mitigation, a replay buffer of ``replay`` records per earlier stage and
    party, and the joint reference (all labels every round, the same 18 rounds)."""
    return {"no replay": ["--continual", "trec-classes"],
            f"replay {replay}": ["--continual", "trec-classes", "--replay-buffer", str(replay)],
            "joint (no stages)": ["--rounds", "18"]}
TINY = ["--records-per-round", "32", "--eval-size", "60", "--max-length", "12", "--clients", "3"]


def _run(args: list[str], seed: int, tiny: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "summary.json"
        cmd = [sys.executable, "-m", "secagg.fl_core.cli", "run", *args, "--seed", str(seed),
               "--run-dir", str(Path(tmp) / "run"), "--json", str(out), *(TINY if tiny else [])]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n"
                               f"{proc.stderr[-3000:]}")
        doc: dict[str, Any] = json.loads(out.read_text())
        doc["wall_s"] = round(time.perf_counter() - start, 1)
        return doc


def _row_stats(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"accuracy_after": mean_se([r["accuracy_after"] for r in runs]),
                           "epsilon": [r["epsilon"] for r in runs],
                           "wall_s": mean_se([r["wall_s"] for r in runs])}
    if runs[0].get("accuracy_matrix"):
        mats = np.array([r["accuracy_matrix"] for r in runs])
        out["accuracy_matrix_mean"] = np.round(mats.mean(axis=0), 4).tolist()
        out["accuracy_matrix_se"] = np.round(mats.std(axis=0, ddof=1) / np.sqrt(len(runs)),
                                             4).tolist() if len(runs) > 1 else None
        out["average_accuracy"] = mean_se([r["average_accuracy"] for r in runs])
        out["forgetting"] = mean_se([r["forgetting"] for r in runs])
        out["stages"] = [s["name"] for s in runs[0]["stages"]]
    return out


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(name, row) for name, row in result["rows"].items() if "accuracy_matrix_mean" in row]
    fig, axes = plt.subplots(1, len(rows), figsize=(4.2 * len(rows), 3.6), squeeze=False)
    for ax, (name, row) in zip(axes[0], rows, strict=True):
        m = np.array(row["accuracy_matrix_mean"])
        ax.imshow(m, vmin=0, vmax=1, cmap="viridis")
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center",
                        color="white" if m[i, j] < 0.6 else "black")
        ax.set_xticks(range(m.shape[1]), row["stages"], fontsize=7)
        ax.set_yticks(range(m.shape[0]), [f"after {s}" for s in row["stages"]], fontsize=7)
        ax.set_title(f"{name}: forgetting {row['forgetting']['mean']:.2f}", fontsize=9)
    fig.suptitle("continual learning, trec-classes, epsilon 8 (mean of seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run every row for every seed; write and return the result."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--only", default=None)
    ap.add_argument("--replay", type=int, default=64, help="the replay row's buffer size")
    ap.add_argument("--records-per-round", type=int, default=None,
                    help="override the job's 512 expected records per round (all rows)")
    ap.add_argument("--noise-multiplier", type=float, default=None,
                    help="fix sigma instead of epsilon 8 (1e-3: the same procedure without "
                    "noise)")
    args = ap.parse_args(argv)
    extra = ([] if args.records_per_round is None
             else ["--records-per-round", str(args.records_per_round)])
    if args.noise_multiplier is not None:
        extra += ["--noise-multiplier", str(args.noise_multiplier)]
    name_out = "continual" + ("" if args.records_per_round is None
                              else f"_r{args.records_per_round}") + (
        "" if args.noise_multiplier is None else f"_sigma{args.noise_multiplier:g}")
    result: dict[str, Any] = {"command": "secagg run --continual trec-classes " + " ".join(extra),
                              "seeds": args.seeds, "runs": {}, "rows": {}}
    for name, flags in rows(args.replay).items():
        flags = [*flags, *extra]
        if args.only and args.only not in name:
            continue
        runs = []
        for seed in args.seeds:
            doc = _run(flags, seed, args.tiny)
            keep = {k: doc.get(k) for k in ("accuracy_before", "accuracy_after", "epsilon",
                                            "delta", "stages", "accuracy_matrix",
                                            "accuracy_before_stages", "average_accuracy",
                                            "forgetting", "bytes_up_per_client_per_round",
                                            "rounds", "time_split", "wall_s")}
            runs.append(keep)
            print(name, seed, {k: keep[k] for k in ("accuracy_after", "average_accuracy",
                                                    "forgetting", "epsilon", "wall_s")},
                  flush=True)
        result["runs"][name] = runs
        result["rows"][name] = _row_stats(runs)
        save(f"{name_out}_tiny" if args.tiny else name_out, result)
    if not args.tiny:
        from benchmarks.experiments.sim import results_dir

        _plot(result, results_dir() / f"{name_out}.png")
    return result


if __name__ == "__main__":
    main()
