"""What cohort choice costs a victim, and what the defence costs the round (issue 21).

A server that picks each cohort of ``n`` out of ``N`` allowlisted clients, ``gamma N`` of them
its sybils, can put every sybil into the cohort it picks. For each ``(N, n)`` this prints, at
``gamma = 0.05``:

- the parameters sized for ``ceil(gamma n)`` corrupted (before: the cohort was treated as a
  random sample) and for ``ceil(gamma N)`` (``SecAggConfig(population=N)``);
- per round, with the graph drawn from the committed nonces (uniformly random whatever the
  server does), the probability that one victim has ``t`` or more sybil neighbours, that it
  breaks condition 2 (``C >= 2t - k - 1``), and the union bound over every honest client
  (:func:`secagg.protocols.params.cohort_choice_risk`);
- the cost: masks each client expands (``k + 1`` vectors), share bytes each client sends
  and receives, the reveal stage's bytes per client, and (``--measure``) the compute of one
  in-process round at both parameter sets, side by side.

Usage: ``python -m benchmarks.cohort_choice [--measure] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from secagg.protocols import SecAggConfig, run_round
from secagg.protocols.messages import SHARE_CIPHERTEXT_BYTES
from secagg.protocols.params import cohort_choice_risk

SETTINGS = ((100, 20), (1000, 100), (10_000, 1000))
GAMMA = 0.05
_PAIR = 4 + 32  # one (id, commitment) or (id, nonce) entry on the wire


def row(population: int, n: int, *, sized: bool) -> dict[str, Any]:
    """The parameters of one setting and what a cohort-packing server gets per round."""
    cfg = SecAggConfig(protocol="secagg+", n=n, active=True, corruption_rate=GAMMA,
                       population=population if sized else None)
    placed = min(math.ceil(GAMMA * population), n - 1)  # the sybils the server puts in
    t_or_more, split, any_victim = cohort_choice_risk(n, cfg.k, cfg.threshold, placed)
    return {
        "N": population, "n": n, "sized_for": "population" if sized else "cohort",
        "corrupt_assumed": cfg.corrupt, "sybils_in_cohort": placed, "k": cfg.k,
        "t": cfg.threshold, "dropouts_tolerated": cfg.k + 1 - cfg.threshold,
        "p_victim_t_or_more": t_or_more, "p_victim_split": split,
        "p_any_victim_split": any_victim,
        "log2_any_victim": math.log2(any_victim) if any_victim > 0 else float("-inf"),
        "masks_per_client": cfg.k + 1,
        "share_bytes_per_client_each_way": cfg.k * SHARE_CIPHERTEXT_BYTES,
        "reveal_stage_bytes_per_client": {"up": 32 + 32, "down": 2 * n * _PAIR},
    }


def measure(n: int, population: int, dim: int) -> dict[str, float]:
    """Compute of one in-process round (all parties) at both parameter sets, side by side."""
    rng = np.random.default_rng(0)
    xs = {i: rng.uniform(-1, 1, dim) for i in range(n)}
    out = {}
    for sized in (False, True):
        cfg = SecAggConfig(protocol="secagg+", n=n, active=True, corruption_rate=GAMMA,
                           population=population if sized else None)
        t0 = time.perf_counter()
        r = run_round(cfg, xs)
        wall = time.perf_counter() - t0
        key = "population" if sized else "cohort"
        out[f"{key}_total_compute_s"] = r.total_compute_s
        out[f"{key}_server_s"] = r.server_s
        out[f"{key}_client_s_mean"] = r.client_s_mean
        out[f"{key}_wall_s"] = wall
    out["ratio_total_compute"] = out["population_total_compute_s"] / out["cohort_total_compute_s"]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--measure", action="store_true",
                    help="also time one in-process round per setting up to n=100 (dim 10^5)")
    ap.add_argument("--dim", type=int, default=100_000)
    ap.add_argument("--json", default="benchmarks/results/cohort_choice.json")
    ns = ap.parse_args(argv)
    rows = [row(N, n, sized=s) for N, n in SETTINGS for s in (False, True)]
    print(f"{'N':>6} {'n':>5} {'sized for':>10} {'c':>4} {'k':>4} {'t':>4} "
          f"{'P[victim t+]':>13} {'P[victim split]':>15} {'log2 P[any]':>11} {'masks':>5}")
    for r in rows:
        print(f"{r['N']:>6} {r['n']:>5} {r['sized_for']:>10} {r['corrupt_assumed']:>4} "
              f"{r['k']:>4} {r['t']:>4} {r['p_victim_t_or_more']:>13.3g} "
              f"{r['p_victim_split']:>15.3g} {r['log2_any_victim']:>11.1f} "
              f"{r['masks_per_client']:>5}")
    doc: dict[str, Any] = {"gamma": GAMMA, "rows": rows}
    if ns.measure:
        doc["measured"] = {}
        for N, n in SETTINGS:
            if n > 100:
                continue
            m = measure(n, N, ns.dim)
            doc["measured"][f"N{N}_n{n}_d{ns.dim}"] = m
            print(f"measured N={N} n={n} dim={ns.dim}: all parties "
                  f"{m['cohort_total_compute_s']:.2f} s (sized for the cohort) vs "
                  f"{m['population_total_compute_s']:.2f} s (sized for the population): "
                  f"{m['ratio_total_compute']:.2f}x")
    path = Path(ns.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
