"""Shared settings of the experiment scripts: the base job, the size knobs, the CLI."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.experiments.sim import results_dir
from secagg.fl_core.finetune.job import FinetuneJob

__all__ = ["Size", "base_job", "limited", "load_result", "parse_size", "progress", "strip"]


@dataclass(frozen=True)
class Size:
    """How big a run is: ``full`` is what the README reports, ``tiny`` the smoke test."""

    rounds: int
    eval_size: int
    records_per_round: int
    local_steps: int
    batch_size: int
    max_length: int
    tiny: bool


FULL = Size(rounds=8, eval_size=200, records_per_round=96, local_steps=2, batch_size=16,
            max_length=48, tiny=False)
#: The default job's task and size (``secagg run``): TREC question types, 20 rounds of 512
#: expected records; what the headline table reports.
JOB = Size(rounds=20, eval_size=500, records_per_round=512, local_steps=1, batch_size=16,
           max_length=32, tiny=False)
TINY = Size(rounds=1, eval_size=16, records_per_round=8, local_steps=1, batch_size=4,
            max_length=16, tiny=True)


def parse_size(argv: list[str] | None, doc: str) -> tuple[Size, argparse.Namespace]:
    """``--tiny`` (smoke test) or the full size; ``--rounds`` overrides."""
    ap = argparse.ArgumentParser(description=doc)
    ap.add_argument("--tiny", action="store_true", help="minimal sizes (smoke test)")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--limit", type=int, default=None, help="run only the first N rows")
    ap.add_argument("--only", default=None, help="run only the rows whose name contains this")
    ap.add_argument("--job-size", action="store_true",
                    help="the default job's task and size (trec, 20 rounds x 512 records)")
    ap.add_argument("--data", default=None, help="override every row's data set")
    ap.add_argument("--lr", type=float, default=None, help="override every row's rate")
    args = ap.parse_args(argv)
    size = TINY if args.tiny else JOB if args.job_size else FULL
    OVERRIDES.clear()
    if args.job_size:
        OVERRIDES["data"] = "trec"
    OVERRIDES.update({k: v for k, v in (("data", args.data), ("lr", args.lr)) if v is not None})
    if args.rounds is not None:
        size = replace(size, rounds=args.rounds)
    return size, args


#: Set by :func:`parse_size` from ``--job-size``, ``--data``, ``--lr``: wins over every row.
OVERRIDES: dict[str, Any] = {}


def progress(name: str) -> Callable[[dict[str, Any]], None]:
    """A per-round printer for ``run_job(on_round=...)``."""
    def show(rec: dict[str, Any]) -> None:
        print(name, rec, flush=True)
    return show


def limited(rows: list[Any], args: argparse.Namespace) -> list[Any]:
    """The rows whose name (first item) contains ``--only``, the first ``--limit`` of them."""
    if args.only is not None:
        rows = [r for r in rows if args.only in r[0]]
    return rows if args.limit is None else rows[: args.limit]


def base_job(size: Size, **kw: Any) -> FinetuneJob:
    """MiniLM + LoRA on vader-movie (``--job-size``/``--data``: another set), 4 parties,
    Dirichlet(0.5), at ``size``; :data:`OVERRIDES` win over ``kw``."""
    doc: dict[str, Any] = {"model": "minilm", "data": "vader-movie", "adapter": "lora",
                           "num_clients": 4, "partition": "dirichlet", "alpha": 0.5,
                           "rounds": size.rounds, "eval_size": size.eval_size,
                           "max_length": size.max_length,
                           "records_per_round": size.records_per_round,
                           "local_steps": size.local_steps, "batch_size": size.batch_size}
    return FinetuneJob(**(doc | kw | OVERRIDES))


def strip(doc: dict[str, Any]) -> dict[str, Any]:
    """Drop the in-memory entries (names starting with ``_``)."""
    return {k: v for k, v in doc.items() if not k.startswith("_")}


def load_result(name: str) -> dict[str, Any] | None:
    """A result JSON written earlier, or None."""
    path = Path(results_dir()) / f"{name}.json"
    if not path.exists():
        return None
    out: dict[str, Any] = json.loads(path.read_text())
    return out


def mean_se(values: list[float]) -> dict[str, Any]:
    """``{"n", "mean", "se", "values"}``: the mean and its standard error (sample standard
    deviation over sqrt(n); None with fewer than two values), rounded to 4 places."""
    n = len(values)
    mean = float(np.mean(values)) if n else math.nan
    se = float(np.std(values, ddof=1) / math.sqrt(n)) if n > 1 else None
    return {"n": n, "mean": round(mean, 4), "se": None if se is None else round(se, 4),
            "values": values}
