"""Shared set-up of the fine-tuning process tests: key folders and a free loopback port."""

from __future__ import annotations

import socket
from pathlib import Path

from secagg.fl_core.identity import keyfiles, keys


def write_keys(key_dir: Path, clients: int) -> None:
    """A server CurveZMQ key pair and ``clients`` client key sets (ids 1..clients)."""
    keyfiles.write_server_keys(key_dir, keys.CurveKeyPair.generate())
    for cid in range(1, clients + 1):
        keyfiles.write_client_keys(key_dir, keys.ClientKeys.generate(cid))


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
