"""How ``secagg run`` watches and stops its server and client processes (issue 22).

- **Dead parties are seen at once.** Each client's stderr is shown as before and also kept in
  ``client-<i>.log`` in the run folder; the runner polls the clients between the server's
  progress lines (:class:`ServerLines` reads those in a thread). A client that exits with a
  non-zero status (or is killed) gets one line, with the last line it wrote. A client that
  exits with status 0 was told goodbye (or heard nothing for ``--idle-timeout``) and is not a
  failure. Once a client has failed and fewer clients are left than a round needs (the cohort
  floor: ``--min-clients``, else ``--n``), :meth:`ClientGroup.check` returns the cause and the
  runner stops the run instead of letting the server wait out its join timeout.
- **Exit fast.** :func:`stop` gives every process one shared grace period, then SIGTERM, a
  short wait, then SIGKILL, instead of waiting for each in turn.
- **Signals.** Inside :func:`stop_on_signals`, SIGINT, SIGTERM and SIGHUP raise
  :class:`Stopped` in the runner; its children run in sessions of their own (a terminal's
  Ctrl-C reaches the runner alone), and the runner stops them. Nothing in the run folder is
  deleted: the server writes its checkpoint before and after every round, so the run resumes.
- **A runner killed with SIGKILL leaves no orphans.** :func:`spawn` names the runner in the
  child's environment (``SECAGG_PARENT_PID``); the child calls :func:`watch_parent` at start,
  which asks Linux for SIGTERM when its parent dies (``prctl(PR_SET_PDEATHSIG)``) and, where
  that is unavailable, polls its parent once a second. Either way a child whose runner is gone
  stops within about a second, as it would on the runner's SIGTERM.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

__all__ = ["GOODBYE_GRACE_S", "PARENT_ENV", "ClientGroup", "ServerLines", "Stopped", "spawn",
           "stop", "stop_on_signals", "watch_parent"]

PARENT_ENV = "SECAGG_PARENT_PID"
_PR_SET_PDEATHSIG = 1

_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_POLL_S = 0.05
TERM_GRACE_S = 2.0  # after SIGTERM, before SIGKILL
# after the server's last round: clients told goodbye exit at once, but one may still be busy
# with the last round's result (a CKKS client decrypting the sum); the runner still exits
# within 10 s of its last round
GOODBYE_GRACE_S = 5.0


class Stopped(Exception):
    """The runner got SIGINT, SIGTERM or SIGHUP; ``exit_status`` is 128 + the signal."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signal.Signals(signum).name)

    @property
    def exit_status(self) -> int:
        """The conventional status of a process ended by this signal (130 for SIGINT)."""
        return 128 + self.signum


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """While inside, the first SIGINT, SIGTERM or SIGHUP raises :class:`Stopped` in the main
    thread; later ones are ignored, so that stopping the children is not cut short. The old
    handlers come back on the way out. Outside the main thread this does nothing.

    Raises:
        Stopped: from the code inside, when a signal arrives.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = False

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal fired
        if not fired:
            fired = True
            raise Stopped(signum)

    old = {sig: signal.signal(sig, handler) for sig in _SIGNALS}
    try:
        yield
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


def spawn(cmd: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
    """Start a child in a session of its own: a terminal's SIGINT or SIGHUP reaches the runner
    alone, which then stops the child (and its own children, by process group). The child's
    environment names this process (:data:`PARENT_ENV`), so that a ``secagg`` child stops when
    the runner dies without a word (:func:`watch_parent`)."""
    env = dict(kwargs.pop("env", None) or os.environ)
    env[PARENT_ENV] = str(os.getpid())
    return subprocess.Popen(cmd, start_new_session=True, env=env, **kwargs)


def watch_parent() -> bool:
    """If this process was started by :func:`spawn`, stop it (SIGTERM) when that parent dies,
    even of SIGKILL. Returns True when a watch is in place. Call it first thing in a child.

    Linux: ``prctl(PR_SET_PDEATHSIG, SIGTERM)``, then a check that the parent did not die
    before it (a child reparented already terminates itself at once). Elsewhere: a daemon
    thread that polls :func:`os.getppid` once a second."""
    raw = os.environ.get(PARENT_ENV)
    if not raw or not raw.isdigit():
        return False
    parent = int(raw)
    watched = False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        watched = libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) == 0
    except (OSError, AttributeError):
        watched = False
    if os.getppid() != parent:  # the runner died before the watch was set
        os.kill(os.getpid(), signal.SIGTERM)
    if not watched:
        def poll() -> None:
            while os.getppid() == parent:
                time.sleep(1.0)
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=poll, name="watch-parent", daemon=True).start()
    return True


class ServerLines:
    """The server's stdout, read by a daemon thread so that the runner can look at its clients
    while the server is quiet."""

    def __init__(self, stream: IO[str]) -> None:
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), name="server-stdout",
                         daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        try:
            for line in stream:
                self._lines.put(line)
        except (OSError, ValueError):  # the pipe closed under us
            pass
        finally:
            self._lines.put(None)

    def get(self, timeout: float) -> str | None:
        """The next line; ``""`` when none came within ``timeout`` seconds; None at the end
        of the stream (the server exited)."""
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            return ""


@dataclass
class _Client:
    cid: int
    proc: subprocess.Popen[bytes]
    log: Path
    tee: threading.Thread | None = None
    last: str = ""  # the last non-empty line it wrote to stderr
    seen: bool = False  # its exit has been looked at


def _last_words(raw: bytes) -> str:
    text = raw.decode(errors="replace").split("\r")  # a progress bar redraws with \r
    return next((part.strip() for part in reversed(text) if part.strip()), "")


def _write_all(fd: int, data: bytes) -> None:
    try:
        while data:
            data = data[os.write(fd, data):]
    except OSError:  # the runner's stderr is gone: the log still has it
        pass


def _how(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


@dataclass
class ClientGroup:
    """The clients of one run, each with its stderr shown and kept in ``client-<i>.log``
    under ``folder``; ``floor``: the fewest live clients a round can run with."""

    folder: Path
    floor: int
    _clients: list[_Client] = field(default_factory=list)
    _failed: int = 0
    _goodbye: bool = False

    @property
    def procs(self) -> list[subprocess.Popen[bytes]]:
        """Every client process started."""
        return [c.proc for c in self._clients]

    def start(self, cid: int, cmd: list[str], env: dict[str, str]) -> None:
        """Start client ``cid``; its stderr goes to the runner's stderr and to its log.

        Raises:
            OSError: the process could not be started.
        """
        proc: subprocess.Popen[bytes] = spawn(cmd, env=env, stderr=subprocess.PIPE)
        client = _Client(cid, proc, self.folder / f"client-{cid}.log")
        self._clients.append(client)
        client.tee = threading.Thread(target=self._tee, args=(client,), name=f"client-{cid}",
                                      daemon=True)
        client.tee.start()

    @staticmethod
    def _tee(client: _Client) -> None:
        assert client.proc.stderr is not None
        try:
            with client.log.open("ab") as log:  # a resumed run appends
                for raw in client.proc.stderr:
                    log.write(raw)
                    log.flush()
                    _write_all(2, raw)
                    client.last = _last_words(raw) or client.last
        except OSError:
            for raw in client.proc.stderr:  # the log cannot be written: still drain the pipe
                _write_all(2, raw)
                client.last = _last_words(raw) or client.last

    def check(self) -> tuple[list[str], str | None]:
        """Look at the clients: one line for each that failed since the last call (it exited
        with a non-zero status or was killed; status 0 means it was told goodbye), and the
        cause when a client has failed and fewer than ``floor`` are left, unless a client was
        told goodbye (else None).

        Raises:
            Nothing.
        """
        lines = []
        for c in self._clients:
            code = c.proc.poll()
            if code is None or c.seen:
                continue
            c.seen = True
            if code == 0:
                self._goodbye = True
                continue
            self._failed += 1
            if c.tee is not None:
                c.tee.join(timeout=1.0)  # its last words are still in the pipe
            lines.append(f"client {c.cid} {_how(code)}: {c.last or '(no error output)'} "
                         f"(log: {c.log})")
        alive = sum(c.proc.poll() is None for c in self._clients)
        # A client that exits 0 was told goodbye (or heard nothing for its idle timeout): the
        # rounds are over, and the server may still be writing its summary. Clients leaving
        # then are not a run too small to go on, even after an earlier client failed.
        if self._failed and alive < self.floor and not self._goodbye:
            return lines, (f"{alive} of {len(self._clients)} clients left, fewer than the "
                           f"{self.floor} a round needs")
        return lines, None

    def close(self, timeout: float = 1.0) -> None:
        """Wait (bounded) for the logs to take the clients' last lines."""
        for c in self._clients:
            if c.tee is not None:
                c.tee.join(timeout=timeout)


def _signal_group(proc: subprocess.Popen[Any], sig: int) -> None:
    """Signal ``proc`` and its own children (its process group: :func:`spawn`)."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass


def _wait_all(procs: Sequence[subprocess.Popen[Any]], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        time.sleep(_POLL_S)


def stop(procs: Sequence[subprocess.Popen[Any]], *, grace: float,
         term_grace: float = TERM_GRACE_S) -> None:
    """Give the processes ``grace`` seconds, all together, to exit on their own; SIGTERM the
    rest (with their process groups), wait ``term_grace`` seconds, SIGKILL what is left, and
    reap everything.

    Raises:
        Nothing: a process already gone is skipped, one that outlives SIGKILL is left.
    """
    _wait_all(procs, grace)
    live = [p for p in procs if p.poll() is None]
    for p in live:
        _signal_group(p, signal.SIGTERM)
        _signal_group(p, signal.SIGCONT)  # a stopped process takes SIGTERM only once resumed
    _wait_all(live, term_grace)
    for p in live:
        _signal_group(p, signal.SIGKILL)
    for p in procs:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
