"""Teardown of the test processes: whatever still runs is killed, everything is waited for."""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from typing import Any


def reap(procs: Iterable[subprocess.Popen[Any]], timeout: float = 10) -> None:
    """Kill the processes still running and wait (bounded) for all of them."""
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=timeout)
