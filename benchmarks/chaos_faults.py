"""Faults the chaos harness (:mod:`benchmarks.chaos`) injects into a running ``secagg run``:
``kill -9`` of a client, of all clients but two (below the cohort floor: the runner stops the
run) or of the server, SIGSTOP/SIGCONT of a client (short of or past the
stage deadline), busy loops that starve the machine, and message delays or drops through the
proxy (:mod:`benchmarks.chaos_proxy`). Every fault is logged with its time (seconds since the
job started) and target; every pause and busy loop is undone by a timer, and :meth:`
Injector.settle` undoes whatever is still pending when a run ends.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import psutil  # type: ignore[import-untyped]

from benchmarks.chaos_proxy import ChaosProxy

__all__ = ["FAULT_KINDS", "Fault", "Injector", "RunProcs"]

#: every kind, with its weight when drawn at random
FAULT_KINDS: dict[str, float] = {
    "kill_client": 2.0, "kill_clients": 0.5, "kill_server": 1.0, "pause_short": 1.5,
    "pause_long": 1.5, "starve": 1.0, "delay": 1.5, "drop": 1.5,
}
_BUSY = "import time\nend = time.monotonic() + {s}\nwhile time.monotonic() < end: pass\n"


@dataclass
class Fault:
    """One injected fault."""

    t: float
    kind: str
    target: str
    params: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (times rounded to ms)."""
        doc = asdict(self)
        doc["t"] = round(self.t, 3)
        return doc


class RunProcs:
    """The server and client processes of one ``secagg run`` (descendants of the runner),
    found by their command lines; every pid ever seen is remembered (for the orphan check)."""

    def __init__(self, runner_pid: int) -> None:
        self.runner_pid = runner_pid
        self.seen: set[int] = set()

    def _children(self) -> list[psutil.Process]:
        try:
            kids = psutil.Process(self.runner_pid).children(recursive=True)
        except psutil.Error:
            return []
        self.seen |= {p.pid for p in kids}
        return list(kids)

    def find(self) -> tuple[int | None, dict[int, int]]:
        """The server's pid (None: not running) and ``{client id: pid}`` of live clients."""
        server, clients = None, {}
        for p in self._children():
            try:
                cmd = p.cmdline()
                if p.status() == psutil.STATUS_ZOMBIE:
                    continue
            except psutil.Error:
                continue
            if "serve" in cmd:
                server = p.pid
            elif "client" in cmd and "--id" in cmd:
                clients[int(cmd[cmd.index("--id") + 1])] = p.pid
        return server, clients


def _signal(pid: int, sig: int) -> bool:
    try:
        os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False


class Injector:
    """Injects faults into the run whose processes ``procs`` finds; ``t0`` is the job's start
    (``time.monotonic()``), ``deadline_s`` the stage deadline the pauses are sized against."""

    def __init__(self, procs: RunProcs, proxy: ChaosProxy | None, *, t0: float,
                 deadline_s: float, rng: random.Random, log: list[Fault]) -> None:
        self.procs, self.proxy, self.t0 = procs, proxy, t0
        self.deadline_s, self.rng, self.log = deadline_s, rng, log
        self._paused: dict[int, threading.Timer] = {}
        self._busy: list[subprocess.Popen[bytes]] = []
        self._lock = threading.Lock()

    def _record(self, kind: str, target: str, **params: Any) -> Fault:
        fault = Fault(time.monotonic() - self.t0, kind, target, params)
        self.log.append(fault)
        return fault

    def inject(self, kind: str) -> Fault | None:
        """Inject one fault of ``kind`` (:data:`FAULT_KINDS`); None when it had no target
        (no live client, no server, no proxy)."""
        server, clients = self.procs.find()
        live = sorted(c for c, pid in clients.items() if pid not in self._paused)
        r = self.rng
        if kind == "kill_server":
            if server is None or not _signal(server, signal.SIGKILL):
                return None
            return self._record(kind, "server", pid=server)
        if kind == "starve":
            return self.starve(r.uniform(2.0, 6.0), 2 * (os.cpu_count() or 1))
        if kind in ("delay", "drop"):
            return self._net(kind)
        if not live:
            return None
        if kind == "kill_clients":  # all but two: below the cohort floor, the runner stops
            victims = r.sample(live, max(1, len(live) - 2))
            for cid in victims:
                _signal(clients[cid], signal.SIGKILL)
            return self._record(kind, f"clients {sorted(victims)}",
                                pids=[clients[c] for c in victims])
        cid = r.choice(live)
        if kind == "kill_client":
            if not _signal(clients[cid], signal.SIGKILL):
                return None
            return self._record(kind, f"client {cid}", pid=clients[cid])
        factor = r.uniform(0.2, 0.6) if kind == "pause_short" else r.uniform(1.5, 3.0)
        return self.pause(cid, clients[cid], factor * self.deadline_s, kind)

    def pause(self, cid: int, pid: int, seconds: float, kind: str = "pause") -> Fault | None:
        """SIGSTOP client ``cid`` (process ``pid``) now, SIGCONT it after ``seconds``."""
        if not _signal(pid, signal.SIGSTOP):
            return None
        timer = threading.Timer(seconds, self._resume, args=(pid,))
        timer.daemon = True
        with self._lock:
            self._paused[pid] = timer
        timer.start()
        return self._record(kind, f"client {cid}", pid=pid, seconds=round(seconds, 3),
                            past_deadline=seconds > self.deadline_s)

    def _resume(self, pid: int) -> None:
        with self._lock:
            self._paused.pop(pid, None)
        _signal(pid, signal.SIGCONT)

    def starve(self, seconds: float, loops: int) -> Fault:
        """Start ``loops`` busy-loop processes that spin for ``seconds``."""
        for _ in range(loops):
            self._busy.append(subprocess.Popen([sys.executable, "-c", _BUSY.format(s=seconds)]))
        return self._record("starve", "machine", seconds=round(seconds, 3), loops=loops)

    def _net(self, kind: str) -> Fault | None:
        if self.proxy is None:
            return None
        links = self.proxy.live_links()
        if not links:
            return None
        r = self.rng
        chosen = links if r.random() < 0.5 else [r.choice(links)]
        target = "all links" if chosen is links else "one link"
        if kind == "delay":
            latency = r.uniform(0.2, 2.0) * self.deadline_s
            window = r.uniform(1.0, 3.0) * self.deadline_s
            self.proxy.delay(latency, window, None if chosen is links else chosen)
            return self._record(kind, target, latency=round(latency, 3), window=round(window, 3))
        refuse = r.choice([0.0, r.uniform(0.5, 2.0) * self.deadline_s])
        cut = self.proxy.drop(None if chosen is links else chosen, refuse=refuse)
        return self._record(kind, target, cut=cut, refuse=round(refuse, 3))

    def settle(self) -> None:
        """Resume every paused process and stop every busy loop (end of a run)."""
        with self._lock:
            paused = dict(self._paused)
            self._paused.clear()
        for pid, timer in paused.items():
            timer.cancel()
            _signal(pid, signal.SIGCONT)
        for p in self._busy:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)
        self._busy.clear()
        if self.proxy is not None:
            self.proxy.delay(0.0, 0.0)

    def reap_busy(self) -> None:
        """Wait for busy loops that have finished (no zombies pile up)."""
        self._busy = [p for p in self._busy if p.poll() is None]
