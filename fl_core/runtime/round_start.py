"""A round start that reaches its cohort: the server resends it, the client answers a resend
with the very bytes it answered the first copy with.

Why (issue 22, "a round lost for 5 minutes"). A round start can vanish without any process
being at fault. When the server reads nothing for a while (it applies an update, writes a
checkpoint, or is starved), each idle client's hellos fill the server's receive queue for it
(``rcvhwm``); libzmq then stops reading that TCP stream, ZMTP heartbeats go unread, and the
connection is dropped after ``heartbeat_timeout_ms``. The clients reconnect at once, but the
hellos still queued on the old pipes are read afterwards, so the server's route for a client
can point at a connection that is already closed. The round start goes there, ``send`` fails
(``PeerUnreachable``), and the driver used to count the client as silent for the whole
advertise deadline (300 s in a job) while the client, idle, kept saying hello.

The fix is client-driven and cheap: a cohort member that has not answered the round's first
stage and says hello (an idle client does, every ``heartbeat_s``; a client busy in its update
does not) gets the round start again, at doubling intervals per client, so a client that
refuses the round is not flooded. Idempotence lives at the client (:class:`AnsweredStart`):
the same round id with byte-identical round-start bytes gets the same first messages again;
a different round start under a round id already taken part in gets nothing. A server thus
never obtains two different first-stage messages (two advert sessions) for one round id.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field

from secagg.fl_core.errors import TransportError
from secagg.fl_core.runtime.rounds import CONTROL
from secagg.fl_core.transport.sockets import ServerTransport

__all__ = ["AnsweredStart", "StartResender", "start_digest"]

log = logging.getLogger("secagg.fl_core.runtime.round_start")


def start_digest(payload: bytes | memoryview) -> bytes:
    """SHA-256 of a round start's wire bytes (what makes two copies "the same start")."""
    return hashlib.sha256(payload).digest()


@dataclass
class StartResender:
    """Server side: resend a round's start to cohort members that say hello before they have
    answered the round's first stage. ``first_interval_s`` is the least time between two
    copies to one client; it doubles after each resend."""

    transport: ServerTransport
    round_id: int
    payload: bytes
    cohort: frozenset[int]
    first_interval_s: float = 1.0
    resent: dict[int, int] = field(default_factory=dict)
    """How many copies each client was sent again (diagnostics, tests)."""
    _next: dict[int, float] = field(default_factory=dict)
    _interval: dict[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        now = time.monotonic()
        routed = self.transport.clients  # a failed first send forgot the route: resend at once
        self._next = {cid: now + self.first_interval_s if cid in routed else now
                      for cid in self.cohort}

    def on_hello(self, sender: int, answered: frozenset[int] | set[int]) -> bool:
        """A hello from ``sender`` arrived while the first stage is collected; resend the start
        if ``sender`` is in the cohort, has not answered, and its interval has passed. Returns
        True when a copy was sent. Never raises: a failed send counts as silence."""
        if sender not in self.cohort or sender in answered:
            return False
        now = time.monotonic()
        if now < self._next.get(sender, 0.0):
            return False
        interval = self._interval.get(sender, self.first_interval_s)
        self._interval[sender] = interval * 2.0
        self._next[sender] = now + interval * 2.0
        try:
            self.transport.send(sender, self.round_id, CONTROL, self.payload)
        except TransportError as exc:  # PeerUnreachable included: the next hello retries
            log.info("round %d: round start not resent to client %d: %s", self.round_id,
                     sender, exc)
            return False
        self.resent[sender] = self.resent.get(sender, 0) + 1
        log.info("round %d: client %d said hello without answering: round start resent (%d)",
                 self.round_id, sender, self.resent[sender])
        return True


@dataclass
class AnsweredStart:
    """Client side: the round start a client answered and what it sent in reply, kept until
    the server moves the round on (any protocol message of that round) or it ends."""

    round_id: int
    digest: bytes
    stage: int
    messages: tuple[bytes, ...]

    def replay_for(self, round_id: int, digest: bytes) -> tuple[bytes, ...] | None:
        """The messages to send again for a copy of the round start (same round id and same
        bytes), or None when it is another round or a different start under this round id
        (a server must not get a second session for one round id)."""
        if round_id != self.round_id or digest != self.digest:
            return None
        return self.messages
