"""Generative: SmolLM2-135M-Instruct + LoRA instruction-tuned on the ChatterBot corpus.

Record-level DP at epsilon 8 with distributed noise (the default), against the same procedure
with a negligible noise multiplier (1e-3: same Poisson sampling, clipping and server Adam step;
only the noise differs) and against local noise (each party adds the full ``sigma*C`` to its
own clipped-gradient sum, one local step, the server steps alike: DP-LoRA's placement).

Every run is ``run_job(FinetuneJob(model="smollm2", data="chatterbot", ...))``: the real
client tasks, the real SecAgg+ round and the real server task, in process (see ``sim.py``).
The loss is on the response tokens only (``secagg.models.batching.instruction_batch``), so the
held-out perplexity is per response token. Beside it, a cheap task metric from one more
teacher-forced pass: the share of response tokens the model's argmax predicts (token accuracy)
and the share of responses predicted entirely (exact match, teacher-forced). Greedy generations
for the first held-out prompts before and after. The JSON is rewritten after every run.

Run: ``python -m benchmarks.experiments.generative --seeds 0 1 2`` (``--only distributed``,
``--tiny`` smoke size, ``--lr`` / ``--rounds`` / ``--records`` for a pilot, ``--name`` for
another JSON file).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import math
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.experiments.common import mean_se
from benchmarks.experiments.sim import results_dir, run_job, save
from secagg.fl_core.finetune.app import Prepared
from secagg.fl_core.finetune.generate import sample_generations
from secagg.fl_core.finetune.job import FinetuneJob
from secagg.fl_core.finetune.party import build_job_model, load_job_data
from secagg.models import AdaptedModel, Dataset
from secagg.models.batching import IGNORE_INDEX, make_batch

NAME = "generative"
REPO = Path(__file__).resolve().parents[2]
GEN_TOKENS = 24  # greedy tokens per sample generation
LR = 5e-3  # server Adam, all rows (chosen by the pilot on the non-private row, see README)


@dataclass(frozen=True)
class Size:
    """One run's size: ``full`` is what the README reports, ``tiny`` the smoke test."""

    rounds: int
    records_per_round: int
    max_length: int
    eval_size: int
    generations: int


FULL = Size(rounds=10, records_per_round=40, max_length=64, eval_size=500, generations=1)
TINY = Size(rounds=1, records_per_round=4, max_length=24, eval_size=4, generations=1)

#: (row, job overrides): the three rows of the table
ROWS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("nonprivate", {"epsilon": None, "noise_multiplier": 1e-3}),
    ("distributed_eps8", {"epsilon": 8.0}),
    ("local_eps8", {"epsilon": 8.0, "noise": "local", "local_steps": 1}),
)


def base_job(size: Size, *, seed: int, lr: float) -> FinetuneJob:
    """SmolLM2 + LoRA (r 8 on q/k/v/o), ChatterBot, 4 IID parties, clip 1, server Adam."""
    return FinetuneJob(model="smollm2", data="chatterbot", adapter="lora", num_clients=4,
                       partition="iid", rounds=size.rounds, seed=seed,
                       eval_size=size.eval_size, max_length=size.max_length, lr=lr,
                       records_per_round=size.records_per_round, clip=1.0,
                       generations=size.generations)


@torch.no_grad()
def token_metrics(model: AdaptedModel, data: Dataset, *, max_length: int,
                  batch_size: int = 16) -> dict[str, float]:
    """Teacher-forced response-token metrics: loss, perplexity, token accuracy, exact match."""
    net = model.model
    net.eval()
    loss_sum, tokens, correct, exact = 0.0, 0, 0, 0
    for start in range(0, len(data), batch_size):
        idx = np.arange(start, min(start + batch_size, len(data)), dtype=np.int64)
        batch = make_batch(model.tokenizer, data, idx, max_length=max_length)
        labels = batch.pop("labels").to(model.device)
        logits = net(**{k: v.to(model.device) for k, v in batch.items()}).logits.float()
        logits, target = logits[:, -labels.shape[1]:][:, :-1], labels[:, 1:]
        mask = target != IGNORE_INDEX
        loss_sum += float(torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
            ignore_index=IGNORE_INDEX, reduction="sum"))
        hit = (logits.argmax(dim=-1) == target) & mask
        tokens += int(mask.sum())
        correct += int(hit.sum())
        exact += int(((hit | ~mask).all(dim=1)).sum())
    loss = loss_sum / max(tokens, 1)
    return {"loss": round(loss, 5), "perplexity": round(math.exp(min(loss, 700.0)), 4),
            "token_accuracy": round(correct / max(tokens, 1), 5),
            "exact_match": round(exact / len(data), 5), "tokens": tokens}


