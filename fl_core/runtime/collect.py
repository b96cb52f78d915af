"""Collecting one stage's messages for the round driver: until every expected client has
sent, the stage's deadline passes, or every client still awaited is known gone.

Liveness: clients still awaited are pinged (:func:`gone`) after ``probe_interval_s``, then at
doubling intervals; one that libzmq has no connection to is *unreachable*, and counts as gone
once it has stayed unreachable, without a word, for ``grace_s`` (at most half the deadline).
A killed party thus costs about the time it had been waited for plus the grace, not the
deadline; a stale route (the server was busy, the client reconnected and is about to say
hello) is not a dead party. A hello from a cohort member that has not answered the round's
first stage gets the round start again (:class:`secagg.fl_core.runtime.round_start.StartResender`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from secagg.fl_core.errors import PeerUnreachable, TransportError
from secagg.fl_core.runtime.outcome import RoundOutcome
from secagg.fl_core.runtime.round_start import StartResender
from secagg.fl_core.runtime.rounds import CONTROL, control_message, stage_number
from secagg.fl_core.transport.sockets import ServerTransport
from secagg.protocols.errors import ProtocolError
from secagg.protocols.participant import ServerBase
from secagg.protocols.transitions import ServerStage

__all__ = ["collect", "gone"]

log = logging.getLogger("secagg.fl_core.runtime.driver")


def gone(transport: ServerTransport, ids: set[int], round_id: int) -> set[int]:
    """Ping ``ids``; return those libzmq has no connection to any more (a killed process:
    at once; a vanished host: after the ZMTP heartbeat timeout)."""
    ping, lost = control_message("ping"), set()
    for cid in sorted(ids):
        try:
            transport.send(cid, round_id, CONTROL, ping)
        except PeerUnreachable:
            lost.add(cid)
        except TransportError:
            pass  # a full queue: alive but slow
    return lost


def collect(transport: ServerTransport, server: ServerBase[Any], out: RoundOutcome,
            stage: ServerStage, *, deadline_s: float, grace_s: float, probe_interval_s: float,
            resender: StartResender | None) -> None:
    """Receive the stage's messages until every expected client has sent, the deadline
    passes, or every client still awaited is known dead (pinged after ``probe_interval_s``,
    then at doubling intervals: a party killed mid-round costs about the time it had
    been waited for, not the deadline). Unreachable counts as dead only after
    ``grace_s`` (at most half the deadline) without a word: a route can be stale
    while its client, reconnected, is about to say hello and get the round start again.

    The intervals double because a live client busy in its local update reads nothing:
    pings at a fixed rate would fill its receive queue (``rcvhwm``), stall the TCP stream
    and with it ZeroMQ's own heartbeats, and the connection would be dropped as dead
    (a 16 s update was cut at 14 s). Doubling keeps the pings of a 300 s stage at 10."""
    number = stage_number(stage)
    deadline = time.monotonic() + deadline_s
    grace = min(grace_s, deadline_s / 2)
    interval = probe_interval_s
    next_probe = time.monotonic() + interval
    dead: set[int] = set()
    suspect: dict[int, float] = {}  # unreachable since (a hello or message clears it)
    while True:
        waiting = set(server.expected - server.received) - dead
        if not waiting:
            if dead:
                log.info("round %d %s: clients %s are gone, closing the stage early",
                         out.round_id, stage.value, sorted(dead))
            return
        now = time.monotonic()
        if now >= deadline:
            return
        if now >= next_probe:
            unreachable = gone(transport, waiting, out.round_id)
            for cid in unreachable:
                suspect.setdefault(cid, now)
            for cid in waiting - unreachable:
                suspect.pop(cid, None)
            dead |= {cid for cid, since in suspect.items() if now - since >= grace}
            interval *= 2.0
            pending = [since + grace for cid, since in suspect.items() if cid not in dead]
            next_probe = min([now + interval, *pending])
            continue
        left = min(deadline, next_probe) - now
        # No round filter in the transport: hellos of clients outside the cohort carry
        # older round ids and are still welcome as heartbeats (they refresh routes).
        got = transport.recv(max(1, int(left * 1000)))
        if got is None:
            continue
        suspect.pop(got.sender, None)  # it spoke: its route is fresh again
        if got.envelope.stage == CONTROL:
            if resender is not None:  # a hello: has this member got the round start?
                resender.on_hello(got.sender, server.received)
            continue
        env = got.envelope
        if resender is not None and got.sender in resender.resent \
                and got.sender in server.received:
            out.late += 1  # the same first message again, crossed with a resent start
            continue
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
