"""Experiment 2: record-level DP at epsilon 1, 2, 4, 8 (and inf), distributed vs local noise.

4 parties, Dirichlet(0.5), the same rounds and sampling rate for both placements:

- distributed: each party sums its Poisson-sampled, clipped per-example gradients and adds a
  discrete Gaussian share; the secure sum carries the full sigma*C; server Adam step.
- local (DP-LoRA): each party runs one local DP-SGD step (``local_steps`` 1, rate q, the full
  sigma*C noise on its own gradient sum; Adam) and sends its update; FedAvg mean.

epsilon = inf: noise multiplier 1e-3. Both placements use Adam at the same rate ``LR``.
The noise measurement runs one extra round with zero signal through the real secure sum, for
each placement: the std of the aggregate mean (in units of C) shows the sqrt(n) gap.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from typing import Any

import numpy as np

from benchmarks.experiments.common import (
    base_job,
    limited,
    parse_size,
    progress,
    strip,
)
from benchmarks.experiments.plots import plot_exp2
from benchmarks.experiments.sim import run_job, save
from secagg.fl_core.dp import NoiseSource, Placement, add_distributed_noise, add_local_noise
from secagg.fl_core.finetune.app import Prepared
from secagg.protocols.config import SecAggConfig
from secagg.protocols.harness import run_round

EPSILONS = (8.0, 1.0, 4.0, 2.0)  # run order: the targets' epsilon first
LR = 5e-3  # server Adam (distributed) and local Adam (local): the same rate for both


def measured_noise(prep: Prepared) -> dict[str, Any]:
    """Std of the noise in the aggregate mean (units of C) from one zero-signal round."""
    cfg = prep.dp.config
    assert cfg is not None
    unit = replace(cfg, clip=1.0)
    n = int(prep.config_args["n"])
    zero = np.zeros(prep.dim)
    source = NoiseSource()
    if cfg.placement is Placement.DISTRIBUTED:
        inputs = {c: add_distributed_noise(zero, unit, source) for c in range(1, n + 1)}
        args = prep.config_args
    else:
        inputs = {c: add_local_noise(zero, unit, source) for c in range(1, n + 1)}
        args = {**prep.config_args, "clip": float(np.ceil(8 * cfg.noise_multiplier)),
                "scale": 14}
    rr = run_round(SecAggConfig(**args), inputs, round_id=10_000)
    mean = rr.aggregate / n
    return {"noise_multiplier": cfg.noise_multiplier, "parties": n,
            "measured_mean_std": float(np.std(mean)),
            "measured_party_std": float(np.std(inputs[1])),
            # distributed: n shares of std sigma/sqrt(t) (t = threshold <= n, so that any t
            # survivors carry sigma); local: n full draws of std sigma
            "threshold": cfg.threshold,
            "expected_mean_std": float(cfg.noise_multiplier * np.sqrt(n / cfg.threshold) / n
                                       if cfg.placement is Placement.DISTRIBUTED
                                       else cfg.noise_multiplier / np.sqrt(n))}


def runs() -> list[tuple[str, dict[str, Any]]]:
    """(name, job overrides) of every run."""
    local = {"noise": "local", "local_steps": 1, "lr": LR}
    inf = {"epsilon": None, "noise_multiplier": 1e-3}
    rows: list[tuple[str, dict[str, Any]]] = [("exp2_distributed_epsinf", inf | {"lr": LR})]
    for eps in EPSILONS:
        rows.append((f"exp2_distributed_eps{eps:g}", {"epsilon": eps, "lr": LR}))
        rows.append((f"exp2_local_eps{eps:g}", {"epsilon": eps} | local))
    rows.append(("exp2_local_epsinf", inf | local))
    return rows


def main(argv: list[str] | None = None) -> None:
    """Run every row (JSON written as each ends), then plot."""
    size, args = parse_size(argv, __doc__ or "")
    for name, kw in limited(runs(), args):
        job = base_job(size, dp="record", **kw)
        doc = run_job(job, label=name, eval_before=False,
                      on_round=progress(name))
        doc["noise_measurement"] = measured_noise(doc["_prep"])
        save(name, strip(doc))
        print(name, "accuracy", doc["accuracy_after"], doc["noise_measurement"], flush=True)
    plot_exp2()


if __name__ == "__main__":
    main(sys.argv[1:])
