"""``secagg bench protocol``: one in-process round of plain / SecAgg / SecAgg+, with references.

Each run records, from the same process and the same inputs: the protocol's compute per role
(``secagg.protocols.harness.RoundSimulation``), the plain float sum of the included inputs
(``plaintext_s``: the first run right after the round, allocating its float64 sum, as the
earlier figures measured it; ``plaintext_warm_s``: the median of 5 more, the stricter
reference) and the keystream bounds for exactly the
mask words this round expanded: ``keystream_bound_s`` is raw AES-256-CTR ``update_into`` in
256 KiB chunks into one preallocated 64 MiB buffer (the definition the earlier figures used),
``keystream_fast_bound_s`` the same words from the fastest AES generator this build has
(:func:`secagg.prg.keystream_into`, GCM body) into one cache-resident chunk, i.e. AES work with
no memory traffic at all: the stricter floor. ``server_breakdown`` splits the server's seconds
by step (:attr:`SecAggServer.trace`); ``encode`` is what the driver spends encoding the
server's outgoing messages, charged to the server. ``--workers`` sets the server's mask
threads (default 1: every ratio is one core against one core). Dropouts are clients
that fail to send their masked input, i.e. after share keys (the costly case: their pairwise
masks must be recovered). ``--peer flower`` also runs Flower's SecAgg+ on the same n, dim,
dropout, graph and threshold (``benchmarks/flower_peer.sh``, its own venv) and reports ratios.
``--sweep`` runs the grid of the benchmark suite and writes one JSON per point.

``--protocol ckks`` / ``ckks+mask``: the key setup runs first and is reported apart
(``key_setup_*``); the round's figures are the round's alone. The keystream bound counts the
mask words (0 for ``ckks``). ``--ckks-unseeded`` uploads full ciphertexts (twice the bytes, a
faster server).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from benchmarks._timing import PhaseClock, machine_info, write_json
from secagg.protocols import SecAggConfig
from secagg.protocols.harness import RoundSimulation

__all__ = ["main", "run_point"]

SWEEP_N = (10, 20, 50, 100, 200, 500)
SWEEP_DIM = (100_000, 1_000_000)
SWEEP_DROPOUT = (0.0, 0.1, 0.3)
# Mask words one sweep point may expand, n * (k + 1) * dim, before the sweep skips it: 1.3e10
# words are 52 GB of keystream (about 20 s here). It keeps SecAgg+ at n=500 with 30% dropout
# (dim 10^5) and SecAgg's complete graph up to n=100 at dim 10^6.
MASK_WORD_BUDGET = 1.3e10
RESULTS = Path("benchmarks/results")


def _keystream_rate(repeat: int = 5) -> float:
    """Raw AES-256-CTR keystream, bytes per second: ``update_into`` in 256 KiB chunks into one
    preallocated 64 MiB buffer (what the earlier figures called the keystream bound)."""
    buf = bytearray(64 << 20)
    view = memoryview(buf)
    chunk = 256 << 10
    zeros = memoryview(bytes(chunk))
    key = bytes(range(32))
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        enc = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
        for start in range(0, len(buf), chunk):
            enc.update_into(zeros, view[start : start + chunk])
        best = min(best, time.perf_counter() - t0)
    return len(buf) / best


def _fast_keystream_rate(repeat: int = 5) -> float:
    """The fastest AES keystream of this build, bytes per second: the AES-GCM body that
    :mod:`secagg.prg` uses for long streams (same words as CTR), 64 MiB written 256 KiB at a
    time into one cache-resident buffer, so pure AES work with no memory traffic."""
    chunk = 256 << 10
    scratch = bytearray(chunk)
    view = memoryview(scratch)
    zeros = memoryview(bytes(chunk))
    key = bytes(range(32))
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        enc = Cipher(algorithms.AES(key), modes.GCM(bytes(12))).encryptor()
        for _ in range((64 << 20) // chunk):
            enc.update_into(zeros, view)
        best = min(best, time.perf_counter() - t0)
    return (64 << 20) / best


def _plaintext_sums(inputs: dict[int, np.ndarray], included: tuple[int, ...],
                    ) -> tuple[float, float]:
    """Seconds of the float64 sum of the included float32 inputs: the first run (right after
    the round, allocating its sum: what the earlier figures used) and the median of 5 more."""
    dim = inputs[included[0]].shape[0] if included else 0
    times = []
    for _ in range(6):
        t0 = time.perf_counter()
        truth = np.zeros(dim, dtype=np.float64)
        for i in included:
            truth += inputs[i]
        times.append(time.perf_counter() - t0)
    return times[0], statistics.median(times[1:])


def _dropped(n: int, dropout: float, seed: int) -> list[int]:
    order = np.random.default_rng(seed).permutation(n)  # benchmark choice, not a secret
    return sorted(int(i) for i in order[: math.floor(dropout * n)])


def _one_round(
    cfg: SecAggConfig, inputs: dict[int, np.ndarray], drop: list[int], workers: int
) -> tuple[Any, dict[str, Any]]:
    """One round, then its references measured right after it: the result and the figures
    of this repetition (every ratio is between figures of the same repetition)."""
    sim = RoundSimulation(cfg, inputs, drop={"masked_input": drop} if cfg.is_secure else None)
    clock = PhaseClock()
    if hasattr(sim.server, "trace"):
        sim.server.trace = clock.mark
    if hasattr(sim.server, "workers"):
        sim.server.workers = workers
    res = sim.run()
    plaintext_s, plaintext_warm_s = _plaintext_sums(inputs, res.included)
    words = res.client_mask_words + res.server_mask_words  # 0 for ckks (no masks)
    rate, fast = _keystream_rate(), _fast_keystream_rate()
    ks_bound, fast_bound = 4 * words / rate, 4 * words / fast
    breakdown = clock.totals()
    if breakdown:
        breakdown["encode"] = max(0.0, res.server_s - sum(breakdown.values()))
    total = res.total_compute_s
    return res, {
        "server_s": res.server_s,
        "client_s_mean": res.client_s_mean,
        "client_s_max": res.client_s_max,
        "total_compute_s": total,
        "plaintext_s": plaintext_s,
        "server_vs_plaintext": res.server_s / plaintext_s,
        "plaintext_warm_s": plaintext_warm_s,
        "server_vs_plaintext_warm": res.server_s / plaintext_warm_s,
        "keystream_gbps": rate / 1e9,
        "keystream_bound_s": ks_bound,
        "compute_vs_keystream": total / ks_bound if words else None,
        "keystream_fast_gbps": fast / 1e9,
        "keystream_fast_bound_s": fast_bound,
        "compute_vs_fast_keystream": total / fast_bound if words else None,
        "server_breakdown": breakdown,
    }


def _median_figures(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per figure, the median over the repetitions (the breakdown: per step)."""
    out: dict[str, Any] = {}
    for key, first in runs[0].items():
        if isinstance(first, dict):
            out[key] = {k: statistics.median(r[key].get(k, 0.0) for r in runs) for k in first}
        elif first is None:
            out[key] = None
        else:
            out[key] = statistics.median(r[key] for r in runs)
    return out


