"""The README's markdown results table from the result JSONs (``python -m ...report``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from benchmarks.experiments.sim import results_dir

__all__ = ["noise_table", "table"]

_COLS = ("result file", "rounds", "dp", "epsilon", "accuracy", "macro-F1",
         "bytes up/client/round", "train s/client/round", "secagg s/round", "secagg share")


def _fmt(v: Any, spec: str = "") -> str:
    if v is None:
        return "-"
    return format(v, spec) if spec else str(v)


def _row(name: str, d: dict[str, Any]) -> str:
    job, dp = d.get("job", {}), d.get("dp", {})
    mode = "none" if dp.get("unit") == "none" else (
        f"{dp.get('unit')}/{dp.get('noise')} sigma={dp.get('noise_multiplier', 0):.3g}")
    share = d.get("secagg_fraction_of_round")
    cells = [name, _fmt(job.get("rounds")), mode, _fmt(d.get("epsilon"), ".3g"),
             _fmt(d.get("accuracy_after"), ".3f"), _fmt(d.get("macro_f1_after"), ".3f"),
             _fmt(d.get("bytes_up_per_client_per_round"), ",.0f"),
             _fmt(d.get("train_s_per_client_per_round"), ".2f"),
             _fmt(d.get("secagg_s_per_round"), ".3f"),
             "-" if share is None else f"{100 * share:.2f}%"]
    return "| " + " | ".join(cells) + " |"


def table(folder: Path | None = None) -> str:
    """One markdown row per result JSON (sorted by name)."""
    root = Path(folder or results_dir())
    lines = ["| " + " | ".join(_COLS) + " |", "|" + "---|" * len(_COLS)]
    for path in sorted(root.glob("exp*.json")):
        lines.append(_row(path.stem, json.loads(path.read_text())))
    return "\n".join(lines)


def noise_table(folder: Path | None = None) -> str:
    """Experiment 2's zero-signal measurement: noise std in the aggregate mean, per row."""
    root = Path(folder or results_dir())
    lines = ["| result file | sigma | parties n | threshold t | measured std of one party's "
             "noise | measured std in the mean | expected std in the mean |",
             "|---|---|---|---|---|---|---|"]
    for path in sorted(root.glob("exp2_*.json")):
        m = json.loads(path.read_text()).get("noise_measurement")
        if m:
            lines.append(f"| {path.stem} | {m['noise_multiplier']:.4g} | {m['parties']} | "
                         f"{m.get('threshold', '-')} | {m['measured_party_std']:.4g} | "
                         f"{m['measured_mean_std']:.4g} | {m['expected_mean_std']:.4g} |")
    return "\n".join(lines)


if __name__ == "__main__":
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    print(table(root))
    print()
    print(noise_table(root))
