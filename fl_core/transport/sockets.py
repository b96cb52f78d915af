"""ZeroMQ transport: a ROUTER at the server, one DEALER per client, envelopes around opaque
protocol bytes. No protocol logic lives here.

Why ROUTER/DEALER: the server must address each client individually (share relays, unmask
requests) and receive from all of them on one socket, fair-queued, without a request/reply
lock-step; clients talk only to the server. ROUTER/DEALER is the asynchronous pattern that
gives exactly that.

Security (on unless ``insecure=True``): CurveZMQ encrypts and authenticates every connection. The
server runs a ZAP authenticator (:class:`zmq.auth.thread.ThreadAuthenticator`) that admits only
Curve public keys on its :class:`secagg.fl_core.identity.keys.Allowlist`; a connection with any
other key
fails the handshake and never delivers a byte. The authenticator reports the accepted key as the
connection's ``User-Id``, which libzmq attaches to every message it delivers; the server maps it to
the allowlisted client id and drops any envelope whose ``sender`` field claims another id. The
sender a caller sees is therefore the authenticated one, never the claim, and
:attr:`ServerTransport.allowlist` gives the Ed25519 identity key bound to it.

Hostile input: ``ZMQ_MAXMSGSIZE`` makes libzmq close a connection as soon as a frame's length
prefix exceeds the limit, before allocating it. Everything smaller that is not exactly one
valid envelope of a known stage within that stage's limit is dropped and logged (throttled)
and counted in :attr:`drops`; the receiver keeps serving everyone else. Known gap: libzmq
bounds neither the number of frames in one multipart message nor their total, so an
*authenticated* client could still pin memory with an endless multipart message; with
``insecure=True`` anyone can.

Neither class is thread-safe: use each from one thread.
"""

from __future__ import annotations

import logging
import time
from typing import Final

import zmq
from zmq.auth.thread import ThreadAuthenticator

from secagg.fl_core.errors import (
    AuthenticationRejected,
    HandshakeFailed,
    PeerUnreachable,
    TransportError,
    TransportTimeout,
)
from secagg.fl_core.identity.keys import Allowlist, CurveKeyPair, check_curve_key
from secagg.fl_core.transport.common import (
    DropReason,
    Inbound,
    SocketOptions,
    TransportLimits,
    frame_property,
    payload_view,
    recv_frames,
    remaining_ms,
)
from secagg.fl_core.transport.endpoint import INSECURE_BANNER, Endpoint, log
from secagg.fl_core.transport.envelope import SERVER_SENDER, Envelope

__all__ = [
    "ZAP_DOMAIN",
    "ClientTransport",
    "DropReason",
    "Inbound",
    "ServerTransport",
    "SocketOptions",
    "TransportLimits",
]

ZAP_DOMAIN: Final = "secagg"


class _AllowlistProvider:
    """ZAP credentials provider: admit exactly the allowlisted Curve keys (runs in the
    authenticator's thread; the allowlist is immutable)."""

    def __init__(self, allowlist: Allowlist) -> None:
        self._allowlist = allowlist

    def callback(self, domain: str, key: bytes) -> bool:
        cid = self._allowlist.client_for_curve_key(bytes(key))
        if cid is None:
            log.warning(
                "ZAP: rejected a connection in domain %r: Curve key %s is not on the allowlist",
                domain, bytes(key).decode("ascii", "replace"),
            )
            return False
        log.debug("ZAP: admitted client %d", cid)
        return True