def measure_before(job: FinetuneJob, size: Size) -> dict[str, Any]:
    """Token metrics and greedy generations of the initial weights (every party builds them
    alike from ``job.seed``; the same for every row of a seed), on a model of its own, so the
    run itself goes through ``sim.run_job``'s own client loop unchanged."""
    t0 = time.perf_counter()
    data = load_job_data(job)
    model = build_job_model(job, data)
    doc: dict[str, Any] = token_metrics(model, data.test, max_length=size.max_length)
    doc["generations"] = sample_generations(model, data.test, size.generations,
                                            max_new_tokens=GEN_TOKENS)
    doc["seconds"] = round(time.perf_counter() - t0, 1)
    return doc


def one_run(row: str, job: FinetuneJob, size: Size, before: dict[str, Any]) -> dict[str, Any]:
    """Run ``job``; return the row's record (perplexities, token metrics, sigma, epsilon).
    ``before``: the initial weights' token metrics and generations (filled in when empty)."""
    if not before:
        before.update(measure_before(job, size))
    t0 = time.perf_counter()
    # the server's "before" evaluation is measure_before's perplexity (the same pass): skipped
    # a reported row: it reads the test set once (benchmarks.experiments.splits)
    doc = run_job(job, label=f"{row}-seed{job.seed}", eval_before=False, split="test",
                  on_round=lambda rec: print(row, job.seed, rec, flush=True))
    prep: Prepared = doc.pop("_prep")
    run_s = time.perf_counter() - t0
    t1 = time.perf_counter()  # run_job left the final weights in prep.model
    after = token_metrics(prep.model, prep.data.test, max_length=size.max_length)
    gens = sample_generations(prep.model, prep.data.test, size.generations,
                              max_new_tokens=GEN_TOKENS)
    evals = doc["evaluations"]
    dp = doc["dp"]
    train = [r["train_s_total"] for r in doc["rounds"]]
    return {
        "row": row, "seed": job.seed, "lr": job.lr,
        "perplexity_before": before["perplexity"],
        "perplexity_after": evals[-1].get("perplexity"),
        "loss_before": before["loss"], "loss_after": evals[-1]["loss"],
        "token_accuracy_before": before.get("token_accuracy"),
        "token_accuracy_after": after["token_accuracy"],
        "exact_match_before": before.get("exact_match"), "exact_match_after": after["exact_match"],
        "check_perplexity_after": after["perplexity"],
        "epsilon": doc["epsilon"], "delta": doc["delta"],
        "sigma": dp.get("noise_multiplier"), "sigma_effective": dp.get(
            "effective_noise_multiplier"), "sample_rate": dp.get("sample_rate"),
        "noise": dp.get("noise"), "threshold": dp.get("threshold"),
        "exact_noise": dp.get("exact_noise"),
        "held_out": evals[-1]["examples"], "dim": doc["dim"],
        "wall_s": round(run_s, 1),
        "train_s_total": round(sum(train), 1),
        "seconds_per_example": _per_example(doc, prep),
        "extra_metrics_s": round(time.perf_counter() - t1, 1),
        "before_metrics_s": before["seconds"],
        "generations": [{"prompt": b["prompt"], "reference": b["reference"],
                         "before": b["output"], "after": a["output"]}
                        for b, a in zip(before.get("generations", []), gens, strict=True)],
        "rounds": doc["rounds"],
    }


def _per_example(doc: dict[str, Any], prep: Prepared) -> float:
    """Training seconds per sampled record (expected batch: the public ``q N``)."""
    rounds = doc["rounds"]
    rate = float(doc["dp"].get("sample_rate") or 0.0)
    expected = rate * sum(prep.data.sizes) * len(rounds)
    train = sum(r["train_s_total"] for r in rounds)
    return round(train / expected, 3) if expected else math.nan


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per row: perplexity and token metrics after, epsilon, sigma, wall (mean, s.e.)."""
    out: dict[str, Any] = {}
    for row, _ in ROWS:
        mine = [r for r in runs if r["row"] == row]
        if mine:
            out[row] = {key: mean_se([float(r[key]) for r in mine if r[key] is not None])
                        for key in ("perplexity_before", "perplexity_after",
                                    "token_accuracy_before", "token_accuracy_after",
                                    "exact_match_after", "epsilon", "sigma", "wall_s")}
    return out


def code_state() -> dict[str, Any]:
    """The commit and whether the noise code had uncommitted changes when this ran."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                                  check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return "unknown"
    noise_paths = ["fl_core/dp", "protocols", "fl_core/finetune"]
    return {"commit": git("rev-parse", "HEAD"),
            "uncommitted_noise_code": git("status", "--porcelain", "--", *noise_paths)
            .splitlines()}


