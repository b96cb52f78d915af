"""The client loop: connect, say hello, wait for a round start, run the sans-IO client.

A client keeps only its identity keys on disk (the key files ``secagg keygen`` wrote); the
protocol participant of a round, with its masks and shares, lives in memory and is dropped
when the round ends, aborts or a newer round starts. While idle it sends a hello heartbeat
every ``heartbeat_s``, so after a network blip (ZeroMQ reconnects by itself) the server
learns its new route. It never takes part twice in one round id, nor in an older one.

Restarts: the transport refuses a sender's round ids older than one already seen, so a
client process restarted mid-federation must start from its last round id. With
``state_file`` it keeps that one public number there (written atomically at each round
start), which also stops it from ever answering a round id twice across restarts. Nothing
secret is ever written.

``update(round_id, global_state) -> vector`` provides the client's contribution (local
training in issue 6; :func:`~fl_core.rounds.synthetic_update` by default).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from fl_core.errors import EnvelopeError, TransportError
from fl_core.keys import ClientKeys
from fl_core.rounds import CONTROL, RoundStart, control_message, parse_control, synthetic_update
from fl_core.transport import ClientTransport
from protocols.errors import ProtocolError
from protocols.harness import create_client
from protocols.participant import ClientBase
from protocols.wire import encode

__all__ = ["ClientSettings", "UpdateFn", "run_client"]

log = logging.getLogger("fl_core.client")

UpdateFn = Callable[[int, npt.NDArray[np.float64]], npt.NDArray[np.float64]]


@dataclass
class ClientSettings:
    """Loop settings. ``idle_timeout_s``: give up after this long without hearing from the
    server. ``crash_at`` / ``replay``: test hooks (kill -9 on receiving ``"stage:ROUND"``;
    resend the first protocol message of round 1 at the start of round 2)."""

    heartbeat_s: float = 1.0
    idle_timeout_s: float = 120.0
    crash_at: str | None = None
    replay: bool = False
    state_file: Path | None = None


class _Session:
    def __init__(self, transport: ClientTransport, keys: ClientKeys | None,
                 update: UpdateFn, settings: ClientSettings) -> None:
        self.t = transport
        self.keys = keys
        self.update = update
        self.settings = settings
        self.last_round = 0
        self.participant: ClientBase[Any] | None = None
        self.rounds_done = 0
        self.first_sent: tuple[int, int, bytes] | None = None

    def hello(self) -> None:
        try:
            self.t.send(self.last_round, CONTROL, control_message("hello"))
        except TransportError as exc:
            log.debug("hello not sent: %s", exc)

    def on_control(self, round_id: int, payload: memoryview) -> bool:
        """Handle a control message; False when the server said goodbye."""
        try:
            head, start = parse_control(payload)
        except EnvelopeError as exc:
            log.warning("dropped a malformed control message: %s", exc)
            return True
        if head["type"] == "bye":
            return False
        if head["type"] == "abort":
            if round_id == self.last_round:
                self.participant = None  # drop masks and shares at once
            return True
        if start is not None:
            self.on_start(start)
        return True

    def on_start(self, start: RoundStart) -> None:
        if start.round_id <= self.last_round:
            log.warning("refused round %d: already took part in round %d", start.round_id,
                        self.last_round)
            return
        self.participant = None
        self.last_round = start.round_id
        if self.settings.state_file is not None:
            _save_round(self.settings.state_file, start.round_id)
        if self.t.client_id not in start.clients:
            return
        try:
            ctx = start.context()
            identity = self.keys.identity if (self.keys and ctx.config.active) else None
            self.participant = create_client(ctx, self.t.client_id, identity=identity)
            x = self.update(start.round_id, start.state)
            msgs = [encode(m) for m in self.participant.start(x, weight=None)]
        except (ProtocolError, ValueError, TypeError) as exc:
            log.warning("round %d: cannot take part: %s", start.round_id, exc)
            self.participant = None
            return
        for raw in msgs:
            self._send(start.first_stage, raw)
        if self.settings.replay and start.round_id == 2 and self.first_sent is not None:
            r, s, old = self.first_sent
            self.t.send(r, s, old)  # the server's replay filter must drop this
        if self.first_sent is None and msgs:
            self.first_sent = (start.round_id, start.first_stage, msgs[0])

    def on_protocol(self, round_id: int, stage: int, payload: memoryview) -> None:
        if self.participant is None or round_id != self.last_round:
            return
        if self.settings.crash_at == f"{stage}:{round_id}":
            log.warning("crash_at=%s: kill -9 of myself", self.settings.crash_at)
            os.kill(os.getpid(), signal.SIGKILL)
        try:
            out = self.participant.receive_data(bytes(payload))
        except ProtocolError as exc:
            log.warning("round %d: protocol error, leaving the round: %s", round_id, exc)
            self.participant = None
            return
        for raw in out:
            self._send(stage, raw)
        if self.participant.stage.value == "done":
            self.rounds_done += 1
            self.participant = None

    def _send(self, stage: int, raw: bytes) -> None:
        try:
            self.t.send(self.last_round, stage, raw)
        except TransportError as exc:
            log.warning("round %d: send failed: %s", self.last_round, exc)


def run_client(transport: ClientTransport, *, keys: ClientKeys | None = None,
               update: UpdateFn | None = None,
               settings: ClientSettings | None = None) -> int:
    """Serve rounds until the server says goodbye or stays silent ``idle_timeout_s``;
    return the number of rounds this client completed."""
    settings = settings or ClientSettings()
    cid = transport.client_id
    session = _Session(transport, keys, update or (
        lambda r, s: synthetic_update(cid, r, int(s.shape[0]), s)), settings)
    if settings.state_file is not None and settings.state_file.exists():
        session.last_round = _load_round(settings.state_file)
    last_heard = time.monotonic()
    next_hello = 0.0
    while time.monotonic() - last_heard < settings.idle_timeout_s:
        now = time.monotonic()
        if session.participant is None and now >= next_hello:
            session.hello()
            next_hello = now + settings.heartbeat_s
        got = transport.recv(int(settings.heartbeat_s * 1000))
        if got is None:
            continue
        last_heard = time.monotonic()
        env = got.envelope
        if env.stage == CONTROL:
            if not session.on_control(env.round_id, got.payload):
                log.info("client %d: server said goodbye", cid)
                break
        else:
            session.on_protocol(env.round_id, env.stage, got.payload)
    return session.rounds_done


def _save_round(path: Path, round_id: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"{round_id}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _load_round(path: Path) -> int:
    try:
        return max(0, int(path.read_text().strip()))
    except ValueError:
        log.warning("ignoring unreadable client state file %s", path)
        return 0
