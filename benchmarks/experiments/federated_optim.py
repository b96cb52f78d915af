"""Federated vs centralized, non-private, the same procedure: local SGD + a server optimizer.

The default job's task and size (``FinetuneJob()``: MiniLM + LoRA or prefix tuning, TREC, 4
parties, Dirichlet 0.5, 20 rounds, held-out 500, max_length 32) with ``dp="none"`` and 512
examples per round over all parties (each party: ``local_steps`` 8 x ``batch_size`` 16).
Federated: :func:`benchmarks.experiments.sim.run_job` over SecAgg+. Centralized:
``run_job(..., centralized=True)``: one party holding all the data runs the same 4 local
trainings per round (same steps, batch, seeds, local optimizer) from the global weights over
the pooled data, and the same server optimizer steps on their mean: only the data split
differs.

Rows: the chosen configuration (:data:`CHOSEN`, from the pilot, ``--pilot``) for LoRA and for
prefix tuning, federated and centralized, with ``--seeds``; and the reference rows with
today's update-mode procedure (a fresh local AdamW every round, FedAvg at server lr 1; lr
0.005, since the job's default 0.02 collapsed in the pilot) at the same size, with
``--ref-seeds``. The chosen rows run seed by seed, the reference rows last; the JSON
(``benchmarks/results/experiments/federated_optim.json``) is rewritten after every run.

Run: ``python -m benchmarks.experiments.federated_optim --seeds 0 1 2``; ``--pilot`` runs the
pilot configurations (LoRA, federated, seed 0) into ``federated_optim_pilot.json``;
``--only SUBSTRING`` selects rows; ``--append`` adds to the runs already saved; ``--tiny`` is
a seconds-long smoke size.
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

from benchmarks.experiments.common import load_result, mean_se
from benchmarks.experiments.sim import run_job, save
from secagg.fl_core.finetune.job import FinetuneJob

NAME = "federated_optim"

#: 512 examples per round over 4 parties, non-private
SIZE: dict[str, Any] = {"dp": "none", "epsilon": None, "local_steps": 8, "batch_size": 16}
TINY: dict[str, Any] = {"rounds": 1, "eval_size": 16, "max_length": 16, "local_steps": 1,
                        "batch_size": 4}
#: today's update-mode procedure: a fresh AdamW every round, FedAvg at server lr 1; at the
#: job's default lr 0.02 it collapsed in the pilot (0.212), so the reference rows use 0.005
TODAY: dict[str, Any] = {"local_optimizer": "adamw", "lr": 0.005, "server_optimizer": "avg",
                         "server_lr": 1.0}
#: picked by the pilot (see the README section "Federated vs centralized (same procedure)")
CHOSEN: dict[str, Any] = {"local_optimizer": "sgd", "lr": 0.1, "server_optimizer": "adam",
                          "server_lr": 0.01, "server_momentum": 0.9}
PILOT: list[tuple[str, dict[str, Any]]] = [
    ("adamw0.02_avg1", TODAY | {"lr": 0.02}),
    ("adamw0.005_avg1", TODAY),
    ("sgd0.1_avg1", {"local_optimizer": "sgd", "lr": 0.1}),
    ("sgd0.3_avg1", {"local_optimizer": "sgd", "lr": 0.3}),
    ("sgd0.1_avgm0.3", {"local_optimizer": "sgd", "lr": 0.1, "server_optimizer": "avgm",
                        "server_lr": 0.3}),
    ("sgd0.1_adam0.01", {"local_optimizer": "sgd", "lr": 0.1, "server_optimizer": "adam",
                         "server_lr": 0.01}),
]


def rows() -> list[tuple[str, dict[str, Any], bool, bool]]:
    """(name, job fields, centralized, reference row) of every row."""
    out: list[tuple[str, dict[str, Any], bool, bool]] = []
    for adapter in ("lora", "prefix"):
        for cfg, ref in ((CHOSEN, False), (TODAY, True)):
            tag = "fedavg_today" if ref else "chosen"
            for central in (False, True):
                where = "central" if central else "fed"
                out.append((f"{adapter}_{tag}_{where}", cfg | {"adapter": adapter}, central, ref))
    return out


class _ClampCounter(logging.Handler):
    """Counts the client task's "values beyond the protocol range clamped" warnings."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "clamped" in record.getMessage():
            self.count += 1


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per row: accuracy, macro-F1, wall as mean and standard error; per adapter and config:
    federated minus centralized, paired by seed."""
    out: dict[str, Any] = {}
    for name in dict.fromkeys(r["row"] for r in runs):
        mine = sorted((r for r in runs if r["row"] == name), key=lambda r: r["seed"])
        out[name] = {k: mean_se([float(r[k]) for r in mine])
                     for k in ("accuracy_after", "macro_f1_after", "wall_s")}
        out[name]["seeds"] = [r["seed"] for r in mine]
    for name in list(out):
        if not name.endswith("_fed") or name[:-4] + "_central" not in out:
            continue
        fed = {r["seed"]: r["accuracy_after"] for r in runs if r["row"] == name}
        cen = {r["seed"]: r["accuracy_after"] for r in runs if r["row"] == name[:-4] + "_central"}
        both = sorted(set(fed) & set(cen))
        out[name[:-4] + "_gap_fed_minus_central"] = mean_se(
            [round(fed[s] - cen[s], 4) for s in both])
    return out


def _run(job: FinetuneJob, central: bool, label: str) -> dict[str, Any]:
    counter = _ClampCounter()
    logger = logging.getLogger("secagg.fl_core.finetune")
    logger.addHandler(counter)
    t0 = time.perf_counter()
    try:
        doc = run_job(job, centralized=central, label=label, eval_before=False)
    finally:
        logger.removeHandler(counter)
    doc.pop("_prep")
    return {"accuracy_after": doc["accuracy_after"], "macro_f1_after": doc["macro_f1_after"],
            "wall_s": round(time.perf_counter() - t0, 1), "dim": doc["dim"],
            "local_trainings_per_round": doc["local_trainings_per_round"],
            "clamp_warnings": counter.count,
            "loss_after": doc["evaluations"][-1]["loss"], "job": doc["job"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--ref-seeds", type=int, nargs="*", default=[0])
    parser.add_argument("--only", default=None, help="rows whose name contains this")
    parser.add_argument("--tiny", action="store_true", help="seconds-long smoke size")
    parser.add_argument("--pilot", action="store_true", help="the pilot configurations")
    parser.add_argument("--append", action="store_true",
                        help="keep the runs already in the JSON (more seeds or rows)")
    args = parser.parse_args(argv)
    size = SIZE | (TINY if args.tiny else {})
    if args.pilot:
        plan = [(f"pilot_{name}", cfg | {"adapter": "lora"}, False, 0) for name, cfg in PILOT]
        name, title = NAME + "_pilot", "pilot: LoRA, federated, seed 0"
    else:
        chosen = [r for r in rows() if args.only is None or args.only in r[0]]
        # the chosen rows seed by seed first, the reference rows last
        plan = [(row, cfg, central, seed) for is_ref in (False, True)
                for seed in (args.ref_seeds if is_ref else args.seeds)
                for row, cfg, central, ref in chosen if ref is is_ref]
        name, title = NAME, "federated vs centralized, non-private, the same procedure"
    previous = load_result(name) if args.append else None
    runs: list[dict[str, Any]] = list(previous["runs"]) if previous else []
    for row, cfg, central, seed in plan:
        job = FinetuneJob(**(size | cfg | {"seed": seed}))
        res = {"row": row, "seed": seed, "centralized": central} | _run(job, central, row)
        runs.append(res)
        print({k: v for k, v in res.items() if k != "job"}, flush=True)
        head = {"experiment": title, "size": size} | (
            {} if args.pilot else {"chosen": CHOSEN, "today": TODAY})
        save(name, head | {"runs": runs, "summary": summarize(runs)})


if __name__ == "__main__":
    main()
