"""The CKKS server's add in worker processes (``secagg serve --server-workers N``).

TenSEAL holds the GIL, so a server adds uploads on one core however many threads it runs. A
:class:`WorkerPool` is a :class:`secagg.ckks_sum.SummerFactory` backed by ``N`` long-lived
processes (spawned once per server): each round, the chunk positions are cut into ``N``
contiguous slices and worker ``i`` keeps a :class:`secagg.ckks_sum.CkksSum` over slice ``i``.

- ``add(cts)``: the parent hands each worker its slice of the upload as raw bytes
  (``Connection.send_bytes`` from one sender thread per worker: no pickling of ciphertexts, and
  the workers receive in parallel), then waits for every worker's verdict on checking and
  loading its slice. All loaded: every worker adds (``commit``). One refused: none adds
  (``drop``) and ``add`` raises :class:`CkksError`, exactly as the in-process sum would.
- ``result()``: each worker serializes its slice of the sum; the parent concatenates them.
- A worker that dies (its pipe closes: noticed at once) or does not answer within ``wait_s``
  (a hung one; the server passes its ``masked_input`` deadline) is killed and breaks the round's
  sum: from then on ``add`` returns at once and ``result`` raises :class:`CkksWorkerError`, so
  the round aborts cleanly when the stage closes; before the next round the pool replaces every
  worker of the broken round. No wait lasts longer than ``wait_s``, and only the first failure
  waits: a hung worker can delay the round by ``wait_s`` at most, a dead one not at all.
- Bounded lifetime (SEAL's memory pool never shrinks): a worker is replaced once it has served
  ``max_rounds`` rounds or reported a resident set above ``max_rss_bytes`` after a round.

:class:`InProcessSummer` is today's in-process :class:`CkksSum` with the same timing
(:meth:`last_stats`), so ``--server-workers 1`` and ``N`` report comparable seconds.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing as mp
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from secagg.errors import CkksError
from secagg.fl_core.errors import FlCoreError
from secagg.fl_core.runtime.ckks_worker_loop import worker_main

if TYPE_CHECKING:  # CKKS is an extra (TenSEAL): imported where a sum is made
    from multiprocessing.process import BaseProcess

    from secagg.ckks_context import CkksPublicContext
    from secagg.ckks_layout import SlotLayout
    from secagg.ckks_sum import CkksSum

__all__ = ["CkksWorkerError", "InProcessSummer", "PoolSum", "WorkerPool", "summer_for"]

log = logging.getLogger("secagg.fl_core.runtime.ckks_workers")

MAX_ROUNDS = 100
MAX_RSS_BYTES = 2 << 30
PIPE_BYTES = 1 << 20


def _widen(conn: Any) -> None:
    """Let the pipe buffer 1 MiB (Linux) instead of 64 KiB: a 4 MB slice then crosses in a
    few writes rather than ~60 writer/reader switches. Best effort."""
    try:
        import fcntl

        fcntl.fcntl(conn.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    except (ImportError, AttributeError, OSError):
        pass


class CkksWorkerError(FlCoreError):
    """A summing worker process died, hung or failed: the round's sum is lost."""


class _TimedSum:
    """A :class:`CkksSum` with the seconds spent in ``add`` and ``result`` counted."""

    def __init__(self, inner: CkksSum) -> None:
        self._inner = inner
        self.seconds = 0.0

    @property
    def terms(self) -> int:
        return self._inner.terms

    def add(self, cts: Sequence[bytes]) -> None:
        t0 = time.perf_counter()
        try:
            self._inner.add(cts)
        finally:
            self.seconds += time.perf_counter() - t0

    def result(self) -> list[bytes]:
        t0 = time.perf_counter()
        try:
            return self._inner.result()
        finally:
            self.seconds += time.perf_counter() - t0

    def stats(self) -> dict[str, Any]:
        return {"workers": 1, "seconds": round(self.seconds, 4), "terms": self.terms}


