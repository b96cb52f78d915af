"""Code that runs in child processes (multiprocessing spawn) for the multi-process tests.

Kept apart from the test modules so a child imports only what it needs.
"""

from __future__ import annotations

import multiprocessing.queues
from pathlib import Path

import zmq

from secagg.fl_core.errors import TransportError
from secagg.fl_core.identity.keyfiles import client_paths, load_client_keys, load_server_public
from secagg.fl_core.transport.envelope import Envelope
from secagg.fl_core.transport.sockets import ClientTransport, SocketOptions, TransportLimits

WAIT_MS = 8_000
OPTIONS = SocketOptions(reconnect_ivl_ms=50, reconnect_ivl_max_ms=200, send_timeout_ms=2_000,
                        linger_ms=500)


def honest_client(endpoint: str, key_dir: str, client_id: int, limits: TransportLimits,
                  out: multiprocessing.queues.Queue) -> None:  # type: ignore[type-arg]
    """Join with the key files in ``key_dir``, say hello, report the server's answer."""
    keys = load_client_keys(client_paths(key_dir, client_id)[1])
    server_public = load_server_public(Path(key_dir) / "server.public.json")
    try:
        with ClientTransport(endpoint, client_id=client_id, limits=limits, keys=keys.curve,
                             server_public=server_public, options=OPTIONS) as cli:
            cli.wait_ready(WAIT_MS)
            cli.send(1, 1, f"hello from {client_id}".encode())
            reply = cli.recv(WAIT_MS, round_id=1)
            out.put((client_id, bytes(reply.payload) if reply else None))
    except TransportError as exc:
        out.put((client_id, type(exc).__name__))


def hostile_client(endpoint: str, key_dir: str, client_id: int, limits: TransportLimits,
                   out: multiprocessing.queues.Queue) -> None:  # type: ignore[type-arg]
    """An enrolled client gone bad: garbage, a spoofed id, then a frame over MAXMSGSIZE."""
    keys = load_client_keys(client_paths(key_dir, client_id)[1])
    server_public = load_server_public(Path(key_dir) / "server.public.json")
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        s = ctx.socket(zmq.DEALER)
        s.linger = 2_000
        s.curve_serverkey, s.curve_publickey = server_public, keys.curve.public
        s.curve_secretkey = keys.curve.secret
        mon = s.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        s.connect(endpoint)
        s.send_multipart([b"garbage"])
        s.send_multipart([Envelope(1, 1, client_id + 1, 1).encode(), b"x"])  # not my id
        big = bytes(limits.max_message_bytes + 1)
        s.send_multipart([Envelope(1, 2, client_id, len(big)).encode(), big])
        dropped = mon.poll(WAIT_MS)  # the server hangs up on the oversize frame
        out.put((client_id, "disconnected" if dropped else "still connected"))
        mon.close()
    finally:
        ctx.destroy(linger=2_000)
