"""``secagg bench ckks``: our CKKS presets against TenSEAL with NVFlare's defaults, same run.

Rows: bytes per value of one client's upload (key ``bytes_per_value``), values per second for
encrypt (one client), add (server, ``clients`` uploads) and decrypt, and the error of the decoded
sum. Quantized presets are also checked to decode a sum of 100 vectors (``n_max`` if fewer)
exactly. NVFlare's HE uses TenSEAL CKKS with N=8192, moduli [60, 40, 40], scale 2^40,
public-key encryption and one ``ckks_vector`` per tensor; it is reproduced here with TenSEAL
directly.

The ``ckks default`` row is the layout ``SecAggConfig(protocol="ckks", n=clients)`` derives (at
20 clients: exact-4096, scale 14, two 16-bit values per slot), i.e. what ``secagg bench
protocol --protocol ckks`` uploads.

Server add in one and in two processes (integer rows), same run, same uploads. TenSEAL holds
the GIL, so a server uses both cores with worker processes that each keep a
:class:`secagg.ckks_sum.CkksSum` over half the chunk positions (``positions=``) and receive that
half of every upload. ``add_s`` is :func:`secagg.ckks.add_ciphertexts` on all uploads at once;
``add_s_1proc`` is one ``CkksSum`` over every position, in this process (what the protocol's
server runs); ``add_s_2proc`` is two spawned workers, each with a ``CkksSum`` over its half:
the wall time from the go signal until both halves of the encrypted sum are back here
(serialized), best of the repetitions. Process start-up, context loading and handing the uploads
to the workers (``scatter_s_2proc``, reported apart: a deployment routes uploads to workers as
they arrive) are not timed into it. ``exact_2proc`` checks the two halves decrypt to exactly
the one-process sum.
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing as mp
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks._timing import format_value, machine_info, write_json

__all__ = ["main", "measure"]

NVFLARE = "nvflare-default"  # TenSEAL, N=8192, [60,40,40], 2^40, public key, one vector


def _best(fn: Callable[[], Any], reps: int) -> tuple[Any, float]:
    best, out = float("inf"), None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def _row(
    name: str,
    count: int,
    clients: int,
    up: list[bytes] | bytes,
    t: dict[str, float],
    err: float,
    truth_max: float,
    exact: bool | None,
) -> dict[str, Any]:
    size = len(up) if isinstance(up, bytes) else sum(map(len, up))
    return {
        "preset": name,
        "values": count,
        "clients": clients,
        "bytes_per_value": size / count,
        "encrypt_values_per_s": count / t["enc"],
        "add_values_per_s": clients * count / t["add"],
        "add_s": t["add"],
        "decrypt_values_per_s": count / t["dec"],
        "max_error": err,
        "rel_error": err / truth_max if truth_max else 0.0,
        "exact": exact,
    }


def _halves(total: int, parts: int) -> list[range]:
    """``range(total)`` cut into ``parts`` contiguous slices of (nearly) equal length."""
    cuts = [total * i // parts for i in range(parts + 1)]
    return [range(a, b) for a, b in itertools.pairwise(cuts) if b > a]


def _sum_slices(pub: Any, layout: Any, count: int, positions: range,
                uploads: list[list[bytes]]) -> list[bytes]:
    """What one server process does: a ``CkksSum`` over ``positions``, every upload's slice."""
    from secagg.ckks_sum import CkksSum

    acc = CkksSum(pub, layout, count=count, positions=positions)
    for up in uploads:
        acc.add(up)
    return acc.result()


def _sum_worker(conn: Any, pub_bytes: bytes, layout: Any, count: int, start: int,
                stop: int) -> None:
    """Worker process: load the public context, take the uploads' slices, then sum on 'go'."""
    from secagg.ckks_context import CkksPublicContext

    pub = CkksPublicContext.from_bytes(pub_bytes)
    pub.tenseal_context()  # build TenSEAL's context before the clock starts
    conn.send("ready")
    uploads: list[list[bytes]] = []
    while True:
        msg = conn.recv()
        if msg == "loaded":
            conn.send(len(uploads))
        elif msg == "go":
            t0 = time.perf_counter()
            out = _sum_slices(pub, layout, count, range(start, stop), uploads)
            conn.send((time.perf_counter() - t0, out))
        elif msg == "stop":
            conn.close()
            return
        else:
            uploads.append(msg)


