"""The loop of one CKKS summing worker process (:mod:`secagg.fl_core.runtime.ckks_workers`).

Kept apart so a spawned worker imports only this, TenSEAL and :mod:`secagg.ckks_sum`. Messages
from the parent are pickled tuples (small: no ciphertext is ever pickled); chunks travel as raw
``send_bytes`` frames right after the ``add`` tuple that announces them, and back after the
``result`` answer.
"""

from __future__ import annotations

import os
import time
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from secagg.errors import CkksError

if TYPE_CHECKING:
    from secagg.ckks_context import CkksPublicContext
    from secagg.ckks_sum import CkksSum

__all__ = ["worker_main"]


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # not Linux: the peak instead
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def worker_main(rx: Connection, tx: Connection) -> None:
    """A worker's loop: ``begin`` a slice's sum, ``add`` (check and load, answer), ``commit``
    or ``drop``, ``result`` (serialize and send), ``stop``. Exits when the parent's pipe
    closes; an unexpected error is reported (``failed``) and ends the process."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when workers stop
    from secagg.ckks_context import CkksPublicContext
    from secagg.ckks_sum import CkksSum

    pubs: dict[bytes, CkksPublicContext] = {}
    acc: CkksSum | None = None
    pending: Any = None
    busy = recv_s = 0.0  # compute seconds (receiving included), and receiving chunks alone
    try:
        while True:
            msg = rx.recv()
            t0 = time.perf_counter()
            if msg[0] == "begin":
                _, pub_bytes, layout, count, start, stop = msg
                if pub_bytes not in pubs:
                    pubs = {pub_bytes: CkksPublicContext.from_bytes(pub_bytes)}
                acc = CkksSum(pubs[pub_bytes], layout, count=count, positions=range(start, stop))
                pending, busy, recv_s = None, 0.0, 0.0
            elif msg[0] == "add":
                chunks = [rx.recv_bytes() for _ in range(msg[2])]
                recv_s += time.perf_counter() - t0
                assert acc is not None
                try:
                    pending, error = acc.prepare(chunks), None
                except CkksError as exc:
                    pending, error = None, str(exc)
                tx.send(("loaded", msg[1], error))
            elif msg[0] == "commit":
                assert acc is not None and pending is not None
                acc.commit(pending)
                pending = None
            elif msg[0] == "drop":
                pending = None
            elif msg[0] == "result":
                assert acc is not None
                out, acc = acc.result(), None
                busy += time.perf_counter() - t0
                tx.send(("result", len(out), _rss_bytes(), busy, recv_s))
                for chunk in out:
                    tx.send_bytes(chunk)
                continue
            elif msg[0] == "stop":
                return
            busy += time.perf_counter() - t0
    except EOFError:
        return  # the parent went away
    except Exception as exc:  # report, then end: the parent replaces this worker
        try:
            tx.send(("failed", f"{type(exc).__name__}: {exc}"))
        except OSError:
            pass
        raise SystemExit(1) from exc
