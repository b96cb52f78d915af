"""The client loop: connect, say hello, wait for a round start, run the sans-IO client.

A client keeps only its identity keys on disk (the key files ``secagg keygen`` wrote); the
protocol participant of a round, with its masks and shares, lives in memory and is dropped
when the round ends, aborts or a newer round starts. While idle it sends a hello heartbeat
every ``heartbeat_s``, so after a network blip (ZeroMQ reconnects by itself) the server
learns its new route. It never takes part twice in one round id, nor in an older one.

Policy (:mod:`secagg.fl_core.runtime.policy`): with a
:class:`secagg.fl_core.runtime.policy.ClientPolicy` (the
CLI always builds one from the client's own flags, job and key folder) every round start and
CKKS ``keys`` message is checked against it before any secret is used: the protocol, mode,
``k``/``t`` inputs, fixed point, cohort size, ``dim``, DP mechanism and the peers' verify keys
must be the client's own, and round ids may not run ahead faster than the policy's rate
(:class:`secagg.fl_core.runtime.policy.RoundClock`). A mismatch is logged with the field it concerns
(:class:`secagg.fl_core.runtime.policy.PolicyMismatch`) and the client sits the round out, sending
nothing. The round's context is built from the client's own values, its policy digest
included. Without a policy :func:`run_client` refuses
(:class:`secagg.fl_core.runtime.policy.PolicyRequired`) unless its caller opts in with
``insecure=True``, which takes the server's parameters as sent (a round start saying ``plain``
then gets the update in the clear): for tests only, and logged.

Restarts: the transport refuses a sender's round ids older than one already seen, so a
client process restarted mid-federation must start from its last round id. With
``state_file`` it keeps that one public number there (written atomically at each round
start; its modification time is when the round-id rate limit counts from after a restart),
which also stops it from ever answering a round id twice across restarts. Nothing secret is
ever written.

``update(round_id, global_state) -> vector`` provides the client's contribution (local
training in issue 6; :func:`secagg.fl_core.runtime.rounds.synthetic_update` by default).

CKKS: a ``keys`` control message starts a key setup session
(:class:`secagg.protocols.keysetup.KeySetupClient`) under that round id; the epoch's secret context
stays in memory only (never on disk) and is replaced by the next epoch's. The client decrypts
each round's encrypted sum itself and adds the decoded mean to its own copy of the model (the
server holds none); ``aggregates_file`` (optional) records, per round, the decoded sum and the
included ids as JSON lines (it is what the client learns anyway). When a round start carries
no state (CKKS, or a server with ``--no-state-broadcast``) the update gets the client's own
model copy.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from secagg.fl_core.errors import EnvelopeError, TransportError
from secagg.fl_core.identity.keys import ClientKeys
from secagg.fl_core.runtime.client_keys import KeySetupMixin
from secagg.fl_core.runtime.policy import (
    ClientPolicy,
    PolicyMismatch,
    PolicyRequired,
    RoundClock,
    policy_digest,
)
from secagg.fl_core.runtime.round_start import AnsweredStart, start_digest
from secagg.fl_core.runtime.round_state import load_round, save_round_id
from secagg.fl_core.runtime.rounds import (
    CONTROL,
    RoundStart,
    control_message,
    parse_control,
    synthetic_update,
)
from secagg.fl_core.runtime.updates import (
    RoundAwareUpdate,
    StepAwareUpdate,
    UpdateFn,
    VoidableUpdate,
)
from secagg.fl_core.transport.sockets import ClientTransport
from secagg.protocols.client import SecAggClient
from secagg.protocols.context import RoundContext
from secagg.protocols.encoding import Aggregate
from secagg.protocols.errors import ProtocolError
from secagg.protocols.harness import create_client
from secagg.protocols.participant import ClientBase
from secagg.protocols.transitions import INPUT_PENDING
from secagg.protocols.wire import encode

if TYPE_CHECKING:  # CKKS is an extra (TenSEAL)
    from secagg.ckks import CkksSecretContext
    from secagg.protocols.keysetup import KeySetupClient

__all__ = ["ClientSettings", "RoundAwareUpdate", "StepAwareUpdate", "UpdateFn", "run_client",
           "save_round_id"]

log = logging.getLogger("secagg.fl_core.client")

@dataclass
class ClientSettings:
    """Loop settings. ``idle_timeout_s``: give up after this long without hearing from the
    server. ``crash_at`` / ``replay``: test hooks (kill -9 on receiving ``"stage:ROUND"``, or
the round start of round R with ``"start:R"``;
    resend the first protocol message of round 1 at the start of round 2)."""

    heartbeat_s: float = 1.0
    idle_timeout_s: float = 120.0
    crash_at: str | None = None
    replay: bool = False
    state_file: Path | None = None
    aggregates_file: Path | None = None
    stats_file: Path | None = None
    """Appends one JSON line per finished round: seconds in ``update`` (training) and in the
    protocol participant (masking, key agreement, sharing, unmasking)."""
    stall_hello_s: float = 5.0
    """Say hello even inside a round after this long without a word from the server."""


class _Session(KeySetupMixin):
    def __init__(self, transport: ClientTransport, keys: ClientKeys | None,
                 update: UpdateFn, settings: ClientSettings,
                 policy: ClientPolicy | None = None, *, insecure: bool = False) -> None:
        """Raises PolicyRequired (no policy, not insecure) or ValueError (both)."""
        if policy is None and not insecure:
            raise PolicyRequired.for_client(transport.client_id)
        if policy is not None and insecure:
            raise ValueError("insecure=True means no policy (the server's parameters as sent); "
                             "pass a policy or insecure=True, not both")
        self.policy = policy
        self.clock = RoundClock(policy.round_burst if policy else 1,
                                policy.min_round_interval_s if policy else 1.0)
        self.refused: list[PolicyMismatch] = []
        self.t = transport
        self.keys = keys
        self.update = update
        self.settings = settings
        self.last_round = 0
        self.participant: ClientBase[Any] | None = None
        self.rounds_done = 0
        self.first_sent: tuple[int, int, bytes] | None = None
        self.keysetup: KeySetupClient | None = None
        self.keysetup_round = 0
        self.keys_answered: AnsweredStart | None = None  # a resent announcement: same reply
        self.secret: CkksSecretContext | None = None
        self.model: npt.NDArray[np.float64] | None = None
        self.timing: dict[str, float] = {}
        self.answered: AnsweredStart | None = None  # a resent round start gets the same reply
        self.input_sent = False  # the participant of ``last_round`` has sent its input
        self.voided: list[int] = []  # rounds whose charge was voided (they released nothing)

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
                self._end_round("aborted by the server")  # drop masks and shares at once
                self.answered = None
            if round_id == self.keysetup_round:
                self.keysetup = None
                self.keys_answered = None
            return True
        if head["type"] == "keys":
            self.on_keys(round_id, head, start_digest(payload))
            return True
        if start is not None:
            self.on_start(start, start_digest(payload))
        return True

    def _refuse(self, round_id: int, exc: PolicyMismatch) -> None:
        log.warning("round %d: refused, not my policy: %s", round_id, exc)
        self.refused.append(exc)

    def _check_start(self, start: RoundStart) -> RoundContext:
        """The round's context, from the client's own policy (raises PolicyMismatch)."""
        if self.policy is None:  # insecure=True, no policy: the server decides
            if self.t.client_id not in start.clients:
                raise PolicyMismatch("cohort", f"client {self.t.client_id} is not in it")
            try:  # the server's policy digest, as sent (it must match the server's context)
                return start.context(None if start.policy is None
                                     else policy_digest(start.policy))
            except (ProtocolError, ValueError, TypeError) as exc:
                raise PolicyMismatch("config", str(exc)) from None
        self.clock.check(start.round_id, time.time())
        return self.policy.check_start(start, self.t.client_id)

    def on_start(self, start: RoundStart, digest: bytes = b"") -> None:
        replay = None if self.answered is None else self.answered.replay_for(
            start.round_id, digest)
        if replay is not None and self.answered is not None:  # a copy: the same bytes again
            for raw in replay:
                self._send(self.answered.stage, raw)
            return
        if start.round_id <= self.last_round:
            log.warning("refused round %d: already took part in round %d", start.round_id,
                        self.last_round)
            return
        try:  # before anything secret exists: masks, shares, the update itself
            ctx = self._check_start(start)
        except PolicyMismatch as exc:
            self._refuse(start.round_id, exc)
            return
        self._end_round(f"round {start.round_id} started")
        self.answered = None
        self.last_round = start.round_id
        self.input_sent = False
        self.clock.advance(start.round_id, time.time())
        if self.settings.state_file is not None:
            save_round_id(self.settings.state_file, start.round_id)
        if self.settings.crash_at == f"start:{start.round_id}":
            log.warning("crash_at=%s: kill -9 of myself", self.settings.crash_at)
            os.kill(os.getpid(), signal.SIGKILL)
        try:
            identity = self.keys.identity if (self.keys and ctx.config.active) else None
            key = self.secret if ctx.config.is_ckks else None
            self.participant = create_client(ctx, self.t.client_id, identity=identity, key=key)
            if start.state is not None:
                self.model = start.state
            elif self.model is None or self.model.shape[0] != start.dim:
                self.model = np.zeros(start.dim)
            t0 = time.perf_counter()
            if isinstance(self.update, StepAwareUpdate):
                x = self.update.for_step(start.round_id, start.step, self.model)
            elif isinstance(self.update, RoundAwareUpdate) and isinstance(self.participant,
                                                                       SecAggClient):
                x, removable = self.update.for_round(start.round_id, self.model,
                                                     n=len(ctx.client_ids),
                                                     t=ctx.config.threshold)
                if removable:
                    self.participant.hold_removable(removable)
            else:
                x = self.update(start.round_id, self.model)
            t1 = time.perf_counter()
            msgs = [encode(m) for m in self.participant.start(x, weight=None)]
            self.input_sent = self.participant.stage not in INPUT_PENDING
            self.timing = {"update_s": t1 - t0, "protocol_s": time.perf_counter() - t1}
        except (ProtocolError, ValueError, TypeError) as exc:
            log.warning("round %d: cannot take part: %s", start.round_id, exc)
            self._end_round("could not take part")
            return
        for raw in msgs:
            self._send(start.first_stage, raw)
        self.answered = AnsweredStart(start.round_id, digest, start.first_stage, tuple(msgs))
        if self.settings.replay and start.round_id == 2 and self.first_sent is not None:
            r, s, old = self.first_sent
            self.t.send(r, s, old)  # the server's replay filter must drop this
        if self.first_sent is None and msgs:
            self.first_sent = (start.round_id, start.first_stage, msgs[0])

    def on_protocol(self, round_id: int, stage: int, payload: memoryview) -> None:
        if (self.keysetup is not None and round_id == self.keysetup_round
                and round_id != self.last_round):
            self.on_keysetup(round_id, stage, payload)
            return
        if self.participant is None or round_id != self.last_round:
            return
        self.answered = None  # the server moved the round on: a round start is stale now
        if self.settings.crash_at == f"{stage}:{round_id}":
            log.warning("crash_at=%s: kill -9 of myself", self.settings.crash_at)
            os.kill(os.getpid(), signal.SIGKILL)
        try:
            t0 = time.perf_counter()
            out = self.participant.receive_data(bytes(payload))
            self.timing["protocol_s"] = self.timing.get("protocol_s", 0.0) + (
                time.perf_counter() - t0)
        except ProtocolError as exc:
            log.warning("round %d: protocol error, leaving the round: %s", round_id, exc)
            self._end_round("protocol error")
            return
        self.input_sent |= self.participant.stage not in INPUT_PENDING
        for raw in out:
            self._send(stage, raw)
        if self.participant.stage.value == "done":
            self.rounds_done += 1
            self._write_stats(round_id)
            agg = getattr(self.participant, "result", None)
            self.participant = None
            if isinstance(agg, Aggregate):  # CKKS: the client decrypted the sum
                self.on_aggregate(round_id, agg.values, agg.weight_total, agg.included)

    def _end_round(self, why: str) -> None:
        """Drop the participant of ``last_round`` (its masks and shares). When it had not
        sent its input (still in :data:`INPUT_PENDING`), the round released nothing of this
        party's data: a task that keeps books (:class:`VoidableUpdate`) un-charges it. The
        decision is the client's own, from its own participant's stage: a server cannot
        un-charge a round whose input it has."""
        if self.participant is None:
            return
        self.participant = None
        if self.input_sent or not isinstance(self.update, VoidableUpdate):
            return
        try:
            if self.update.void(self.last_round):
                self.voided.append(self.last_round)
                log.info("round %d ended before this client's input left (%s): not charged",
                         self.last_round, why)
        except OSError as exc:  # the ledger stays as it was: charged
            log.warning("round %d: could not void its charge: %s", self.last_round, exc)

    def on_aggregate(self, round_id: int, values: npt.NDArray[np.float64], weight: float,
                     included: tuple[int, ...]) -> None:
        if self.model is not None and self.model.shape == values.shape and weight > 0:
            self.model = self.model + values / weight
        path = self.settings.aggregates_file
        if path is not None:
            with path.open("a") as f:
                f.write(json.dumps({"round": round_id, "included": list(included),
                                    "weight_total": weight,
                                    "sum": values.tolist()}) + "\n")

    def _write_stats(self, round_id: int) -> None:
        path = self.settings.stats_file
        if path is not None:
            with path.open("a") as f:
                f.write(json.dumps({"round": round_id, "client": self.t.client_id,
                                    **{k: round(v, 4) for k, v in self.timing.items()}}) + "\n")
        self.timing = {}

    def _send(self, stage: int, raw: bytes) -> None:
        self._send_at(self.last_round, stage, raw)

    def _send_at(self, round_id: int, stage: int, raw: bytes) -> None:
        try:
            self.t.send(round_id, stage, raw)
        except TransportError as exc:
            log.warning("round %d: send failed: %s", round_id, exc)


def run_client(transport: ClientTransport, *, keys: ClientKeys | None = None,
               update: UpdateFn | None = None,
               settings: ClientSettings | None = None,
               policy: ClientPolicy | None = None, insecure: bool = False) -> int:
    """Serve rounds until the server says goodbye or stays silent ``idle_timeout_s``;
    return the number of rounds this client completed. ``policy``: the client's pinned
    round policy (see the module docstring; build it from the client's own files with
    :meth:`ClientPolicy.from_key_folder`). ``insecure=True`` (tests only) runs without one:
    the server's parameters as sent.

    Raises:
        PolicyRequired: no ``policy`` and not ``insecure=True``; nothing is sent, not even a
            hello.
        ValueError: both a ``policy`` and ``insecure=True``.
    """
    settings = settings or ClientSettings()
    cid = transport.client_id
    session = _Session(transport, keys, update or (
        lambda r, s: synthetic_update(cid, r, int(s.shape[0]), s)), settings, policy,
        insecure=insecure)
    if insecure:
        log.warning("client %d runs with insecure=True, without a pinned policy: the server "
                    "chooses protocol, mode and parameters", cid)
    if settings.state_file is not None and settings.state_file.exists():
        session.last_round, seen_at = load_round(settings.state_file)
        session.clock.advance(session.last_round, seen_at)
    last_heard = time.monotonic()
    next_hello = 0.0
    while time.monotonic() - last_heard < settings.idle_timeout_s:
        now = time.monotonic()
        # In a round a client is quiet while the server collects; after ``stall_hello_s`` of
        # silence it says hello anyway, so a server restarted mid-round learns its route.
        stalled = now - last_heard > settings.stall_hello_s
        if (session.participant is None or stalled) and now >= next_hello:
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
    session._end_round("the client stopped")
    return session.rounds_done

