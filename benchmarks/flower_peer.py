"""Time Flower's built-in SecAgg+ (and plain FedAvg) as a peer for our protocols.

Standalone: it needs ``flwr[simulation]`` and runs in its own venv (see
``benchmarks/flower_peer.sh``), so flwr never enters the main venv. Nothing here imports
the ``secagg`` package.

Set-up, as in shared/LIMITS.md ("Peers on the same machine kind"):

* ``flwr.simulation.run_simulation`` with the Ray backend (``num_cpus`` capped);
* a ``ServerApp`` that builds a ``LegacyContext`` and runs
  ``DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(num_shares=K, reconstruction_threshold=T))``
  (``num_shares`` 0 or >= N: full graph, i.e. SecAgg), or the default fit workflow for
  the plain FedAvg baseline;
* a ``ClientApp`` with ``mods=[secaggplus_mod]`` whose ``fit`` returns a float32 vector of
  length ``dim``;
* dropouts: a fixed set of floor(P*N) partition ids RAISE in ``fit``. Under
  ``secaggplus_mod`` ``fit`` runs in the collect-masked-vectors stage, i.e. after the
  share-keys stage, so the server has to reconstruct their pairwise masks.

Each fit round is timed with ``time.perf_counter`` by a wrapper around the fit workflow.
Round 1 includes Ray start-up (9-11 s), so ``round_s`` is the median of rounds 2..R.
Each protocol runs in its own child process (fresh Ray, memory handed back in between).

Usage (through the wrapper, which creates the venv)::

    bash benchmarks/flower_peer.sh --clients 20 --dim 1000000 --dropout 0.1 \
        --num-shares 5 --threshold 3 --rounds 4 --json benchmarks/results/flower_x.json

The JSON file holds a list with one record per protocol.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

NUM_EXAMPLES = 100  # weight of every client; SecAgg+ max_weight stays at 1000
SECAGG_TOL = 1e-3  # stochastic quantisation (clip 8, 2**22 levels) stays far below this
PLAIN_TOL = 1e-5


# --------------------------------------------------------------------------- helpers
def dropped_ids(clients: int, dropout: float) -> list[int]:
    """Deterministic, evenly spread set of floor(P*N) partition ids that drop."""
    d = int(dropout * clients + 1e-9)
    if d <= 0:
        return []
    return sorted({(i * clients) // d for i in range(d)})


def client_vector(seed: int, pid: int, dim: int) -> np.ndarray:
    """Client ``pid``'s update: uniform in [-1, 1), float32, reproducible on the server."""
    rng = np.random.default_rng([seed, pid])
    vec = rng.random(dim, dtype=np.float32)
    vec *= 2.0
    vec -= 1.0
    return vec


def expected_mean(seed: int, clients: int, dim: int, dropped: list[int]) -> np.ndarray:
    acc = np.zeros(dim, dtype=np.float64)
    live = [pid for pid in range(clients) if pid not in set(dropped)]
    for pid in live:
        acc += client_vector(seed, pid, dim)
    return acc / max(len(live), 1)


def full_graph(num_shares: int, clients: int) -> bool:
    return num_shares <= 0 or num_shares >= clients


def protocol_name(kind: str, num_shares: int, clients: int) -> str:
    if kind == "plain":
        return "flower-plain"
    return "flower-secagg" if full_graph(num_shares, clients) else "flower-secagg+"


