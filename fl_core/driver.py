"""The server-side round driver: time and sockets around a sans-IO server participant.

For each stage it collects messages from the transport until every expected sender has been
heard from or the stage's deadline passes, then calls ``server.close_stage(missing)`` and
sends what that returns. A deadline thus reaches the protocol as the input "these clients are
missing". Late (other stage), duplicate, out-of-round and replayed (earlier round) messages
are refused by the transport's round filter or by the protocol, logged and counted, and the
round goes on. A round completes when the protocol completes (at least the threshold
survived); a :class:`~protocols.errors.ProtocolError` from ``close_stage`` aborts it with a
clear message, and the caller starts the next one.

Client sampling: each round samples ``n`` of the connected, allowlisted clients with the
operating system's CSPRNG (:class:`random.SystemRandom`), so no one can predict or steer a
cohort. Only clients that have said hello (the transport knows a route to them) are eligible.
No protocol logic lives here.

CKKS (``ckks``, ``ckks+mask``): the dealer-free key setup (:mod:`protocols.keysetup`) is its
own sans-IO session, driven by the same stage loop as a round and announced by a ``keys``
control message. It runs before the first round and again (a new epoch) whenever the
connected members change or a sampled client holds no key of the epoch; it shares the round's
envelope round id (its stages ``advertise``/``distribute``/``confirm`` have their own stage
numbers). The server relays opaque bytes and keeps only :class:`~protocols.keysetup.EpochKeys`
(the keyless public context). A CKKS round ends with the *encrypted* sum: the driver returns
it (``RoundOutcome.encrypted``) and never sees a plaintext aggregate; the clients decrypt.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from fl_core.errors import PeerUnreachable, TransportError
from fl_core.rounds import CONTROL, RoundStart, control_message, stage_number
from fl_core.transport import ServerTransport
from protocols.config import SecAggConfig
from protocols.context import RoundContext
from protocols.epoch import EpochContext
from protocols.errors import ProtocolError
from protocols.harness import create_server
from protocols.keysetup import EpochKeys, KeySetupServer
from protocols.messages import Message
from protocols.participant import ServerBase
from protocols.transitions import ServerStage
from protocols.wire import encode

__all__ = ["DriverSettings", "RoundDriver", "RoundOutcome"]

log = logging.getLogger("fl_core.driver")


@dataclass(frozen=True)
class DriverSettings:
    """Deadlines in seconds: ``stage_deadlines`` by stage name (``"advertise"`` ...)
    override ``deadline_s``; ``join_timeout_s`` bounds the wait for ``n`` clients to be
    connected before a round."""

    deadline_s: float = 10.0
    stage_deadlines: Mapping[str, float] = field(default_factory=dict)
    join_timeout_s: float = 30.0

    def deadline(self, stage: ServerStage) -> float:
        """The deadline of ``stage`` in seconds."""
        return float(self.stage_deadlines.get(stage.value, self.deadline_s))


@dataclass
class RoundOutcome:
    """What happened in one round (``aggregate`` is None when it aborted)."""

    round_id: int
    sampled: tuple[int, ...]
    aggregate: npt.NDArray[np.float64] | None = None
    weight_total: float = 0.0
    included: tuple[int, ...] = ()
    error: str | None = None
    stages: list[dict[str, Any]] = field(default_factory=list)
    bytes_up: int = 0
    bytes_down: int = 0
    seconds: float = 0.0
    join_seconds: float = 0.0
    rejected: int = 0
    late: int = 0
    encrypted: bytes | None = field(default=None, repr=False)
    """CKKS: the wire bytes of the encrypted sum (the server has no plaintext aggregate)."""
    key_epoch: int | None = None
    key_setup_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True if the round produced an aggregate (CKKS: an encrypted sum)."""
        return self.aggregate is not None or self.encrypted is not None


