"""``secagg bench ckks-runtime``: the CKKS server's add through ``secagg run``, 1 vs N workers.

``secagg bench ckks`` measured the server's add split by chunk positions across two spawned
processes (``add_s_2proc``) against one process (``add_s_1proc``), with every upload already
in place. This runs the real thing: ``secagg run --protocol ckks --insecure --dim D --n N
--rounds R --no-state-broadcast --server-workers W`` for ``W = 1`` (the server adds in its
own process) and ``W = --workers``, alternating, ``--repeat`` times, in one script. Each
round's summary carries ``server_add.seconds``: the server's wall time inside the sum's
``add`` and ``result`` calls (checking, loading and adding every upload, then serializing the
sum; with workers: handing the slices over, waiting for the workers, gathering the slices),
i.e. what its round loop waited for. Only rounds that added all ``n`` uploads count (on a
loaded host the runtime can lose a client for a round). With workers, ``recv_seconds`` is each
worker's time receiving its slices from the pipe (the transfer cost) and ``worker_seconds`` all
its time in the round (receiving, loading, adding, serializing). Per run: the median over
rounds ``2..R`` (round 1 pays the key setup and, with workers, their start-up); per setting:
the median of the runs, and the median of the per-repeat ratios (neighbouring runs share
the host's load best). A run is stopped once its summary has ``R`` completed rounds.

The clients run at nice 19 (this script lowers every client thread's priority as the client
starts): on a 2-core host twenty clients encrypting would otherwise take the very cores the
server's second worker needs, whereas in a deployment they run on their own machines. Without
it (``--client-nice 0``) the server, in one process or in two, only gets the CPU share left
over by the clients while they encrypt, and the workers gain nothing.

``--insecure`` keeps CurveZMQ's decryption of 8 MB uploads off the server's cores while it
adds (the add is the same either way). The machine is shared: read ratios from one run of
this script, not across runs. The benchmark's own figure (``benchmarks/results/ckks.json``,
the row of the same layout) is quoted next to it, and the same pool is timed without the
runtime (``pool_alone``: the uploads already in memory, as that benchmark does).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._timing import machine_info, write_json

__all__ = ["main", "run"]

PY = [sys.executable, "-m", "secagg.fl_core.cli"]
BENCH_ROW = "ckks default (scale 14) exact-4096 16b x2/slot seeded"


def _one_run(workers: int, *, n: int, dim: int, rounds: int, folder: Path,
             timeout_s: float, nice: int) -> dict[str, Any]:
    cmd = [*PY, "run", "--protocol", "ckks", "--insecure", "--n", str(n), "--dim", str(dim),
           "--rounds", str(rounds), "--deadline", "300", "--join-timeout", "120",
           "--no-state-broadcast", "--server-workers", str(workers), "--run-dir", str(folder)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        docs = _wait_for_rounds(proc, folder / "run_summary.json", rounds, t0 + timeout_s,
                                nice)
    finally:
        _end(proc)
    wall = time.perf_counter() - t0
    ok = [r for r in docs if r["ok"]]
    # rounds 2..R in which every client's upload was added (a loaded host can drop clients)
    full = [r for r in docs[1:] if r["ok"] and r["server_add"]["terms"] == n]
    return {
        "workers": workers, "rounds_ok": len(ok),
        "terms": [r["server_add"]["terms"] for r in docs],
        "server_add_s": [r["server_add"]["seconds"] for r in docs],
        "server_add_s_median": statistics.median(r["server_add"]["seconds"] for r in full)
        if full else None,
        "full_rounds": [r["round"] for r in full],
        "round_s": [r["seconds"] for r in docs],
        "server_add": [r["server_add"] for r in docs],
        "wall_s": round(wall, 2),
    }


def _nice_clients(runner: int, seen: set[int], nice: int) -> None:
    """Lower to ``nice`` every thread of the ``secagg client`` processes that ``secagg run``
    (pid ``runner``, started by this script) started, not yet in ``seen``. They are its
    children, each in a session of its own (``secagg.fl_core.cli.supervise.spawn``)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in seen:
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            if int(stat.rsplit(")", 1)[1].split()[1]) != runner or b"client" not in cmd:
                continue
            for tid in os.listdir(f"/proc/{entry}/task"):
                os.setpriority(os.PRIO_PROCESS, int(tid), nice)
            seen.add(int(entry))
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile


