"""Private vs non-private at the default job's size: the DP rows of issue 13's table.

Every row is ``run_job(FinetuneJob(seed=s, **row))`` with the `make run` defaults (MiniLM +
LoRA with the mean-pooled head, TREC, 4 clients, Dirichlet 0.5, 20 rounds x 512 expected
records, clip 1, the server's step on the noised mean gradient, held-out 500), in process with
the real SecAgg+ round (exact distributed noise: the survivors release the excess) and the real
accountant. Only the noise differs between rows:

- ``nonoise``: the same procedure (Poisson sampling, clipping, the same server step) with a
  negligible noise multiplier (1e-3): the reference the DP rows are compared with;
- ``dist_eps8`` / ``dist_eps2``: distributed noise solved for epsilon 8 / 2 over the 20 rounds;
- ``local_eps8`` / ``local_eps2``: each party adds the whole noise itself (DP-LoRA's placement;
  one local step, the server takes the same step), solved for the same epsilon.

``--server-optimizer`` style overrides: ``--set lr=0.01 optimizer=sgd`` applies to every row.
The JSON (``benchmarks/results/experiments/dp_targets.json``, or ``--name``) is rewritten after
every run; ``python -m benchmarks.experiments.dp_targets --seeds 0 1 2``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from benchmarks.experiments.common import mean_se
from benchmarks.experiments.sim import run_job, save
from secagg.fl_core.finetune.job import FinetuneJob

ROWS: dict[str, dict[str, Any]] = {
    "nonoise": {"epsilon": None, "noise_multiplier": 1e-3},
    "dist_eps8": {"epsilon": 8.0},
    "local_eps8": {"epsilon": 8.0, "noise": "local"},
    "dist_eps2": {"epsilon": 2.0},
    "local_eps2": {"epsilon": 2.0, "noise": "local"},
}
TINY = {"rounds": 2, "records_per_round": 24, "eval_size": 32, "max_length": 16}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per row: accuracy, macro-F1, epsilon and wall seconds as mean and standard error."""
    out: dict[str, Any] = {}
    for row in dict.fromkeys(r["row"] for r in runs):
        mine = [r for r in runs if r["row"] == row]
        out[row] = {key: mean_se([float(r[key]) for r in mine if r[key] is not None])
                    for key in ("accuracy_after", "macro_f1_after", "epsilon", "wall_s")}
        out[row]["sigma"] = mine[0]["sigma"]
    return out


def _parse_set(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, _, raw = item.partition("=")
        value: Any = raw
        for kind in (int, float):
            try:
                value = kind(raw)
                break
            except ValueError:
                continue
        out[key] = value
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE")
    parser.add_argument("--name", default="dp_targets")
    parser.add_argument("--tiny", action="store_true", help="seconds-long smoke size")
    args = parser.parse_args(argv)
    common = _parse_set(args.set) | (TINY if args.tiny else {})
    runs: list[dict[str, Any]] = []
    for seed in args.seeds:
        for row in args.only:
            job = FinetuneJob(seed=seed, **(ROWS[row] | common))
            t0 = time.perf_counter()
            doc = run_job(job, label=f"{row}-seed{seed}")
            doc.pop("_prep", None)
            dp = doc["dp"] if isinstance(doc["dp"], dict) else {}
            runs.append({
                "row": row, "seed": seed, "accuracy_before": doc["accuracy_before"],
                "accuracy_after": doc["accuracy_after"],
                "macro_f1_after": doc["macro_f1_after"], "epsilon": doc["epsilon"],
                "sigma": dp.get("noise_multiplier"), "exact_noise": dp.get("exact_noise"),
                "wall_s": round(time.perf_counter() - t0, 1), "dim": doc["dim"],
            })
            print(runs[-1], flush=True)
            save(args.name, {"experiment": "DP vs the same procedure without noise",
                             "common": common, "rows": {r: ROWS[r] for r in args.only},
                             "runs": runs, "summary": summarize(runs)})


if __name__ == "__main__":
    main()
