"""Markdown tables from ``benchmarks/results/*.json`` (what the README quotes).

Run as ``python -m benchmarks.report [RESULTS_DIR]``; sections whose JSON is missing are left out.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from benchmarks._timing import format_value

__all__ = ["main", "render"]


def _load(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _cells(row: dict[str, Any], cols: list[str]) -> list[str]:
    """Floats to 3 significant digits, anything else (a missing key: empty) as text."""
    return [f"{row[c]:.3g}" if isinstance(row.get(c), float) else str(row.get(c, "")) for c in cols]


def _primitives(p: dict[str, Any]) -> str:
    rows = [
        [
            k[4:],
            f"{p[k]['keystream_gbps']:.2f}",
            f"{p[k]['expand_add_gbps']:.2f}",
            f"{p[k]['prg_vs_keystream']:.2f}",
        ]
        for k in ("prg_16MiB", "prg_64MiB")
    ]
    out = _table(
        ["mask vector", "AES-256-CTR keystream GB/s", "PRG expand+add GB/s", "prg_vs_keystream"],
        rows,
    )
    fp = p["fixedpoint"]
    out += "\n" + _table(
        ["fixed point / packing (GB/s of input)", "GB/s"],
        [[k[:-5], f"{v:.2f}"] for k, v in fp.items() if k.endswith("_gbps")],
    )
    sh = p["shamir"]
    out += (
        f"\nShamir n={sh['n']}, t={sh['t']}: split {sh['split_ms']:.2f} ms, combine "
        f"{sh['combine_ms']:.2f} ms, with precomputed Lagrange "
        f"{sh['combine_precomputed_us']:.1f} us per secret.\n"
    )
    return out


def _ckks(rows: list[dict[str, Any]]) -> str:
    cols = [
        "preset",
        "bytes_per_value",
        "vs_nvflare_bytes",
        "encrypt_values_per_s",
        "vs_nvflare_encrypt",
        "add_s",
        "add_s_2proc",
        "decrypt_values_per_s",
        "max_error",
        "exact",
    ]
    return _table(cols, [[format_value(r.get(c)) for c in cols] for r in rows])


def _protocol_rows(rows: list[dict[str, Any]]) -> str:
    cols = [
        "protocol",
        "clients",
        "dim",
        "dropout",
        "k",
        "threshold",
        "bits",
        "correct",
        "server_s",
        "plaintext_s",
        "client_s_mean",
        "total_compute_s",
        "keystream_bound_s",
        "bytes_up_per_value",
    ]
    return _table(cols, [_cells(r, cols) for r in rows if "skipped" not in r])


def _flower(rows: list[dict[str, Any]]) -> str:
    cols = [
        "protocol",
        "dropout",
        "k",
        "total_compute_s",
        "flower_round_s",
        "compute_vs_flower",
        "server_s",
        "plaintext_s",
        "bytes_up_per_value",
        "flower_bytes_up_per_client",
    ]
    return _table(cols, [_cells(r, cols) for r in rows])


def render(out: Path) -> str:
    """All sections whose results exist, as one markdown string."""
    parts: list[str] = []
    prim = _load(out / "primitives.json")
    if prim:
        parts.append("### Primitives (`secagg bench primitives`)\n\n" + _primitives(prim))
    ck = _load(out / "ckks.json")
    if ck:
        parts.append("### CKKS vs NVFlare's defaults (`secagg bench ckks`)\n\n" + _ckks(ck["rows"]))
    vs = [_load(p) for p in sorted(out.glob("vs_flower_*.json"))]
    if vs:
        parts.append(
            "### n=20, dim=10^6 against Flower 1.41, same machine, same run "
            "(`make bench`)\n\n" + _flower([v for v in vs if v])
        )
    sw = _load(out / "protocol_sweep.json")
    if sw:
        parts.append("### Sweep (`secagg bench protocol --sweep`)\n\n" + _protocol_rows(sw["rows"]))
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    """Print the tables."""
    args = sys.argv[1:] if argv is None else argv
    print(render(Path(args[0]) if args else Path("benchmarks/results")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
