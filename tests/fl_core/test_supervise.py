"""The pieces ``secagg run`` watches its processes with (fl_core.cli.supervise), on small
stand-in processes: seconds in all."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from secagg.fl_core.cli.supervise import (
    ClientGroup,
    ServerLines,
    Stopped,
    spawn,
    stop,
    stop_on_signals,
)

PY = sys.executable
STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"


def _wait_exit(group: ClientGroup, n: int) -> None:
    deadline = time.monotonic() + 10
    while sum(p.poll() is not None for p in group.procs) < n:
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_a_failed_client_gets_one_line_and_too_few_stop_the_run(tmp_path: Path) -> None:
    group = ClientGroup(tmp_path, floor=2)
    group.start(1, [PY, "-c", "import sys; print('loading', file=sys.stderr); "
                    "print('ValueError: the ledger belongs to another job\\n', file=sys.stderr);"
                    " sys.exit(2)"], dict(os.environ))
    group.start(3, [PY, "-c", "import time; time.sleep(60)"], dict(os.environ))
    try:
        _wait_exit(group, 1)
        lines, cause = group.check()
        assert lines == [f"client 1 exited with status 2: ValueError: the ledger belongs to "
                         f"another job (log: {tmp_path / 'client-1.log'})"]
        assert cause == "1 of 2 clients left, fewer than the 2 a round needs"
        assert group.check() == ([], cause)  # each death is told once
        assert "loading" in (tmp_path / "client-1.log").read_text()
    finally:
        stop(group.procs, grace=0)
        group.close()
    lines, _ = group.check()
    assert lines == [f"client 3 was killed by SIGTERM: (no error output) "
                     f"(log: {tmp_path / 'client-3.log'})"]


def test_clients_that_said_goodbye_do_not_stop_the_run(tmp_path: Path) -> None:
    group = ClientGroup(tmp_path, floor=2)
    for cid in (1, 2):
        group.start(cid, [PY, "-c", "pass"], dict(os.environ))
    _wait_exit(group, 2)
    assert group.check() == ([], None)
    group.close()


def test_after_the_goodbye_an_earlier_failure_does_not_stop_a_finishing_run(
        tmp_path: Path) -> None:
    """Found by the chaos harness: client 1 was killed mid-run, the others finished every
    round and exited 0 on the goodbye while the server still wrote its summary; the runner
    took the goodbyes for a cohort too small to go on, stopped the server and exited 1."""
    group = ClientGroup(tmp_path, floor=2)
    group.start(1, [PY, "-c", "import sys; sys.exit(3)"], dict(os.environ))  # killed mid-run
    for cid in (2, 3):
        group.start(cid, [PY, "-c", "pass"], dict(os.environ))  # told goodbye
    group.start(4, [PY, "-c", "import time; time.sleep(60)"], dict(os.environ))  # still busy
    try:
        _wait_exit(group, 3)
        lines, cause = group.check()
        assert [ln.split(":")[0] for ln in lines] == ["client 1 exited with status 3"]
        assert cause is None
    finally:
        stop(group.procs, grace=0)
        group.close()


def test_stop_is_parallel_and_ends_stubborn_and_stopped_processes() -> None:
    stubborn = [spawn([PY, "-c", STUBBORN]) for _ in range(3)]
    paused = spawn([PY, "-c", "import time; time.sleep(60)"])
    time.sleep(0.5)  # the handlers are installed
    paused.send_signal(signal.SIGSTOP)
    start = time.monotonic()
    stop([*stubborn, paused], grace=0.5, term_grace=0.5)
    assert time.monotonic() - start < 3  # not one grace per process
    assert all(p.returncode == -signal.SIGKILL for p in stubborn)
    assert paused.returncode == -signal.SIGTERM  # SIGCONT let it take the SIGTERM


def test_a_signal_raises_stopped_once_and_the_handlers_come_back() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Stopped) as exc, stop_on_signals():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    assert exc.value.exit_status == 143 and str(exc.value) == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before


def test_server_lines_time_out_and_end() -> None:
    proc = subprocess.Popen([PY, "-c", "import time; print('a', flush=True); time.sleep(0.5); "
                             "print('b')"], stdout=subprocess.PIPE, text=True)
    lines = ServerLines(proc.stdout or io.StringIO())
    assert lines.get(5) == "a\n"
    assert lines.get(0.05) == ""
    assert lines.get(5) == "b\n"
    assert lines.get(5) is None
    proc.wait(5)
