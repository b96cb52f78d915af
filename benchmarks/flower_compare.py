"""Our SecAgg+ inside Flower vs Flower's built-in SecAgg+, on the same Flower app.

The app is the same for both (a ``NumPyClient`` whose ``fit`` returns a float32 vector of
length ``dim`` in [-1, 1), a ``FedAvg`` strategy, ``DefaultWorkflow``, ``run_simulation`` with
the Ray backend); only the lines of the integration differ (``mods=[secaggplus_mod]`` +
``SecAggPlusWorkflow(num_shares=k+1, reconstruction_threshold=t)`` vs ``mods=[secagg_mod]`` +
``SecAggWorkflow("secagg+", k=k, threshold=t)``: the same neighbour graph size, since a
Flower share count includes the client itself).

Dropout: the same floor(p*n) partitions FAIL (raise) at the same point, after the key shares
were sent and before the masked input: Flower runs ``fit`` in that stage, so there ``fit``
raises; ours trains in its first stage, so a mod raises when the masked input is due.

Measured, as in :mod:`benchmarks.flower_peer`: round wall time (median of rounds 2..R; round
1 includes Ray start-up) and bytes per surviving client (protobuf size of every Message to and
from it in round 1, summed over stages, median over survivors). Each side runs in its own
child process (fresh Ray). Correctness: every round's new global model must equal the mean of
the survivors' vectors.

Usage::

    python -m benchmarks.flower_compare --clients 20 --dim 100000 --dropout 0.1 --rounds 3 \
        --json benchmarks/results/flower_compare.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

NUM_EXAMPLES = 100


def dropped_ids(clients: int, dropout: float) -> list[int]:
    """Deterministic, evenly spread floor(p*n) partition ids (as benchmarks.flower_peer)."""
    d = int(dropout * clients + 1e-9)
    return sorted({(i * clients) // d for i in range(d)}) if d > 0 else []


def client_vector(seed: int, pid: int, dim: int) -> np.ndarray:
    """Partition ``pid``'s update: uniform in [-1, 1), float32."""
    return (np.random.default_rng([seed, pid]).random(dim, dtype=np.float32) * 2.0 - 1.0)


