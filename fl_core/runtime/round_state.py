"""A client's round-id state file (``--state``): the last round it started, kept across
restarts so a restarted client never starts an earlier round again."""

from __future__ import annotations

import logging
import os
from pathlib import Path

__all__ = ["load_round", "save_round_id"]

log = logging.getLogger("secagg.fl_core.client")


def save_round_id(path: Path, round_id: int) -> None:
    """Write ``round_id`` to a client's state file atomically (temp file, fsync, rename; mode
    0600): the last round it started, so a restart never starts an earlier one again.

    Raises:
        OSError: the file cannot be written.
    """
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"{round_id}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_round(path: Path) -> tuple[int, float]:
    """The last round id and when it was seen (the file's modification time: it is written
    at each round start)."""
    try:
        return max(0, int(path.read_text().strip())), path.stat().st_mtime
    except (ValueError, OSError):
        log.warning("ignoring unreadable client state file %s", path)
        return 0, 0.0