def merged_save(name: str, doc: dict[str, Any], mine: list[dict[str, Any]]) -> None:
    """Save ``doc`` with ``mine`` plus the runs of other invocations already in the file that
    have the same size and lr (several processes may fill one table; a run of the same row and
    seed is replaced). Serialised by a lock file outside the repository."""
    path = results_dir() / f"{name}.json"
    with (Path(tempfile.gettempdir()) / f"secagg-experiments-{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            old = {}
        same = old.get("size") == doc["size"] and old.get("lr") == doc["lr"]
        keys = {(r["row"], r["seed"]) for r in mine}
        runs = [r for r in old.get("runs", []) if same and (r["row"], r["seed"]) not in keys]
        runs = sorted(runs + mine, key=lambda r: (r["seed"], [n for n, _ in ROWS].index(r["row"])))
        save(name, doc | {"runs": runs, "summary": summarize(runs)})


def table(doc: dict[str, Any]) -> str:
    """The README's markdown table from a saved JSON document."""
    def ms(stats: dict[str, Any], digits: int) -> str:
        se = "" if stats["se"] is None else f" +- {stats['se']:.{digits}f}"
        return f"{stats['mean']:.{digits}f}{se}"
    lines = ["| row | seeds | perplexity before | perplexity after | per seed | token accuracy "
             "before -> after | epsilon | sigma | wall per run (s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row, _ in ROWS:
        runs = [r for r in doc["runs"] if r["row"] == row]
        if not runs:
            continue
        st = summarize(runs)[row]
        eps = st["epsilon"]["mean"]
        per_seed = ", ".join(f"{r['perplexity_after']:.2f}" for r in runs)
        lines.append(
            f"| {row} | {' '.join(str(r['seed']) for r in runs)} "
            f"| {ms(st['perplexity_before'], 2)} | **{ms(st['perplexity_after'], 2)}** "
            f"| {per_seed} "
            f"| {ms(st['token_accuracy_before'], 3)} -> {ms(st['token_accuracy_after'], 3)} "
            f"| {'inf (sigma 1e-3)' if eps > 1e3 else f'{eps:.2f}'} "
            f"| {st['sigma']['mean']:.4g} | {st['wall_s']['mean']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--only", default=None, help="run only the rows whose name contains this")
    ap.add_argument("--tiny", action="store_true", help="minimal sizes (smoke test)")
    ap.add_argument("--lr", type=float, default=LR)
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--records", type=int, default=None, help="records_per_round")
    ap.add_argument("--name", default=NAME, help="JSON file name (a pilot writes elsewhere)")
    ap.add_argument("--table", action="store_true", help="print the saved table and exit")
    args = ap.parse_args(argv)
    if args.table:
        print(table(json.loads((results_dir() / f"{args.name}.json").read_text())))
        return
    torch.set_num_threads(1)
    size = TINY if args.tiny else FULL
    if args.rounds is not None or args.records is not None:
        size = Size(args.rounds or size.rounds, args.records or size.records_per_round,
                    size.max_length, size.eval_size, size.generations)
    rows = [r for r in ROWS if args.only is None or args.only in r[0]]
    runs: list[dict[str, Any]] = []
    for seed in args.seeds:
        before: dict[str, Any] = {}
        for row, overrides in rows:
            job = replace(base_job(size, seed=seed, lr=args.lr), **overrides)
            state = code_state()  # per run: the noise code may change between runs
            runs.append(one_run(row, job, size, before) | {"code": state})
            print({k: v for k, v in runs[-1].items() if k != "rounds"}, flush=True)
            merged_save(args.name, {
                "experiment": "SmolLM2-135M + LoRA instruction tuning on ChatterBot: "
                              "distributed vs local DP vs non-private",
                "size": asdict(size), "lr": args.lr, "code": state,
                "job": asdict(base_job(size, seed=seed, lr=args.lr)), "rows": dict(ROWS)}, runs)


if __name__ == "__main__":
    main()
