"""Stopping process trees: SIGTERM, a grace period, then SIGKILL, for every descendant.

Flower's SuperLink starts its SuperExec with ``start_new_session``, so killing the SuperLink's
process group misses it; the tree is read from ``/proc`` (Linux) and every process group in it
is signalled, never this process's own. Elsewhere only the started processes' groups are.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["alive", "descendants", "kill_tree", "stop_trees"]

_PROC = Path("/proc")


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of ``pid`` from /proc, or None if it is gone or unreadable."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # the name in parentheses may hold spaces
    return fields[0], int(fields[1])


def alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie does not count)."""
    st = _stat(pid)
    if st is not None:
        return st[0] != "Z"
    if _PROC.is_dir():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (empty where /proc is not available)."""
    if not _PROC.is_dir():
        return set()
    children: dict[int, list[int]] = {}
    for entry in _PROC.iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))) is not None:
            children.setdefault(st[1], []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _signal(pids: Iterable[int], sig: int) -> None:
    own = os.getpgrp()
    groups: set[int] = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            groups.add(os.getpgid(pid))
        with contextlib.suppress(OSError):
            os.kill(pid, sig)
    for pgid in groups - {own}:
        with contextlib.suppress(OSError):
            os.killpg(pgid, sig)


def _trees(procs: Iterable[subprocess.Popen[Any]]) -> set[int]:
    pids: set[int] = set()
    for p in procs:
        if p.poll() is None:
            pids.add(p.pid)
        pids |= descendants(p.pid)
    return pids


def stop_trees(procs: Iterable[subprocess.Popen[Any]], *, grace: float) -> None:
    """SIGTERM every process of the trees, SIGKILL what still runs after ``grace`` seconds,
    and reap the started processes."""
    procs = list(procs)
    seen = _trees(procs)
    _signal(seen, signal.SIGTERM)
    end = time.monotonic() + grace
    while time.monotonic() < end:
        seen |= _trees(procs)  # a child may start while the tree shuts down
        if not any(alive(pid) for pid in seen):
            break
        time.sleep(0.05)
    left = {pid for pid in seen | _trees(procs) if alive(pid)}
    if left:
        _signal(left, signal.SIGKILL)
        _wait_gone(left, 5.0)
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=5)


def _wait_gone(pids: set[int], seconds: float) -> None:
    end = time.monotonic() + seconds
    while any(alive(pid) for pid in pids) and time.monotonic() < end:
        time.sleep(0.02)


def kill_tree(proc: subprocess.Popen[Any], *, grace: float = 0.0) -> None:
    """Stop ``proc`` and its descendants: SIGKILL at once when ``grace`` is 0."""
    if grace > 0:
        stop_trees([proc], grace=grace)
        return
    tree = _trees([proc])
    _signal(tree, signal.SIGKILL)
    _wait_gone(tree - {proc.pid}, 5.0)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
