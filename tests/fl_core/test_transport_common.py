"""Limits, options and drop accounting, without sockets."""

from __future__ import annotations

import logging
import pickle

import pytest

from secagg.fl_core.transport.common import (
    MIN_MESSAGE_BYTES,
    DropLog,
    DropReason,
    SocketOptions,
    TransportLimits,
    payload_view,
)


def test_limits_default_and_floor() -> None:
    lim = TransportLimits({1: 100, 2: 1 << 20})
    assert lim.max_message_bytes == 1 << 20
    assert TransportLimits({1: 10}).max_message_bytes == MIN_MESSAGE_BYTES  # handshakes fit
    with pytest.raises(ValueError):
        TransportLimits({1: 10}, max_message_bytes=MIN_MESSAGE_BYTES - 1)
    with pytest.raises(ValueError):
        TransportLimits({})
    with pytest.raises(TypeError):
        TransportLimits({1: 1.5})  # type: ignore[dict-item]


def test_limits_are_frozen_and_picklable() -> None:
    src = {1: 100}
    lim = TransportLimits(src)
    src[1] = 10**9
    assert lim.stage_limits[1] == 100
    with pytest.raises(TypeError):
        lim.stage_limits[1] = 5  # type: ignore[index]
    assert pickle.loads(pickle.dumps(lim)) == lim


def test_options_validate() -> None:
    SocketOptions(linger_ms=0)
    with pytest.raises(ValueError):
        SocketOptions(heartbeat_ivl_ms=0)
    with pytest.raises(TypeError):
        SocketOptions(rcvhwm=True)


def test_payload_view_accepts_buffers_only() -> None:
    assert payload_view(b"ab").nbytes == 2
    assert payload_view(memoryview(bytes(8)).cast("I")).nbytes == 8
    with pytest.raises(TypeError):
        payload_view("text")
    with pytest.raises(TypeError):
        payload_view(memoryview(bytes(8))[::2])


def test_drop_log_throttles_per_peer(caplog: pytest.LogCaptureFixture) -> None:
    log = DropLog(logging.getLogger("t.drops"), burst=3, every=10, max_peers=2)
    with caplog.at_level(logging.WARNING, logger="t.drops"):
        for _ in range(20):
            log.drop(DropReason.MALFORMED, "a", "x")
        log.drop(DropReason.OVER_STAGE_LIMIT, "b", "y")
    assert log.counts == {DropReason.MALFORMED: 20, DropReason.OVER_STAGE_LIMIT: 1}
    assert len(caplog.records) == 3 + 2 + 1  # burst of 3, the 10th and 20th, then peer b
    log.drop(DropReason.MALFORMED, "c", "z")  # a third peer resets the per-peer table
    assert len(log._per_peer) == 1