def _wait_for_rounds(proc: subprocess.Popen[bytes], summary: Path, rounds: int,
                     deadline: float, nice: int) -> list[dict[str, Any]]:
    """The server's round summaries once all ``rounds`` are in (or the run ended); meanwhile
    the clients are reniced as they start.

    Raises:
        TimeoutError: not done by ``deadline``.
        RuntimeError: the run ended without a summary.
    """
    niced: set[int] = set()
    while time.perf_counter() < deadline:
        if nice:
            _nice_clients(proc.pid, niced, nice)
        docs: list[dict[str, Any]] = []
        if summary.is_file():
            try:
                docs = json.loads(summary.read_text())["rounds"]
            except ValueError:  # being replaced right now
                pass
        if sum(r["ok"] for r in docs) >= rounds or (proc.poll() is not None and docs):
            return docs
        if proc.poll() is not None:
            raise RuntimeError(f"secagg run exited ({proc.returncode}) without a summary")
        time.sleep(0.2)
    raise TimeoutError(f"secagg run did not finish {rounds} rounds in time")


def _end(proc: subprocess.Popen[bytes]) -> None:
    """Stop the run (SIGTERM: ``secagg run`` stops its server, the server's workers and the
    clients, then exits): the figures are in, and clients that missed the server's goodbye
    would otherwise idle for the runner's grace period."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    try:  # the runner's own group (its children, in sessions of their own, it has stopped)
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _bench_figure(path: Path) -> dict[str, Any] | None:
    """The row of ``secagg bench ckks`` for the layout ``secagg run`` uses at n=20."""
    if not path.is_file():
        return None
    doc = json.loads(path.read_text())
    for row in doc["rows"]:
        if row["preset"] == BENCH_ROW:
            keep = ("preset", "values", "clients", "add_s_1proc", "add_s_2proc",
                    "add_speedup_2proc", "scatter_s_2proc", "exact_2proc")
            return {**{k: row.get(k) for k in keep}, "when": doc["machine"]["when"]}
    return None


def _pool_alone(n: int, dim: int, workers: int, reps: int = 3) -> dict[str, Any]:
    """The same :class:`WorkerPool` without the runtime, as ``secagg bench ckks`` measures:
    ``n`` uploads of ``dim`` values (the runtime's layout) already in memory, in-process
    :class:`CkksSum` against the pool, best of ``reps``; the sums must be byte-equal."""
    import numpy as np

    from secagg import ckks
    from secagg.ckks_sum import CkksSum
    from secagg.fl_core.runtime.ckks_workers import WorkerPool
    from secagg.protocols import SecAggConfig

    layout = SecAggConfig(protocol="ckks", n=n).ckks_layout
    assert layout is not None
    key = ckks.CkksSecretContext.generate(layout.preset)
    pub = key.public_context()
    gen = np.random.default_rng(3)  # benchmark data only
    xs = [gen.integers(-1000, 1000, dim) for _ in range(2)]
    enc = [ckks.encrypt_ints(key, x, layout, seeded=True) for x in xs]
    uploads = [[bytes(c) for c in enc[i % 2]] for i in range(n)]  # distinct objects
    one, many, same = float("inf"), float("inf"), True
    with WorkerPool(workers, wait_s=300.0) as pool:
        for _ in range(reps):
            t0 = time.perf_counter()
            acc = CkksSum(pub, layout, count=dim)
            for up in uploads:
                acc.add(up)
            want = acc.result()
            one = min(one, time.perf_counter() - t0)
            t0 = time.perf_counter()
            psum = pool(pub, layout, count=dim)
            for up in uploads:
                psum.add(up)
            same = same and psum.result() == want
            many = min(many, time.perf_counter() - t0)
    return {"add_s_1proc": one, f"add_s_{workers}workers": many, "ratio": one / many,
            "byte_equal": same, "last_stats": pool.last_stats()}


def run(*, n: int, dim: int, rounds: int, workers: int, repeat: int, timeout_s: float,
        client_nice: int = 19) -> dict[str, Any]:
    """Alternate ``W = 1`` and ``W = workers`` runs ``repeat`` times; return the document."""
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="secagg-bench-ckks-runtime-") as d:
        for rep in range(repeat):
            for w in (1, workers):
                row = _one_run(w, n=n, dim=dim, rounds=rounds,
                               folder=Path(d) / f"w{w}-{rep}", timeout_s=timeout_s,
                               nice=client_nice)
                row["repeat"] = rep
                runs.append(row)
                print(f"repeat {rep} workers {w}: server add {row['server_add_s_median']} s "
                      f"(rounds {row['server_add_s']}), rounds ok {row['rounds_ok']}/"
                      f"{len(row['terms'])}, uploads added {row['terms']}", flush=True)
    pairs = [a["server_add_s_median"] / b["server_add_s_median"]
             for a, b in zip(runs[::2], runs[1::2], strict=True)
             if a["server_add_s_median"] and b["server_add_s_median"]]
    med = {w: statistics.median(r["server_add_s_median"] for r in runs
                                if r["workers"] == w and r["server_add_s_median"] is not None)
           for w in (1, workers)}
    pool_stats = [s for r in runs if r["workers"] == workers for s in r["server_add"][1:]
                  if s["terms"] == n]
    return {
        "benchmark": "ckks_runtime", "machine": machine_info(),
        "config": {"n": n, "dim": dim, "rounds": rounds, "workers": workers, "repeat": repeat,
                   "protocol": "ckks", "insecure": True, "client_nice": client_nice},
        "statistic": "per run: median of server_add.seconds over rounds 2..R that added all "
                     "n uploads; per setting: median of the runs",
        "server_add_s_1": med[1], f"server_add_s_{workers}": med[workers],
        "ratio": med[1] / med[workers],
        "ratio_per_repeat": [round(r, 3) for r in pairs],
        "ratio_median_of_repeats": statistics.median(pairs) if pairs else None,
        "pool_recv_s_median": statistics.median(max(s["recv_seconds"]) for s in pool_stats),
        "pool_send_s_median": statistics.median(max(s["send_seconds"]) for s in pool_stats),
        "pool_worker_s_median": statistics.median(max(s["worker_seconds"])
                                                  for s in pool_stats),
        "pool_alone": _pool_alone(n, dim, workers),
        "bench_ckks": _bench_figure(Path("benchmarks/results/ckks.json")),
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``secagg bench ckks-runtime``."""
    ap = argparse.ArgumentParser(prog="secagg bench ckks-runtime", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20, help="clients (the uploads the server adds)")
    ap.add_argument("--dim", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=4, help="rounds per run (median of 2..R)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5, help="runs per setting, alternating")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per run")
    ap.add_argument("--client-nice", type=int, default=19, choices=range(20), metavar="0-19",
                    help="the clients' nice value (0: as started)")
    ap.add_argument("--json", default="benchmarks/results/ckks_runtime_workers.json")
    a = ap.parse_args(argv)
    doc = run(n=a.n, dim=a.dim, rounds=a.rounds, workers=a.workers, repeat=a.repeat,
              timeout_s=a.timeout, client_nice=a.client_nice)
    b = doc["bench_ckks"] or {}
    print(f"secagg run: server add {doc['server_add_s_1']:.3f} s with 1 worker, "
          f"{doc[f'server_add_s_{a.workers}']:.3f} s with {a.workers}: x{doc['ratio']:.2f} "
          f"(per repeat {doc['ratio_per_repeat']}) "
          f"(secagg bench ckks: {b.get('add_s_1proc', float('nan')):.3f} s / "
          f"{b.get('add_s_2proc', float('nan')):.3f} s, x{b.get('add_speedup_2proc', 0):.2f})")
    alone = doc["pool_alone"]
    print(f"the same pool without the runtime (uploads in memory): "
          f"{alone['add_s_1proc']:.3f} s / {alone[f'add_s_{a.workers}workers']:.3f} s, "
          f"x{alone['ratio']:.2f}, byte-equal {alone['byte_equal']}")
    print(f"wrote {write_json(a.json, doc)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