def _add_two_processes(
    pub: Any, layout: Any, count: int, uploads: list[list[bytes]], reps: int, workers: int = 2
) -> tuple[list[bytes], dict[str, float]]:
    """The server's add split by chunk positions across ``workers`` spawned processes.

    Returns the concatenated encrypted sum and the timings (see the module docstring).
    """
    ctx = mp.get_context("spawn")
    slices = _halves(len(uploads[0]), workers)
    conns, procs = [], []
    for r in slices:
        here, there = ctx.Pipe()
        proc = ctx.Process(target=_sum_worker,
                           args=(there, pub.to_bytes(), layout, count, r.start, r.stop))
        proc.start()
        conns.append(here)
        procs.append(proc)
    try:
        for c in conns:
            assert c.recv() == "ready"
        t0 = time.perf_counter()
        for up in uploads:  # each upload's slices, as a server would route them on arrival
            for c, r in zip(conns, slices, strict=True):
                c.send(up[r.start : r.stop])
        for c in conns:
            c.send("loaded")
        for c in conns:
            assert c.recv() == len(uploads)
        scatter = time.perf_counter() - t0
        best, compute, out = float("inf"), float("inf"), []
        for _ in range(reps):
            t0 = time.perf_counter()
            for c in conns:
                c.send("go")
            parts = [c.recv() for c in conns]
            wall = time.perf_counter() - t0
            if wall < best:
                best = wall
                compute = max(p[0] for p in parts)
                out = [chunk for p in parts for chunk in p[1]]
        for c in conns:
            c.send("stop")
    finally:
        for proc in procs:
            proc.join(timeout=60)
            if proc.is_alive():  # pragma: no cover - only if a worker hangs
                proc.terminate()
    return out, {"add_2proc": best, "add_2proc_compute": compute, "scatter_2proc": scatter}