class InProcessSummer:
    """The default factory (:class:`CkksSum` in this process), timed."""

    def __init__(self) -> None:
        self.last: _TimedSum | None = None

    def __call__(self, pub: CkksPublicContext, layout: SlotLayout, *, count: int) -> _TimedSum:
        """A new in-process sum (raises as :class:`CkksSum`)."""
        from secagg.ckks_sum import CkksSum

        self.last = _TimedSum(CkksSum(pub, layout, count=count))
        return self.last

    def last_stats(self) -> dict[str, Any] | None:
        """Seconds spent in the last round's sum (``add`` + ``result``), or None."""
        return None if self.last is None else self.last.stats()

    def close(self) -> None:
        """Nothing to release."""


class _Worker:
    """One worker process, its two pipes and the thread that feeds it."""

    def __init__(self, ctx: Any, index: int) -> None:
        to_rx, self.to_w = ctx.Pipe(duplex=False)
        self.from_w, from_tx = ctx.Pipe(duplex=False)
        _widen(self.to_w)
        _widen(self.from_w)
        self.index = index
        self.proc: BaseProcess = ctx.Process(
            target=worker_main, args=(to_rx, from_tx), name=f"ckks-sum-{index}", daemon=True)
        self.proc.start()
        to_rx.close()  # the child holds its own ends: our copies would hide its exit
        from_tx.close()
        self.rounds = 0
        self.rss = 0
        self.send_s = 0.0
        self._q: queue.SimpleQueue[tuple[bool, Any] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._feed, name=f"ckks-feed-{index}",
                                        daemon=True)
        self._thread.start()

    def _feed(self) -> None:
        while (item := self._q.get()) is not None:
            raw, payload = item
            t0 = time.perf_counter()
            try:
                if raw:
                    self.to_w.send_bytes(payload)
                else:
                    self.to_w.send(payload)
            except (OSError, ValueError):
                return  # the worker is gone: its answers say so (EOF), or the wait times out
            self.send_s += time.perf_counter() - t0

    def post(self, obj: Any) -> None:
        self._q.put((False, obj))

    def post_bytes(self, data: bytes) -> None:
        self._q.put((True, data))

    def recv(self, deadline: float, *, raw: bool = False) -> Any:
        """The worker's next message (bytes if ``raw``).

        Raises:
            CkksWorkerError: it exited, failed, or said nothing before ``deadline``.
        """
        try:
            if not self.from_w.poll(max(0.0, deadline - time.monotonic())):
                raise CkksWorkerError(f"worker {self.index} (pid {self.proc.pid}) did not "
                                      "answer in time")
            msg = self.from_w.recv_bytes() if raw else self.from_w.recv()
        except (EOFError, OSError):
            self.proc.join(1.0)
            raise CkksWorkerError(f"worker {self.index} (pid {self.proc.pid}) exited "
                                  f"(code {self.proc.exitcode})") from None
        if not raw and msg[0] == "failed":
            raise CkksWorkerError(f"worker {self.index} failed: {msg[1]}")
        return msg

    def stop(self, *, kill: bool) -> None:
        """Stop the process (ask, or ``kill``), end the feeder, close the pipes."""
        if not kill and self.proc.is_alive():
            self.post(("stop",))
        self._q.put(None)
        self.proc.join(0.0 if kill else 5.0)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5.0)
        self._thread.join(5.0)
        self.to_w.close()
        self.from_w.close()


