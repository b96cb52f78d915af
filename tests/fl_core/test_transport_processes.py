"""Server in this process, clients in separate processes, keys from `secagg keygen` files."""

from __future__ import annotations

import multiprocessing as mp
import queue
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from secagg.fl_core.cli import entry as cli
from secagg.fl_core.identity.keyfiles import load_allowlist, load_server_keys, server_paths
from secagg.fl_core.transport.sockets import DropReason, ServerTransport
from tests.fl_core import _procs
from tests.fl_core.conftest import ANY_PORT, FAST, LIMITS

pytestmark = pytest.mark.slow
SPAWN = mp.get_context("spawn")
DEADLINE_S = 20.0


@pytest.fixture
def key_dirs(tmp_path: Path) -> tuple[Path, Path]:
    """(all keys, allowlist folder holding the public cards of clients 1 and 2 only)."""
    keys, allow = tmp_path / "keys", tmp_path / "allow"
    assert cli.main(["keygen", "server", "--out", str(keys)]) == 0
    assert cli.main(["keygen", "client", "--out", str(keys), "--ids", "1-3"]) == 0
    allow.mkdir()
    for cid in (1, 2):
        shutil.copy2(keys / f"client-{cid}.public.json", allow)
    return keys, allow


def _start(target: Callable[..., None], endpoint: str, keys: Path, cid: int,
           out: mp.Queue) -> mp.Process:  # type: ignore[type-arg]
    p = SPAWN.Process(target=target, args=(endpoint, str(keys), cid, LIMITS, out), daemon=True)
    p.start()
    return p


def _serve(srv: ServerTransport, expected: int, out: mp.Queue,  # type: ignore[type-arg]
           n_reports: int) -> dict[int, object]:
    """Echo every hello until ``expected`` arrived; collect ``n_reports`` child reports."""
    deadline = time.monotonic() + DEADLINE_S
    served = 0
    while served < expected and time.monotonic() < deadline:
        got = srv.recv(200, round_id=1, stage=1)
        if got is not None:
            srv.send(got.sender, 1, 1, b"echo " + bytes(got.payload))
            served += 1
    reports: dict[int, object] = {}
    while len(reports) < n_reports and time.monotonic() < deadline:
        srv.recv(50)  # keep serving (and logging) while children finish
        try:
            cid, result = out.get_nowait()
        except queue.Empty:
            continue
        reports[cid] = result
    return reports


def _server(keys: Path, allow: Path) -> ServerTransport:
    return ServerTransport(ANY_PORT, limits=LIMITS, keys=load_server_keys(server_paths(keys)[1]),
                           allowlist=load_allowlist(allow), options=FAST)


def _join(procs: list[mp.Process]) -> None:
    for p in procs:
        p.join(timeout=5)
        if p.is_alive():
            p.kill()
            p.join(timeout=5)


def test_allowlisted_processes_join_and_a_stranger_does_not(key_dirs: tuple[Path, Path]) -> None:
    keys, allow = key_dirs
    out: mp.Queue = SPAWN.Queue()  # type: ignore[type-arg]
    with _server(keys, allow) as srv:
        procs = [_start(_procs.honest_client, srv.endpoint, keys, cid, out) for cid in (1, 2, 3)]
        try:
            reports = _serve(srv, expected=2, out=out, n_reports=3)
        finally:
            _join(procs)
        assert reports == {1: b"echo hello from 1", 2: b"echo hello from 2",
                           3: "AuthenticationRejected"}
        assert srv.events["HANDSHAKE_FAILED_AUTH"] >= 1
        assert sum(srv.drops.values()) == 0


def test_a_hostile_process_is_cut_off_while_another_is_served(
    key_dirs: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    keys, allow = key_dirs
    out: mp.Queue = SPAWN.Queue()  # type: ignore[type-arg]
    with _server(keys, allow) as srv:
        procs = [_start(_procs.hostile_client, srv.endpoint, keys, 1, out),
                 _start(_procs.honest_client, srv.endpoint, keys, 2, out)]
        try:
            reports = _serve(srv, expected=1, out=out, n_reports=2)
        finally:
            _join(procs)
        assert reports == {1: "disconnected", 2: b"echo hello from 2"}
        assert srv.drops[DropReason.MALFORMED] == 1
        assert srv.drops[DropReason.SPOOFED_SENDER] == 1
        assert srv.events["DISCONNECTED"] >= 1
    assert any("dropped a message" in r.getMessage() for r in caplog.records)
