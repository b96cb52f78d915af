"""The server-side round driver: time and sockets around a sans-IO server participant.

For each stage it collects messages from the transport until every expected sender has been
heard from or the stage's deadline passes, then calls ``server.close_stage(missing)`` and
sends what that returns. A deadline thus reaches the protocol as the input "these clients are
missing". Late (other stage), duplicate, out-of-round and replayed (earlier round) messages
are refused by the transport's round filter or by the protocol, logged and counted, and the
round goes on. A round completes when the protocol completes (at least the threshold
survived); a :class:`secagg.protocols.errors.ProtocolError` from ``close_stage`` aborts it with a
clear message, and the caller starts the next one. A cohort member that says hello while the
first stage is collected has not got the round start (it was lost on a dropped connection),
so it gets it again (:mod:`secagg.fl_core.runtime.round_start`); so does a CKKS ``keys``
announcement in the key setup's first stage.

Client sampling (:mod:`secagg.fl_core.runtime.cohort`): each round samples ``n`` of the live,
allowlisted
clients with the operating system's CSPRNG (:class:`random.SystemRandom`), so no one can
predict or steer a cohort. Only clients that have said hello and whose connection libzmq still
holds (checked by a ping before each draw) are eligible. With ``min_clients`` a round takes
``min(n, live)`` clients when that is at least ``min_clients`` and rebuilds its config with
that ``n`` (threshold re-derived or re-validated; a config that does not validate means the
round does not start). :attr:`RoundOutcome.threshold` is the round's protocol threshold: a
round that completes had at least that many survivors. No protocol logic lives here.

CKKS (``ckks``, ``ckks+mask``): the dealer-free key setup (:mod:`secagg.protocols.keysetup`) is its
own sans-IO session, driven by the same stage loop as a round and announced by a ``keys``
control message. It runs before the first round and again (a new epoch) whenever the
connected members change or a sampled client holds no key of the epoch; it shares the round's
envelope round id (its stages ``advertise``/``distribute``/``confirm`` have their own stage
numbers). The server relays opaque bytes and keeps only :class:`secagg.protocols.keysetup.EpochKeys`
(the keyless public context). A CKKS round ends with the *encrypted* sum: the driver returns
it (``RoundOutcome.encrypted``) and never sees a plaintext aggregate; the clients decrypt.
With a ``summer`` (:mod:`secagg.fl_core.runtime.ckks_workers`) a ``ckks`` round's server adds
through it (in worker processes with ``--server-workers N``); ``RoundOutcome.server_add`` has
its seconds, and a lost worker aborts the round (:class:`CkksWorkerError`) like a protocol error.

Policy: the driver computes the federation's policy document (:mod:`secagg.fl_core.runtime.policy`:
the full config, ``min_clients`` (else ``n``), ``dim`` and the job's DP mechanism) the way each
client computes its own, sends it in the round start and binds its digest into the round
context. Clients check everything against their own files; a client whose policy differs
refuses the round, and if one did not, the digests would differ and the round fail closed.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from secagg.fl_core.errors import PeerUnreachable, TransportError
from secagg.fl_core.runtime.ckks_workers import CkksWorkerError, InProcessSummer, WorkerPool
from secagg.fl_core.runtime.cohort import CohortSampler, round_config_args
from secagg.fl_core.runtime.cohort_floor import check_min_cohort, distributed_dp
from secagg.fl_core.runtime.collect import collect
from secagg.fl_core.runtime.outcome import DriverSettings, RoundOutcome
from secagg.fl_core.runtime.policy import policy_digest, policy_document
from secagg.fl_core.runtime.round_start import StartResender
from secagg.fl_core.runtime.rounds import CONTROL, RoundStart, control_message, stage_number
from secagg.fl_core.transport.sockets import ServerTransport
from secagg.protocols.config import ProtocolKind, SecAggConfig
from secagg.protocols.context import RoundContext
from secagg.protocols.epoch import EpochContext
from secagg.protocols.errors import ConfigError, ProtocolError
from secagg.protocols.harness import create_server
from secagg.protocols.messages import Message
from secagg.protocols.participant import ServerBase
from secagg.protocols.transitions import ServerStage
from secagg.protocols.wire import encode

if TYPE_CHECKING:  # CKKS is an extra (TenSEAL)
    from secagg.protocols.keysetup import EpochKeys

__all__ = ["DriverSettings", "RoundDriver", "RoundOutcome"]

log = logging.getLogger("secagg.fl_core.runtime.driver")


class RoundDriver:
    """Runs rounds of one config over a :class:`ServerTransport` (use from one thread)."""

    def __init__(self, transport: ServerTransport, *, config_args: Mapping[str, Any],
                 settings: DriverSettings, eligible: frozenset[int] | None = None,
                 progress: Any = None, broadcast_state: bool = True,
                 dp_policy: Mapping[str, Any] | None = None,
                 summer: InProcessSummer | WorkerPool | None = None) -> None:
        """``config_args``: the :class:`SecAggConfig` keyword arguments (``n`` is the cohort
        size); ``eligible``: client ids that may be sampled (default: the allowlist, or
        anyone when insecure); ``progress(event: dict)`` is called on stage changes;
        ``broadcast_state=False`` leaves the float64 global state out of round starts (it is
        always left out under CKKS, where the server holds no plaintext model);
        ``dp_policy``: :func:`secagg.fl_core.runtime.policy.dp_policy` of the job (part of the
        policy the clients pin); ``summer``: how a ``ckks`` server adds (None: in process,
        untimed; :mod:`secagg.fl_core.runtime.ckks_workers`).

        Raises:
            ConfigError / TypeError: ``config_args`` is not a valid config.
            ValueError: ``settings.min_clients`` is outside ``[1, n]``; CohortFloorError
                (a ValueError): it is below the cohort floor
                (:mod:`secagg.fl_core.runtime.cohort_floor`), which every client's policy
                enforces too.
        """
        self.transport = transport
        self.config_args = dict(config_args)
        self.config = SecAggConfig(**self.config_args)
        check_min_cohort(self.config_args, settings.min_clients, dp=distributed_dp(dp_policy))
        self.settings = settings
        allow = transport.allowlist
        self.eligible = eligible if eligible is not None else (
            frozenset(allow) if allow is not None else None)
        self.sampler = CohortSampler(
            transport, eligible=self.eligible, n=self.config.n,
            min_clients=settings.min_clients, join_timeout_s=settings.join_timeout_s,
            refill_wait_s=settings.refill_wait_s)
        self._progress = progress
        self.broadcast_state = broadcast_state and not self.config.is_ckks
        self.epoch_keys: EpochKeys | None = None
        self._epoch = -1
        self._members: frozenset[int] = frozenset()
        self.dp_policy = None if dp_policy is None else dict(dp_policy)
        self.summer = summer
        self._summed = False  # this round made a sum with ``summer``
        self._resender: StartResender | None = None  # the round's first stage only

    def policy(self, dim: int) -> dict[str, Any]:
        """The policy document every client of this federation must hold (for ``dim``)."""
        return policy_document(config=self.config, dim=dim, min_cohort=self.sampler.floor,
                               dp=self.dp_policy)

    # -- membership ------------------------------------------------------------------------

    def _available(self) -> list[int]:
        return self.sampler.available()

    def wait_for_clients(self, n: int, timeout_s: float) -> list[int]:
        """Serve hellos until ``n`` live clients are connected or ``timeout_s`` passes."""
        return self.sampler.wait(n, timeout_s)

    def sample(self) -> tuple[int, ...] | None:
        """Up to ``n`` live clients drawn with the CSPRNG (see :class:`CohortSampler`), or
        None if too few are there."""
        return self.sampler.sample()

    def round_config(self, n: int) -> tuple[dict[str, Any], SecAggConfig]:
        """The config arguments and config of a round of ``n`` clients.

        Raises:
            ConfigError: the config does not validate with this ``n`` (e.g. an explicit
                threshold above it).
        """
        if n == self.config.n:
            return self.config_args, self.config
        args = round_config_args(self.config_args, self.config, n)
        try:
            return args, SecAggConfig(**args)
        except TypeError as exc:
            raise ConfigError(str(exc)) from None

    # -- one round -------------------------------------------------------------------------

    def _emit(self, **event: Any) -> None:
        if self._progress is not None:
            self._progress(event)

    def run_round(self, round_id: int, step: int, state: npt.NDArray[np.float64]) -> RoundOutcome:
        """Sample, start, drive every stage to the end; never raises for protocol failures
        or dead clients (the outcome says what went wrong)."""
        t0 = time.monotonic()
        self.sampler.round_id = max(self.sampler.round_id, round_id - 1)
        sampled = self.sample()
        if sampled is None:
            out = RoundOutcome(round_id, (), error=(
                f"round {round_id} aborted: fewer than {self.sampler.floor} clients "
                f"connected after {self.settings.join_timeout_s:g} s"),
                join_seconds=time.monotonic() - t0)
            log.warning("%s", out.error)
            return out
        out = RoundOutcome(round_id, sampled, join_seconds=time.monotonic() - t0)
        try:
            args, config = self.round_config(len(sampled))
        except ConfigError as exc:
            out.error = (f"round {round_id} not started: a cohort of {len(sampled)} of the "
                         f"configured {self.config.n} clients does not make a valid config: "
                         f"{exc}")
            log.warning("%s", out.error)
            return out
        out.threshold = config.threshold
        self.sampler.round_id = round_id
        self._emit(event="round_start", round=round_id, sampled=len(sampled), n=config.n,
                   threshold=config.threshold)
        t0 = time.monotonic()  # the round's time starts once the cohort is there
        self._summed = False
        try:
            self._drive(out, step, state, args, config)
        except (ProtocolError, CkksWorkerError) as exc:
            out.error = f"round {round_id} aborted: {type(exc).__name__}: {exc}"
            self._broadcast(out, control_message("abort", round=round_id))
        if self.summer is not None and self._summed:
            out.server_add = self.summer.last_stats()
        out.seconds = time.monotonic() - t0
        if out.error:
            log.warning("%s", out.error)
        self._emit(event="round_end", round=round_id, ok=out.ok, survivors=len(out.included),
                   threshold=out.threshold, seconds=out.seconds, error=out.error)
        return out

    def _verify_keys(self, ids: tuple[int, ...]) -> dict[int, Any] | None:
        if not self.config.active:
            return None
        allow = self.transport.allowlist
        if allow is None:
            raise ProtocolError("active mode needs the allowlist's identity keys")
        return {c: allow[c].identity for c in ids}

    def _context(self, round_id: int, sampled: tuple[int, ...], dim: int,
                 config: SecAggConfig) -> tuple[RoundContext, dict[int, bytes] | None]:
        keys = self._verify_keys(sampled)
        fp = self.epoch_keys.fingerprint if self.epoch_keys is not None else None
        ctx = RoundContext(config=config, round_id=round_id, dim=dim, client_ids=sampled,
                           verify_keys=keys, ckks_fingerprint=fp,
                           policy_digest=policy_digest(self.policy(dim)))
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
        from secagg.protocols.keysetup import KeySetupServer  # CKKS: the ckks extra

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
        # resent to members that say hello without answering, as a round start is
        self._resender = StartResender(self.transport, out.round_id, announce, frozenset(ids))
        try:
            self._run_stages(server, out, prefix="keys/")
        finally:
            self._resender = None
        self.epoch_keys = server.keys
        self._members = members
        out.key_epoch = self._epoch
        out.key_setup_seconds = time.monotonic() - t0
        log.info("key epoch %d: %d holders, leader %s", self._epoch,
                 len(server.keys.holders), server.leader)

    def _drive(self, out: RoundOutcome, step: int, state: npt.NDArray[np.float64],
               args: dict[str, Any], config: SecAggConfig) -> None:
        dim = int(state.shape[0])
        if self.config.is_ckks:
            self._ensure_keys(out)
            assert self.epoch_keys is not None
            missing = set(out.sampled) - set(self.epoch_keys.holders)
            if missing:
                raise ProtocolError(f"clients {sorted(missing)} missed the key setup")
        ctx, vks = self._context(out.round_id, out.sampled, dim, config)
        public = self.epoch_keys.public if self.epoch_keys is not None else None
        server: ServerBase[RoundContext]
        if self.summer is not None and public is not None \
                and config.protocol is ProtocolKind.CKKS:
            from secagg.protocols.ckks_round import CkksServer  # CKKS: the ckks extra

            server = CkksServer(ctx, public=public, summer=self.summer)
            self._summed = True
        else:
            server = create_server(ctx, public=public)
        start = RoundStart(round_id=out.round_id, step=step,
                           first_stage=stage_number(server.stage), config=args,
                           dim=dim, clients=out.sampled, verify_keys=vks,
                           state=state if self.broadcast_state else None,
                           state_float32=self.settings.state_float32,
                           ckks_fingerprint=ctx.ckks_fingerprint if self.config.is_ckks
                           else None, policy=self.policy(dim))
        raw_start = start.encode()
        out.released = server.stage is ServerStage.MASKED_INPUT  # plain, ckks: inputs at once
        self._broadcast(out, raw_start)
        # Resent to cohort members that say hello without answering (round_start.py).
        self._resender = StartResender(self.transport, out.round_id, raw_start,
                                       frozenset(out.sampled))
        try:
            self._run_stages(server, out)
        finally:
            self._resender = None
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
        out.released_noise = getattr(server, "released_noise", {})
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
            self._resender = None  # past the first stage a round start helps nobody
            record = {"stage": prefix + stage.value, "received": received,
                      "missing": sorted(missing)}
            try:
                replies = server.close_stage(missing)
            except ProtocolError:  # the stage that ended the round is in the summary too
                out.stages.append(record | {"aborted": True, "seconds": round(
                    time.monotonic() - t_stage, 4)})
                raise
            if not prefix and server.stage is ServerStage.MASKED_INPUT:
                out.released = True  # the shares relays ask for the inputs
            self._deliver(out, server.stage, replies)
            out.stages.append(record | {"seconds": round(time.monotonic() - t_stage, 4)})

    def _collect(self, server: ServerBase[Any], out: RoundOutcome, stage: ServerStage) -> None:
        """Collect ``stage``'s messages (:func:`secagg.fl_core.runtime.collect.collect`)."""
        collect(self.transport, server, out, stage, deadline_s=self.settings.deadline(stage),
                grace_s=self.settings.dead_grace_s,
                probe_interval_s=self.sampler.probe_interval_s, resender=self._resender)

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
