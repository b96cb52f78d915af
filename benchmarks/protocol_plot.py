"""Plot ``protocol_sweep.json`` (time against n per protocol, one panel per vector length) and
the single-round rows ``protocol_secagg*_n*_d*_p*.json`` (where the server's time goes, against
the plaintext sum and the keystream bound measured beside it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["plot_all", "plot_breakdown", "plot_sweep"]

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


STEP_COLORS = {
    "unpack": "#1f77b4", "mask_expansion": "#d62728", "key_agreement": "#ff7f0e",
    "reconstruct": "#9467bd", "decode": "#8c564b", "encode": "#e377c2", "accept": "#7f7f7f",
    "close": "#bcbd22", "aggregate": "#17becf",
}


def plot_breakdown(rows: list[dict[str, Any]], out: Path) -> Path:
    """One bar per round. Left: the server's time split by step (share of its total), with
    the total in units of the plaintext sum measured beside it. Right: all parties' compute
    in units of the two keystream bounds (axis cut at 4x, the value written beside)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(rows, key=lambda r: (r["clients"], r["protocol"], r["dropout"]))
    labels = [f"{r['protocol']} n={r['clients']} d={r['dim']:.0e} drop {r['dropout']:.0%}"
              for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 0.7 * len(rows) + 1.8))
    cut = 4.0
    for y, r in enumerate(rows):
        parts = r["server_breakdown"]
        total = sum(parts.values()) or 1.0
        x = 0.0
        for step, color in STEP_COLORS.items():
            w = parts.get(step, 0.0) / total
            left.barh(y, w, left=x, color=color, label=step if y == 0 else None)
            x += w
        left.text(1.01, y, f"{r['server_vs_plaintext']:.1f}x plain\n"
                  f"({r['server_vs_plaintext_warm']:.1f}x warm)", va="center", fontsize=7)
        for dy, key, color, name in ((-0.18, "compute_vs_keystream", "#1f77b4",
                                      "CTR bound (64 MiB buffer)"),
                                     (0.18, "compute_vs_fast_keystream", "#d62728",
                                      "fastest AES (in cache)")):
            v = r[key]
            right.barh(y + dy, min(v, cut), height=0.34, color=color,
                       label=name if y == 0 else None)
            right.text(min(v, cut) + 0.03, y + dy, f"{v:.2f}x", va="center", fontsize=7)
    for ax in (left, right):
        ax.set_yticks(range(len(rows)), labels, fontsize=7)
        ax.grid(True, axis="x", alpha=0.3)
    left.set_xlim(0, 1)
    left.set_xlabel("share of the server's seconds, by step")
    left.legend(fontsize=6, ncol=3, loc="lower left", bbox_to_anchor=(0, 1.0))
    right.set_xlim(0, cut + 0.6)
    right.axvline(1.5, color="black", ls="--", lw=0.8)
    right.set_xlabel("all parties' compute / keystream bound (dashed 1.5x; cut at 4x)")
    right.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    path = out / "protocol_breakdown.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_all(out: Path) -> list[Path]:
    """Draw the sweep plot and the breakdown plot where their JSON exists."""
    paths = []
    src = out / "protocol_sweep.json"
    if src.is_file():
        paths.append(plot_sweep(json.loads(src.read_text())["rows"], out))
    rows = [json.loads(p.read_text()) for p in sorted(out.glob("protocol_secagg*_n*_d*_p*.json"))]
    rows = [r for r in rows if r.get("server_breakdown")]
    if rows:
        paths.append(plot_breakdown(rows, out))
    return paths
