"""Plot ``scale_sweep.json`` (``secagg bench scale``): per-client CPU and k against n, where the
server's CPU time goes, bytes per client and peak RSS."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.scale import server_kind_cpu_s

__all__ = ["plot_scale"]


def plot_scale(res: dict[str, Any], path: Path) -> Path:
    """Per-client cost and k against n; the server's seconds by kind; bytes and peak RSS."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted((r for r in res["rows"] if r.get("correct")), key=lambda r: r["clients"])
    ns = [r["clients"] for r in rows]
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(16, 4.6))
    ax1.plot(ns, [1e3 * r["client_cpu_s_mean"] for r in rows], "o-", color="#1f77b4",
             label="client CPU, mean")
    ax1.plot(ns, [1e3 * r["client_cpu_s_max"] for r in rows], "x--", color="#1f77b4", alpha=0.6,
             label="client CPU, max (GC passes included)")
    fit = res.get("summary", {}).get("fit_client_cpu_mean_s_vs_log2n")
    if fit:
        xs = np.geomspace(ns[0], ns[-1], 50)
        ax1.plot(xs, 1e3 * (fit["a"] + fit["b_per_doubling"] * np.log2(xs)), ":", color="k",
                 label=f"a + b log2 n (R^2 = {fit['r2']:.3f})")
    ax1.set_xscale("log")
    ax1.set_yscale("log")
    ax1.set_xlabel("clients n")
    ax1.set_ylabel("CPU ms per client")
    ax1.grid(True, which="both", alpha=0.3)
    twin = ax1.twinx()
    twin.plot(ns, [r["k"] for r in rows], "s-", color="#ff7f0e", ms=3, label="k (neighbours)")
    twin.set_ylabel("k")
    h1, l1 = ax1.get_legend_handles_labels()
    h2, l2 = twin.get_legend_handles_labels()
    ax1.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper left")
    ax1.set_title("per-client CPU against n (k on the right)")
    kinds = sorted({k for r in rows for k in r["server_kind_s"]},
                   key=lambda k: -max(server_kind_cpu_s(r).get(k, 0.0) for r in rows))
    totals = np.array([r["server_cpu_s"] for r in rows])
    bottom = np.zeros(len(rows))
    for kind in kinds:
        vals = np.array([server_kind_cpu_s(r).get(kind, 0.0) for r in rows]) / totals
        ax2.bar(range(len(rows)), 100 * vals, bottom=100 * bottom, label=kind)
        bottom += vals
    for i, total in enumerate(totals):
        ax2.text(i, 101, f"{total:.3g} s", ha="center", fontsize=8)
    ax2.set_xticks(range(len(rows)), [f"{n:,}" for n in ns])
    ax2.set_ylim(0, 110)
    ax2.set_xlabel("clients n")
    ax2.set_ylabel("% of the server's CPU time (total on top)")
    ax2.set_title("where the server's time goes")
    ax2.legend(fontsize=6, loc="lower left")
    ax3.plot(ns, [r["bytes_up_per_client"] / 1e3 for r in rows], "o-", label="kB up / client")
    ax3.plot(ns, [r["bytes_down_per_client"] / 1e3 for r in rows], "o--", label="kB down / client")
    ax3.set_xscale("log")
    ax3.set_xlabel("clients n")
    ax3.set_ylabel("kB per client")
    ax3.grid(True, which="both", alpha=0.3)
    mem = ax3.twinx()
    mem.plot(ns, [r["peak_rss_mb"] / 1e3 for r in rows], "^-", color="#2ca02c",
             label="peak RSS (GB)")
    mem.set_yscale("log")
    mem.set_ylabel("peak RSS, GB (one process)")
    h1, l1 = ax3.get_legend_handles_labels()
    h2, l2 = mem.get_legend_handles_labels()
    ax3.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper left")
    ax3.set_title(f"traffic and memory (dim {rows[0]['dim']:,})" if rows else "")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