def run_point(
    protocol: str,
    clients: int,
    dim: int,
    dropout: float,
    *,
    seed: int = 0,
    k: int | None = None,
    threshold: int | None = None,
    ckks_seeded: bool = True,
    workers: int = 1,
    repeat: int = 1,
) -> dict[str, Any]:
    """Run ``repeat`` rounds and return the JSON row: medians over the repetitions, each
    ratio taken within its repetition (see the module docstring)."""
    extra: dict[str, Any] = {} if ckks_seeded else {"ckks_seeded": False}
    cfg = SecAggConfig(
        protocol=protocol, n=clients, k=k, threshold=threshold, dropout_rate=max(dropout, 0.1),
        **extra,
    )
    gen = np.random.default_rng(seed)
    inputs = {i: gen.uniform(-1.0, 1.0, dim).astype(np.float32) for i in range(clients)}
    drop = _dropped(clients, dropout, seed + 1)
    runs = []
    for _ in range(max(1, repeat)):
        res, figures = _one_round(cfg, inputs, drop, workers)
        runs.append(figures)
    truth = np.zeros(dim, dtype=np.float64)
    for i in res.included:
        truth += inputs[i]
    err = float(np.abs(res.aggregate - truth).max())
    bound = len(res.included) * 2.0**-cfg.scale
    words = res.client_mask_words + res.server_mask_words
    setup = res.key_setup
    ckks: dict[str, Any] = {} if setup is None else {
        "ckks_preset": cfg.ckks_layout.preset.name if cfg.ckks_layout else None,
        "ckks_lanes_per_slot": cfg.ckks_layout.lanes_per_slot if cfg.ckks_layout else None,
        "ckks_seeded": cfg.ckks_seeded,
        "key_setup_server_s": setup.server_s,
        "key_setup_client_s_max": max(setup.client_s.values()),
        "key_setup_bytes_up_max": max(setup.bytes_up.values()),
        "key_setup_bytes_down_max": max(setup.bytes_down.values()),
    }
    med = _median_figures(runs)
    return {
        "protocol": protocol,
        "clients": clients,
        "dim": dim,
        "dropout": dropout,
        "dropped": len(drop) if cfg.is_secure else 0,
        "k": cfg.k,
        "threshold": cfg.threshold,
        "bits": cfg.bits,
        "scale": cfg.scale,
        "included": len(res.included),
        "correct": bool(err <= bound and len(res.included) == clients - len(drop)),
        "max_abs_error": err,
        "error_bound": bound,
        "server_workers": workers,
        "repeat": len(runs),
        "server_s": med["server_s"],
        "client_s_mean": med["client_s_mean"],
        "client_s_max": med["client_s_max"],
        "total_compute_s": med["total_compute_s"],
        "bytes_up_per_client": res.bytes_up_per_client,
        "bytes_down_per_client": res.bytes_down_per_client,
        "bytes_up_max_per_client": max(res.bytes_up.values(), default=0),
        "bytes_up_per_value": max(res.bytes_up.values(), default=0) / dim,
        "plaintext_s": med["plaintext_s"],
        "server_vs_plaintext": med["server_vs_plaintext"],
        "plaintext_warm_s": med["plaintext_warm_s"],
        "server_vs_plaintext_warm": med["server_vs_plaintext_warm"],
        "server_breakdown": med["server_breakdown"],
        "mask_words": words,
        "server_mask_words": res.server_mask_words,
        "keystream_gbps": med["keystream_gbps"],
        "keystream_bound_s": med["keystream_bound_s"],
        "compute_vs_keystream": med["compute_vs_keystream"],
        "keystream_fast_gbps": med["keystream_fast_gbps"],
        "keystream_fast_bound_s": med["keystream_fast_bound_s"],
        "compute_vs_fast_keystream": med["compute_vs_fast_keystream"],
        "runs": runs if len(runs) > 1 else [],
        **ckks,
    }


