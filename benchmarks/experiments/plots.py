"""One PNG per experiment from the result JSONs (matplotlib, Agg backend)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from benchmarks.experiments.sim import results_dir

__all__ = ["plot_exp1", "plot_exp2", "plot_exp3", "plot_exp4"]

MAJORITY = 0.555  # share of the majority label in the 200-example held-out set (seed 0)


def _load(prefix: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(Path(results_dir()).glob(f"{prefix}*.json")):
        out[path.stem] = json.loads(path.read_text())
    return out


def _bars(names: list[str], values: list[float], title: str, ylabel: str, png: str) -> None:
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(names)), 3.6))
    ax.bar(range(len(names)), values, color="tab:blue")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:.3g}", ha="center", va="bottom", fontsize=7)
    fig.tight_layout()
    fig.savefig(Path(results_dir()) / png, dpi=110)
    plt.close(fig)


def _acc(doc: dict[str, Any]) -> float:
    return float(doc.get("accuracy_after") or 0.0)


def plot_exp1() -> None:
    """Accuracy of centralized vs federated rows."""
    docs = _load("exp1_")
    if docs:
        names = [k.removeprefix("exp1_") for k in docs]
        _bars(names, [_acc(d) for d in docs.values()],
              "Exp 1: centralized vs federated (non-private), MiniLM+LoRA, vader-movie",
              "held-out accuracy", "exp1_centralized_vs_federated.png")


def plot_exp2() -> None:
    """Accuracy against epsilon, distributed vs local."""
    docs = _load("exp2_")
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for place, marker in (("distributed", "o"), ("local", "s")):
        pts = []
        for name, d in docs.items():
            if f"_{place}_" not in name:
                continue
            eps = name.rsplit("eps", 1)[1]
            pts.append((16.0 if eps == "inf" else float(eps), _acc(d)))
        pts.sort()
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=place)
    ax.axhline(MAJORITY, color="grey", ls="--", lw=0.8, label="majority class (eval set)")
    ax.set_ylim(0.4, 0.9)
    ax.set_xscale("log", base=2)
    ax.set_xticks([1, 2, 4, 8, 16], ["1", "2", "4", "8", "inf"])
    ax.set_xlabel("epsilon (record level)")
    ax.set_ylabel("held-out accuracy")
    ax.set_title("Exp 2: distributed vs local DP noise, 4 parties", fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(Path(results_dir()) / "exp2_dp_epsilon.png", dpi=110)
    plt.close(fig)


def plot_exp3() -> None:
    """Client-level accuracy rows."""
    docs = _load("exp3_")
    if docs:
        _bars([k.removeprefix("exp3_") for k in docs], [_acc(d) for d in docs.values()],
              "Exp 3: client level, 200 parties, cohort 20", "held-out accuracy",
              "exp3_client_level.png")


def plot_exp4() -> None:
    """Bytes up per client per round by adapter (log scale)."""
    docs = _load("exp4_")
    if not docs:
        return
    names = [k.removeprefix("exp4_") for k in docs]
    fig, ax = plt.subplots(1, 2, figsize=(9.0, 3.6))
    ax[0].bar(names, [float(d.get("bytes_up_per_client_per_round") or 0) for d in docs.values()])
    ax[0].set_yscale("log")
    ax[0].set_ylabel("bytes up / client / round")
    ax[1].bar(names, [_acc(d) for d in docs.values()])
    ax[1].set_ylabel("held-out accuracy")
    for a in ax:
        a.tick_params(axis="x", rotation=30, labelsize=8)
    fig.suptitle("Exp 4: adapters (federated, SecAgg+)", fontsize=10)
    fig.tight_layout()
    fig.savefig(Path(results_dir()) / "exp4_adapters.png", dpi=110)
    plt.close(fig)
