"""The default job with BERT's pooler head vs a head on mean-pooled token features.

Same procedure for both: ``run_job(FinetuneJob(seed=s))`` (the `make run` defaults: MiniLM +
LoRA, TREC, 4 clients, record-level distributed DP at epsilon 8, 20 rounds, server Adam 0.02),
only the head's input differs: ``Pooling.POOLER`` (transformers' BertForSequenceClassification)
or ``Pooling.MEAN`` (the model's own, now the default). The job has no pooling field, so the
choice is made by wrapping the ``build_model`` call of ``build_job_model``. Runs alternate
pooler/mean per seed and the JSON is rewritten after every run.

Run: ``python -m benchmarks.experiments.mean_pooling --seeds 0 1 2``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import time
from collections.abc import Iterator
from typing import Any

import secagg.fl_core.finetune.party as party
from benchmarks.experiments.common import mean_se
from benchmarks.experiments.sim import run_job, save
from secagg.fl_core.finetune.job import FinetuneJob
from secagg.models import Pooling, build_model

NAME = "mean_pooling"


@contextlib.contextmanager
def _pooling(pooling: Pooling) -> Iterator[None]:
    """Make the job build its model with ``pooling``."""
    old = party.build_model
    party.build_model = functools.partial(build_model, pooling=pooling)  # type: ignore[assignment]
    try:
        yield
    finally:
        party.build_model = old  # type: ignore[assignment]


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per pooling: accuracy, macro-F1 and wall seconds as mean and standard error."""
    out: dict[str, Any] = {}
    for pooling in Pooling:
        mine = [r for r in runs if r["pooling"] == pooling.value]
        out[pooling.value] = {
            key: mean_se([float(r[key]) for r in mine])
            for key in ("accuracy_after", "macro_f1_after", "wall_s")
        }
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args(argv)
    runs: list[dict[str, Any]] = []
    for seed in args.seeds:
        for pooling in (Pooling.POOLER, Pooling.MEAN):
            job = FinetuneJob(seed=seed) if args.rounds is None else FinetuneJob(
                seed=seed, rounds=args.rounds)
            t0 = time.perf_counter()
            with _pooling(pooling):
                doc = run_job(job, label=f"{pooling.value}-seed{seed}")
            prep = doc.pop("_prep")
            assert prep.model.pooling is pooling
            runs.append({
                "pooling": pooling.value, "seed": seed,
                "accuracy_before": doc["accuracy_before"],
                "accuracy_after": doc["accuracy_after"],
                "macro_f1_after": doc["macro_f1_after"], "epsilon": doc["epsilon"],
                "sigma": doc["dp"].get("noise_multiplier") if isinstance(doc["dp"], dict)
                else None,
                "wall_s": round(time.perf_counter() - t0, 1), "dim": doc["dim"],
                "spec_digest": prep.model.spec.digest,
            })
            print(runs[-1], flush=True)
            save(NAME, {"experiment": "pooler head vs mean-pooled head, default job",
                        "job": {k: v for k, v in doc["job"].items()},
                        "runs": runs, "summary": summarize(runs)})


if __name__ == "__main__":
    main()
