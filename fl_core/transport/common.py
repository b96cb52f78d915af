"""Pieces both transport ends share: limits, socket options, received messages, drop
accounting, connection-event monitoring and the frame reader.

Nothing here knows about protocol messages: payloads are opaque bytes.
"""

from __future__ import annotations

import enum
import logging
import struct
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

import zmq

from secagg.fl_core.transport.envelope import MAX_STAGE, Envelope

__all__ = [
    "MIN_MESSAGE_BYTES",
    "ZERO_COPY_THRESHOLD",
    "DropReason",
    "Inbound",
    "SocketOptions",
    "TransportLimits",
]

# Below this many bytes a copy is cheaper than pinning the buffer and tracking its release.
ZERO_COPY_THRESHOLD: Final = 64 * 1024
# ZMQ_MAXMSGSIZE also bounds the security handshake's commands (CurveZMQ INITIATE with its
# metadata is a few hundred bytes), so it must never go below this.
MIN_MESSAGE_BYTES: Final = 4096
_MONITOR_EVENT: Final = struct.Struct("=HI")


def _positive_int(name: str, value: object, *, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be int, got {type(value).__name__}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")
    return value


@dataclass(frozen=True, slots=True)
class TransportLimits:
    """What a receiver accepts: the stages it knows and each stage's largest payload.

    ``max_message_bytes`` becomes ``ZMQ_MAXMSGSIZE``: libzmq reads each frame's length prefix
    and drops the connection *before* allocating a frame longer than this. It defaults to the
    largest stage limit (the payload frame is the largest) and is never below
    :data:`MIN_MESSAGE_BYTES`, since libzmq applies it to handshake commands too. The
    per-stage limit then drops smaller but still unexpected payloads, which ZeroMQ has already
    received (at most ``max_message_bytes`` each) but nobody has copied or parsed.
    """

    stage_limits: Mapping[int, int]
    max_message_bytes: int = 0

    def __post_init__(self) -> None:
        """Validate and freeze.

        Raises:
            TypeError: a stage, limit or ``max_message_bytes`` is not an int.
            ValueError: no stages, a stage outside 0..255, a negative limit, or
                ``max_message_bytes`` below the largest stage limit or MIN_MESSAGE_BYTES.
        """
        if not isinstance(self.stage_limits, Mapping) or not self.stage_limits:
            raise ValueError("stage_limits must be a non-empty mapping of stage -> bytes")
        frozen: dict[int, int] = {}
        for stage, limit in self.stage_limits.items():
            _positive_int("stage", stage, allow_zero=True)
            if stage > MAX_STAGE:
                raise ValueError(f"stage must be in [0, {MAX_STAGE}], got {stage}")
            frozen[stage] = _positive_int(f"limit of stage {stage}", limit, allow_zero=True)
        largest = max(max(frozen.values()), MIN_MESSAGE_BYTES)
        mms = _positive_int("max_message_bytes", self.max_message_bytes, allow_zero=True)
        if mms == 0:
            mms = largest
        elif mms < largest:
            raise ValueError(f"max_message_bytes {mms} is below the largest limit {largest}")
        object.__setattr__(self, "stage_limits", MappingProxyType(frozen))
        object.__setattr__(self, "max_message_bytes", mms)

    def __reduce__(self) -> tuple[type[TransportLimits], tuple[dict[int, int], int]]:
        # A mapping proxy does not pickle; rebuild (and re-validate) from a plain dict, so
        # limits can be handed to worker processes.
        return (TransportLimits, (dict(self.stage_limits), self.max_message_bytes))


@dataclass(frozen=True, slots=True)
class SocketOptions:
    """ZeroMQ socket options both ends apply (milliseconds, message counts).

    The high-water marks count whole messages, so the memory one peer can pin at the
    receiver is about ``rcvhwm * max_message_bytes`` plus kernel buffers.

    Heartbeats: libzmq drops a connection that delivers nothing for ``heartbeat_timeout_ms``
    (and tells the peer to do the same after ``heartbeat_ttl_ms``). The drivers' liveness
    probes count a dropped connection as a dead party, so this is also how long a *starved*
    process (no CPU on a loaded host, or a receive queue full while its owner is busy, which
    stops libzmq from reading the stream) is given before it counts as gone. It is 30 s: well
    above the seconds of starvation seen at load averages of 10 to 20 (the old 5 s dropped
    such clients mid-stage) and above the default 10 s stage deadline, so a stage that short
    never loses a live client to it. A killed process is still seen at once, since its
    kernel closes the socket; only a host that vanishes (power, network) takes this long.
    """

    reconnect_ivl_ms: int = 100
    reconnect_ivl_max_ms: int = 5_000
    heartbeat_ivl_ms: int = 1_000
    heartbeat_timeout_ms: int = 30_000
    heartbeat_ttl_ms: int = 30_000
    handshake_ivl_ms: int = 5_000
    send_timeout_ms: int = 10_000
    linger_ms: int = 1_000
    sndhwm: int = 16
    rcvhwm: int = 16

    def __post_init__(self) -> None:
        """Validate.

        Raises:
            TypeError / ValueError: an option is not a positive int (``linger_ms`` may be 0).
        """
        for f in self.__dataclass_fields__:
            _positive_int(f, getattr(self, f), allow_zero=(f == "linger_ms"))

    def apply(self, sock: zmq.Socket[bytes], limits: TransportLimits) -> None:
        """Set these options and ``limits.max_message_bytes`` on ``sock`` (before connecting)."""
        sock.setsockopt(zmq.MAXMSGSIZE, limits.max_message_bytes)
        sock.setsockopt(zmq.RECONNECT_IVL, self.reconnect_ivl_ms)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, self.reconnect_ivl_max_ms)
        sock.setsockopt(zmq.HEARTBEAT_IVL, self.heartbeat_ivl_ms)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, self.heartbeat_timeout_ms)
        sock.setsockopt(zmq.HEARTBEAT_TTL, self.heartbeat_ttl_ms)
        sock.setsockopt(zmq.HANDSHAKE_IVL, self.handshake_ivl_ms)
        sock.setsockopt(zmq.SNDTIMEO, self.send_timeout_ms)
        sock.setsockopt(zmq.LINGER, self.linger_ms)
        sock.setsockopt(zmq.SNDHWM, self.sndhwm)
        sock.setsockopt(zmq.RCVHWM, self.rcvhwm)


