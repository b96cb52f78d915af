"""``secagg bench runtime``: round wall time over ZeroMQ against the in-process harness.

For each protocol (SecAgg+, CKKS) and transport security (CurveZMQ + active protocol, or
``--insecure``: no Curve, passive protocol) it starts ``secagg serve`` and ``n`` ``secagg
client`` processes on loopback, runs ``R`` rounds and takes the median of the server's round
times of rounds ``2..R`` (round 1 pays connection set-up and, under CKKS, the key setup). The
server runs with ``--no-state-broadcast``: round starts carry the public header only, not the
float64 global state (8 B a value down per client), so the figure is the protocol's traffic
plus transport and framing. The server's round time starts once the cohort is there and ends
when the protocol is done (SecAgg+: aggregate decoded; CKKS: encrypted sum sent).

In the same run, :func:`secagg.protocols.harness.run_round` runs the same config (same ``n``,
``dim``,
active or passive) in this process, every participant one after the other (CKKS: with a
keyring from one in-process key setup), median of ``--inproc-repeat`` rounds after one warm-up.

``overhead = zmq_round_s / inproc_round_s - 1``. Note what this compares: the in-process
harness runs the ``n`` clients *sequentially* in one process, the runtime runs them in ``n``
processes that share the machine's cores; on a machine with many cores the client work
overlaps, so the runtime can be faster than the harness (negative overhead) while still paying
for sockets, envelopes and copies. Bytes are the server's counts of protocol payload (plus
control messages) per client, up and down.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._timing import machine_info, write_json
from secagg.fl_core.identity import keyfiles, keys
from secagg.fl_core.runtime.rounds import synthetic_update
from secagg.protocols.ckks_harness import setup_keys
from secagg.protocols.config import SecAggConfig
from secagg.protocols.harness import run_round

__all__ = ["main", "run"]

PY = [sys.executable, "-m", "secagg.fl_core.cli"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _runtime(protocol: str, n: int, dim: int, rounds: int, curve: bool, tmp: Path,
             timeout_s: float) -> dict[str, Any]:
    port = _free_port()
    common = ["--protocol", protocol, "--n", str(n), "--dim", str(dim)]
    if curve:
        key_dir = tmp / "keys"
        if not key_dir.exists():
            keyfiles.write_server_keys(key_dir, keys.CurveKeyPair.generate())
            for cid in range(1, n + 1):
                keyfiles.write_client_keys(key_dir, keys.ClientKeys.generate(cid))
        common += ["--keys", str(key_dir)]
    else:
        common.append("--insecure")
    tag = f"{protocol}_{'curve' if curve else 'plain'}"
    out, ckpt = tmp / f"{tag}.json", tmp / f"{tag}.ckpt"
    procs: list[subprocess.Popen[Any]] = []
    t0 = time.perf_counter()
    try:
        server = subprocess.Popen(
            [*PY, "serve", *common, "--bind", f"tcp://127.0.0.1:{port}", "--rounds",
             str(rounds), "--checkpoint", str(ckpt), "--json", str(out), "--deadline", "300",
             "--join-timeout", "120", "--no-state-broadcast"], stderr=subprocess.DEVNULL)
        procs.append(server)
        for cid in range(1, n + 1):
            procs.append(subprocess.Popen(
                [*PY, "client", *common, "--connect", f"tcp://127.0.0.1:{port}", "--id",
                 str(cid), "--idle-timeout", "300"], stderr=subprocess.DEVNULL))
        code = server.wait(timeout=timeout_s)
        for p in procs[1:]:  # clients may still be decrypting the last sum: then say bye
            try:
                p.wait(timeout=max(5.0, 120.0 - (time.perf_counter() - t0)))
            except subprocess.TimeoutExpired:
                break
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
    wall = time.perf_counter() - t0
    docs = json.loads(out.read_text())["rounds"]
    ok = [r for r in docs if r["ok"]]
    later = [r["seconds"] for r in ok[1:]] or [r["seconds"] for r in ok]
    return {
        "exit_code": code, "rounds_ok": len(ok), "rounds_total": len(docs),
        "round_s_median": statistics.median(later) if later else None,
        "round_s_all": [r["seconds"] for r in docs],
        "first_round_s": docs[0]["seconds"] if docs else None,
        "bytes_up_per_client": (statistics.median(r["bytes_up"] for r in ok) / n) if ok else None,
        "bytes_down_per_client": (statistics.median(r["bytes_down"] for r in ok) / n)
        if ok else None,
        "stages": ok[-1]["stages"] if ok else None,
        "wall_s": wall,
    }


def _inproc(protocol: str, n: int, dim: int, active: bool, repeat: int) -> dict[str, Any]:
    cfg = SecAggConfig(protocol=protocol, n=n, active=active)
    inputs = {c: synthetic_update(c, 1, dim) for c in range(1, n + 1)}
    ring = setup_keys(cfg, inputs).keys if cfg.is_ckks else None
    times = []
    res = None
    for i in range(repeat + 1):
        t0 = time.perf_counter()
        res = run_round(cfg, inputs, round_id=i + 1, keys=ring)
        if i:
            times.append(time.perf_counter() - t0)
    assert res is not None
    return {"round_s_median": statistics.median(times), "round_s_all": times,
            "bytes_up_per_client": float(np.mean(list(res.bytes_up.values()))),
            "bytes_down_per_client": float(np.mean(list(res.bytes_down.values())))}


def run(*, n: int, dim: int, rounds: int, protocols: list[str], curve_modes: list[bool],
        inproc_repeat: int, timeout_s: float) -> dict[str, Any]:
    """Measure every (protocol, curve) pair; return the JSON document."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="secagg-bench-runtime-") as d:
        tmp = Path(d)
        for protocol in protocols:
            for curve in curve_modes:
                inproc = _inproc(protocol, n, dim, curve, inproc_repeat)
                zmq_ = _runtime(protocol, n, dim, rounds, curve, tmp, timeout_s)
                ratio = (zmq_["round_s_median"] / inproc["round_s_median"]
                         if zmq_["round_s_median"] else None)
                row = {"protocol": protocol, "curve": curve, "active": curve, "n": n,
                       "dim": dim, "inproc": inproc, "zmq": zmq_,
                       "zmq_over_inproc": ratio,
                       "overhead": None if ratio is None else ratio - 1.0}
                rows.append(row)
                print(_line(row), flush=True)
    return {"benchmark": "runtime", "state_broadcast": False, "rounds": rounds,
            "statistic": "median of rounds 2..R (ZeroMQ); median of repeats after a warm-up "
                         "(in-process)",
            "target": "overhead < 0.20 at n=20, dim=1e6, no Curve",
            "machine": machine_info(), "results": rows}


