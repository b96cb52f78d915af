"""``secagg bench scale``: SecAgg+ from 10^2 to 10^5 clients in one process, streamed.

Each n runs in a fresh child process (so one n's peak RSS does not leak into the next) through
:func:`secagg.protocols.stream.stream_round`: inputs are regenerated from a per-client seed,
messages are routed as they are produced, participants are released once they are done. A
fraction ``--dropout`` of the clients (a seeded choice) fails to send its masked input, i.e.
after sharing keys: the costly case, their pairwise masks are recovered from key shares. The
config tolerates that rate (``dropout_rate = --dropout`` unless ``--dropout-rate`` is given;
``secagg bench protocol`` uses ``max(dropout, 0.1)``, hence its larger k).

Per n the row records k, t, bits; per-client compute (mean, max, and by client stage); bytes
up/down per client; the server's seconds by stage (timers around each server call: receive
per stage and close per stage) and by kind of work (exclusive time inside the primitives it
calls: wire decode, the sum's unpack-and-add, Shamir reconstruction, key agreement for the
dropped, mask expansion, aggregate decode; ``other`` is the rest: validation, bookkeeping,
building rosters, relays and requests); the same by kind for a sample of clients; the peak RSS
(``VmHWM``) and the RSS after each stage; and correctness: the unmasked ring sum must equal,
exactly, the sum of the survivors' fixed-point encoded inputs, and the decoded float sum must
be within rounding of theirs. The sweep then fits per-client CPU against log2 n.

Timers are ``perf_counter`` as in every harness, plus CPU time (``thread_time``) per client and
for the server: on a shared, oversubscribed machine the wall-clock figures also hold time
slices lost to other processes, so the fit, the plot and the splits by kind use CPU seconds
(the timed split by kind scaled to the CPU total).
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import importlib
import json
import math
import pstats
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from benchmarks._timing import machine_info, write_json
from secagg.protocols import SecAggConfig, server
from secagg.protocols.encoding import encode_input
from secagg.protocols.stream import StreamingRound
from secagg.protocols.transitions import ServerStage

__all__ = ["client_kind_cpu_s", "fit_linear", "fit_log", "main", "run_point",
           "server_kind_cpu_s"]

T = TypeVar("T")
RESULTS = Path("benchmarks/results")
DEFAULT_CLIENTS = (100, 1_000, 10_000, 100_000)

# (module, dotted attribute, kind): the primitives whose exclusive time is attributed to a
# kind. Targets a refactor removed are skipped (and their time lands in "other").
_TARGETS: list[tuple[str, str, str]] = [
    ("secagg.kex", "agree", "key agreement"),
    ("secagg.kex", "KeyPair.generate", "key generation"),
    ("secagg.kex", "KeyPair.from_private_bytes", "key agreement"),
    ("secagg.shamir", "split", "Shamir split"),
    ("secagg.protocols.unmasking", "SecretRecovery.recover", "Shamir reconstruction"),
    ("secagg.protocols.recovery", "recover_secrets", "Shamir reconstruction"),
    ("secagg.protocols.server", "recover_secrets", "Shamir reconstruction"),
    ("secagg.shamir", "Share.from_bytes", "share parsing"),
    ("secagg.aead", "Aead.__init__", "AEAD"),
    ("secagg.aead", "Aead.encrypt", "AEAD"),
    ("secagg.aead", "Aead.decrypt", "AEAD"),
    ("secagg.sign", "SigningKey.sign", "signatures"),
    ("secagg.sign", "VerifyKey.verify", "signatures"),
    ("secagg.prg", "MaskPRG.__init__", "mask expansion"),
    ("secagg.prg", "MaskPRG.add_into", "mask expansion"),
    ("secagg.prg", "add_masks_into", "mask expansion"),
    ("secagg.protocols.client", "encode_input", "input encoding"),
    ("secagg.protocols.client", "pack", "packing"),
    ("secagg.protocols.server", "unpack_add_into", "sum (unpack+add)"),
    ("secagg.protocols.server", "decode_aggregate", "aggregate decoding"),
    ("secagg.protocols.wire", "encode", "wire encode"),
    ("secagg.protocols.stream", "encode", "wire encode"),
    ("secagg.protocols.wire", "decode", "wire decode"),
]


def _resolve(module: str, dotted: str) -> tuple[Any, str] | None:
    """The object that holds the attribute, and its name; None if it is not there."""
    try:
        owner: Any = importlib.import_module(module)
    except ImportError:
        return None
    *path, name = dotted.split(".")
    for part in path:
        owner = getattr(owner, part, None)
    return (owner, name) if owner is not None and name in vars(owner) else None


class Attribution:
    """Exclusive seconds per kind of work, per role, while that role's calls run."""

    def __init__(self) -> None:
        self.role: str | None = None
        self.kinds: dict[str, dict[str, float]] = {"server": {}, "client": {}}
        self._stack: list[float] = []

    def _wrap(self, fn: Callable[..., Any], kind: str) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            role = self.role
            if role is None:
                return fn(*args, **kwargs)
            t0 = time.perf_counter()
            self._stack.append(0.0)
            try:
                return fn(*args, **kwargs)
            finally:
                dt = time.perf_counter() - t0
                inner = self._stack.pop()
                acc = self.kinds[role]
                acc[kind] = acc.get(kind, 0.0) + dt - inner
                if self._stack:
                    self._stack[-1] += dt
        return timed

    @contextmanager
    def installed(self) -> Iterator[None]:
        """Wrap every target that exists (a refactor may rename some) for the duration."""
        saved = []
        for module, dotted, kind in _TARGETS:
            found = _resolve(module, dotted)
            if found is None:
                continue
            owner, name = found
            raw = vars(owner)[name]
            if isinstance(raw, (classmethod, staticmethod)):
                new: Any = type(raw)(self._wrap(raw.__func__, kind))
            else:
                new = self._wrap(raw, kind)
            saved.append((owner, name, raw))
            setattr(owner, name, new)
        try:
            yield
        finally:
            for owner, name, raw in reversed(saved):
                setattr(owner, name, raw)

    def run(self, role: str | None, call: Callable[[], T]) -> T:
        prev, self.role = self.role, role
        try:
            return call()
        finally:
            self.role = prev


