"""Experiment 3: client-level DP with 200 simulated parties, cohort 20 per round (rate 0.1).

DP-FedAvg: each sampled party runs ``local_steps`` SGD steps (batched over the cohort with
:func:`secagg.models.client_batch.client_updates`, one ``vmap`` forward/backward per step), clips
its update to C and adds its noise exactly as
:class:`secagg.fl_core.finetune.client_task.FinetuneClientTask` does at client level (a discrete
Gaussian share for distributed noise, the full Gaussian for local); the sum goes through the real
SecAgg+ round; :class:`secagg.fl_core.finetune.server_task.FinetuneServerTask` steps and accounts. 5
rounds, one local SGD step of batch 8 per party (compute budget). Rows: epsilon 8 distributed,
epsilon 8 local, and no DP (epsilon inf: the same local SGD, no clipping or noise). Data: IID over
the 200 parties (Dirichlet(0.5) over 200 parties can leave a party with no records, which the
batched trainer rejects).
"""

from __future__ import annotations

import sys
from dataclasses import replace
from typing import Any

import numpy as np
import numpy.typing as npt

from benchmarks.experiments.common import base_job, limited, parse_size, progress, strip
from benchmarks.experiments.plots import plot_exp3
from benchmarks.experiments.sim import Contribute, run_job, save
from secagg.fl_core.dp import (
    NoiseSource,
    Placement,
    add_distributed_noise,
    add_local_noise,
    clip_l2,
)
from secagg.fl_core.finetune.app import Prepared
from secagg.models.client_batch import client_updates

Vector = npt.NDArray[np.float64]
PARTIES, COHORT = 200, 20
SGD_LR, CLIP = 0.5, 0.5
ROUNDS = 5  # compute budget: 5 rounds of one local step of batch 8 per party


def batched(source: NoiseSource) -> Contribute:
    """The cohort's contributions from one batched local-training call."""
    def contribute(prep: Prepared, round_id: int, cohort: list[int], state: Vector
                   ) -> dict[int, Vector]:
        job, cfg = prep.job, prep.dp.config
        prep.model.set_vector(state)
        rows = client_updates(prep.model, [prep.data.client(c) for c in cohort],
                              local_steps=job.local_steps, batch_size=job.batch_size,
                              learning_rate=job.lr, seed=job.seed * 1_000_003 + round_id * 1000,
                              max_length=job.max_length)
        out: dict[int, Vector] = {}
        for cid, row in zip(cohort, rows, strict=True):
            update = row.astype(np.float64)
            if cfg is not None:
                unit = replace(cfg, clip=1.0)
                scaled = clip_l2(update, cfg.clip)[0] / cfg.clip
                update = (add_distributed_noise(scaled, unit, source)
                          if cfg.placement is Placement.DISTRIBUTED
                          else add_local_noise(scaled, unit, source))
            bound = prep.dp.protocol_clip
            out[cid] = np.clip(update, -bound, bound)
        return out
    return contribute


def runs() -> list[tuple[str, dict[str, Any]]]:
    """(name, job overrides) of every row."""
    return [
        ("exp3_client_distributed_eps8", {"dp": "client", "epsilon": 8.0}),
        ("exp3_client_local_eps8", {"dp": "client", "epsilon": 8.0, "noise": "local"}),
        ("exp3_client_nodp", {"dp": "none", "epsilon": None}),
    ]


def main(argv: list[str] | None = None) -> None:
    """Run every row (JSON written as each ends), then plot."""
    size, args = parse_size(argv, __doc__ or "")
    parties, cohort = (8, 4) if size.tiny else (PARTIES, COHORT)
    for name, kw in limited(runs(), args):
        job = base_job(size, num_clients=parties, partition="iid", lr=SGD_LR, clip=CLIP,
                       rounds=min(size.rounds, ROUNDS), local_steps=1, batch_size=8, **kw)
        doc = run_job(job, cohort=cohort, contribute=batched(NoiseSource()), label=name,
                      eval_before=False, on_round=progress(name))
        doc["batched_local_training"] = "secagg.models.client_batch.client_updates (SGD)"
        save(name, strip(doc))
        print(name, "accuracy", doc["accuracy_after"], flush=True)
    plot_exp3()


if __name__ == "__main__":
    main(sys.argv[1:])