def _line(row: dict[str, Any]) -> str:
    z, i = row["zmq"], row["inproc"]
    zr = z["round_s_median"]
    return (f"{row['protocol']:8s} curve={'on ' if row['curve'] else 'off'} n={row['n']} "
            f"dim={row['dim']}: in-process {i['round_s_median']:.3f} s, ZeroMQ "
            f"{'n/a' if zr is None else f'{zr:.3f} s'} (x{row['zmq_over_inproc'] or 0:.2f}), "
            f"up {(z['bytes_up_per_client'] or 0) / 1e6:.2f} MB / down "
            f"{(z['bytes_down_per_client'] or 0) / 1e6:.2f} MB per client "
            f"(in-process up {i['bytes_up_per_client'] / 1e6:.2f} MB / down "
            f"{i['bytes_down_per_client'] / 1e6:.2f} MB), rounds ok {z['rounds_ok']}/"
            f"{z['rounds_total']}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``secagg bench runtime``."""
    ap = argparse.ArgumentParser(prog="secagg bench runtime", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--dim", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=4, help="ZeroMQ rounds (median of 2..R)")
    ap.add_argument("--protocols", default="secagg+,ckks")
    ap.add_argument("--curve", choices=("both", "on", "off"), default="both")
    ap.add_argument("--inproc-repeat", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per ZeroMQ run")
    ap.add_argument("--json", default="benchmarks/results/runtime.json")
    a = ap.parse_args(argv)
    modes = {"both": [False, True], "on": [True], "off": [False]}[a.curve]
    res = run(n=a.n, dim=a.dim, rounds=a.rounds, protocols=a.protocols.split(","),
              curve_modes=modes, inproc_repeat=a.inproc_repeat, timeout_s=a.timeout)
    res["cpus_visible"] = len(os.sched_getaffinity(0))
    print(f"wrote {write_json(a.json, res)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