def _rss_mb(field: str = "VmRSS") -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class ScaleRound(StreamingRound):
    """A streamed round that attributes time by kind and samples RSS after each stage."""

    def __init__(self, *args: Any, sample_every: int, profile: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.profiler = cProfile.Profile() if profile else None
        self.attribution = Attribution()
        self.sample_every = sample_every
        self.sampled: set[int] = set()
        self.rss_after_stage_mb: dict[str, float] = {}
        # CPU seconds too: on a shared machine perf_counter also counts time slices lost.
        self.server_cpu_s = 0.0
        self.client_cpu_s: dict[int, float] = {}
        # The server's own step names, where it offers them (``ServerBase.trace``).
        self.server_phase_s: dict[str, float] = {}
        self._phase: str | None = None
        self._phase_t0 = 0.0
        if hasattr(self.server, "trace"):
            self.server.trace = self._trace

    def _trace(self, phase: str | None) -> None:
        now = time.perf_counter()
        if self._phase is not None:
            acc = self.server_phase_s
            acc[self._phase] = acc.get(self._phase, 0.0) + now - self._phase_t0
        self._phase, self._phase_t0 = phase, now

    def server_call(self, label: str, call: Callable[[], T]) -> T:
        t0 = time.thread_time()
        if self.profiler is not None:
            self.profiler.enable()
        try:
            return self.attribution.run("server", call)
        finally:
            if self.profiler is not None:
                self.profiler.disable()
            self.server_cpu_s += time.thread_time() - t0

    def client_call(self, cid: int, stage: ServerStage, call: Callable[[], T]) -> T:
        t0 = time.thread_time()
        try:
            if cid % self.sample_every:
                return call()
            self.sampled.add(cid)
            return self.attribution.run("client", call)
        finally:
            self.client_cpu_s[cid] = self.client_cpu_s.get(cid, 0.0) + time.thread_time() - t0

    def after_stage(self, stage: ServerStage) -> None:
        self.rss_after_stage_mb[stage.value] = round(_rss_mb(), 1)


def _inputs(seed: int, dim: int) -> Callable[[int], np.ndarray]:
    def make(cid: int) -> np.ndarray:  # benchmark inputs, not secrets
        return np.random.default_rng((seed, cid)).uniform(-1.0, 1.0, dim).astype(np.float32)
    return make


def _profile_rows(prof: cProfile.Profile, top: int = 30) -> list[dict[str, Any]]:
    """The server's functions by own time (cProfile's ``tottime``; profiling inflates it)."""
    stats: dict[Any, Any] = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    rows = [{"function": f"{Path(f).name}:{line}({name})", "calls": nc, "tottime_s": tt,
             "cumtime_s": ct} for (f, line, name), (_cc, nc, tt, ct, _callers) in stats.items()]
    return sorted(rows, key=lambda r: -r["tottime_s"])[:top]


def run_point(n: int, dim: int, dropout: float, *, dropout_rate: float | None = None,
              seed: int = 0, sample_clients: int = 200, profile: bool = False,
              ) -> dict[str, Any]:
    """Run one streamed SecAgg+ round of ``n`` clients; return its JSON row (``profile``:
    also cProfile the server's calls, which slows them: a separate run)."""
    wall0 = time.perf_counter()
    # Which server was measured (another engineer is optimising it): its source digest.
    server_sha = hashlib.sha256(Path(server.__file__).read_bytes()).hexdigest()[:12]
    cfg = SecAggConfig(protocol="secagg+", n=n,
                       dropout_rate=dropout if dropout_rate is None else dropout_rate)
    order = np.random.default_rng(seed + 1).permutation(n)  # benchmark choice, not a secret
    dropped = sorted(int(i) for i in order[: math.floor(dropout * n)])
    make = _inputs(seed, dim)
    sim = ScaleRound(cfg, make, dim=dim, drop={"masked_input": dropped},
                     sample_every=max(1, n // sample_clients), profile=profile)
    with sim.attribution.installed():
        res = sim.run()
    round_wall = time.perf_counter() - wall0
    # Exact check: the ring sum of the survivors' encodings, and the float sum.
    mask = np.uint64((1 << cfg.bits) - 1)
    ring = np.zeros(dim, dtype=np.uint64)
    truth = np.zeros(dim, dtype=np.float64)
    for i in res.included:
        x = make(i)
        ring = (ring + encode_input(sim.ctx, x, 1.0)) & mask
        truth += x
    err = float(np.abs(res.aggregate - truth).max())
    bound = len(res.included) * 2.0 ** -(cfg.scale + 1)
    exact = bool(np.array_equal(ring, res.output.ring.astype(np.uint64)))
    gone = set(dropped)
    cs = np.array(list(res.client_s.values()))
    cpu = np.array([sim.client_cpu_s.get(c, 0.0) for c in res.client_s])
    srv_kinds = dict(sim.attribution.kinds["server"])
    srv_kinds["other"] = res.server_s - sum(srv_kinds.values())
    ns = max(1, len(sim.sampled))
    cli_total = sum(res.client_s.get(c, 0.0) for c in sim.sampled)
    cli_kinds = {k: v / ns for k, v in sim.attribution.kinds["client"].items()}
    cli_kinds["other"] = cli_total / ns - sum(cli_kinds.values())
    participants = len(res.client_s)
    return {
        "protocol": "secagg+", "clients": n, "dim": dim, "dropout": dropout,
        "dropout_rate": cfg.dropout_rate, "dropped": len(dropped), "k": cfg.k,
        "threshold": cfg.threshold, "bits": cfg.bits, "scale": cfg.scale,
        "included": len(res.included),
        "correct": exact and err <= bound and res.included == tuple(
            i for i in range(n) if i not in gone),
        "ring_sum_exact": exact, "max_abs_error": err, "error_bound": bound,
        "server_s": res.server_s,
        "server_stage_s": res.server_stage_s,
        "server_kind_s": dict(sorted(srv_kinds.items(), key=lambda kv: -kv[1])),
        "server_cpu_s": sim.server_cpu_s,
        "client_s_mean": float(cs.mean()), "client_s_max": float(cs.max()),
        "client_cpu_s_mean": float(cpu.mean()), "client_cpu_s_max": float(cpu.max()),
        "client_cpu_s_p99": float(np.percentile(cpu, 99)),
        "client_s_p99": float(np.percentile(cs, 99)),
        "client_stage_s_mean": {k: v / participants for k, v in res.client_stage_s.items()},
        "client_kind_s_mean": dict(sorted(cli_kinds.items(), key=lambda kv: -kv[1])),
        "client_kind_sample": len(sim.sampled),
        "total_compute_s": res.total_compute_s,
        "bytes_up_per_client": res.bytes_up_per_client,
        "bytes_down_per_client": res.bytes_down_per_client,
        "bytes_up_max": max(res.bytes_up.values()), "bytes_down_max": max(res.bytes_down.values()),
        "mask_words": res.client_mask_words + res.server_mask_words,
        "rss_after_stage_mb": sim.rss_after_stage_mb,
        "peak_rss_mb": round(_rss_mb("VmHWM"), 1),
        "round_wall_s": round_wall,
        "server_py_sha256": server_sha,
        **({"server_phase_s": sim.server_phase_s} if sim.server_phase_s else {}),
        **({"server_cprofile": _profile_rows(sim.profiler)} if sim.profiler else {}),
    }


def fit_log(ns: list[int], ys: list[float]) -> dict[str, float]:
    """Least squares ``y = a + b log2 n``, its R^2, and the log-log slope (power of n)."""
    x, y = np.log2(np.asarray(ns, float)), np.asarray(ys, float)
    b, a = np.polyfit(x, y, 1)
    r2 = 1 - float(np.sum((y - (a + b * x)) ** 2)) / max(float(np.sum((y - y.mean()) ** 2)), 1e-300)
    power = float(np.polyfit(np.log(ns), np.log(y), 1)[0])
    return {"a": float(a), "b_per_doubling": float(b), "r2": r2, "loglog_slope": power}


def fit_linear(xs: list[int], ys: list[float]) -> dict[str, float]:
    """Least squares ``y = a + b x`` and its R^2 (per-client cost against the degree k)."""
    x, y = np.asarray(xs, float), np.asarray(ys, float)
    b, a = np.polyfit(x, y, 1)
    r2 = 1 - float(np.sum((y - (a + b * x)) ** 2)) / max(float(np.sum((y - y.mean()) ** 2)), 1e-300)
    return {"a": float(a), "b": float(b), "r2": r2}


def _child(args: argparse.Namespace, n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        cmd = [sys.executable, "-m", "benchmarks.scale", "--one", str(n), "--dim", str(args.dim),
               "--dropout", str(args.dropout), "--seed", str(args.seed), "--json", str(out)]
        if args.dropout_rate is not None:
            cmd += ["--dropout-rate", str(args.dropout_rate)]
        t0 = time.perf_counter()
        rc = subprocess.run(cmd, check=False).returncode
        if not out.is_file():
            raise RuntimeError(f"n={n}: the child exited {rc} without a result")
        row: dict[str, Any] = json.loads(out.read_text())
    row["child_wall_s"] = time.perf_counter() - t0
    return row


def server_kind_cpu_s(row: dict[str, Any]) -> dict[str, float]:
    """The server's time by kind in CPU seconds: the timed split scaled to the CPU total (on a
    loaded machine wall-clock intervals also hold lost time slices, spread alike)."""
    ratio = row["server_cpu_s"] / row["server_s"] if row["server_s"] else 0.0
    return {k: v * ratio for k, v in row["server_kind_s"].items()}


def client_kind_cpu_s(row: dict[str, Any]) -> dict[str, float]:
    """The sampled clients' mean time by kind in CPU seconds (scaled as the server's)."""
    ratio = row["client_cpu_s_mean"] / row["client_s_mean"] if row["client_s_mean"] else 0.0
    return {k: v * ratio for k, v in row["client_kind_s_mean"].items()}


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    ok = sorted((r for r in rows if r.get("correct")), key=lambda r: r["clients"])
    if len(ok) < 2:
        return {}
    ns = [r["clients"] for r in ok]
    return {
        "fit_client_cpu_mean_s_vs_log2n": fit_log(ns, [r["client_cpu_s_mean"] for r in ok]),
        "fit_client_wall_mean_s_vs_log2n": fit_log(ns, [r["client_s_mean"] for r in ok]),
        "client_cpu_mean_s_per_neighbour": [r["client_cpu_s_mean"] / r["k"] for r in ok],
        "fit_client_cpu_mean_s_vs_k": fit_linear([r["k"] for r in ok],
                                                 [r["client_cpu_s_mean"] for r in ok]),
        "fit_k_vs_log2n": fit_log(ns, [r["k"] for r in ok]),
        "fit_bytes_up_vs_log2n": fit_log(ns, [r["bytes_up_per_client"] for r in ok]),
        "fit_bytes_down_vs_log2n": fit_log(ns, [r["bytes_down_per_client"] for r in ok]),
    }


def _line(r: dict[str, Any]) -> str:
    kinds = ", ".join(f"{k} {v:.1f}" for k, v in list(server_kind_cpu_s(r).items())[:5])
    return (f"n={r['clients']:<6} k={r['k']:<3} t={r['threshold']:<3} ok={r['correct']} "
            f"client cpu mean={1e3 * r['client_cpu_s_mean']:.1f} ms "
            f"max={1e3 * r['client_cpu_s_max']:.0f} ms "
            f"up={r['bytes_up_per_client'] / 1e3:.1f} kB "
            f"down={r['bytes_down_per_client'] / 1e3:.1f} kB server cpu={r['server_cpu_s']:.1f} s "
            f"({kinds}) peak RSS={r['peak_rss_mb']:.0f} MB "
            f"wall={r['round_wall_s']:.0f} s")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``secagg bench scale``."""
    ap = argparse.ArgumentParser(prog="secagg bench scale", description=__doc__)
    ap.add_argument("--clients", type=int, nargs="*", default=list(DEFAULT_CLIENTS),
                    help="cohort sizes to run (none: only merge and re-plot)")
    ap.add_argument("--dim", type=int, default=1_000)
    ap.add_argument("--dropout", type=float, default=0.05)
    ap.add_argument("--dropout-rate", type=float, default=None,
                    help="the config's tolerated rate (default --dropout)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=str(RESULTS / "scale_sweep.json"),
                    help="sweep file; rows of other n already in it are kept")
    ap.add_argument("--merge", nargs="*", default=[], metavar="JSON",
                    help="also take the rows of these sweep files")
    ap.add_argument("--profile", action="store_true",
                    help="with --one: cProfile the server's calls (slower; not for the sweep)")
    ap.add_argument("--one", type=int, default=None, metavar="N",
                    help="run n = N in this process and write its row to --json (each child)")
    args = ap.parse_args(argv)
    if args.one is not None:
        row = run_point(args.one, args.dim, args.dropout, dropout_rate=args.dropout_rate,
                        seed=args.seed, profile=args.profile)
        write_json(args.json, row)
        return 0 if row["correct"] else 1
    path = Path(args.json)
    for n in args.clients:
        row = _child(args, n)
        print(_line(row), flush=True)
        _save(path, [row], args.dim, args.dropout)
    for other in args.merge:
        _save(path, json.loads(Path(other).read_text())["rows"], args.dim, args.dropout)
    if not args.clients and not args.merge and path.is_file():
        _save(path, [], args.dim, args.dropout)  # re-fit only
    print(f"wrote {path}")
    from benchmarks.scale_plot import plot_scale

    try:
        print(f"wrote {plot_scale(json.loads(path.read_text()), path.with_suffix('.png'))}")
    except ImportError:
        print("matplotlib not installed: no plot")
    return 0


def _save(path: Path, new: list[dict[str, Any]], dim: int, dropout: float) -> None:
    """Add ``new`` to the rows in ``path`` (same n, dim, dropout and rate: replaced), re-fit."""
    # Re-read just before writing: another sweep may have added rows meanwhile.
    old = json.loads(path.read_text())["rows"] if path.is_file() else []
    rows = {(r["clients"], r["dim"], r["dropout"], r["dropout_rate"]): r for r in old + new}
    out = sorted(rows.values(), key=lambda r: (r["dim"], r["dropout"], r["clients"]))
    same = [r for r in out if (r["dim"], r["dropout"]) == (dim, dropout)]
    write_json(path, {"benchmark": "scale_sweep", "machine": machine_info(), "rows": out,
                      "summary": _summary(same)})


if __name__ == "__main__":
    raise SystemExit(main())
