"""``flower-supernode`` with a shorter node heartbeat: how the deployment launcher starts its
SuperNodes (``python -m secagg.fl_core.flower._supernode SECONDS <flower-supernode args>``).

Why: a ServerApp learns that a SuperNode died only from the SuperLink's heartbeat book-keeping
(:mod:`secagg.fl_core.flower.stage_wait`): the node is offline ``HEARTBEAT_PATIENCE`` (2) times
its announced interval after its last heartbeat. Flower 1.42 has no flag or environment
variable for that interval: the SuperNode announces and paces its heartbeats with the module
constant ``HEARTBEAT_DEFAULT_INTERVAL`` = 30 s (``flwr/supernode/fleet_http_connection.py``:
``ActivateNodeRequest``/``SendNodeHeartbeatRequest(heartbeat_interval=...)``;
``flwr/supercore/heartbeat.py``: ``HeartbeatSender._run`` waits ``(interval - 5) x 0.7..0.9``),
so a killed node stays "online" 40-60 s. This wrapper sets that constant in the two modules
that read it, in the SuperNode process only (its ClientApp/SuperExec processes keep Flower's
task heartbeats), then runs Flower's own ``flower_supernode()``.

The SuperLink accepts intervals in ``[HEARTBEAT_MIN_INTERVAL, HEARTBEAT_MAX_INTERVAL]`` = [10,
1800] s (``flwr/superlink/servicer/fleet/fleet_handlers.py``: ``_validate_heartbeat_interval``),
so 10 s is the shortest a stock SuperLink takes: heartbeats every 3.5-4.5 s, a killed node
offline 15.5-20 s later. Written against Flower 1.42; a Flower without these constants makes
the wrapper fail at start (the launcher reports it with the node's log).
"""

from __future__ import annotations

import sys

__all__ = ["heartbeat_bounds", "main", "set_heartbeat_interval", "supernode_command"]


def heartbeat_bounds() -> tuple[float, float]:
    """The heartbeat intervals a SuperLink accepts, in seconds (Flower's constants)."""
    from flwr.common import constant

    return float(constant.HEARTBEAT_MIN_INTERVAL), float(constant.HEARTBEAT_MAX_INTERVAL)


def supernode_command(seconds: float | None) -> list[str]:
    """The command that starts a SuperNode with a ``seconds`` heartbeat (its arguments
    follow); ``[]`` for None (plain ``flower-supernode``, Flower's 30 s).

    Raises:
        ValueError: ``seconds`` outside what the SuperLink accepts.
    """
    if seconds is None:
        return []
    low, high = heartbeat_bounds()
    if not low <= seconds <= high:
        raise ValueError(f"heartbeat interval {seconds} s: the SuperLink accepts {low}-{high} s")
    return [sys.executable, "-m", "secagg.fl_core.flower._supernode", repr(float(seconds))]


def set_heartbeat_interval(seconds: float) -> None:
    """Make this process's SuperNode announce and keep a ``seconds`` heartbeat.

    Raises:
        ValueError: ``seconds`` outside what the SuperLink accepts.
        RuntimeError: this Flower has no such constant where 1.42 has it.
    """
    low, high = heartbeat_bounds()
    if not low <= seconds <= high:
        raise ValueError(f"heartbeat interval {seconds} s: the SuperLink accepts {low}-{high} s")
    from flwr.supercore import heartbeat
    from flwr.supernode import fleet_http_connection

    for mod in (heartbeat, fleet_http_connection):
        if not isinstance(getattr(mod, "HEARTBEAT_DEFAULT_INTERVAL", None), int | float):
            raise RuntimeError(f"{mod.__name__} has no HEARTBEAT_DEFAULT_INTERVAL (Flower "
                               "changed): start SuperNodes with heartbeat_interval=None")
        mod.HEARTBEAT_DEFAULT_INTERVAL = seconds  # type: ignore[attr-defined]


def main(argv: list[str]) -> int:
    """``SECONDS ARGS...``: run ``flower-supernode ARGS...`` with a ``SECONDS`` heartbeat.

    Raises:
        ValueError, RuntimeError: as :func:`set_heartbeat_interval`; SystemExit: as
            ``flower-supernode``.
    """
    if not argv:
        raise ValueError("usage: python -m secagg.fl_core.flower._supernode SECONDS ARGS...")
    set_heartbeat_interval(float(argv[0]))
    from flwr.supernode.cli import flower_supernode

    sys.argv = ["flower-supernode", *argv[1:]]
    flower_supernode()
    return 0


if __name__ == "__main__":  # pragma: no cover - runs as the SuperNode process
    sys.exit(main(sys.argv[1:]))