def _slices(total: int, parts: int) -> list[range]:
    cuts = [total * i // parts for i in range(parts + 1)]
    return [range(a, b) for a, b in itertools.pairwise(cuts) if b > a]


class PoolSum:
    """One round's sum over the pool's workers (see the module docstring)."""

    def __init__(self, workers: list[_Worker], slices: list[range], *, n_max: int,
                 wait_s: float) -> None:
        self._workers = workers
        self._slices = slices
        self._total = slices[-1].stop
        self._n_max = n_max
        self._wait_s = wait_s
        self._terms = 0
        self._seq = 0
        self.failure: str | None = None
        """Why the sum is lost (a worker died, hung or failed), or None."""
        self.finished = False
        self.seconds = 0.0
        self._busy: list[float] = []
        self._recv: list[float] = []
        self._send0 = [w.send_s for w in workers]

    @property
    def terms(self) -> int:
        """Contributions added so far."""
        return self._terms

    def _fail(self, exc: CkksWorkerError) -> None:
        if self.failure is None:
            self.failure = str(exc)
            log.warning("CKKS sum lost: %s", exc)
        for w in self._workers:
            if w.proc.is_alive():
                w.proc.kill()  # also unblocks a feeder stuck writing to a hung worker

    def add(self, cts: Sequence[bytes]) -> None:
        """Check and add one contribution in the workers (see the module docstring).

        Raises:
            TypeError: ``cts`` is not a sequence of bytes.
            CkksError: wrong chunk count, more than ``n_max`` contributions, or a worker
                refused its slice (as :meth:`CkksSum.add`; the sum is unchanged).
        """
        if isinstance(cts, (bytes, str)) or not isinstance(cts, Sequence):
            raise TypeError("cts must be a sequence of bytes chunks")
        if not all(isinstance(c, bytes) for c in cts):
            raise TypeError("chunks must be bytes")
        if len(cts) != self._total:
            raise CkksError(f"expected {self._total} ciphertext chunks, got {len(cts)}")
        if self._terms + 1 > self._n_max:
            raise CkksError(f"more than n_max={self._n_max} contributions")
        if self.failure is not None:
            return  # the round is lost already; result() says so
        t0 = time.perf_counter()
        try:
            self._add(cts)
        finally:
            self.seconds += time.perf_counter() - t0

    def _add(self, cts: Sequence[bytes]) -> None:
        k, self._seq = self._seq, self._seq + 1
        for w, r in zip(self._workers, self._slices, strict=True):
            w.post(("add", k, len(r)))
            for chunk in cts[r.start:r.stop]:
                w.post_bytes(chunk)
        refused = []
        deadline = time.monotonic() + self._wait_s
        try:
            for w in self._workers:
                msg = w.recv(deadline)
                if tuple(msg[:2]) != ("loaded", k):
                    raise CkksWorkerError(f"worker {w.index} answered {msg[0]} to add {k}")
                if msg[2] is not None:
                    refused.append(msg[2])
        except CkksWorkerError as exc:
            self._fail(exc)
            return
        verdict = "drop" if refused else "commit"
        for w in self._workers:
            w.post((verdict, k))
        if refused:
            raise CkksError(refused[0])
        self._terms += 1

    def result(self) -> list[bytes]:
        """The encrypted sum, the workers' slices concatenated.

        Raises:
            ValueError: nothing was added.
            CkksWorkerError: a worker died, hung or failed during the round.
        """
        if self.failure is None and not self._terms:
            raise ValueError("no contribution was added")
        t0 = time.perf_counter()
        try:
            if self.failure is not None:
                raise CkksWorkerError(self.failure)
            return self._gather()
        finally:
            self.seconds += time.perf_counter() - t0

    def _gather(self) -> list[bytes]:
        for w in self._workers:
            w.post(("result",))
        deadline = time.monotonic() + self._wait_s
        out: list[bytes] = []
        try:
            for w in self._workers:
                msg = w.recv(deadline)
                if msg[0] != "result":
                    raise CkksWorkerError(f"worker {w.index} answered {msg[0]} to result")
                _, count, rss, busy, recv_s = msg
                out += [w.recv(deadline, raw=True) for _ in range(count)]
                w.rss = rss
                self._busy.append(busy)
                self._recv.append(recv_s)
        except CkksWorkerError as exc:
            self._fail(exc)
            raise
        self.finished = True
        return out

    def stats(self) -> dict[str, Any]:
        """Seconds in ``add`` + ``result`` (parent's wall time); the workers' own seconds
        (``worker_seconds``: receiving, loading, adding, serializing), of which receiving the
        chunks from the pipe (``recv_seconds``: the transfer cost), and resident sets; the
        feeder threads' seconds writing to the pipes (``send_seconds``: includes waiting for
        a busy worker to read)."""
        send = [w.send_s - s0 for w, s0 in zip(self._workers, self._send0, strict=True)]
        return {"workers": len(self._workers), "seconds": round(self.seconds, 4),
                "terms": self._terms, "worker_seconds": [round(b, 4) for b in self._busy],
                "recv_seconds": [round(r, 4) for r in self._recv],
                "send_seconds": [round(s, 4) for s in send],
                "worker_rss_mb": [round(w.rss / 2**20, 1) for w in self._workers],
                "failure": self.failure}


class WorkerPool:
    """``workers`` summing processes for the rounds of one server; a context manager.

    Raises (constructor):
        ValueError: ``workers`` < 1, ``wait_s`` <= 0, ``max_rounds`` < 1.
    """

    def __init__(self, workers: int, *, wait_s: float, max_rounds: int = MAX_ROUNDS,
                 max_rss_bytes: int = MAX_RSS_BYTES) -> None:
        if workers < 1 or wait_s <= 0 or max_rounds < 1:
            raise ValueError("need workers >= 1, wait_s > 0 and max_rounds >= 1")
        self._ctx = mp.get_context("spawn")  # no fork of a process with ZeroMQ threads
        self._wait_s = wait_s
        self._max_rounds = max_rounds
        self._max_rss = max_rss_bytes
        self._workers = [_Worker(self._ctx, i) for i in range(workers)]
        self.replaced = 0
        """Workers replaced so far (dead, broken round, or lifetime reached)."""
        self.last: PoolSum | None = None

    @property
    def pids(self) -> list[int | None]:
        """The workers' process ids (tests kill one)."""
        return [w.proc.pid for w in self._workers]

    def _refresh(self) -> None:
        """Replace workers that died, served a broken round, or reached their lifetime."""
        broken = self.last is not None and self.last.failure is not None
        for i, w in enumerate(self._workers):
            why = ("a lost round" if broken else "exited" if not w.proc.is_alive()
                   else f"{w.rounds} rounds" if w.rounds >= self._max_rounds
                   else f"RSS {w.rss >> 20} MiB" if w.rss > self._max_rss else None)
            if why is None:
                continue
            log.log(logging.WARNING if broken or why == "exited" else logging.INFO,
                    "replacing CKKS sum worker %d (pid %s): %s", i, w.proc.pid, why)
            w.stop(kill=broken or why == "exited")
            self._workers[i] = _Worker(self._ctx, i)
            self.replaced += 1
        self.last = None

    def __call__(self, pub: CkksPublicContext, layout: SlotLayout, *, count: int) -> PoolSum:
        """The sum of one round: its chunk positions cut among the workers.

        Raises:
            CkksWorkerError: the pool is closed, or a worker could not be replaced.
            ValueError: ``count`` < 1.
        """
        if not self._workers:
            raise CkksWorkerError("the worker pool is closed")
        if count < 1:
            raise ValueError("count must be >= 1")
        try:
            self._refresh()
        except OSError as exc:  # no process could be started
            raise CkksWorkerError(f"cannot start a CKKS sum worker: {exc}") from exc
        per = layout.slots_per_ciphertext
        slices = _slices(-(-layout.slots_for(count) // per), len(self._workers))
        used = self._workers[:len(slices)]
        begin = ("begin", pub.to_bytes(), layout, count)
        for w, r in zip(used, slices, strict=True):
            w.post((*begin, r.start, r.stop))
            w.rounds += 1
        self.last = PoolSum(used, slices, n_max=layout.n_max, wait_s=self._wait_s)
        return self.last

    def last_stats(self) -> dict[str, Any] | None:
        """:meth:`PoolSum.stats` of the last round's sum, or None."""
        return None if self.last is None else self.last.stats()

    def close(self) -> None:
        """Stop every worker (asked first, killed after 5 s)."""
        for w in self._workers:
            w.stop(kill=not w.proc.is_alive())
        self._workers = []

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def summer_for(protocol: str, workers: int, *, wait_s: float,
               ) -> Iterator[InProcessSummer | WorkerPool | None]:
    """The summer a server of ``protocol`` runs with (None: the protocol's own default).

    Raises:
        ValueError: ``workers`` < 1, or > 1 for another protocol than ``"ckks"``.
    """
    if workers < 1 or (workers > 1 and protocol != "ckks"):
        raise ValueError(f"--server-workers {workers}: must be >= 1, and above 1 only with "
                         "--protocol ckks")
    if protocol != "ckks":
        yield None
        return
    summer = InProcessSummer() if workers == 1 else WorkerPool(workers, wait_s=wait_s)
    try:
        yield summer
    finally:
        summer.close()
