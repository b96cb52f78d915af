"""ServerTransport / ClientTransport over real loopback sockets, Curve on unless stated."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import pytest
import zmq

from secagg.fl_core.errors import (
    AuthenticationRejected,
    HandshakeFailed,
    PeerUnreachable,
    TransportClosed,
    TransportError,
    TransportTimeout,
)
from secagg.fl_core.identity.keys import CurveKeyPair
from secagg.fl_core.transport.envelope import SERVER_SENDER, Envelope
from secagg.fl_core.transport.sockets import (
    ClientTransport,
    DropReason,
    ServerTransport,
    TransportLimits,
)
from tests.fl_core.conftest import (
    ANY_PORT,
    FAST,
    LIMITS,
    WAIT_MS,
    Federation,
    raw_dealer,
)

Connect = Callable[..., ClientTransport]


def _insecure_pair(closing: list) -> tuple[ServerTransport, ClientTransport]:
    srv = ServerTransport(ANY_PORT, limits=LIMITS, insecure=True, options=FAST)
    closing.append(srv)
    cli = ClientTransport(srv.endpoint, client_id=5, limits=LIMITS, insecure=True, options=FAST)
    closing.append(cli)
    cli.wait_ready(WAIT_MS)
    return srv, cli


def test_round_trip_both_ways(curve_server: ServerTransport, connect: Connect) -> None:
    cli = connect(curve_server, 1)
    cli.send(3, 1, b"hello")
    got = curve_server.recv(WAIT_MS)
    assert got is not None and got.sender == 1 and bytes(got.payload) == b"hello"
    assert got.envelope == Envelope(round_id=3, stage=1, sender=1, payload_len=5)
    assert got.payload.readonly
    curve_server.send(1, 3, 2, b"welcome")
    back = cli.recv(WAIT_MS)
    assert back is not None and back.sender == SERVER_SENDER and bytes(back.payload) == b"welcome"
    assert back.envelope.round_id == 3 and back.envelope.stage == 2


@pytest.mark.parametrize("copy", [True, False, None])
def test_large_payloads_zero_copy_or_not(
    curve_server: ServerTransport, connect: Connect, copy: bool | None
) -> None:
    cli = connect(curve_server, 2)
    big = bytes(range(256)) * 1024  # 256 KiB: the stage-2 limit exactly
    cli.send(1, 2, big, copy=copy)
    got = curve_server.recv(WAIT_MS)
    assert got is not None and got.payload == big
    curve_server.send(2, 1, 2, memoryview(big)[: 100_000], copy=copy)
    back = cli.recv(WAIT_MS)
    assert back is not None and back.payload == big[:100_000]


def test_insecure_round_trip_warns_loudly(
    closing: list, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="secagg.fl_core.transport.sockets"):
        srv, cli = _insecure_pair(closing)
    banners = [r for r in caplog.records if "INSECURE TRANSPORT" in r.getMessage()]
    assert len(banners) == 2 and all(r.levelno == logging.WARNING for r in banners)
    cli.send(0, 1, b"x")
    got = srv.recv(WAIT_MS)
    assert got is not None and got.sender == 5 and srv.allowlist is None


def test_allowlisted_clients_are_identified_by_their_keys(
    fed: Federation, curve_server: ServerTransport, connect: Connect
) -> None:
    clients = {cid: connect(curve_server, cid) for cid in (1, 2, 3)}
    for cid, cli in clients.items():
        cli.send(1, 1, f"from {cid}".encode())
    seen = {}
    for _ in clients:
        got = curve_server.recv(WAIT_MS)
        assert got is not None
        seen[got.sender] = bytes(got.payload)
    assert seen == {cid: f"from {cid}".encode() for cid in clients}
    assert curve_server.clients == frozenset(clients)
    allowlist = curve_server.allowlist
    assert allowlist is not None
    for cid in clients:  # the Ed25519 key each authenticated sender signs protocol messages with
        assert allowlist[cid].identity == fed.clients[cid].identity.verify_key


def test_unlisted_key_gets_nothing_through_and_is_logged(
    fed: Federation,
    connect: Connect,
    closing: list,
    zctx: zmq.Context,
    caplog: pytest.LogCaptureFixture,
) -> None:
    allow_1 = type(fed.allowlist)([fed.clients[1].card])  # client 3 is not on this list
    srv = ServerTransport(ANY_PORT, limits=LIMITS, keys=fed.server, allowlist=allow_1,
                          options=FAST)
    closing.append(srv)
    with caplog.at_level(logging.WARNING):
        rogue = connect(srv, 3, ready=False)
        with pytest.raises(AuthenticationRejected):
            rogue.wait_ready(WAIT_MS)
        with pytest.raises(TransportTimeout):  # nothing is queued to a rejected connection
            rogue.send(1, 1, b"let me in")
        raw = raw_dealer(zctx, srv.endpoint, fed.clients[3].curve, fed.server.public)
        raw.send_multipart([Envelope(1, 1, 3, 2).encode(), b"hi"])  # queues, never delivered
        assert srv.recv(500) is None
    assert any("not on the allowlist" in r.getMessage() for r in caplog.records)
    assert srv.events["HANDSHAKE_FAILED_AUTH"] >= 1
    good = connect(srv, 1)  # the server still serves the allowlisted client
    good.send(1, 1, b"ok")
    got = srv.recv(WAIT_MS)
    assert got is not None and got.sender == 1


def test_insecure_client_cannot_talk_to_curve_server(
    fed: Federation, curve_server: ServerTransport, closing: list, zctx: zmq.Context
) -> None:
    cli = ClientTransport(curve_server.endpoint, client_id=1, limits=LIMITS, insecure=True,
                          options=FAST)
    closing.append(cli)
    with pytest.raises(HandshakeFailed):
        cli.wait_ready(1_000)
    raw = raw_dealer(zctx, curve_server.endpoint)
    raw.send_multipart([Envelope(1, 1, 1, 2).encode(), b"hi"])
    assert curve_server.recv(500) is None
    ev = curve_server.events  # which side notices the mechanism mismatch first varies
    assert ev["HANDSHAKE_FAILED_PROTOCOL"] + ev["HANDSHAKE_FAILED_NO_DETAIL"] >= 1
    assert ev["HANDSHAKE_SUCCEEDED"] == 0


def test_wrong_server_key_never_connects(fed: Federation, curve_server: ServerTransport,
                                         closing: list) -> None:
    impostor_view = CurveKeyPair.generate().public
    cli = ClientTransport(curve_server.endpoint, client_id=1, limits=LIMITS,
                          keys=fed.clients[1].curve, server_public=impostor_view, options=FAST)
    closing.append(cli)
    with pytest.raises(TransportError):
        cli.wait_ready(1_000)
    assert curve_server.recv(200) is None


def test_spoofed_sender_is_rejected(curve_server: ServerTransport, connect: Connect) -> None:
    honest = connect(curve_server, 1)
    liar = connect(curve_server, 1, keys_of=2)  # client 2's key, claiming to be client 1
    liar.send(1, 1, b"I am 1")
    honest.send(1, 1, b"really 1")
    got = curve_server.recv(WAIT_MS)
    assert got is not None and bytes(got.payload) == b"really 1" and got.sender == 1
    assert curve_server.recv(200) is None
    assert curve_server.drops[DropReason.SPOOFED_SENDER] == 1


def test_insecure_server_binds_a_connection_to_its_first_claim(closing: list) -> None:
    srv, cli = _insecure_pair(closing)
    cli.send(1, 1, b"a")
    assert srv.recv(WAIT_MS) is not None
    cli.client_id = 6  # same connection, new claim
    cli.send(1, 1, b"b")
    assert srv.recv(300) is None and srv.drops[DropReason.SPOOFED_SENDER] == 1


def test_replayed_and_off_schedule_envelopes_are_dropped(
    curve_server: ServerTransport, connect: Connect, zctx: zmq.Context, fed: Federation
) -> None:
    raw = raw_dealer(zctx, curve_server.endpoint, fed.clients[1].curve, fed.server.public)
    old = [Envelope(3, 1, 1, 3).encode(), b"old"]
    raw.send_multipart(old)
    assert curve_server.recv(WAIT_MS, round_id=3) is not None
    raw.send_multipart([Envelope(4, 1, 1, 3).encode(), b"new"])
    assert curve_server.recv(WAIT_MS, round_id=4) is not None
    raw.send_multipart(old)  # byte-for-byte replay of round 3
    raw.send_multipart([Envelope(4, 2, 1, 1).encode(), b"s"])  # right round, wrong stage
    raw.send_multipart([Envelope(5, 1, 1, 1).encode(), b"f"])  # a future round
    assert curve_server.recv(500, round_id=4, stage=1) is None
    assert curve_server.drops[DropReason.REPLAYED_ROUND] == 1
    assert curve_server.drops[DropReason.WRONG_STAGE] == 1
    assert curve_server.drops[DropReason.WRONG_ROUND] == 1


def test_garbage_is_dropped_and_logged_while_others_are_served(
    fed: Federation,
    curve_server: ServerTransport,
    connect: Connect,
    zctx: zmq.Context,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bad = raw_dealer(zctx, curve_server.endpoint, fed.clients[1].curve, fed.server.public)
    good = connect(curve_server, 2)
    hdr = Envelope(1, 1, 1, 3).encode()
    garbage: list[list[bytes]] = [
        [b"just one frame"],
        [hdr, b"abc", b"a third frame"],
        [bytes(24), b""],  # bad magic
        [hdr[:2] + b"\x09" + hdr[3:], b"abc"],  # unknown version
        [hdr[:-1], b"abc"],  # short header
        [hdr, b"abcdef"],  # payload longer than declared
        [Envelope(1, 9, 1, 0).encode(), b""],  # stage the server does not know
        [Envelope(1, 1, 1, 5000).encode(), b"x" * 5000],  # over the stage-1 limit (4096)
        [Envelope(1, 1, 1, 2**40).encode(), b"x"],  # declares far more than the limit
    ]
    with caplog.at_level(logging.WARNING, logger="secagg.fl_core.transport.sockets"):
        for frames in garbage:
            bad.send_multipart(frames)
        good.send(1, 1, b"fine")
        bad.send_multipart([hdr, b"abc"])  # the bad peer's own valid message still counts
        got = [curve_server.recv(WAIT_MS) for _ in range(2)]
    assert sorted((g.sender, bytes(g.payload)) for g in got if g) == [(1, b"abc"), (2, b"fine")]
    assert curve_server.drops == {
        DropReason.MALFORMED: 6, DropReason.UNKNOWN_STAGE: 1, DropReason.OVER_STAGE_LIMIT: 2
    }
    assert sum("dropped a message" in r.getMessage() for r in caplog.records) == 9


def test_frame_over_maxmsgsize_drops_the_connection_only(
    curve_server: ServerTransport, connect: Connect
) -> None:
    big_sender, other = connect(curve_server, 1), connect(curve_server, 2)
    big_sender.send(1, 2, bytes(LIMITS.max_message_bytes + 1))
    other.send(1, 1, b"still here")
    got = curve_server.recv(WAIT_MS)
    assert got is not None and got.sender == 2
    assert curve_server.recv(300) is None  # the oversize message never surfaced
    deadline = time.monotonic() + WAIT_MS / 1000
    while curve_server.events["DISCONNECTED"] < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert curve_server.events["DISCONNECTED"] >= 1
    big_sender.wait_ready(WAIT_MS)  # it reconnects on its own and may go on normally
    big_sender.send(1, 1, b"small now")
    again = curve_server.recv(WAIT_MS)
    assert again is not None and again.sender == 1 and bytes(again.payload) == b"small now"


def test_client_drops_what_the_server_may_not_send(closing: list) -> None:
    limits = TransportLimits({1: 8})
    srv = ServerTransport(ANY_PORT, limits=LIMITS, insecure=True, options=FAST)
    closing.append(srv)
    cli = ClientTransport(srv.endpoint, client_id=4, limits=limits, insecure=True, options=FAST)
    closing.append(cli)
    cli.wait_ready(WAIT_MS)
    cli.send(1, 1, b"hi")
    assert srv.recv(WAIT_MS) is not None
    srv.send(4, 1, 1, b"123456789")  # over the client's stage-1 limit
    srv.send(4, 1, 2, b"1")  # a stage the client does not accept
    srv.send(4, 1, 1, b"ok")
    got = cli.recv(WAIT_MS)
    assert got is not None and bytes(got.payload) == b"ok"
    assert cli.drops == {DropReason.OVER_STAGE_LIMIT: 1, DropReason.UNKNOWN_STAGE: 1}


def test_recv_timeout_is_bounded(curve_server: ServerTransport) -> None:
    t0 = time.monotonic()
    assert curve_server.recv(150) is None
    assert 0.1 < time.monotonic() - t0 < 1.0
    assert curve_server.recv(0) is None
    with pytest.raises(ValueError):
        curve_server.recv(-1)


def test_send_to_an_absent_client(curve_server: ServerTransport, connect: Connect) -> None:
    with pytest.raises(PeerUnreachable):
        curve_server.send(1, 1, 1, b"nobody")
    cli = connect(curve_server, 1)
    cli.send(1, 1, b"hi")
    assert curve_server.recv(WAIT_MS) is not None
    cli.close()
    deadline = time.monotonic() + WAIT_MS / 1000
    with pytest.raises(PeerUnreachable):
        while time.monotonic() < deadline:  # the route goes once libzmq sees the close
            curve_server.send(1, 1, 1, b"gone?")
            time.sleep(0.02)


def test_client_reconnects_to_a_restarted_server(
    fed: Federation, closing: list, connect: Connect
) -> None:
    first = ServerTransport(ANY_PORT, limits=LIMITS, keys=fed.server, allowlist=fed.allowlist,
                            options=FAST)
    cli = connect(first, 1)
    cli.send(1, 1, b"before")
    assert first.recv(WAIT_MS) is not None
    endpoint = first.endpoint
    first.close()
    second = ServerTransport(endpoint, limits=LIMITS, keys=fed.server, allowlist=fed.allowlist,
                             options=FAST)
    closing.append(second)
    cli.wait_ready(WAIT_MS)
    deadline = time.monotonic() + WAIT_MS / 1000
    got = None
    while got is None and time.monotonic() < deadline:
        try:
            cli.send(2, 1, b"after")
        except TransportTimeout:
            continue
        got = second.recv(500)
    assert got is not None and got.sender == 1 and bytes(got.payload) == b"after"


def test_constructor_rules(fed: Federation) -> None:
    with pytest.raises(ValueError, match="insecure"):
        ServerTransport(ANY_PORT, limits=LIMITS)
    with pytest.raises(ValueError):
        ServerTransport(ANY_PORT, limits=LIMITS, keys=fed.server, allowlist=fed.allowlist,
                        insecure=True)
    with pytest.raises(ValueError, match="insecure"):
        ClientTransport("tcp://127.0.0.1:1", client_id=1, limits=LIMITS)
    with pytest.raises(ValueError):
        ClientTransport("tcp://127.0.0.1:1", client_id=SERVER_SENDER, limits=LIMITS,
                        insecure=True)
    with pytest.raises(ValueError):  # InvalidKeyError
        ClientTransport("tcp://127.0.0.1:1", client_id=1, limits=LIMITS,
                        keys=fed.clients[1].curve, server_public=b"not a key")
    with pytest.raises(TransportError):
        ServerTransport("tcp://no-such-interface:1", limits=LIMITS, insecure=True)
    with pytest.raises(ValueError):
        TransportLimits({1: 10}, max_message_bytes=5)
    with pytest.raises(ValueError):
        TransportLimits({256: 10})


def test_use_after_close(closing: list) -> None:
    srv, cli = _insecure_pair(closing)
    cli.close()
    srv.close()
    srv.close()  # idempotent
    with pytest.raises(TransportClosed):
        srv.recv(10)
    with pytest.raises(TransportClosed):
        cli.send(1, 1, b"x")


def test_if_the_authenticator_dies_nothing_unauthenticated_gets_through(
    fed: Federation, connect: Connect, closing: list
) -> None:
    # libzmq admits every Curve key when no ZAP handler answers; the server must not rely on
    # that never happening: without an allowlisted User-Id a message is dropped.
    allow_1 = type(fed.allowlist)([fed.clients[1].card])
    srv = ServerTransport(ANY_PORT, limits=LIMITS, keys=fed.server, allowlist=allow_1,
                          options=FAST)
    closing.append(srv)
    assert srv._auth is not None
    srv._auth.stop()
    stranger = connect(srv, 3, ready=False)
    try:
        stranger.wait_ready(WAIT_MS)  # succeeds: nobody vetted the key
    except TransportError:
        pytest.skip("this libzmq refuses Curve peers when no ZAP handler runs")
    stranger.send(1, 1, b"in?")
    assert srv.recv(500) is None
    assert srv.drops[DropReason.UNAUTHENTICATED] == 1