def _ours(
    name: str, count: int, clients: int, *, value_bits: int | None, seeded: bool, reps: int,
    layout: Any = None, label: str | None = None,
) -> dict[str, Any]:
    from secagg import ckks

    gen = np.random.default_rng(1)  # benchmark data only; never in secagg/ or protocols/
    preset = ckks.PRESETS[name]
    ctx = ckks.CkksSecretContext.generate(preset)
    pub = ctx.public_context()
    if layout is not None:
        assert layout.preset == preset
        value_bits = layout.value_bits
    if value_bits is not None:
        lay = layout or ckks.SlotLayout.for_values(preset=preset, value_bits=value_bits,
                                                   n_max=100)
        half = 2 ** (value_bits - 1)
        xs = [gen.integers(-half, half, count) for _ in range(2)]

        def enc(x: Any) -> list[bytes]:
            return ckks.encrypt_ints(ctx, x, lay, seeded=seeded)

        def dec(s: list[bytes], n: int, c: int = count) -> Any:
            return ckks.decrypt_ints(ctx, s, count=c, layout=lay, n=n)

        label = (label or "") + f"{name} {value_bits}b x{lay.lanes_per_slot}/slot"
    else:
        xs = [gen.uniform(-1, 1, count) for _ in range(2)]

        def enc(x: Any) -> list[bytes]:
            return ckks.encrypt_floats(ctx, x, seeded=seeded)

        def dec(s: list[bytes], n: int, c: int = count) -> Any:
            return ckks.decrypt_floats(ctx, s, count=c, n=n)

        label = name
    label += " seeded" if seeded else ""
    t: dict[str, float] = {}
    up, t["enc"] = _best(lambda: enc(xs[0]), reps)
    up2 = enc(xs[1])
    batches = [up if i % 2 == 0 else up2 for i in range(clients)]
    total, t["add"] = _best(lambda: ckks.add_ciphertexts(pub, batches), max(1, reps - 1))
    out, t["dec"] = _best(lambda: dec(total, clients), reps)
    truth = (clients // 2) * (xs[0].astype(np.float64) + xs[1]) + (clients % 2) * xs[0]
    err = float(np.abs(out - truth).max())
    # The 100-vector sum (n_max if fewer), on the first ciphertext's worth of values.
    many = 100 if value_bits is None else min(100, lay.n_max)
    small = [x[: min(count, 4096)] for x in xs]
    s100 = ckks.add_ciphertexts(pub, [enc(small[i % 2]) for i in range(many)])
    got = dec(s100, many, small[0].size)
    want = (many // 2) * (small[0].astype(np.float64) + small[1]) + (many % 2) * small[0]
    err100 = float(np.abs(got - want).max())
    exact = err100 == 0.0 if value_bits is not None else None
    row = _row(label, count, clients, up, t, err, float(np.abs(truth).max()), exact)
    row["max_error_100"] = err100
    row["exact_terms"] = many
    if value_bits is not None:
        row["lanes_per_slot"] = lay.lanes_per_slot
        # Distinct upload objects, so each worker really receives every client's bytes.
        uploads = [[bytes(c) for c in b] for b in batches]
        one, t["add_1proc"] = _best(
            lambda: _sum_slices(pub, lay, count, range(len(up)), uploads), 2)
        two, t2 = _add_two_processes(pub, lay, count, uploads, reps=2)
        same = bool(np.array_equal(dec(one, clients), dec(two, clients)))
        row.update({
            "add_s_1proc": t["add_1proc"],
            "add_values_per_s_1proc": clients * count / t["add_1proc"],
            "add_s_2proc": t2["add_2proc"],
            "add_values_per_s_2proc": clients * count / t2["add_2proc"],
            "add_s_2proc_compute_max": t2["add_2proc_compute"],
            "scatter_s_2proc": t2["scatter_2proc"],
            "add_speedup_2proc": t["add_1proc"] / t2["add_2proc"],
            "exact_2proc": same,
        })
    return row


def _nvflare(count: int, clients: int, reps: int) -> dict[str, Any]:
    import tenseal as ts

    gen = np.random.default_rng(2)
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 40])
    ctx.global_scale = 2**40
    xs = [gen.uniform(-1, 1, count) for _ in range(2)]
    t: dict[str, float] = {}
    up, t["enc"] = _best(lambda: ts.ckks_vector(ctx, xs[0].tolist()).serialize(), reps)
    up2 = ts.ckks_vector(ctx, xs[1].tolist()).serialize()

    def add() -> bytes:
        acc = ts.ckks_vector_from(ctx, up)
        for i in range(1, clients):
            acc += ts.ckks_vector_from(ctx, up2 if i % 2 else up)
        return bytes(acc.serialize())

    total, t["add"] = _best(add, max(1, reps - 1))
    out, t["dec"] = _best(lambda: np.array(ts.ckks_vector_from(ctx, total).decrypt()), reps)
    truth = (clients // 2) * (xs[0] + xs[1]) + (clients % 2) * xs[0]
    err = float(np.abs(out - truth).max())
    return _row(NVFLARE, count, clients, up, t, err, float(np.abs(truth).max()), None)


def measure(*, values: int, clients: int = 20, reps: int = 2) -> list[dict[str, Any]]:
    """Measure every row in this process (call it in a child: SEAL's pool never shrinks)."""
    from secagg.protocols import SecAggConfig

    default = SecAggConfig(protocol="ckks", n=clients)  # the protocol's own layout
    assert default.ckks_layout is not None
    tag = f"ckks default (scale {default.scale}) "
    rows = [
        _ours("exact-4096", values, clients, value_bits=12, seeded=True, reps=reps),
        _ours("exact-4096", values, clients, value_bits=12, seeded=False, reps=reps),
        _ours(default.ckks_layout.preset.name, values, clients, value_bits=None, seeded=True,
              reps=reps, layout=default.ckks_layout, label=tag),
        _ours(default.ckks_layout.preset.name, values, clients, value_bits=None, seeded=False,
              reps=reps, layout=default.ckks_layout, label=tag),
        _ours("float-4096", values, clients, value_bits=None, seeded=True, reps=reps),
        _nvflare(values, clients, reps),
    ]
    ref = rows[-1]
    for r in rows:
        r["vs_nvflare_bytes"] = r["bytes_per_value"] / ref["bytes_per_value"]
        r["vs_nvflare_encrypt"] = r["encrypt_values_per_s"] / ref["encrypt_values_per_s"]
    return rows


def _child(values: int, clients: int, queue: Any) -> None:
    # TenSEAL's C++ core prints a warning per oversized ckks_vector (the NVFlare row): silence
    # this child's stdout at the file-descriptor level.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    queue.put(measure(values=values, clients=clients))


def measure_in_child(*, values: int, clients: int = 20) -> list[dict[str, Any]]:
    """Run :func:`measure` in a spawned process so its memory is returned afterwards."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(values, clients, queue))
    proc.start()
    rows: list[dict[str, Any]] = queue.get()
    proc.join()
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    """Print the rows as a rich table."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title="CKKS (TenSEAL) presets vs NVFlare's defaults, measured in one run")
    cols = (
        "preset",
        "bytes_per_value",
        "vs_nvflare_bytes",
        "encrypt_values_per_s",
        "vs_nvflare_encrypt",
        "add_s",
        "add_s_1proc",
        "add_s_2proc",
        "decrypt_values_per_s",
        "max_error",
        "exact",
    )
    for c in cols:
        t.add_column(c.replace("_values_per_s", " val/s").replace("_", " "), justify="right",
                     no_wrap=c == "preset")
    for r in rows:
        t.add_row(*(format_value(r.get(c)) for c in cols))
    Console(width=max(170, Console().width)).print(t)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``secagg bench ckks``."""
    ap = argparse.ArgumentParser(prog="secagg bench ckks", description=__doc__)
    ap.add_argument("--values", type=int, default=1_000_000, help="vector length")
    ap.add_argument("--clients", type=int, default=20, help="uploads the server adds")
    ap.add_argument("--json", default="benchmarks/results/ckks.json")
    args = ap.parse_args(argv)
    rows = measure_in_child(values=args.values, clients=args.clients)
    print_table(rows)
    path = write_json(args.json, {"benchmark": "ckks", "machine": machine_info(), "rows": rows})
    print(f"wrote {path}")
    return 0
