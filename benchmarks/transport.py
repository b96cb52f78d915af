"""``secagg bench transport``: client -> server throughput of the ZeroMQ transport, in one run.

A client in its own (spawned) process streams 16 MiB and 4 MiB payloads to the server in this
process over TCP loopback, through :class:`secagg.fl_core.transport.sockets.ClientTransport` and
:class:`secagg.fl_core.transport.sockets.ServerTransport` (envelope, size checks, Curve identity
mapping
included), sent zero-copy or copying, with CurveZMQ off and on. A bare pyzmq DEALER -> ROUTER
stream (no envelope, zero-copy, no Curve) runs beside them as the same-run reference. Trials of
the configurations are interleaved and each figure is a median; ratios compare figures from
this run only.

Each trial: the server sends "go" and times until the last payload of the trial is received
(one small control round trip, about 0.1 ms, is inside the timing).
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing as mp
import os
import statistics
import struct
import time
from typing import Any

import zmq

from benchmarks._timing import machine_info, write_json
from secagg.fl_core.identity.keys import Allowlist, ClientKeys, CurveKeyPair
from secagg.fl_core.transport.sockets import (
    ClientTransport,
    ServerTransport,
    SocketOptions,
    TransportLimits,
)

__all__ = ["main", "run"]

GB = 1e9
MiB = 1 << 20
CONTROL, DATA = 0, 1
MODES = ("zero-copy", "copy", "raw")  # raw: bare pyzmq, zero-copy, never Curve
_CMD = struct.Struct(">QIB")  # payload size, message count (0 = stop), mode index
LIMITS = TransportLimits({CONTROL: 64, DATA: 16 * MiB}, max_message_bytes=16 * MiB + 4096)
OPTIONS = SocketOptions(send_timeout_ms=60_000, linger_ms=1_000)
CLIENT_ID = 1


def _sender(endpoint: str, raw_endpoint: str, curve: tuple[bytes, bytes] | None,
            server_public: bytes | None) -> None:
    """Child process: connect, then send what each command asks for until told to stop."""
    keys = CurveKeyPair(*curve) if curve else None
    cli = ClientTransport(endpoint, client_id=CLIENT_ID, limits=LIMITS, keys=keys,
                          server_public=server_public, insecure=curve is None, options=OPTIONS)
    raw: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    raw.connect(raw_endpoint)
    payloads: dict[int, bytes] = {}
    try:
        cli.wait_ready(30_000)
        cli.send(0, CONTROL, b"hello")
        raw.send(b"hello")
        while (cmd := cli.recv(120_000, stage=CONTROL)) is not None:
            size, count, mode = _CMD.unpack(cmd.payload)
            if count == 0:
                break
            if size not in payloads:
                payloads[size] = os.urandom(size)
            payload = payloads[size]
            for _ in range(count):
                if MODES[mode] == "raw":
                    raw.send(payload, copy=False)
                else:
                    cli.send(1, DATA, payload, copy=MODES[mode] == "copy")
    finally:
        raw.close(linger=1_000)
        cli.close()


def _trial(srv: ServerTransport, raw: zmq.Socket[bytes], raw_route: bytes, size: int,
           count: int, mode: str) -> float:
    """Seconds from "go" to the last of ``count`` payloads of ``size`` bytes received."""
    t0 = time.perf_counter()
    srv.send(CLIENT_ID, 0, CONTROL, _CMD.pack(size, count, MODES.index(mode)))
    for _ in range(count):
        if mode == "raw":
            frames = raw.recv_multipart(copy=False)
            assert frames[0].bytes == raw_route and len(frames[1]) == size
        else:
            got = srv.recv(120_000, stage=DATA)
            if got is None or got.payload.nbytes != size:
                raise RuntimeError(f"lost a {size}-byte payload ({mode})")
    return time.perf_counter() - t0


def _run_security(curve: bool, sizes: list[int], repeat: int,
                  total_bytes: int) -> list[dict[str, Any]]:
    server_keys, client = CurveKeyPair.generate(), ClientKeys.generate(CLIENT_ID)
    srv = ServerTransport("tcp://127.0.0.1:*", limits=LIMITS, options=OPTIONS,
                          **({"keys": server_keys, "allowlist": Allowlist([client.card])}
                             if curve else {"insecure": True}))
    raw: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.ROUTER)
    raw.rcvtimeo = 120_000
    raw.bind("tcp://127.0.0.1:*")
    args = (srv.endpoint, raw.getsockopt_string(zmq.LAST_ENDPOINT),
            (client.curve.public, client.curve.secret) if curve else None,
            server_keys.public if curve else None)
    proc = mp.get_context("spawn").Process(target=_sender, args=args, daemon=True)
    proc.start()
    try:
        hello = srv.recv(60_000, stage=CONTROL)
        raw_route = raw.recv_multipart()[0]
        if hello is None:
            raise RuntimeError("the sender process never said hello")
        modes = [m for m in MODES if m != "raw" or not curve]
        times: dict[tuple[int, str], list[float]] = {(s, m): [] for s in sizes for m in modes}
        for rep in range(repeat + 1):  # the first pass warms up and is discarded
            for size in sizes:
                for mode in modes:
                    t = _trial(srv, raw, raw_route, size, max(2, total_bytes // size), mode)
                    if rep:
                        times[(size, mode)].append(t)
        srv.send(CLIENT_ID, 0, CONTROL, _CMD.pack(0, 0, 0))
        proc.join(timeout=30)
    finally:
        if proc.is_alive():
            proc.kill()
        raw.close(linger=0)
        srv.close()
    rows = []
    for (size, mode), ts in times.items():
        count = max(2, total_bytes // size)
        rates = [size * count / t / GB for t in ts]
        rows.append({"payload_mib": size // MiB, "curve": curve, "send": mode,
                     "messages_per_trial": count, "gbps": statistics.median(rates),
                     "gbps_trials": [round(r, 3) for r in rates]})
    return rows


def run(*, quick: bool = False) -> dict[str, Any]:
    """Measure every configuration; return the JSON-ready result."""
    sizes = [16 * MiB, 4 * MiB]
    repeat, total = (2, 64 * MiB) if quick else (5, 256 * MiB)
    rows = _run_security(False, sizes, repeat, total) + _run_security(True, sizes, repeat, total)
    gbps = {(r["payload_mib"], r["curve"], r["send"]): r["gbps"] for r in rows}
    ratios = {}
    for mib in (s // MiB for s in sizes):
        zc, cp, raw = gbps[(mib, False, "zero-copy")], gbps[(mib, False, "copy")], gbps[
            (mib, False, "raw")]
        czc, ccp = gbps[(mib, True, "zero-copy")], gbps[(mib, True, "copy")]
        ratios[f"{mib}MiB"] = {
            "zero_copy_over_copy": zc / cp,
            "zero_copy_over_copy_curve": czc / ccp,
            "plain_over_curve_zero_copy": zc / czc,
            "plain_over_curve_copy": cp / ccp,
            "transport_over_raw_pyzmq": zc / raw,
        }
    info = machine_info()
    info.update(pyzmq=zmq.__version__, libzmq=zmq.zmq_version())
    return {"benchmark": "transport", "machine": info,
            "config": {"repeat": repeat, "bytes_per_trial": total, "loopback": "tcp 127.0.0.1",
                       "sender": "separate spawned process", "receiver": "zero-copy views",
                       "socket_options": dataclasses.asdict(OPTIONS),
                       "max_message_bytes": LIMITS.max_message_bytes},
            "rows": rows, "ratios": ratios}


def _print(res: dict[str, Any]) -> None:
    print(f"{'payload':>8} {'curve':>6} {'send':>10} {'GB/s':>7}  trials")
    for r in res["rows"]:
        print(f"{r['payload_mib']:>5}MiB {('on' if r['curve'] else 'off'):>6} {r['send']:>10} "
              f"{r['gbps']:>7.2f}  {r['gbps_trials']}")
    for size, rat in res["ratios"].items():
        print(size, ", ".join(f"{k}={v:.2f}" for k, v in rat.items()))


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``secagg bench transport``."""
    ap = argparse.ArgumentParser(prog="secagg bench transport", description=__doc__)
    ap.add_argument("--json", default="benchmarks/results/transport.json",
                    help="where to write the JSON results")
    ap.add_argument("--quick", action="store_true", help="fewer, smaller trials")
    args = ap.parse_args(argv)
    res = run(quick=args.quick)
    _print(res)
    print(f"wrote {write_json(args.json, res)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
