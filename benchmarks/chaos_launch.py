"""``python -m benchmarks.chaos_launch ENDPOINT ARGS...``: ``secagg ARGS...`` with the clients
that ``secagg run`` spawns connecting to ``ENDPOINT`` (the chaos proxy,
:mod:`benchmarks.chaos_proxy`) instead of the server's own endpoint.

``secagg run`` has no flag for this: the runner hands each client the endpoint the server
reports when it listens. Rather than add a flag to ``fl_core/cli`` for a benchmark, this
wrapper replaces the runner's client command builder in this process only; everything else
(server, clients, keys, supervision, resume) is the real ``secagg run``. If the runner's
internals change, this fails loudly at start-up instead of silently bypassing the proxy.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from secagg.fl_core.cli import runner
from secagg.fl_core.cli.entry import main


def _patch(connect: str) -> None:
    """Point every client command of :mod:`secagg.fl_core.cli.runner` at ``connect``.

    Raises:
        RuntimeError: the runner no longer builds client commands the way this expects.
    """
    original = getattr(runner, "_client_cmd", None)
    if original is None:
        raise RuntimeError("secagg.fl_core.cli.runner._client_cmd is gone: update chaos_launch")

    def client_cmd(ns: argparse.Namespace, endpoint: str, cid: int) -> list[str]:
        del endpoint  # the server's own: the clients go through the proxy instead
        cmd: list[str] = original(ns, connect, cid)
        if connect not in cmd:
            raise RuntimeError("the runner's client command has no --connect endpoint")
        return cmd

    runner._client_cmd = client_cmd


def launch(argv: list[Any]) -> int:
    """Run ``secagg argv[1:]`` with clients connecting to ``argv[0]``; return the status."""
    _patch(str(argv[0]))
    return main([str(a) for a in argv[1:]])


if __name__ == "__main__":
    raise SystemExit(launch(sys.argv[1:]))