def default_threshold(num_shares: int, clients: int) -> int:
    k = clients if full_graph(num_shares, clients) else num_shares
    return max(2, k // 2 + 1)


# --------------------------------------------------------------------------- one run
def run_one(args: argparse.Namespace, kind: str) -> dict[str, Any]:
    """Run one protocol in this process; return its record."""
    import flwr
    from flwr.client import ClientApp, NumPyClient
    from flwr.client.mod import secaggplus_mod
    from flwr.common import Context, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.common.serde import message_to_proto
    from flwr.server import LegacyContext, ServerApp, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
    from flwr.server.workflow.constant import MAIN_PARAMS_RECORD
    from flwr.server.workflow.default_workflows import default_fit_workflow
    from flwr.simulation import run_simulation

    n, dim, seed = args.clients, args.dim, args.seed
    dropped = dropped_ids(n, args.dropout)
    dropped_set = frozenset(dropped)
    random.seed(seed)  # Flower shuffles the SecAgg+ ring with the `random` module
    sizes_dir = tempfile.mkdtemp(prefix="flower_peer_sizes_")

    # ---- client side (pickled into the Ray actors) ----
    class PeerClient(NumPyClient):
        def __init__(self, pid: int) -> None:
            self.pid = pid

        def fit(self, parameters: Any, config: Any) -> tuple[list[np.ndarray], int, dict]:
            if self.pid in dropped_set:
                raise RuntimeError(f"simulated dropout of partition {self.pid}")
            return [client_vector(seed, self.pid, dim)], NUM_EXAMPLES, {}

    def client_fn(context: Context) -> Any:
        return PeerClient(int(context.node_config["partition-id"])).to_client()

    def size_mod(msg: Any, ctxt: Any, call_next: Any) -> Any:
        """Record reply sizes in round 1 only (round 1 is not timed)."""
        if msg.metadata.group_id != "1":
            return call_next(msg, ctxt)
        stage = "fit"
        cfg = msg.content.config_records.get("secaggplus_configs")
        if cfg is not None and "stage" in cfg:
            stage = str(cfg["stage"])
        down = message_to_proto(msg).ByteSize()
        out = call_next(msg, ctxt)
        up = message_to_proto(out).ByteSize()
        payload = sum(rec.count_bytes() for rec in out.content.values())
        pid = int(ctxt.node_config["partition-id"])
        line = json.dumps({"pid": pid, "stage": stage, "up": up, "down": down, "payload": payload})
        with open(os.path.join(sizes_dir, f"sizes-{os.getpid()}.jsonl"), "a") as fh:
            fh.write(line + "\n")
        return out

    mods = [size_mod] if args.measure_bytes else []
    if kind == "secagg":
        mods.append(secaggplus_mod)
    client_app = ClientApp(client_fn=client_fn, mods=mods)

    # ---- server side (runs in a thread of this process) ----
    rounds: list[dict[str, Any]] = []
    expected = expected_mean(seed, n, dim, dropped)

    class TimedStrategy(FedAvg):
        def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> Any:
            self.last_counts = (len(results), len(failures))
            return super().aggregate_fit(server_round, results, failures)

    strategy = TimedStrategy(
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        min_fit_clients=n,
        min_available_clients=n,
        accept_failures=True,
        initial_parameters=ndarrays_to_parameters([np.zeros(dim, dtype=np.float32)]),
    )

    stage_s: dict[str, float] = {}

    class StageTimedSecAggPlus(SecAggPlusWorkflow):
        """Stock SecAggPlusWorkflow; only records the wall time of each of its stages."""

        def _timed(self, name: str, fn: Any, *a: Any) -> bool:
            t0 = time.perf_counter()
            ok = bool(fn(*a))
            stage_s[name] = time.perf_counter() - t0
            return ok

        def setup_stage(self, *a: Any) -> bool:
            return self._timed("setup", super().setup_stage, *a)

        def share_keys_stage(self, *a: Any) -> bool:
            return self._timed("share_keys", super().share_keys_stage, *a)

        def collect_masked_vectors_stage(self, *a: Any) -> bool:
            return self._timed("collect_masked_vectors", super().collect_masked_vectors_stage, *a)

        def unmask_stage(self, *a: Any) -> bool:
            return self._timed("unmask", super().unmask_stage, *a)

    if kind == "secagg":
        # num_shares=1.0 (a float) is Flower's "all sampled clients", i.e. SecAgg.
        k_arg: int | float = 1.0 if full_graph(args.num_shares, n) else args.num_shares
        inner: Any = StageTimedSecAggPlus(num_shares=k_arg, reconstruction_threshold=args.threshold)
    else:
        inner = default_fit_workflow

    def timed_fit(grid: Any, context: Any) -> None:
        strategy.last_counts = (0, 0)
        stage_s.clear()
        t0 = time.perf_counter()
        inner(grid, context)
        dt = time.perf_counter() - t0
        after = context.state.array_records[MAIN_PARAMS_RECORD]
        aggregated = strategy.last_counts[0] > 0
        err = float("nan")
        if aggregated:
            from flwr.compat.common import recorddict_compat as compat

            params = compat.arrayrecord_to_parameters(after, keep_input=True)
            got = parameters_to_ndarrays(params)[0].astype(np.float64).ravel()
            err = float(np.max(np.abs(got - expected))) if got.size == dim else float("inf")
        rounds.append(
            {
                "round_s": dt,
                "aggregated": aggregated,
                "results": strategy.last_counts[0],
                "failures": strategy.last_counts[1],
                "max_abs_err": err,
                "stage_s": dict(stage_s),
            }
        )
        print(
            f"[flower_peer] {kind} round {len(rounds)}: {dt:.3f} s, "
            f"results={strategy.last_counts[0]} failures={strategy.last_counts[1]} "
            f"max_abs_err={err:.3g} " + " ".join(f"{k}={v:.2f}" for k, v in stage_s.items()),
            file=sys.stderr,
            flush=True,
        )

    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Any, context: Context) -> None:
        legacy = LegacyContext(
            context=context, config=ServerConfig(num_rounds=args.rounds), strategy=strategy
        )
        DefaultWorkflow(fit_workflow=timed_fit)(grid, legacy)

    backend_config = {
        "client_resources": {"num_cpus": args.client_cpus, "num_gpus": 0.0},
        "init_args": {
            "num_cpus": args.ray_cpus,
            "num_gpus": 0,
            "object_store_memory": args.object_store_mb * 1024 * 1024,
            "include_dashboard": False,
            "logging_level": "WARNING",
        },
    }
    load_start = os.getloadavg()[0]
    t_start = time.perf_counter()
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=n,
        backend_config=backend_config,
        verbose_logging=False,
    )
    total_s = time.perf_counter() - t_start

    # ---- bytes ----
    per_client: dict[int, dict[str, dict[str, int]]] = {}
    for path in Path(sizes_dir).glob("sizes-*.jsonl"):
        for raw in path.read_text().splitlines():
            rec = json.loads(raw)
            per_client.setdefault(rec["pid"], {})[rec["stage"]] = rec
        path.unlink()
    os.rmdir(sizes_dir)
    live = [pid for pid in range(n) if pid not in dropped_set]
    full_clients = [per_client[p] for p in live if p in per_client]
    bytes_info: dict[str, Any]
    if full_clients:
        ups = [sum(s["up"] for s in c.values()) for c in full_clients]
        downs = [sum(s["down"] for s in c.values()) for c in full_clients]
        stages = sorted({st for c in full_clients for st in c})
        bytes_info = {
            "bytes_up_per_client": int(statistics.median(ups)),
            "bytes_down_per_client": int(statistics.median(downs)),
            "bytes_up_by_stage": {
                st: int(statistics.median(c[st]["up"] for c in full_clients if st in c))
                for st in stages
            },
            "bytes_up_payload_per_client": int(
                statistics.median(sum(s["payload"] for s in c.values()) for c in full_clients)
            ),
            "bytes_method": "measured: protobuf-serialised reply Message "
            "(flwr.common.serde.message_to_proto(msg).ByteSize()), round 1, summed over "
            "the protocol's stages, median over surviving clients; payload = Flower's "
            "Record.count_bytes()",
        }
    else:
        per_param = 8 if kind == "secagg" else 4
        bytes_info = {
            "bytes_up_per_client": per_param * dim,
            "bytes_method": f"computed: {per_param}*dim",
        }

    timed = [r["round_s"] for r in rounds[1:]]
    errs = [r["max_abs_err"] for r in rounds]
    tol = SECAGG_TOL if kind == "secagg" else PLAIN_TOL
    correct = bool(rounds) and all(
        r["aggregated"] and r["results"] == len(live) and r["max_abs_err"] <= tol for r in rounds
    )
    k_eff = n if full_graph(args.num_shares, n) else args.num_shares | 1  # Flower makes K odd
    return {
        "peer": "flower",
        "flwr_version": flwr.__version__,
        "protocol": protocol_name(kind, args.num_shares, n),
        "clients": n,
        "dim": dim,
        "dropout": args.dropout,
        "dropped_partition_ids": dropped,
        "dropout_model": "listed partitions raise in fit(); under secaggplus_mod that is the "
        "collect-masked-vectors stage, after share keys",
        "num_shares": k_eff if kind == "secagg" else None,
        "threshold": args.threshold if kind == "secagg" else None,
        "rounds": args.rounds,
        "round_s": statistics.median(timed) if timed else None,
        "round_s_all": [r["round_s"] for r in rounds],
        "stage_s_median": {
            st: statistics.median(r["stage_s"][st] for r in rounds[1:])
            for st in (rounds[-1]["stage_s"] if len(rounds) > 1 else {})
            if all(st in r["stage_s"] for r in rounds[1:])
        },
        "round_1_note": "round 1 includes Ray start-up and byte measurement; not in round_s",
        **bytes_info,
        "correct": correct,
        "max_abs_err": max(errs) if errs else None,
        "tolerance": tol,
        "total_s": total_s,
        "loadavg_1min_start_end": [load_start, os.getloadavg()[0]],
        "ray_num_cpus": args.ray_cpus,
        "client_num_cpus": args.client_cpus,
        "python": sys.version.split()[0],
        "numpy_version": np.__version__,
    }


