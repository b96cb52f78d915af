"""The ``secagg`` console script.

Subcommands grow with the library: ``bench`` runs the benchmark suite (``secagg bench
primitives``, ``secagg bench protocol``); later ``serve``, ``client``, ``run`` and ``keygen``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["main"]

# benchmark name -> module with ``main(argv) -> int``; imported lazily (they pull in numpy,
# TenSEAL and friends, which ``secagg --help`` should not pay for).
BENCHMARKS: dict[str, str] = {
    "primitives": "benchmarks.primitives",
    "protocol": "benchmarks.protocol",
    "ckks": "benchmarks.ckks_bench",
}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("secagg")
    except PackageNotFoundError:  # running from a source tree without installing
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen subcommand; return the process exit status."""
    ap = argparse.ArgumentParser(
        prog="secagg", description="Secure aggregation for federated learning."
    )
    ap.add_argument("--version", action="version", version=f"secagg {_version()}")
    sub = ap.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="run a benchmark and write JSON to benchmarks/results/")
    bench.add_argument("name", choices=sorted(BENCHMARKS), help="which benchmark")
    bench.add_argument("args", nargs=argparse.REMAINDER, help="options of that benchmark (--help)")
    ns = ap.parse_args(list(sys.argv[1:] if argv is None else argv))
    if ns.command == "bench":
        module = importlib.import_module(BENCHMARKS[ns.name])
        return int(module.main(ns.args))
    ap.error(f"unknown command {ns.command!r}")
    return 2  # pragma: no cover - ap.error exits


if __name__ == "__main__":
    raise SystemExit(main())