def _flower(row: dict[str, Any], rounds: int) -> dict[str, Any]:
    """Run Flower's SecAgg+ and plain FedAvg on the same point; return the ratio fields."""
    full = row["protocol"] == "secagg"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "flower.json"
        cmd = [
            "bash",
            "benchmarks/flower_peer.sh",
            "--clients",
            str(row["clients"]),
            "--dim",
            str(row["dim"]),
            "--dropout",
            str(row["dropout"]),
            "--num-shares",  # Flower counts the holder's own share: k neighbours + 1
            "0" if full else str(row["k"] + 1),
            "--threshold",
            str(row["threshold"]),
            "--rounds",
            str(rounds),
            "--json",
            str(out),
        ]
        subprocess.run(cmd, check=True, stdout=sys.stderr)
        recs = json.loads(out.read_text())
    sec = next(r for r in recs if r["protocol"] != "flower-plain")
    plain = next(r for r in recs if r["protocol"] == "flower-plain")
    return {
        "flower_version": sec["flwr_version"],
        "flower_protocol": sec["protocol"],
        "flower_num_shares": sec["num_shares"],
        "flower_round_s": sec["round_s"],
        "flower_plain_round_s": plain["round_s"],
        "flower_bytes_up_per_client": sec["bytes_up_per_client"],
        "flower_correct": sec["correct"],
        "compute_vs_flower": row["total_compute_s"] / sec["round_s"],
        "bytes_up_vs_flower": row["bytes_up_per_client"] / sec["bytes_up_per_client"],
    }


def _skip_reason(protocol: str, n: int, dim: int, dropout: float) -> str | None:
    cfg = SecAggConfig(protocol=protocol, n=n, dropout_rate=max(dropout, 0.1))
    words = n * (cfg.k + 1) * dim if cfg.is_secure else 0
    if words > MASK_WORD_BUDGET:
        return f"n*(k+1)*dim = {words:.1e} mask words > budget {MASK_WORD_BUDGET:.1e} (k={cfg.k})"
    return None


