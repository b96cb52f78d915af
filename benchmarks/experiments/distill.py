"""Federated knowledge distillation vs FedAvg of LoRA at the same epsilon and the same bytes.

In process, with the objects the runtime uses (``secagg run`` could not carry distillation at
this size on this machine: a client busy more than about 14 s in a round, here 4 clients
sharing 2 cores, is declared gone by the server, see the report): the real MiniLM and TREC
(the default task: 4 parties, Dirichlet 0.5, held-out 500), the real client and server tasks,
the real SecAgg+ round (:func:`secagg.protocols.harness.run_round`, passive, every message
encoded: its bytes are the wire bytes), record-level DP with local noise at epsilon 8 and one
explicit delta for every row:

- ``distill``: :class:`secagg.fl_core.finetune.distill.DistillClientTask` per party (its own
  model, alive across rounds) and
  :class:`secagg.fl_core.finetune.distill_server.DistillServerTask`;
- ``fedavg_same_bytes``: FedAvg of LoRA (``objective="finetune"``, the same ``local_steps``
  of local DP-SGD per round; :func:`benchmarks.experiments.sim.run_job`), its rounds chosen so
  its upload per client over the whole run is closest to distillation's (at least 1 round;
  both totals are printed and saved);
- ``fedavg_same_rounds``: the same FedAvg for distillation's number of rounds (more bytes).

Diagnostic (never in the training path): the accuracy of each round's consensus argmax against
the transfer set's hidden labels.

Run: ``python -m benchmarks.experiments.distill --seeds 0 1 2`` (heavy: under ``flock
/tmp/secagg-cpu.lock``); one process per seed (``--seeds 1``) writes ``distill_seed1.json``,
``--merge --seeds 0 1 2`` combines them into ``benchmarks/results/experiments/distill.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict
from typing import Any

import numpy as np

from benchmarks.experiments.sim import results_dir, run_job, save
from secagg.fl_core.finetune.app import prepare
from secagg.fl_core.finetune.distill import DistillClientTask, DistillData
from secagg.fl_core.finetune.distill_server import DistillServerTask
from secagg.fl_core.finetune.job import FinetuneJob
from secagg.fl_core.finetune.party import build_job_model
from secagg.fl_core.runtime.driver import RoundOutcome
from secagg.protocols.config import SecAggConfig
from secagg.protocols.harness import run_round

__all__ = ["main"]

DELTA = 1e-4  # one delta for every row (the defaults 1/N^1.1 differ: distill's N excludes T)
ROWS = ("distill", "fedavg_same_bytes", "fedavg_same_rounds")


def _job(args: argparse.Namespace, seed: int, **kw: Any) -> FinetuneJob:
    return FinetuneJob(seed=seed, noise="local", dp="record", epsilon=args.epsilon, delta=DELTA,
                       local_steps=args.local_steps, records_per_round=args.records_per_round,
                       eval_size=args.eval_size, num_clients=args.clients, **kw)


def run_distill(job: FinetuneJob) -> dict[str, Any]:
    """Distillation in process: the real client and server tasks, the real SecAgg+ round."""
    t0 = time.perf_counter()
    prep = prepare(job, protocol="secagg+", n=job.num_clients, active=False)
    assert isinstance(prep.data, DistillData)
    server = DistillServerTask(job, prep.model, prep.data, prep.dp, cohort=job.num_clients)
    state = server.initial_state(prep.dim)
    clients = {c: DistillClientTask(job, c, build_job_model(job, prep.data), prep.data.client(c),
                                    prep.data.transfer_texts, prep.dp)
               for c in range(1, job.num_clients + 1)}
    config = SecAggConfig(**prep.config_args)
    hidden = prep.data.train.labels[prep.data.transfer_indices]  # diagnostics only
    rounds: list[dict[str, Any]] = []
    for r in range(1, job.rounds + 1):
        t_round = time.perf_counter()
        server.begin_round(r)
        inputs = {c: task(r, state) for c, task in clients.items()}
        train_s = time.perf_counter() - t_round
        rr = run_round(config, inputs, round_id=r)
        out = RoundOutcome(r, tuple(clients), aggregate=rr.aggregate,
                           weight_total=rr.weight_total, included=rr.included)
        new = server.apply(state, out)
        if new is None:
            raise RuntimeError(f"round {r}: the server refused the aggregate")
        state = new
        rec = {"round": r, "bytes_up_per_client": rr.bytes_up_per_client,
               "train_s_per_client": round(train_s / len(clients), 3),
               "seconds": round(time.perf_counter() - t_round, 2),
               "consensus_accuracy": round(float(np.mean(
                   state.reshape(-1, server.k).argmax(axis=1) == hidden)), 4),
               "student_kl": server.student_losses[-1]} | server.report(out)
        rounds.append(rec)
        print(json.dumps({"seed": job.seed, "distill": rec}), flush=True)
    server.evaluate(state, job.rounds)
    first, last = server.evals[0], server.evals[-1]
    return {"job": asdict(job), "dim": prep.dim, "dp": prep.dp.describe(),
            "protocol": prep.config_args, "accuracy_before": first["accuracy"],
            "accuracy_after": last["accuracy"], "macro_f1_after": last["macro_f1"],
            "evaluations": server.evals, "epsilon": rounds[-1]["epsilon"],
            "delta": prep.dp.delta, "bytes_up_per_client_per_round": float(np.mean(
                [x["bytes_up_per_client"] for x in rounds])),
            "consensus_accuracy": rounds[-1]["consensus_accuracy"],
            "distill": {"transfer_size": len(prep.data.transfer_texts), "classes": server.k,
                        "student_kl_per_round": server.student_losses},
            "wall_s": round(time.perf_counter() - t0, 1), "rounds": rounds}


def _row(doc: dict[str, Any]) -> dict[str, Any]:
    rounds = doc["job"]["rounds"]
    up = doc["bytes_up_per_client_per_round"]
    return {"rounds": rounds, "accuracy_before": doc["accuracy_before"],
            "accuracy_after": doc["accuracy_after"], "macro_f1_after": doc["macro_f1_after"],
            "epsilon": doc["epsilon"], "delta": doc["delta"], "dim": doc["dim"],
            "bytes_up_per_client_per_round": up,
            "bytes_up_per_client_total": round(up * rounds), "wall_s": doc["wall_s"],
            "noise_multiplier": doc["dp"]["noise_multiplier"]}


def run_seed(args: argparse.Namespace, seed: int) -> dict[str, dict[str, Any]]:
    """The three rows of one seed (FedAvg at distillation's rounds first: its bytes per round
    and distillation's total fix the same-bytes FedAvg's rounds)."""
    rows: dict[str, dict[str, Any]] = {}
    wide = run_job(_job(args, seed, rounds=args.rounds))
    wide.pop("_prep", None)
    rows["fedavg_same_rounds"] = _row(wide)
    print(json.dumps({"seed": seed, "fedavg_same_rounds": rows["fedavg_same_rounds"]}),
          flush=True)
    dist = run_distill(_job(args, seed, rounds=args.rounds, objective="distill",
                            transfer_size=args.transfer_size, distill_steps=args.distill_steps))
    rows["distill"] = _row(dist) | {"distill": dist["distill"],
                                    "consensus_accuracy": dist["consensus_accuracy"],
                                    "per_round": dist["rounds"]}
    print(json.dumps({"seed": seed, "distill": _row(dist)}), flush=True)
    budget = rows["distill"]["bytes_up_per_client_total"]
    per_round = rows["fedavg_same_rounds"]["bytes_up_per_client_per_round"]
    same = max(1, round(budget / per_round))
    narrow = run_job(_job(args, seed, rounds=same))
    narrow.pop("_prep", None)
    rows["fedavg_same_bytes"] = _row(narrow) | {"rounds_exact_bytes": round(budget / per_round, 3)}
    print(json.dumps({"seed": seed, "fedavg_same_bytes": rows["fedavg_same_bytes"]}), flush=True)
    print(f"seed {seed}: upload per client, whole run: distill {budget / 1e3:.1f} kB "
          f"({args.rounds} rounds), FedAvg same bytes "
          f"{rows['fedavg_same_bytes']['bytes_up_per_client_total'] / 1e3:.1f} kB "
          f"({same} rounds; {budget / per_round:.2f} would match exactly), FedAvg same rounds "
          f"{rows['fedavg_same_rounds']['bytes_up_per_client_total'] / 1e3:.1f} kB", flush=True)
    return rows


def _stats(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=float)
    se = float(arr.std(ddof=1) / math.sqrt(len(arr))) if len(arr) > 1 else 0.0
    return {"mean": round(float(arr.mean()), 4), "se": round(se, 4)}


def _col(rows: list[dict[str, Any]], key: str) -> list[float]:
    return [float(r[key]) for r in rows]


def summarise(per_seed: dict[int, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Mean +- standard error over seeds for each row, and paired differences."""
    seeds = sorted(per_seed)
    out: dict[str, Any] = {}
    for row in ROWS:
        have = [s for s in seeds if row in per_seed[s]]
        if not have:
            continue
        rows = [per_seed[s][row] for s in have]
        out[row] = {"seeds": have, "accuracy": _stats(_col(rows, "accuracy_after")),
                    "per_seed": _col(rows, "accuracy_after"),
                    "macro_f1": _stats(_col(rows, "macro_f1_after")),
                    "rounds": [r["rounds"] for r in rows],
                    "bytes_up_per_client_total": _stats(_col(rows, "bytes_up_per_client_total")),
                    "epsilon": _stats(_col(rows, "epsilon"))}
        if row == "distill":
            out[row]["consensus_accuracy"] = _stats(_col(rows, "consensus_accuracy"))
    for other in ("fedavg_same_bytes", "fedavg_same_rounds"):
        paired = [s for s in seeds if "distill" in per_seed[s] and other in per_seed[s]]
        if paired:
            diff = [per_seed[s]["distill"]["accuracy_after"] - per_seed[s][other]
                    ["accuracy_after"] for s in paired]
            out[f"distill_minus_{other}"] = _stats(diff) | {"per_seed": diff}
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    ap.add_argument("--rounds", type=int, default=14, help="distillation's rounds")
    ap.add_argument("--transfer-size", type=int, default=1000)
    ap.add_argument("--distill-steps", type=int, default=10)
    ap.add_argument("--local-steps", type=int, default=1)
    ap.add_argument("--records-per-round", type=int, default=512)
    ap.add_argument("--eval-size", type=int, default=500)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--epsilon", type=float, default=8.0)
    ap.add_argument("--name", default="distill")
    ap.add_argument("--merge", action="store_true",
                    help="only combine the <name>_seed<k>.json files of --seeds")
    args = ap.parse_args(argv)
    per_seed: dict[int, dict[str, dict[str, Any]]] = {}
    settings = {k: v for k, v in vars(args).items() if k not in ("merge", "seeds")}
    for seed in args.seeds:
        if args.merge:
            doc = json.loads((results_dir() / f"{args.name}_seed{seed}.json").read_text())
            per_seed[seed] = doc["rows"]
            continue
        per_seed[seed] = run_seed(args, seed)
        save(f"{args.name}_seed{seed}", {"seed": seed, "settings": settings,
                                         "rows": per_seed[seed]})
    if not args.merge and len(args.seeds) == 1:
        return
    out = {"experiment": "federated distillation vs FedAvg LoRA, same epsilon, same bytes",
           "settings": settings, "delta": DELTA, "seeds": args.seeds, "per_seed": per_seed,
           "summary": summarise(per_seed)}
    path = save(args.name, out)
    print(json.dumps(out["summary"], indent=1))
    print(f"written {path}")


if __name__ == "__main__":
    main()
