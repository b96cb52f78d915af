"""Hand-written bytes on a raw TCP socket: the server decides on length prefixes alone, closes
hostile connections, and keeps serving everyone else."""

from __future__ import annotations

import socket
from collections.abc import Callable

from secagg.fl_core.transport.sockets import ClientTransport, ServerTransport
from tests.fl_core.conftest import (
    ANY_PORT,
    FAST,
    LIMITS,
    WAIT_MS,
    closed_by_peer,
    tcp_address,
    zmtp_null_session,
)

Connect = Callable[..., ClientTransport]
LONG_FRAME = b"\x02"  # ZMTP 3 flags: a final message frame with an 8-byte length


def _insecure_server(closing: list) -> ServerTransport:
    srv = ServerTransport(ANY_PORT, limits=LIMITS, insecure=True, options=FAST)
    closing.append(srv)
    return srv


def _still_serves(srv: ServerTransport, closing: list) -> None:
    cli = ClientTransport(srv.endpoint, client_id=8, limits=LIMITS, insecure=True, options=FAST)
    closing.append(cli)
    cli.wait_ready(WAIT_MS)
    cli.send(1, 1, b"hello")
    got = srv.recv(WAIT_MS)
    assert got is not None and got.sender == 8 and bytes(got.payload) == b"hello"


def test_length_prefix_over_maxmsgsize_is_refused_before_any_body(closing: list) -> None:
    srv = _insecure_server(closing)
    limit = LIMITS.max_message_bytes
    # Control: a frame that may be as long as it says; the server waits for its body.
    ok = zmtp_null_session(srv.endpoint)
    ok.sendall(LONG_FRAME + limit.to_bytes(8, "big"))
    assert not closed_by_peer(ok, 0.5)
    ok.close()
    # One byte over, or absurdly large: the connection is closed on the 9-byte prefix alone,
    # with no body sent, so libzmq cannot have allocated or read a frame that size.
    for claimed in (limit + 1, 2**40, 2**63 - 1):
        s = zmtp_null_session(srv.endpoint)
        s.sendall(LONG_FRAME + claimed.to_bytes(8, "big"))
        assert closed_by_peer(s, 3.0), claimed
        s.close()
    assert srv.recv(100) is None
    _still_serves(srv, closing)


SIGNATURE = b"\xff" + bytes(8) + b"\x7f"
JUNK = {
    "binary": bytes(range(256)) * 4,
    "bad version": SIGNATURE + b"\x09" + bytes(53),
    "bad mechanism": SIGNATURE + b"\x03\x00" + b"BOGUS".ljust(20, b"\0") + bytes(32),
    # Does not start with 0xFF, so libzmq reads it as a legacy ZMTP 1.0 peer: an insecure
    # server keeps such a connection (nothing is delivered); a Curve server refuses it.
    "http": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
}


def _cut_off(endpoint: str, junk: bytes) -> bool:
    with socket.create_connection(tcp_address(endpoint), timeout=WAIT_MS / 1000) as s:
        s.sendall(junk)
        return closed_by_peer(s, 3.0)


def test_non_zmtp_bytes_are_cut_off(
    closing: list, curve_server: ServerTransport, connect: Connect
) -> None:
    insecure = _insecure_server(closing)
    for name, junk in JUNK.items():
        assert _cut_off(curve_server.endpoint, junk), name
        if name != "http":
            assert _cut_off(insecure.endpoint, junk), name
    assert insecure.recv(100) is None and curve_server.recv(100) is None
    _still_serves(insecure, closing)
    cli = connect(curve_server, 1)
    cli.send(1, 1, b"fine")
    got = curve_server.recv(WAIT_MS)
    assert got is not None and got.sender == 1


def test_a_null_handshake_cannot_reach_a_curve_server(
    curve_server: ServerTransport, connect: Connect
) -> None:
    try:
        s = zmtp_null_session(curve_server.endpoint)
    except (AssertionError, OSError):
        pass  # closed during the handshake: the expected outcome
    else:
        s.sendall(LONG_FRAME + (3).to_bytes(8, "big") + b"abc")
        assert closed_by_peer(s, 3.0)
        s.close()
    assert curve_server.recv(100) is None
    cli = connect(curve_server, 1)
    cli.send(1, 1, b"fine")
    got = curve_server.recv(WAIT_MS)
    assert got is not None and got.sender == 1