# --------------------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--dim", type=int, default=1_000_000)
    p.add_argument("--dropout", type=float, default=0.0, help="fraction of clients that raise")
    p.add_argument("--num-shares", type=int, default=5, help="0 or >= clients: full graph")
    p.add_argument(
        "--threshold",
        type=int,
        default=None,
        help="reconstruction threshold (default: majority of the shares)",
    )
    p.add_argument("--rounds", type=int, default=4, help=">= 2; round 1 is not timed")
    p.add_argument("--json", type=Path, default=None, help="write the records here")
    p.add_argument(
        "--protocols", default="secagg,plain", help="comma list of: secagg, plain (default both)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ray-cpus", type=int, default=2)
    p.add_argument("--client-cpus", type=float, default=1.0)
    p.add_argument("--object-store-mb", type=int, default=2048)
    p.add_argument("--no-measure-bytes", dest="measure_bytes", action="store_false")
    p.add_argument("--child-timeout", type=float, default=1800.0)
    p.add_argument("--child", choices=["secagg", "plain"], help=argparse.SUPPRESS)
    p.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.clients < 3:
        p.error("--clients must be >= 3")
    if args.rounds < 2:
        p.error("--rounds must be >= 2 (round 1 carries Ray start-up)")
    if not 0.0 <= args.dropout < 1.0:
        p.error("--dropout must be in [0, 1)")
    if not full_graph(args.num_shares, args.clients) and args.num_shares < 3:
        p.error("--num-shares must be 0, >= 3, or >= clients")
    if args.threshold is None:
        args.threshold = default_threshold(args.num_shares, args.clients)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        logging.getLogger("flwr").setLevel(logging.WARNING)
        record = run_one(args, args.child)
        args.child_out.write_text(json.dumps(record, indent=2))
        return 0

    kinds = [k.strip() for k in args.protocols.split(",") if k.strip()]
    records: list[dict[str, Any]] = []
    passthrough = [
        "--clients",
        str(args.clients),
        "--dim",
        str(args.dim),
        "--dropout",
        str(args.dropout),
        "--num-shares",
        str(args.num_shares),
        "--threshold",
        str(args.threshold),
        "--rounds",
        str(args.rounds),
        "--seed",
        str(args.seed),
        "--ray-cpus",
        str(args.ray_cpus),
        "--client-cpus",
        str(args.client_cpus),
        "--object-store-mb",
        str(args.object_store_mb),
    ]
    if not args.measure_bytes:
        passthrough.append("--no-measure-bytes")
    rc = 0
    for kind in kinds:
        if kind not in ("secagg", "plain"):
            print(f"unknown protocol {kind!r}", file=sys.stderr)
            return 2
        with tempfile.TemporaryDirectory(prefix="flower_peer_") as tmp:
            out = Path(tmp) / "record.json"
            cmd = [
                sys.executable,
                os.path.abspath(__file__),
                *passthrough,
                "--child",
                kind,
                "--child-out",
                str(out),
            ]
            try:
                proc = subprocess.run(cmd, timeout=args.child_timeout, check=False)
                code = proc.returncode
            except subprocess.TimeoutExpired:
                code = 124
            if code == 0 and out.exists():
                record = json.loads(out.read_text())
            else:
                rc = 1
                record = {
                    "peer": "flower",
                    "protocol": protocol_name(kind, args.num_shares, args.clients),
                    "clients": args.clients,
                    "dim": args.dim,
                    "dropout": args.dropout,
                    "error": f"child exited with code {code}",
                }
        records.append(record)
        print(
            json.dumps(
                {
                    k: record.get(k)
                    for k in (
                        "protocol",
                        "clients",
                        "dim",
                        "dropout",
                        "num_shares",
                        "threshold",
                        "round_s",
                        "bytes_up_per_client",
                        "correct",
                        "error",
                    )
                    if k in record
                }
            )
        )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(records, indent=2) + "\n")
    return rc


if __name__ == "__main__":
    sys.exit(main())
