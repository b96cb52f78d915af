"""A small threaded TCP proxy between ``secagg`` clients and their server, for the chaos
harness (:mod:`benchmarks.chaos`): there is no netem on the benchmark machines, so message
faults are made here, one layer under ZeroMQ/CurveZMQ (the proxy forwards opaque bytes; the
CurveZMQ handshake runs end to end through it).

- **delay**: bytes arriving during a window are held ``latency`` seconds each before they are
  forwarded (order kept: every direction is a FIFO with a release time per chunk).
- **drop**: connections are cut (both sockets shut down), so whatever was in flight is lost
  and libzmq reconnects; for a ``refuse`` window after the cut, new connections are accepted
  and closed at once (a short partition).

Each client connection is a :class:`Link` with four daemon threads (a reader and a writer per
direction). ``upstream`` may be changed between runs of a job (a resumed server listens on a
fresh port); links already open keep their old upstream and die with it.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
from dataclasses import dataclass, field

__all__ = ["ChaosProxy", "Link"]

_CHUNK = 65536


@dataclass
class Link:
    """One proxied connection: ``down`` is the client's socket, ``up`` the server's."""

    down: socket.socket
    up: socket.socket
    opened: float = field(default_factory=time.monotonic)
    closed: threading.Event = field(default_factory=threading.Event)

    def cut(self) -> None:
        """Shut both sockets down (idempotent): readers see EOF, writers fail."""
        if self.closed.is_set():
            return
        self.closed.set()
        for s in (self.down, self.up):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


class ChaosProxy:
    """Listens on ``127.0.0.1:<port>`` and forwards every connection to ``upstream``.

    Thread-safe: :meth:`delay`, :meth:`drop` and ``upstream`` may be changed from any thread
    while links are open.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._lock = threading.Lock()
        self._links: list[Link] = []
        self._latency = 0.0
        self._delay_until = 0.0
        self._delay_links: set[int] | None = None  # ids of delayed links (None: all)
        self._refuse_until = 0.0
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port: int = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self.accepted = 0
        self.refused = 0
        self._acceptor = threading.Thread(target=self._accept, name="chaos-proxy", daemon=True)
        self._acceptor.start()

    @property
    def endpoint(self) -> str:
        """The ZeroMQ endpoint clients connect to."""
        return f"tcp://127.0.0.1:{self.port}"

    def live_links(self) -> list[Link]:
        """The links not cut yet."""
        with self._lock:
            self._links = [lk for lk in self._links if not lk.closed.is_set()]
            return list(self._links)

    # -- faults ----------------------------------------------------------------------------

    def delay(self, latency: float, window: float, links: list[Link] | None = None) -> None:
        """Hold every chunk that arrives in the next ``window`` seconds for ``latency``
        seconds (on ``links`` only, or on all links)."""
        with self._lock:
            self._latency = latency
            self._delay_until = time.monotonic() + window
            self._delay_links = None if links is None else {id(lk) for lk in links}

    def drop(self, links: list[Link] | None = None, refuse: float = 0.0) -> int:
        """Cut ``links`` (default: all live ones), then refuse new connections for ``refuse``
        seconds; return how many links were cut."""
        targets = self.live_links() if links is None else links
        with self._lock:
            self._refuse_until = max(self._refuse_until, time.monotonic() + refuse)
        for lk in targets:
            lk.cut()
        return len(targets)

    def _hold_for(self, link: Link) -> float:
        with self._lock:
            if time.monotonic() >= self._delay_until:
                return 0.0
            if self._delay_links is not None and id(link) not in self._delay_links:
                return 0.0
            return self._latency

    # -- plumbing --------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                down, _ = self._listener.accept()
            except OSError:
                return
            if time.monotonic() < self._refuse_until:
                self.refused += 1
                down.close()
                continue
            try:
                up = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=2.0)
                up.settimeout(None)
            except OSError:  # no server there (yet, or any more): the client retries
                down.close()
                continue
            for s in (down, up):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            link = Link(down, up)
            with self._lock:
                self._links.append(link)
            self.accepted += 1
            for src, dst, name in ((down, up, "c2s"), (up, down, "s2c")):
                q: queue.Queue[tuple[float, bytes] | None] = queue.Queue()
                threading.Thread(target=self._read, args=(link, src, q), daemon=True,
                                 name=f"proxy-read-{name}").start()
                threading.Thread(target=self._write, args=(link, dst, q), daemon=True,
                                 name=f"proxy-write-{name}").start()

    def _read(self, link: Link, src: socket.socket, q: queue.Queue[tuple[float, bytes] | None],
              ) -> None:
        try:
            while not link.closed.is_set():
                data = src.recv(_CHUNK)
                if not data:
                    break
                q.put((time.monotonic() + self._hold_for(link), data))
        except OSError:
            pass
        finally:
            q.put(None)

    @staticmethod
    def _write(link: Link, dst: socket.socket,
               q: queue.Queue[tuple[float, bytes] | None]) -> None:
        try:
            while (item := q.get()) is not None:
                due, data = item
                while (wait := due - time.monotonic()) > 0:
                    if link.closed.wait(min(wait, 0.2)):
                        return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            link.cut()  # one side gone: the other sees EOF, as over a real network

    def close(self) -> None:
        """Stop accepting and cut every link."""
        self._stop.set()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        except OSError:
            pass
        try:
            self._listener.close()
        except OSError:
            pass
        for lk in self.live_links():
            lk.cut()