def run_side(args: argparse.Namespace, side: str) -> dict[str, Any]:
    """Run ``side`` ("ours" or "flower") in this process; return its record."""
    import flwr
    import flwr.compat.common.recorddict_compat as compat
    from flwr.client import ClientApp, NumPyClient
    from flwr.client.mod import secaggplus_mod
    from flwr.common import Context, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.common.serde import message_to_proto
    from flwr.server import LegacyContext, ServerApp, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
    from flwr.server.workflow.constant import MAIN_PARAMS_RECORD
    from flwr.simulation import run_simulation

    from secagg.fl_core.flower import SecAggWorkflow, secagg_mod
    from secagg.fl_core.flower._state import RECORD

    n, dim, seed = args.clients, args.dim, args.seed
    dropped = frozenset(dropped_ids(n, args.dropout))
    live = [p for p in range(n) if p not in dropped]
    expected = np.mean([client_vector(seed, p, dim).astype(np.float64) for p in live], axis=0)
    sizes_dir = tempfile.mkdtemp(prefix="flower_compare_")

    class App(NumPyClient):
        def __init__(self, pid: int) -> None:
            self.pid = pid

        def fit(self, parameters: Any, config: Any) -> tuple[list[np.ndarray], int, dict[str, Any]]:
            if side == "flower" and self.pid in dropped:
                raise RuntimeError(f"simulated dropout of partition {self.pid}")
            return [client_vector(seed, self.pid, dim)], NUM_EXAMPLES, {}

    def client_fn(context: Context) -> Any:
        return App(int(context.node_config["partition-id"])).to_client()

    def size_mod(msg: Any, ctxt: Any, call_next: Any) -> Any:
        out = call_next(msg, ctxt)
        if msg.metadata.group_id == "1":
            line = json.dumps({"pid": int(ctxt.node_config["partition-id"]),
                               "down": message_to_proto(msg).ByteSize(),
                               "up": message_to_proto(out).ByteSize()})
            with open(os.path.join(sizes_dir, f"s-{os.getpid()}.jsonl"), "a") as fh:
                fh.write(line + "\n")
        return out

    def fail_mod(msg: Any, ctxt: Any, call_next: Any) -> Any:
        """Ours: the dropped partitions raise when their masked input is due (2nd step)."""
        cfg = msg.content.config_records.get(RECORD)
        pid = int(ctxt.node_config["partition-id"])
        if cfg is not None and cfg.get("phase") == "step" and pid in dropped:
            from flwr.app import ConfigRecord

            rec = ctxt.state.config_records.setdefault("bench.steps", ConfigRecord())
            key = f"r{cfg.get('round')}"
            rec[key] = int(rec.get(key, 0)) + 1
            if rec[key] == 2:
                raise RuntimeError(f"simulated dropout of partition {pid}")
        return call_next(msg, ctxt)

    mods: list[Any] = ([size_mod, fail_mod, secagg_mod] if side == "ours"
                       else [size_mod, secaggplus_mod])
    client_app = ClientApp(client_fn=client_fn, mods=mods)
    strategy = FedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=n,
                      min_available_clients=n, accept_failures=True,
                      initial_parameters=ndarrays_to_parameters([np.zeros(dim, np.float32)]))
    if side == "ours":
        inner: Any = SecAggWorkflow("secagg+", clip=1.0, k=args.k, threshold=args.threshold)
    else:
        inner = SecAggPlusWorkflow(num_shares=args.k + 1, reconstruction_threshold=args.threshold)
    rounds: list[dict[str, Any]] = []

    def timed_fit(grid: Any, context: Any) -> None:
        t0 = time.perf_counter()
        inner(grid, context)
        dt = time.perf_counter() - t0
        params = compat.arrayrecord_to_parameters(
            context.state.array_records[MAIN_PARAMS_RECORD], keep_input=True)
        got = parameters_to_ndarrays(params)[0].astype(np.float64).ravel()
        err = float(np.max(np.abs(got - expected))) if got.size == dim else float("inf")
        rounds.append({"round_s": dt, "max_abs_err": err})
        print(f"[flower_compare] {side} round {len(rounds)}: {dt:.3f} s err={err:.2g}",
              file=sys.stderr, flush=True)

    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Any, context: Context) -> None:
        legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=args.rounds),
                               strategy=strategy)
        DefaultWorkflow(fit_workflow=timed_fit)(grid, legacy)

    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=n,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": args.ray_cpus, "num_gpus": 0,
                                                 "include_dashboard": False,
                                                 "logging_level": "WARNING"}},
                   verbose_logging=False)
    per: dict[int, dict[str, int]] = {}
    for path in Path(sizes_dir).glob("s-*.jsonl"):
        for raw in path.read_text().splitlines():
            rec = json.loads(raw)
            agg = per.setdefault(rec["pid"], {"up": 0, "down": 0})
            agg["up"] += rec["up"]
            agg["down"] += rec["down"]
        path.unlink()
    os.rmdir(sizes_dir)
    surv = [per[p] for p in live if p in per]
    timed = [r["round_s"] for r in rounds[1:]] or [r["round_s"] for r in rounds]
    return {
        "side": side, "protocol": "secagg+ (ours, fl_core.flower)" if side == "ours"
        else "flower SecAggPlusWorkflow", "flwr_version": flwr.__version__,
        "clients": n, "dim": dim, "dropout": args.dropout,
        "dropped_partition_ids": sorted(dropped), "k": args.k, "threshold": args.threshold,
        "rounds": len(rounds), "round_s": statistics.median(timed),
        "round_s_all": [r["round_s"] for r in rounds],
        "max_abs_err": max((r["max_abs_err"] for r in rounds), default=float("nan")),
        "bytes_up_per_client": int(statistics.median(s["up"] for s in surv)) if surv else None,
        "bytes_down_per_client": int(statistics.median(s["down"] for s in surv)) if surv
        else None,
        "bytes_method": "protobuf size (message_to_proto(msg).ByteSize()) of every Message "
        "to/from the client in round 1, summed over stages, median over survivors",
    }


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.4g}"


def main(argv: list[str] | None = None) -> int:
    """Run both sides in child processes, print them side by side, write JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--dim", type=int, default=100_000)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--k", type=int, help="neighbours per client (Flower: k+1 shares); "
                    "default: our SecAgg+ rule for n")
    ap.add_argument("--threshold", type=int, help="default: our SecAgg+ rule for n")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ray-cpus", type=int, default=2)
    ap.add_argument("--side", choices=["ours", "flower"], help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from secagg.protocols.config import SecAggConfig

    cfg = SecAggConfig(protocol="secagg+", n=args.clients, k=args.k, threshold=args.threshold)
    args.k, args.threshold = cfg.k, cfg.threshold
    if args.side:
        print("RESULT " + json.dumps(run_side(args, args.side)), flush=True)
        return 0
    records = []
    for side in ("ours", "flower"):
        cmd = [sys.executable, "-m", "benchmarks.flower_compare", "--side", side,
               "--clients", str(args.clients), "--dim", str(args.dim), "--dropout",
               str(args.dropout), "--rounds", str(args.rounds), "--k", str(args.k),
               "--threshold", str(args.threshold), "--seed", str(args.seed),
               "--ray-cpus", str(args.ray_cpus)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
        if out.returncode != 0 or not lines:
            print(out.stderr[-3000:], file=sys.stderr)
            return 1
        records.append(json.loads(lines[-1][7:]))
    print(f"{'':28}{'ours (secagg+)':>18}{'flower SecAgg+':>18}")
    for key in ("round_s", "bytes_up_per_client", "bytes_down_per_client", "max_abs_err"):
        a, b = records[0][key], records[1][key]
        print(f"{key:28}{_fmt(a):>18}{_fmt(b):>18}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(records, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
