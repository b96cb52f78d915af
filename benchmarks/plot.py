"""Plot what the benchmarks wrote to ``benchmarks/results/`` (PNG files beside the JSON).

Run as ``python -m benchmarks.plot [RESULTS_DIR]``; each plot is drawn only when its JSON exists.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from benchmarks import protocol_plot

__all__ = ["main", "plot_primitives"]


def _load(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def plot_primitives(res: dict[str, Any], out: Path) -> Path:
    """Bar charts: PRG vs keystream and coding throughput; CKKS bytes per value per preset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    labels, values = [], []
    for key in ("prg_16MiB", "prg_64MiB"):
        labels += [f"AES-CTR keystream {key[4:]}", f"mask expand+add {key[4:]}"]
        values += [res[key]["keystream_gbps"], res[key]["expand_add_gbps"]]
    fp = res["fixedpoint"]
    for k in ("encode_nearest_gbps", "decode_gbps", "pack20_gbps", "unpack20_gbps"):
        labels.append(k[:-5].replace("_", " "))
        values.append(fp[k])
    ax1.bar(range(len(values)), values, color=["#555", "#1f77b4"] * 2 + ["#2ca02c"] * 4)
    ax1.set_xticks(range(len(values)), labels, fontsize=7, rotation=35, ha="right")
    ax1.set_ylabel("GB/s (one core)")
    ax1.set_title("primitives, measured side by side")
    ckks = res.get("ckks", [])
    if ckks:
        names = [r["preset"] for r in ckks]
        ax2.bar(
            names,
            [r["bytes_per_value"] for r in ckks],
            color=["#d62728" if "nvflare" in n else "#1f77b4" for n in names],
        )
        ax2.axhline(4, ls="--", c="gray", lw=1)
        ax2.text(0, 4.5, "float32 plaintext (4 B)", fontsize=7)
        ax2.set_ylabel("bytes per value on the wire")
        ax2.set_title("CKKS ciphertext size per value")
        ax2.set_xticks(range(len(names)), names, fontsize=6, rotation=35, ha="right")
    fig.tight_layout()
    path = out / "primitives.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    """Draw every plot whose results exist; print the files written."""
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0]) if args else Path("benchmarks/results")
    prim = _load(out / "primitives.json")
    if prim is not None:
        print(f"wrote {plot_primitives(prim, out)}")
    for path in protocol_plot.plot_all(out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
