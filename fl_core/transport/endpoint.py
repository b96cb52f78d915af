"""The bounded receive loop, envelope checks, send and close that both transport ends share."""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Final

import zmq

from secagg.fl_core.errors import EnvelopeError, TransportClosed, TransportTimeout
from secagg.fl_core.transport.common import (
    ZERO_COPY_THRESHOLD,
    DropLog,
    DropReason,
    EventMonitor,
    Inbound,
    SocketOptions,
    TransportLimits,
    remaining_ms,
)
from secagg.fl_core.transport.envelope import Envelope, check_frames, decode_header

__all__ = ["INSECURE_BANNER", "Endpoint", "log"]

log = logging.getLogger("secagg.fl_core.transport.sockets")
INSECURE_BANNER: Final = (
    "*** INSECURE TRANSPORT (%s on %s): CurveZMQ is OFF. No encryption, no authentication; "
    "any peer can read everything and claim any client id. For tests only. ***"
)


class Endpoint:
    """What both ends share: context, socket, monitor, the bounded receive loop, close."""

    _role = "endpoint"

    def __init__(self, sock_type: int, limits: TransportLimits, options: SocketOptions,
                 context: zmq.Context[zmq.Socket[bytes]] | None) -> None:
        if not isinstance(limits, TransportLimits):
            raise TypeError("limits must be TransportLimits")
        if not isinstance(options, SocketOptions):
            raise TypeError("options must be SocketOptions")
        self.limits = limits
        self.options = options
        self._own_context = context is None
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context() if context is None else context
        self._sock: zmq.Socket[bytes] = self._ctx.socket(sock_type)
        options.apply(self._sock, limits)
        self._monitor = EventMonitor(self._sock, log, self._role)
        self._poller = zmq.Poller()
        self._poller.register(self._sock, zmq.POLLIN)
        self._poller.register(self._monitor.socket, zmq.POLLIN)
        self._drops = DropLog(log)
        self._closed = False

    @property
    def drops(self) -> Counter[DropReason]:
        """How many received messages were dropped, by reason."""
        return self._drops.counts

    @property
    def events(self) -> Counter[str]:
        """Connection events seen so far (``HANDSHAKE_SUCCEEDED``, ``DISCONNECTED``, ...)."""
        self._monitor.drain()
        return self._monitor.counts

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise TransportClosed(f"{self._role} transport is closed")

    def recv(self, timeout_ms: int, *, round_id: int | None = None,
             stage: int | None = None) -> Inbound | None:
        """Wait at most ``timeout_ms`` for the next acceptable message; None on timeout.

        Dropped messages (see :class:`DropReason`) are logged and skipped while time remains.
        With ``round_id`` / ``stage``, messages of other rounds or stages are dropped too.

        Raises:
            TransportClosed: after :meth:`close`.
            ValueError: ``timeout_ms`` is negative.
        """
        self._check_open()
        if timeout_ms < 0:
            raise ValueError(f"timeout_ms must be >= 0, got {timeout_ms}")
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            ready = dict(self._poller.poll(remaining_ms(deadline)))
            if self._monitor.socket in ready:
                self._monitor.drain()
            if self._sock in ready:
                try:
                    got = self._read_one(round_id, stage)
                except zmq.Again:  # readiness without a message: poll again
                    got = None
                if got is not None:
                    return got
            if time.monotonic() >= deadline:
                return None

    def _read_one(self, round_id: int | None, stage: int | None) -> Inbound | None:
        raise NotImplementedError

    def _check_envelope(self, frames: list[zmq.Frame], total: int,
                        peer: str) -> tuple[Envelope, memoryview] | None:
        """Frames -> (envelope, payload view), or None after logging a drop."""
        if total != 2:
            self._drops.drop(DropReason.MALFORMED, peer, f"{total} frames instead of 2")
            return None
        try:
            env = decode_header(frames[0].buffer)
        except EnvelopeError as exc:
            self._drops.drop(DropReason.MALFORMED, peer, str(exc))
            return None
        limit = self.limits.stage_limits.get(env.stage)
        if limit is None:
            self._drops.drop(DropReason.UNKNOWN_STAGE, peer, f"stage {env.stage}")
            return None
        if env.payload_len > limit or len(frames[1]) > limit:
            size = max(env.payload_len, len(frames[1]))
            self._drops.drop(DropReason.OVER_STAGE_LIMIT, peer,
                             f"{size} bytes, stage {env.stage} allows {limit}")
            return None
        try:
            return check_frames([frames[0].buffer, frames[1].buffer])
        except EnvelopeError as exc:
            self._drops.drop(DropReason.MALFORMED, peer, str(exc))
            return None

    def _filter_round(self, env: Envelope, peer: str, round_id: int | None,
                      stage: int | None) -> bool:
        if round_id is not None and env.round_id != round_id:
            self._drops.drop(DropReason.WRONG_ROUND, peer,
                             f"round {env.round_id}, collecting {round_id}")
            return False
        if stage is not None and env.stage != stage:
            self._drops.drop(DropReason.WRONG_STAGE, peer, f"stage {env.stage}, collecting {stage}")
            return False
        return True

    def _send(self, head: list[bytes], env: Envelope, view: memoryview,
              copy: bool | None) -> None:
        do_copy = view.nbytes < ZERO_COPY_THRESHOLD if copy is None else copy
        try:
            for part in head:
                self._sock.send(part, zmq.SNDMORE)
            self._sock.send(env.encode(), zmq.SNDMORE)
            self._sock.send(view, 0, copy=do_copy)
        except zmq.Again:
            raise TransportTimeout(
                f"{self._role}: could not send within {self.options.send_timeout_ms} ms"
            ) from None

    def close(self) -> None:
        """Close the socket (waiting at most ``linger_ms`` to flush), the monitor and, if this
        object created it, the context. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._monitor.close(self._sock)
        self._sock.close()
        self._close_extra()
        if self._own_context:
            self._ctx.term()

    def _close_extra(self) -> None:
        pass

    def __enter__(self) -> Endpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