class ServerTransport(Endpoint):
    """The server end: one ROUTER bound to ``endpoint`` (``tcp://127.0.0.1:*`` picks a port;
    :attr:`endpoint` then says which)."""

    _role = "server"

    def __init__(self, endpoint: str, *, limits: TransportLimits, keys: CurveKeyPair | None = None,
                 allowlist: Allowlist | None = None, insecure: bool = False,
                 options: SocketOptions | None = None,
                 context: zmq.Context[zmq.Socket[bytes]] | None = None) -> None:
        """Bind, with CurveZMQ and the ZAP allowlist unless ``insecure``.

        Raises:
            TypeError: a wrong argument type.
            ValueError: ``keys`` and ``allowlist`` missing without ``insecure``, or given with it.
            TransportError: the endpoint cannot be bound or the authenticator did not start.
        """
        if insecure and (keys is not None or allowlist is not None):
            raise ValueError("insecure=True takes no keys and no allowlist")
        if not insecure:
            if not isinstance(keys, CurveKeyPair) or not isinstance(allowlist, Allowlist):
                raise ValueError("a CurveKeyPair and an Allowlist are required "
                                 "(insecure=True turns CurveZMQ off, for tests only)")
        super().__init__(zmq.ROUTER, limits, options or SocketOptions(), context)
        self.insecure = insecure
        self._allowlist = allowlist
        self._auth: ThreadAuthenticator | None = None
        self._route_of: dict[int, bytes] = {}
        self._client_of_route: dict[bytes, int] = {}
        self._last_round: dict[int, int] = {}
        try:
            self._sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # unknown route: error, not silence
            self._sock.setsockopt(zmq.ROUTER_HANDOVER, 0)  # a duplicate routing id cannot steal
            if keys is not None and allowlist is not None:
                self._start_curve(keys, allowlist)
            else:
                log.warning(INSECURE_BANNER, "server", endpoint)
            self._sock.bind(endpoint)
        except (zmq.ZMQError, RuntimeError) as exc:
            self.close()
            raise TransportError(f"server cannot listen on {endpoint}: {exc}") from exc
        self.endpoint: str = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        log.info("server listening on %s (%s)", self.endpoint,
                 "INSECURE" if insecure else f"CurveZMQ, {len(allowlist or ())} allowlisted")

    def _start_curve(self, keys: CurveKeyPair, allowlist: Allowlist) -> None:
        # The authenticator must be listening before the socket binds: a CURVE socket with no
        # ZAP handler in its context admits every key.
        self._auth = ThreadAuthenticator(
            self._ctx, log=logging.getLogger("secagg.fl_core.transport.sockets.zap"))
        self._auth.start()
        self._auth.configure_curve_callback(ZAP_DOMAIN, credentials_provider=_AllowlistProvider(
            allowlist))
        if not self._auth.is_alive():
            raise RuntimeError("ZAP authenticator thread is not running")
        self._sock.setsockopt(zmq.CURVE_SERVER, 1)
        self._sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)
        self._sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
        self._sock.setsockopt_string(zmq.ZAP_DOMAIN, ZAP_DOMAIN)

    @property
    def allowlist(self) -> Allowlist | None:
        """Client cards (Curve key and bound Ed25519 identity) by id; None when insecure."""
        return self._allowlist

    @property
    def clients(self) -> frozenset[int]:
        """Client ids the server has a route to (heard from on their current connection)."""
        return frozenset(self._route_of)

    def _peer(self, route: bytes, header: zmq.Frame | None, cid: int | None = None) -> str:
        addr = frame_property(header, "Peer-Address") if header is not None else None
        who = f"client {cid}" if cid is not None else f"route {route.hex()}"
        return f"{who} at {addr}" if addr else who

    def _authenticate(self, route: bytes, header: zmq.Frame, env: Envelope) -> int | None:
        """The client id behind this connection, or None after logging a drop."""
        if self._allowlist is not None:
            user = frame_property(header, "User-Id")
            cid = self._allowlist.client_for_curve_key(user.encode()) if user else None
            if cid is None:
                self._drops.drop(DropReason.UNAUTHENTICATED, self._peer(route, header),
                                 "no allowlisted User-Id on the connection")
                return None
        else:  # insecure: trust the first claim made on a connection, and only that one
            cid = self._client_of_route.get(route, env.sender)
            if env.sender == SERVER_SENDER:
                cid = None
        if cid is None or env.sender != cid:
            self._drops.drop(DropReason.SPOOFED_SENDER, self._peer(route, header, cid),
                             f"claimed sender {env.sender}")
            return None
        old = self._route_of.get(cid)
        if old != route:
            if old is not None:
                self._client_of_route.pop(old, None)
                log.info("client %d is on a new connection", cid)
            self._route_of[cid] = route
            self._client_of_route[route] = cid
        return cid

    def _read_one(self, round_id: int | None, stage: int | None) -> Inbound | None:
        frames, total = recv_frames(self._sock, keep=3)
        route = frames[0].bytes
        checked = self._check_envelope(frames[1:], total - 1,
                                       self._peer(route, frames[1] if total > 1 else None))
        if checked is None:
            return None
        env, payload = checked
        cid = self._authenticate(route, frames[1], env)
        if cid is None:
            return None
        peer = self._peer(route, frames[1], cid)
        last = self._last_round.get(cid)
        if last is not None and env.round_id < last:
            self._drops.drop(DropReason.REPLAYED_ROUND, peer,
                             f"round {env.round_id} after round {last}")
            return None
        if not self._filter_round(env, peer, round_id, stage):
            return None
        self._last_round[cid] = env.round_id
        return Inbound(sender=cid, envelope=env, payload=payload.toreadonly())

    def send(self, client_id: int, round_id: int, stage: int, payload: object, *,
             copy: bool | None = None) -> None:
        """Send ``payload`` (bytes-like; not to be modified until sent when zero-copy) to a
        client. ``copy=None`` copies payloads under 64 KiB and sends larger ones zero-copy.

        Raises:
            TransportClosed: after :meth:`close`.
            TypeError / ValueError: a bad round, stage or payload.
            PeerUnreachable: no live connection from ``client_id``.
            TransportTimeout: the client's queue stayed full for ``send_timeout_ms``.
            TransportError: any other ZeroMQ failure.
        """
        self._check_open()
        view = payload_view(payload)
        env = Envelope(round_id=round_id, stage=stage, sender=SERVER_SENDER,
                       payload_len=view.nbytes)
        route = self._route_of.get(client_id)
        if route is None:
            raise PeerUnreachable(f"no connection from client {client_id}")
        try:
            self._send([route], env, view, copy)
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise TransportError(f"send to client {client_id} failed: {exc}") from exc
            self._route_of.pop(client_id, None)
            self._client_of_route.pop(route, None)
            raise PeerUnreachable(f"client {client_id} is no longer connected") from None

    def _close_extra(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None

    def __enter__(self) -> ServerTransport:
        return self


class ClientTransport(Endpoint):
    """A client end: one DEALER connected to the server, reconnecting on its own."""

    _role = "client"

    def __init__(self, endpoint: str, *, client_id: int, limits: TransportLimits,
                 keys: CurveKeyPair | None = None, server_public: bytes | None = None,
                 insecure: bool = False, options: SocketOptions | None = None,
                 context: zmq.Context[zmq.Socket[bytes]] | None = None) -> None:
        """Connect (asynchronously; :meth:`wait_ready` waits for the handshake).

        Raises:
            TypeError: a wrong argument type.
            ValueError: keys missing without ``insecure`` or given with it; a bad client id;
                ``server_public`` not a Z85 Curve key (``InvalidKeyError``).
            TransportError: the endpoint is malformed.
        """
        Envelope(round_id=0, stage=0, sender=client_id, payload_len=0)  # validates the id
        if client_id == SERVER_SENDER:
            raise ValueError("client_id must not be the server's sender id")
        if insecure and (keys is not None or server_public is not None):
            raise ValueError("insecure=True takes no keys")
        if not insecure and (not isinstance(keys, CurveKeyPair) or server_public is None):
            raise ValueError("a CurveKeyPair and the server's public key are required "
                             "(insecure=True turns CurveZMQ off, for tests only)")
        if server_public is not None:
            server_public = check_curve_key("server_public", server_public)
        super().__init__(zmq.DEALER, limits, options or SocketOptions(), context)
        self.client_id = client_id
        self.insecure = insecure
        try:
            # Queue only on finished handshakes: a rejected client's send times out instead
            # of vanishing into a connection that will never complete.
            self._sock.setsockopt(zmq.IMMEDIATE, 1)
            if keys is not None and server_public is not None:
                self._sock.setsockopt(zmq.CURVE_SERVERKEY, server_public)
                self._sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
                self._sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)
            else:
                log.warning(INSECURE_BANNER, f"client {client_id}", endpoint)
            self._sock.connect(endpoint)
        except zmq.ZMQError as exc:
            self.close()
            raise TransportError(f"client cannot connect to {endpoint}: {exc}") from exc
        self.endpoint = endpoint

    def wait_ready(self, timeout_ms: int) -> None:
        """Wait until the security handshake with the server has succeeded.

        Raises:
            TransportClosed: after :meth:`close`.
            AuthenticationRejected: the server's authenticator refused this client's key.
            HandshakeFailed: a protocol failure (e.g. Curve on one side only), at once; or
                other handshake failures (e.g. the wrong server key) until the deadline.
            TransportTimeout: no outcome within ``timeout_ms``.
        """
        self._check_open()
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            self._monitor.drain()
            if self._monitor.connected > 0:
                return
            if self._monitor.auth_failure is not None:
                raise AuthenticationRejected(
                    f"server rejected client {self.client_id}'s key "
                    f"(ZAP status {self._monitor.auth_failure})")
            if self._monitor.counts["HANDSHAKE_FAILED_PROTOCOL"]:  # e.g. Curve on one side only
                raise HandshakeFailed(f"handshake with {self.endpoint} failed: "
                                      f"{self._monitor.protocol_failure}")
            left = remaining_ms(deadline)
            if left <= 0:
                if self._monitor.protocol_failure is not None:
                    raise HandshakeFailed(f"handshake with {self.endpoint} failed: "
                                          f"{self._monitor.protocol_failure}")
                raise TransportTimeout(f"no handshake with {self.endpoint} in {timeout_ms} ms")
            self._monitor.socket.poll(left)

    @property
    def connected(self) -> bool:
        """True while a handshake-complete connection to the server is up."""
        self._monitor.drain()
        return self._monitor.connected > 0

    def _read_one(self, round_id: int | None, stage: int | None) -> Inbound | None:
        frames, total = recv_frames(self._sock, keep=2)
        checked = self._check_envelope(frames, total, "server")
        if checked is None:
            return None
        env, payload = checked
        if not env.from_server:
            self._drops.drop(DropReason.SPOOFED_SENDER, "server", f"sender {env.sender}")
            return None
        if not self._filter_round(env, "server", round_id, stage):
            return None
        return Inbound(sender=SERVER_SENDER, envelope=env, payload=payload.toreadonly())

    def send(self, round_id: int, stage: int, payload: object, *,
             copy: bool | None = None) -> None:
        """Send ``payload`` (bytes-like; not to be modified until sent when zero-copy) to the
        server. ``copy=None`` copies payloads under 64 KiB and sends larger ones zero-copy.

        Raises:
            TransportClosed: after :meth:`close`.
            TypeError / ValueError: a bad round, stage or payload.
            TransportTimeout: no handshake-complete connection, or a full queue, for
                ``send_timeout_ms``.
        """
        self._check_open()
        view = payload_view(payload)
        env = Envelope(round_id=round_id, stage=stage, sender=self.client_id,
                       payload_len=view.nbytes)
        self._send([], env, view, copy)

    def __enter__(self) -> ClientTransport:
        return self
