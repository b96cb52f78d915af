"""Shared fixtures for fl_core tests: real sockets on loopback, every wait bounded."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import zmq

from secagg.fl_core.identity.keys import Allowlist, ClientKeys, CurveKeyPair
from secagg.fl_core.transport.sockets import (
    ClientTransport,
    ServerTransport,
    SocketOptions,
    TransportLimits,
)

ANY_PORT = "tcp://127.0.0.1:*"
WAIT_MS = 5_000  # upper bound of any single wait; tests normally finish far sooner
LIMITS = TransportLimits({1: 4096, 2: 256 * 1024}, max_message_bytes=512 * 1024)
FAST = SocketOptions(
    reconnect_ivl_ms=50,
    reconnect_ivl_max_ms=200,
    handshake_ivl_ms=2_000,
    send_timeout_ms=2_000,
    linger_ms=0,
)


@dataclass
class Federation:
    """A server key pair and three clients, all on the allowlist."""

    server: CurveKeyPair
    clients: dict[int, ClientKeys]

    @property
    def allowlist(self) -> Allowlist:
        return Allowlist(k.card for k in self.clients.values())


@pytest.fixture(scope="session")
def fed() -> Federation:
    return Federation(CurveKeyPair.generate(), {i: ClientKeys.generate(i) for i in (1, 2, 3)})


@pytest.fixture
def closing() -> Iterator[list[ServerTransport | ClientTransport]]:
    """Transports appended here are closed at teardown, clients first."""
    items: list[ServerTransport | ClientTransport] = []
    yield items
    for t in sorted(items, key=lambda t: isinstance(t, ServerTransport)):
        t.close()


@pytest.fixture
def zctx() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    """A context for hand-made (raw) sockets, destroyed without lingering."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


@pytest.fixture
def curve_server(fed: Federation, closing: list) -> ServerTransport:
    srv = ServerTransport(
        ANY_PORT, limits=LIMITS, keys=fed.server, allowlist=fed.allowlist, options=FAST
    )
    closing.append(srv)
    return srv


@pytest.fixture
def connect(fed: Federation, closing: list) -> Callable[..., ClientTransport]:
    """connect(server, client_id, keys_of=None, ready=True): a Curve client of ``server``."""

    def make(
        server: ServerTransport, client_id: int, *, keys_of: int | None = None, ready: bool = True
    ) -> ClientTransport:
        keys = fed.clients[client_id if keys_of is None else keys_of]
        cli = ClientTransport(
            server.endpoint,
            client_id=client_id,
            limits=LIMITS,
            keys=keys.curve,
            server_public=fed.server.public,
            options=FAST,
        )
        closing.append(cli)
        if ready:
            cli.wait_ready(WAIT_MS)
        return cli

    return make


def raw_dealer(
    ctx: zmq.Context[zmq.Socket[bytes]],
    endpoint: str,
    keys: CurveKeyPair | None = None,
    server_public: bytes | None = None,
) -> zmq.Socket[bytes]:
    """A bare DEALER (no envelope logic, queues before the handshake) for hostile tests."""
    s = ctx.socket(zmq.DEALER)
    s.linger = 0
    s.sndtimeo = WAIT_MS
    s.rcvtimeo = WAIT_MS
    if keys is not None:
        s.curve_serverkey = server_public
        s.curve_publickey = keys.public
        s.curve_secretkey = keys.secret
    s.connect(endpoint)
    return s


def tcp_address(endpoint: str) -> tuple[str, int]:
    host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
    return host, int(port)


def zmtp_null_session(endpoint: str) -> socket.socket:
    """A plain TCP socket that completed a ZMTP 3.0 NULL handshake as a DEALER, so the next
    bytes it writes are read by libzmq's frame decoder."""
    sock = socket.create_connection(tcp_address(endpoint), timeout=WAIT_MS / 1000)
    greeting = b"\xff" + bytes(8) + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\0") + bytes(32)
    assert len(greeting) == 64
    body = b"\x05READY" + b"\x0bSocket-Type" + struct.pack(">I", 6) + b"DEALER"
    sock.sendall(greeting + b"\x04" + bytes([len(body)]) + body)
    got = b""
    while len(got) < 64 + 2:  # the server's greeting and the head of its READY command
        chunk = sock.recv(4096)
        assert chunk, "server closed during the handshake"
        got += chunk
    return sock


def closed_by_peer(sock: socket.socket, within_s: float) -> bool:
    """True if the peer closes ``sock`` within ``within_s`` seconds (data before is skipped)."""
    deadline = time.monotonic() + within_s
    try:
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            if not sock.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return False