class RoundDriver:
    """Runs rounds of one config over a :class:`ServerTransport` (use from one thread)."""

    def __init__(self, transport: ServerTransport, *, config_args: Mapping[str, Any],
                 settings: DriverSettings, eligible: frozenset[int] | None = None,
                 progress: Any = None, broadcast_state: bool = True) -> None:
        """``config_args``: the :class:`SecAggConfig` keyword arguments (``n`` is the cohort
        size); ``eligible``: client ids that may be sampled (default: the allowlist, or
        anyone when insecure); ``progress(event: dict)`` is called on stage changes;
        ``broadcast_state=False`` leaves the float64 global state out of round starts (it is
        always left out under CKKS, where the server holds no plaintext model).

        Raises:
            ConfigError / TypeError: ``config_args`` is not a valid config.
        """
        self.transport = transport
        self.config_args = dict(config_args)
        self.config = SecAggConfig(**self.config_args)
        self.settings = settings
        allow = transport.allowlist
        self.eligible = eligible if eligible is not None else (
            frozenset(allow) if allow is not None else None)
        self._progress = progress
        self._rng = random.SystemRandom()
        self.broadcast_state = broadcast_state and not self.config.is_ckks
        self.epoch_keys: EpochKeys | None = None
        self._epoch = -1
        self._members: frozenset[int] = frozenset()

    # -- membership ------------------------------------------------------------------------

    def _available(self) -> list[int]:
        ids = self.transport.clients
        if self.eligible is not None:
            ids = ids & self.eligible
        return sorted(ids)

    def wait_for_clients(self, n: int, timeout_s: float) -> list[int]:
        """Serve hellos until ``n`` clients are connected or ``timeout_s`` passes."""
        deadline = time.monotonic() + timeout_s
        while len(self._available()) < n and (left := deadline - time.monotonic()) > 0:
            self.transport.recv(max(1, int(left * 1000)), stage=CONTROL)
        return self._available()

    def sample(self) -> tuple[int, ...] | None:
        """``n`` connected clients drawn with the CSPRNG, or None if too few are there."""
        avail = self.wait_for_clients(self.config.n, self.settings.join_timeout_s)
        if len(avail) < self.config.n:
            return None
        return tuple(sorted(self._rng.sample(avail, self.config.n)))

    # -- one round -------------------------------------------------------------------------

    def _emit(self, **event: Any) -> None:
        if self._progress is not None:
            self._progress(event)

    def run_round(self, round_id: int, step: int, state: npt.NDArray[np.float64]) -> RoundOutcome:
        """Sample, start, drive every stage to the end; never raises for protocol failures
        or dead clients (the outcome says what went wrong)."""
        t0 = time.monotonic()
        sampled = self.sample()
        if sampled is None:
            return RoundOutcome(round_id, (), error=(
                f"round {round_id} aborted: fewer than {self.config.n} clients connected "
                f"after {self.settings.join_timeout_s:g} s"), join_seconds=time.monotonic() - t0)
        out = RoundOutcome(round_id, sampled, join_seconds=time.monotonic() - t0)
        t0 = time.monotonic()  # the round's time starts once the cohort is there
        try:
            self._drive(out, step, state)
        except ProtocolError as exc:
            out.error = f"round {round_id} aborted: {type(exc).__name__}: {exc}"
            self._broadcast(out, control_message("abort", round=round_id))
        out.seconds = time.monotonic() - t0
        if out.error:
            log.warning("%s", out.error)
        self._emit(event="round_end", round=round_id, ok=out.ok, survivors=len(out.included),
                   seconds=out.seconds, error=out.error)
        return out

    def _verify_keys(self, ids: tuple[int, ...]) -> dict[int, Any] | None:
        if not self.config.active:
            return None
        allow = self.transport.allowlist
        if allow is None:
            raise ProtocolError("active mode needs the allowlist's identity keys")
        return {c: allow[c].identity for c in ids}

    def _context(self, round_id: int, sampled: tuple[int, ...], dim: int) -> tuple[
            RoundContext, dict[int, bytes] | None]:
        keys = self._verify_keys(sampled)
        fp = self.epoch_keys.fingerprint if self.epoch_keys is not None else None
        ctx = RoundContext(config=self.config, round_id=round_id, dim=dim, client_ids=sampled,
                           verify_keys=keys, ckks_fingerprint=fp)
        return ctx, None if keys is None else {c: k.to_bytes() for c, k in keys.items()}

    def _ensure_keys(self, out: RoundOutcome) -> None:
        """CKKS: run a key setup over the transport if the members changed or a sampled
        client holds no key of the current epoch."""
        members = frozenset(self._available()) | frozenset(out.sampled)
        keys = self.epoch_keys
        if keys is not None and members == self._members and set(out.sampled) <= set(
                keys.holders):
            out.key_epoch = self._epoch
            return
        t0 = time.monotonic()
        self._epoch += 1
        ids = tuple(sorted(members))
        vks = self._verify_keys(ids)
        ectx = EpochContext(config=self.config, epoch=self._epoch, client_ids=ids,
                            verify_keys=vks)
        server = KeySetupServer(ectx)
        self.epoch_keys = None
        announce = control_message(
            "keys", round=out.round_id, epoch=self._epoch, config=self.config_args,
            members=list(ids), first_stage=stage_number(server.stage),
            verify_keys=None if vks is None else {str(c): k.to_bytes().hex()
                                                  for c, k in vks.items()})
        for cid in ids:
            self._send(out, cid, CONTROL, announce)
        self._emit(event="key_setup", round=out.round_id, epoch=self._epoch, members=len(ids))
        self._run_stages(server, out, prefix="keys/")
        self.epoch_keys = server.keys
        self._members = members
        out.key_epoch = self._epoch
        out.key_setup_seconds = time.monotonic() - t0
        log.info("key epoch %d: %d holders, leader %s", self._epoch,
                 len(server.keys.holders), server.leader)

    def _drive(self, out: RoundOutcome, step: int, state: npt.NDArray[np.float64]) -> None:
        dim = int(state.shape[0])
        if self.config.is_ckks:
            self._ensure_keys(out)
            assert self.epoch_keys is not None
            missing = set(out.sampled) - set(self.epoch_keys.holders)
            if missing:
                raise ProtocolError(f"clients {sorted(missing)} missed the key setup")
        ctx, vks = self._context(out.round_id, out.sampled, dim)
        server = create_server(
            ctx, public=self.epoch_keys.public if self.epoch_keys is not None else None)
        start = RoundStart(round_id=out.round_id, step=step,
                           first_stage=stage_number(server.stage), config=self.config_args,
                           dim=dim, clients=out.sampled, verify_keys=vks,
                           state=state if self.broadcast_state else None,
                           ckks_fingerprint=ctx.ckks_fingerprint if self.config.is_ckks
                           else None)
        self._broadcast(out, start.encode())
        self._run_stages(server, out)
        out.rejected = len(server.rejected)
        encrypted = getattr(server, "encrypted", None)
        if self.config.is_ckks:
            if encrypted is None:
                raise ProtocolError("the CKKS round ended without an encrypted sum")
            out.encrypted = encode(encrypted)
            out.included = tuple(encrypted.included)
            out.weight_total = float(len(out.included))
            return
        result = server.result
        out.aggregate = result.values
        out.weight_total = result.weight_total
        out.included = result.included

    def _run_stages(self, server: ServerBase[Any], out: RoundOutcome, prefix: str = "") -> None:
        while server.stage is not ServerStage.DONE:
            stage = server.stage
            t_stage = time.monotonic()
            self._emit(event="stage", round=out.round_id, stage=stage.value)
            self._collect(server, out, stage)
            missing = server.expected - server.received
            received = len(server.received)
            if missing:
                log.info("round %d %s: deadline passed, missing %s", out.round_id, stage.value,
                         sorted(missing))
            replies = server.close_stage(missing)
            self._deliver(out, server.stage, replies)
            out.stages.append({"stage": prefix + stage.value, "received": received,
                               "missing": sorted(missing),
                               "seconds": round(time.monotonic() - t_stage, 4)})

    def _collect(self, server: ServerBase[Any], out: RoundOutcome, stage: ServerStage) -> None:
        number = stage_number(stage)
        deadline = time.monotonic() + self.settings.deadline(stage)
        while server.expected - server.received:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            # No round filter in the transport: hellos of clients outside the cohort carry
            # older round ids and are still welcome as heartbeats (they refresh routes).
            got = self.transport.recv(max(1, int(left * 1000)))
            if got is None or got.envelope.stage == CONTROL:
                continue
            env = got.envelope
            if env.round_id != out.round_id or env.stage != number:
                out.late += 1
                log.info("round %d: dropped a round-%d stage-%d message from client %d while "
                         "collecting %s (late, early or out of stage)", out.round_id,
                         env.round_id, env.stage, got.sender, stage.value)
                continue
            out.bytes_up += got.payload.nbytes
            try:
                server.receive_data(got.sender, bytes(got.payload))
            except ProtocolError as exc:
                log.warning("round %d %s: rejected client %d: %s", out.round_id, stage.value,
                            got.sender, exc)

    def _deliver(self, out: RoundOutcome, stage: ServerStage,
                 replies: Mapping[int, Message]) -> None:
        number = stage_number(stage)
        cache: dict[int, tuple[Message, bytes]] = {}
        for cid, msg in replies.items():
            raw = cache.setdefault(id(msg), (msg, encode(msg)))[1]
            self._send(out, cid, number, raw)

    def _broadcast(self, out: RoundOutcome, payload: bytes) -> None:
        for cid in out.sampled:
            self._send(out, cid, CONTROL, payload)

    def _send(self, out: RoundOutcome, cid: int, stage: int, payload: bytes) -> None:
        try:
            self.transport.send(cid, out.round_id, stage, payload)
            out.bytes_down += len(payload)
        except (PeerUnreachable, TransportError) as exc:
            # Counts as silence: the deadline will report the client missing.
            log.info("round %d: cannot reach client %d: %s", out.round_id, cid, exc)

    def goodbye(self, round_id: int) -> None:
        """Tell every connected client the federation is over."""
        for cid in self._available():
            try:
                self.transport.send(cid, round_id, CONTROL, control_message("bye"))
            except TransportError:
                pass

    @property
    def drops(self) -> Counter[Any]:
        """The transport's drop counts by reason."""
        return self.transport.drops