@dataclass(frozen=True, slots=True)
class Inbound:
    """One accepted message.

    ``sender`` is authenticated: at the server, the client id the connection's Curve key is
    allowlisted for (with ``insecure=True``, merely the id the peer claimed first); at a
    client, :data:`secagg.fl_core.transport.envelope.SERVER_SENDER`. ``payload`` is a read-only
    view of
    ZeroMQ's receive buffer (no copy); it stays valid as long as the view is referenced.
    """

    sender: int
    envelope: Envelope
    payload: memoryview


class DropReason(enum.Enum):
    """Why a received message was dropped instead of delivered."""

    MALFORMED = "malformed envelope or frames"
    UNKNOWN_STAGE = "stage not accepted here"
    OVER_STAGE_LIMIT = "payload over the stage's size limit"
    UNAUTHENTICATED = "connection has no allowlisted Curve key"
    SPOOFED_SENDER = "sender id differs from the authenticated one"
    REPLAYED_ROUND = "round older than one already seen from this sender"
    WRONG_ROUND = "not the round being collected"
    WRONG_STAGE = "not the stage being collected"


@dataclass
class DropLog:
    """Counts drops by reason and logs them, throttled per peer so a flood cannot flood logs.

    The first ``burst`` drops of a peer are logged at WARNING, then one in ``every``.
    """

    log: logging.Logger
    burst: int = 10
    every: int = 100
    max_peers: int = 10_000
    counts: Counter[DropReason] = field(default_factory=Counter)
    _per_peer: Counter[str] = field(default_factory=Counter)

    def drop(self, reason: DropReason, peer: str, detail: str) -> None:
        """Record one dropped message from ``peer``."""
        self.counts[reason] += 1
        if peer not in self._per_peer and len(self._per_peer) >= self.max_peers:
            self._per_peer.clear()  # bounded memory under a flood of throwaway connections
        self._per_peer[peer] += 1
        n = self._per_peer[peer]
        if n <= self.burst or n % self.every == 0:
            self.log.warning(
                "dropped a message from %s: %s (%s) [%d dropped from this peer]",
                peer, reason.value, detail, n,
            )


_EVENT_NAMES: Final = {int(e): str(e.name) for e in zmq.Event}


