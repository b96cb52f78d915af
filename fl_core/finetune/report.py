"""The end of ``secagg run`` for a job: the time split from the clients' stats, a summary table.

Clients append JSON lines to their stats files: the training task one per round (``train_s``,
examples, loss) and the client loop one per finished round (``update_s``, ``protocol_s``: time
inside the protocol participant). The split per round is the mean client's training and
protocol seconds; the rest of the round's wall time (transport, waiting for the slowest
party, the server's own work) is reported as ``other_s``.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from secagg.fl_core.finetune.app import write_summary

__all__ = ["client_peak_rss", "finish_run", "time_split"]


def _read_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def time_split(summary: dict[str, Any], stats: list[Path]) -> dict[str, float]:
    """Mean seconds per round: wall, training, protocol compute, other."""
    train: dict[int, list[float]] = defaultdict(list)
    proto: dict[int, list[float]] = defaultdict(list)
    for path in stats:
        for doc in _read_lines(path):
            if "train_s" in doc:
                train[int(doc["round"])].append(float(doc["train_s"]))
            if "protocol_s" in doc:
                proto[int(doc["round"])].append(float(doc["protocol_s"]))
    rounds = [r for r in summary.get("per_round", []) if r.get("ok")]
    if not rounds:
        return {}
    walls = [float(r["seconds"]) for r in rounds]
    tr = [sum(train[r["round"]]) / len(train[r["round"]]) if train[r["round"]] else 0.0
          for r in rounds]
    pr = [sum(proto[r["round"]]) / len(proto[r["round"]]) if proto[r["round"]] else 0.0
          for r in rounds]
    k = len(rounds)
    wall, t, p = sum(walls) / k, sum(tr) / k, sum(pr) / k
    return {"round_s": round(wall, 3), "training_s": round(t, 3), "protocol_s": round(p, 3),
            "other_s": round(max(wall - t - p, 0.0), 3),
            "protocol_fraction": round(p / wall, 4) if wall else 0.0}


def client_peak_rss(stats: list[Path]) -> dict[str, float]:
    """``{"client-<id>": MiB}``: the largest ``peak_rss_mb`` in each client's stats file
    (named ``client-<id>.stats.jsonl``; clients without one are left out)."""
    out: dict[str, float] = {}
    for path in stats:
        peaks = [float(d["peak_rss_mb"]) for d in _read_lines(path) if "peak_rss_mb" in d]
        if peaks:
            out[path.name.split(".")[0]] = max(peaks)
    return out


def _show(console: Console, doc: dict[str, Any]) -> None:
    t = Table(title="federated fine-tuning")
    t.add_column("what")
    t.add_column("value", justify="right")
    metric = "accuracy" if "accuracy_before" in doc else "perplexity"
    job = doc.get("job", {})
    t.add_row("model / data / adapter", f"{job.get('model')} / {job.get('data')} / "
              f"{job.get('adapter')}")
    t.add_row("privacy", f"{doc['dp']['unit']} level, {doc['dp'].get('noise')} noise, "
              f"sigma {doc['dp']['noise_multiplier']:.3f}")
    t.add_row(f"{metric} before -> after",
              f"{doc.get(f'{metric}_before')} -> {doc.get(f'{metric}_after')}")
    if base := doc.get("baselines"):
        t.add_row("baselines on the same held-out set",
                  f"majority class {base['majority']:.3f}, non-private linear probe "
                  f"{base['linear_probe']:.3f}")
    eps = doc.get("epsilon")
    t.add_row("epsilon (delta)", f"{eps if eps is None else round(eps, 3)} ({doc['delta']:.2g})")
    dp, clamp = doc["dp"], doc["dp"].get("clamp_probability_per_round") or 0.0
    if clamp:
        t.add_row("delta = conversion + rounds x clamp",
                  f"{dp.get('delta_conversion', doc['delta']):.3g} + {job.get('rounds')} x "
                  f"{clamp:.1g}")
    if doc["dp"].get("amplification"):
        t.add_row("amplification", str(doc["dp"]["amplification"]))
    t.add_row("rounds", str(doc["rounds"]))
    t.add_row("bytes up / down per client per round",
              f"{doc['bytes_up_per_client_per_round'] / 1e3:.1f} kB / "
              f"{doc['bytes_down_per_client_per_round'] / 1e3:.1f} kB")
    if doc.get("peak_rss_mb"):
        t.add_row("peak memory (MiB)", ", ".join(f"{k} {v:.0f}" for k, v in
                                                  doc["peak_rss_mb"].items()))
    split = doc.get("time_split", {})
    if split:
        t.add_row("round: training / protocol / other (s)",
                  f"{split['training_s']:.2f} / {split['protocol_s']:.2f} / "
                  f"{split['other_s']:.2f} of {split['round_s']:.2f}")
    console.print(t)
    for g in doc.get("generations", []):
        console.print(f"[bold]prompt[/bold] {g['prompt']!r}\n  before: {g['before']!r}\n"
                      f"  after:  {g['after']!r}\n  reference: {g['reference']!r}")


def finish_run(ns: argparse.Namespace, console: Console, stats: list[Path]) -> None:
    """Add the time split to the summary file and print the summary."""
    path = Path(ns.json_path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        console.print(f"[red]no summary at {path}: the server did not finish[/red]")
        return
    doc["time_split"] = time_split(doc, stats)
    if "peak_rss_mb" in doc:  # pretrain: every party's peak memory, the clients' from stats
        doc["peak_rss_mb"] = {**doc["peak_rss_mb"], **client_peak_rss(stats)}
    write_summary(path, doc)
    _show(console, doc)
    console.print(f"summary written to {path}")
