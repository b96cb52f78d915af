"""Plot ``protocol_sweep.json``: time against n per protocol, one panel per vector length."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["plot_all", "plot_sweep"]

STYLE = {"plain": "#7f7f7f", "secagg": "#d62728", "secagg+": "#1f77b4"}


def plot_sweep(rows: list[dict[str, Any]], out: Path) -> Path:
    """Total compute and server seconds against n (log-log), dropout as line style."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if "skipped" not in r]
    dims = sorted({r["dim"] for r in done})
    fig, axes = plt.subplots(1, len(dims), figsize=(6.5 * len(dims), 4.8), squeeze=False)
    for ax, dim in zip(axes[0], dims, strict=True):
        for proto, color in STYLE.items():
            for p, ls in ((0.0, "-"), (0.1, "--"), (0.3, ":")):
                pts = sorted(
                    (r["clients"], r["total_compute_s"], r["server_s"])
                    for r in done
                    if r["protocol"] == proto and r["dim"] == dim and r["dropout"] == p
                )
                if not pts:
                    continue
                ns, tot, srv = zip(*pts, strict=True)
                ax.plot(
                    ns, tot, ls, color=color, marker="o", ms=3, label=f"{proto} total, drop {p:.0%}"
                )
                if p == 0.0:
                    ax.plot(
                        ns,
                        srv,
                        ls,
                        color=color,
                        marker="x",
                        ms=4,
                        alpha=0.5,
                        label=f"{proto} server",
                    )
        plain = sorted(
            (r["clients"], r["plaintext_s"])
            for r in done
            if r["dim"] == dim and r["protocol"] == "secagg+" and r["dropout"] == 0.0
        )
        if plain:
            ns, ts = zip(*plain, strict=True)
            ax.plot(ns, ts, "-", color="black", lw=0.8, label="numpy float sum")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("clients n")
        ax.set_ylabel("seconds of compute per round (one process)")
        ax.set_title(f"dim = {dim:,}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    path = out / "protocol_sweep.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_all(out: Path) -> list[Path]:
    """Draw the sweep plot when its JSON exists."""
    src = out / "protocol_sweep.json"
    if not src.is_file():
        return []
    return [plot_sweep(json.loads(src.read_text())["rows"], out)]