def sweep(
    protocols: list[str], out_dir: Path, dims: tuple[int, ...] = SWEEP_DIM
) -> list[dict[str, Any]]:
    """Run the grid; write every row to ``protocol_sweep.json``; return the rows."""
    rows: list[dict[str, Any]] = []
    for dim in dims:
        for n in SWEEP_N:
            for p in SWEEP_DROPOUT:
                for proto in protocols:
                    if proto == "plain" and p > 0:
                        continue  # the baseline has no dropout recovery to measure
                    reason = _skip_reason(proto, n, dim, p)
                    if reason:
                        rows.append(
                            {
                                "protocol": proto,
                                "clients": n,
                                "dim": dim,
                                "dropout": p,
                                "skipped": reason,
                            }
                        )
                        continue
                    row = run_point(proto, n, dim, p)
                    rows.append(row)
                    print(_line(row), flush=True)
    write_json(
        out_dir / "protocol_sweep.json",
        {"benchmark": "protocol_sweep", "machine": machine_info(), "rows": rows},
    )
    return rows


def _line(r: dict[str, Any]) -> str:
    vs = r.get("compute_vs_keystream")
    fast = r.get("compute_vs_fast_keystream")
    line = (
        f"{r['protocol']:>8} n={r['clients']:<4} dim={r['dim']:<8} drop={r['dropout']:<4} "
        f"k={r['k']:<4} t={r['threshold']:<4} bits={r['bits']} ok={r['correct']} "
        f"server={r['server_s']:.3f}s ({r['server_vs_plaintext']:.2f}x plain "
        f"{r['plaintext_s']:.4f}s, {r.get('server_vs_plaintext_warm', 0):.2f}x warm) "
        f"client mean={r['client_s_mean']:.3f}s max={r['client_s_max']:.3f}s "
        f"total={r['total_compute_s']:.3f}s up={r['bytes_up_per_value']:.3f} B/value "
        f"keystream bound={r['keystream_bound_s']:.3f}s"
        + (f" ({vs:.2f}x; fastest AES {r['keystream_fast_bound_s']:.3f}s, {fast:.2f}x)"
           if vs is not None else "")
        + (f" [median of {r['repeat']}]" if r.get("repeat", 1) > 1 else "")
    )
    parts = r.get("server_breakdown") or {}
    if parts:
        line += "\n   server: " + ", ".join(
            f"{k} {v:.3f}s" for k, v in sorted(parts.items(), key=lambda kv: -kv[1]))
    return line


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``secagg bench protocol``."""
    ap = argparse.ArgumentParser(prog="secagg bench protocol", description=__doc__)
    ap.add_argument("--protocol", default="secagg+",
                    choices=["plain", "secagg", "secagg+", "ckks", "ckks+mask"])
    ap.add_argument("--ckks-unseeded", action="store_true", help="full-size CKKS uploads")
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--dim", type=int, default=1_000_000)
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--k", type=int, default=None, help="neighbours (SecAgg+); derived if left out")
    ap.add_argument("--threshold", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1, help="server threads for the masks")
    ap.add_argument("--repeat", type=int, default=1,
                    help="rounds to run; the row holds the medians (ratios within a round)")
    ap.add_argument("--peer", choices=["flower"], help="also time this peer on the same point")
    ap.add_argument("--peer-rounds", type=int, default=4)
    ap.add_argument("--sweep", action="store_true", help="run the whole grid (make bench)")
    ap.add_argument("--sweep-dim-only", action="store_true", help="sweep only at --dim")
    ap.add_argument("--json", default=None, help="output file (default under benchmarks/results)")
    args = ap.parse_args(argv)
    if args.sweep:
        dims = (args.dim,) if args.sweep_dim_only else SWEEP_DIM
        sweep(["plain", "secagg", "secagg+"], Path(args.json or RESULTS), dims)
        return 0
    row = run_point(
        args.protocol,
        args.clients,
        args.dim,
        args.dropout,
        seed=args.seed,
        k=args.k,
        threshold=args.threshold,
        ckks_seeded=not args.ckks_unseeded,
        workers=args.workers,
        repeat=args.repeat,
    )
    if args.peer == "flower":
        row.update(_flower(row, args.peer_rounds))
    row["machine"] = machine_info()
    print(_line(row))
    if "flower_round_s" in row:
        print(
            f"   flower {row['flower_protocol']} round={row['flower_round_s']:.2f}s "
            f"(plain {row['flower_plain_round_s']:.2f}s): our compute is "
            f"{row['compute_vs_flower']:.3f}x Flower's, upload {row['bytes_up_vs_flower']:.3f}x"
        )
    tag = "_unseeded" if args.ckks_unseeded else ""
    name = f"protocol_{args.protocol}{tag}_n{args.clients}_d{args.dim}_p{args.dropout}.json"
    print(f"wrote {write_json(args.json or RESULTS / name, row)}")
    return 0 if row["correct"] else 1


if __name__ == "__main__":
    sys.exit(main())
