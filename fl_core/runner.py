"""``secagg run``: a server and N clients as separate OS processes on localhost.

The server runs as ``python -m fl_core.cli serve --progress`` and reports JSON lines on its
stdout (listening endpoint, stage changes, round summaries); this process starts the clients
once the server listens, renders progress with rich (round, stage, survivors, bytes,
seconds), and waits for everyone with bounded timeouts. Without ``--insecure`` it writes key
files into ``--keys`` first if that folder has none.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.table import Table

__all__ = ["run_main"]

_PY = [sys.executable, "-m", "fl_core.cli"]


def _ensure_keys(folder: Path, n: int) -> None:
    from fl_core import keyfiles, keys

    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not keyfiles.server_paths(folder)[1].exists():
        keyfiles.write_server_keys(folder, keys.CurveKeyPair.generate())
    for cid in range(1, n + 1):
        if not keyfiles.client_paths(folder, cid)[1].exists():
            keyfiles.write_client_keys(folder, keys.ClientKeys.generate(cid))


def _common(ns: argparse.Namespace) -> list[str]:
    args = ["--protocol", ns.protocol, "--n", str(ns.n), "--dim", str(ns.dim),
            "--keys", str(ns.keys)]
    return [*args, "--insecure"] if ns.insecure else args


def _server_cmd(ns: argparse.Namespace) -> list[str]:
    cmd = [*_PY, "serve", *_common(ns), "--bind", f"tcp://127.0.0.1:{ns.port}", "--progress",
           "--rounds", str(ns.rounds), "--deadline", str(ns.deadline),
           "--join-timeout", str(ns.join_timeout), "--checkpoint", str(ns.checkpoint)]
    for name, sec in ns.stage_deadline:
        cmd += ["--stage-deadline", f"{name}={sec}"]
    if ns.resume:
        cmd.append("--resume")
    if ns.json_path:
        cmd += ["--json", ns.json_path]
    return cmd


def _table(rows: list[dict[str, Any]]) -> Table:
    t = Table(title="secagg run")
    for col in ("round", "ok", "survivors", "up MB", "down MB", "seconds"):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(str(r["round"]), "yes" if r["ok"] else "ABORTED",
                  f"{len(r['survivors'])}/{len(r['sampled'])}", f"{r['bytes_up'] / 1e6:.2f}",
                  f"{r['bytes_down'] / 1e6:.2f}", f"{r['seconds']:.2f}")
    return t


def _follow(server: subprocess.Popen[str], ns: argparse.Namespace, console: Console,
            ) -> list[subprocess.Popen[bytes]]:
    clients: list[subprocess.Popen[bytes]] = []
    rows: list[dict[str, Any]] = []
    out: IO[str] | None = server.stdout
    assert out is not None
    with console.status("starting server") as status:
        for line in out:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            kind = ev.get("event")
            if kind == "listening":
                endpoint = ev["endpoint"]
                clients = [subprocess.Popen(
                    [*_PY, "client", *_common(ns), "--connect", endpoint, "--id", str(cid),
                     "--idle-timeout", str(ns.join_timeout + 10 * ns.deadline)])
                    for cid in range(1, ns.n + 1)]
                status.update(f"server on {endpoint}, {ns.n} clients starting")
            elif kind == "stage":
                status.update(f"round {ev['round']}: {ev['stage']}")
            elif kind == "summary":
                rows.append(ev)
                console.print(f"round {ev['round']}: {'ok' if ev['ok'] else ev['error']}, "
                              f"survivors {len(ev['survivors'])}/{len(ev['sampled'])}, "
                              f"{(ev['bytes_up'] + ev['bytes_down']) / 1e6:.2f} MB, "
                              f"{ev['seconds']:.2f} s")
            elif kind == "done":
                break
    console.print(_table(rows))
    return clients


def run_main(ns: argparse.Namespace) -> int:
    """``secagg run``; return the exit status (the server's)."""
    console = Console(stderr=True)
    if not ns.insecure:
        _ensure_keys(Path(ns.keys), ns.n)
    if ns.port == 0:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ns.port = s.getsockname()[1]
    server = subprocess.Popen(_server_cmd(ns), stdout=subprocess.PIPE, text=True)
    clients: list[subprocess.Popen[bytes]] = []
    try:
        clients = _follow(server, ns, console)
        code = server.wait(timeout=30)
    finally:
        procs: list[subprocess.Popen[Any]] = [server, *clients]
        for p in procs:
            try:
                p.wait(timeout=10 if p is not server else 0.1)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
    return code

