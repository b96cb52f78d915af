"""Small timing and reporting helpers shared by the benchmarks."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["PhaseClock", "format_value", "machine_info", "median_time", "write_json"]


def median_time(fn: Callable[[], object], *, repeat: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeat`` runs after ``warmup`` discarded runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    import cryptography
    import numpy

    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "cryptography": cryptography.__version__,
        "numpy": numpy.__version__,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_json(path: str | Path, payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` as indented JSON, creating parent folders; return the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    return p


def format_value(v: Any) -> str:
    """A table cell: floats as ``1.23M`` from 1e5 up, else 3 significant digits; None empty."""
    if isinstance(v, float):
        return f"{v / 1e6:.2f}M" if v >= 1e5 else f"{v:.3g}"
    return "" if v is None else str(v)


class PhaseClock:
    """Seconds per named phase from a stream of marks: :meth:`mark` ``(name)`` starts a phase,
    ``mark(None)`` ends the current one (pass :meth:`mark` as a participant's ``trace``)."""

    def __init__(self) -> None:
        self._totals: dict[str, float] = {}
        self._phase: str | None = None
        self._since = 0.0

    def mark(self, phase: str | None) -> None:
        """End the current phase (if any) and start ``phase`` (None: none)."""
        now = time.perf_counter()
        if self._phase is not None:
            self._totals[self._phase] = self._totals.get(self._phase, 0.0) + now - self._since
        self._phase, self._since = phase, now

    def totals(self) -> dict[str, float]:
        """Seconds per phase so far."""
        return dict(self._totals)