class EventMonitor:
    """Reads a socket's ``zmq_socket_monitor`` events, logs the ones that matter, and keeps
    the last handshake outcome for :meth:`ClientTransport.wait_ready`."""

    WATCH: Final = (
        zmq.EVENT_ACCEPTED | zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED
        | zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
        | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    )

    def __init__(self, sock: zmq.Socket[bytes], log: logging.Logger, role: str) -> None:
        """Start monitoring ``sock``.

        Raises:
            zmq.ZMQError: libzmq could not create the monitor.
        """
        self.socket: zmq.Socket[bytes] = sock.get_monitor_socket(self.WATCH)
        self._log = log
        self._role = role
        self.connected = 0
        self.auth_failure: int | None = None  # ZAP status code of the last rejection
        self.protocol_failure: str | None = None
        self.counts: Counter[str] = Counter()

    def drain(self) -> None:
        """Handle every queued event without blocking."""
        while True:
            try:
                head, endpoint = self.socket.recv_multipart(zmq.NOBLOCK)[:2]
            except zmq.Again:
                return
            except ValueError:  # not two frames: not a monitor event
                continue
            if len(head) != _MONITOR_EVENT.size:
                continue
            event, value = _MONITOR_EVENT.unpack(head)
            self._handle(event, value, endpoint.decode("utf-8", "replace"))

    def _handle(self, event: int, value: int, endpoint: str) -> None:
        name = _EVENT_NAMES.get(event, str(event))
        self.counts[name] += 1
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self.connected += 1
            self.auth_failure = None
            self.protocol_failure = None
            self._log.debug("%s: handshake succeeded on %s", self._role, endpoint)
        elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            self.auth_failure = value
            self._log.log(self._level(name), "%s: authentication rejected on %s (ZAP status %d)"
                          " [%d so far]", self._role, endpoint, value, self.counts[name])
        elif event in (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL):
            self.protocol_failure = f"{name} ({value:#x})"
            self._log.log(self._level(name), "%s: security handshake failed on %s: %s [%d so far]",
                          self._role, endpoint, self.protocol_failure, self.counts[name])
        elif event == zmq.EVENT_DISCONNECTED:
            self.connected = max(0, self.connected - 1)
            self._log.info("%s: a connection on %s closed", self._role, endpoint)
        else:
            self._log.debug("%s: %s on %s", self._role, name, endpoint)

    def _level(self, name: str) -> int:
        # A rejected peer retries every reconnect interval: warn about the first few and then
        # one in a hundred, so the log stays readable.
        n = self.counts[name]
        return logging.WARNING if n <= 5 or n % 100 == 0 else logging.DEBUG

    def close(self, sock: zmq.Socket[bytes]) -> None:
        """Stop monitoring ``sock`` and close the monitor socket."""
        try:
            sock.disable_monitor()
        except zmq.ZMQError:
            pass
        self.socket.close(linger=0)


def recv_frames(sock: zmq.Socket[bytes], keep: int) -> tuple[list[zmq.Frame], int]:
    """Receive one whole multipart message without copying; return its first ``keep`` frames
    and the total number of frames (the rest are read and released at once).

    ZeroMQ delivers a multipart message only once all of it has arrived, so after the first
    frame nothing here blocks.

    Raises:
        zmq.Again: no message is waiting.
    """
    first = sock.recv(zmq.NOBLOCK, copy=False)
    kept = [first]
    total, more = 1, first.more
    while more:
        frame = sock.recv(copy=False)
        total += 1
        if len(kept) < keep:
            kept.append(frame)
        more = frame.more
    return kept, total


def payload_view(payload: object) -> memoryview:
    """A flat byte view of a payload for sending.

    Raises:
        TypeError: ``payload`` does not support the buffer protocol, or is not contiguous.
    """
    try:
        view = memoryview(payload)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"payload must be bytes-like, got {type(payload).__name__}") from None
    if not view.c_contiguous:
        raise TypeError("payload must be a C-contiguous buffer")
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view


def remaining_ms(deadline: float) -> int:
    """Milliseconds left until ``deadline`` (``time.monotonic`` seconds), never negative."""
    return max(0, int((deadline - time.monotonic()) * 1000))


def frame_property(frame: zmq.Frame, name: str) -> str | None:
    """A ZeroMQ message property (``User-Id``, ``Peer-Address``), or None if absent."""
    try:
        value = frame.get(name)
    except zmq.ZMQError:
        return None
    return value if isinstance(value, str) else None
