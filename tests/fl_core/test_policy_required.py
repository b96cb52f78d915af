"""Attack 5 of issue 21: the library default. ``run_client(transport, keys=...)`` without a
policy used to log a warning and run whatever the server sent, so a round start saying
``plain`` got the client's update in the clear. Now it refuses (:class:`PolicyRequired`) before
it sends anything, unless its caller opts in with ``insecure=True``.

The adversary is a malicious server over a real CurveZMQ loopback socket against the real
``run_client``; the control runs the same server against ``insecure=True`` and reads the
update in the clear.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import numpy.typing as npt
import pytest

from secagg.fl_core.errors import PeerUnreachable, PolicyRequired
from secagg.fl_core.identity.keys import Allowlist, ClientKeys, CurveKeyPair
from secagg.fl_core.runtime import client_app
from secagg.fl_core.runtime.client_app import ClientSettings, run_client
from secagg.fl_core.runtime.policy import ClientPolicy
from secagg.fl_core.runtime.rounds import (
    CONTROL,
    RoundStart,
    control_message,
    limits_for,
    stage_number,
)
from secagg.fl_core.transport.sockets import ClientTransport, ServerTransport
from secagg.protocols.harness import create_server
from secagg.protocols.wire import decode
from tests.fl_core._wire import Wire

N, DIM = 3, 8
SECRET = np.linspace(-0.5, 0.5, DIM)  # the client's update


@pytest.fixture(scope="module")
def parties() -> tuple[CurveKeyPair, dict[int, ClientKeys]]:
    return CurveKeyPair.generate(), {c: ClientKeys.generate(c) for c in range(1, N + 1)}


@pytest.fixture
def curve_pair(parties: tuple[CurveKeyPair, dict[int, ClientKeys]]
               ) -> Iterator[tuple[ServerTransport, ClientTransport]]:
    server_keys, clients = parties
    limits = limits_for(N, DIM)
    server = ServerTransport("tcp://127.0.0.1:*", limits=limits, keys=server_keys,
                             allowlist=Allowlist(k.card for k in clients.values()))
    client = ClientTransport(server.endpoint, client_id=1, limits=limits,
                             keys=clients[1].curve, server_public=server_keys.public)
    yield server, client
    client.close()
    server.close()


def _plain_start() -> RoundStart:
    """The malicious server's round start: the plaintext baseline, no verify keys."""
    start = RoundStart(round_id=1, step=0, first_stage=0, config={"protocol": "plain", "n": N},
                       dim=DIM, clients=(1, 2, 3), verify_keys=None, state=np.zeros(DIM))
    stage = stage_number(create_server(start.context()).stage)
    return replace(start, first_stage=stage)


def _client(transport: ClientTransport, keys: ClientKeys, calls: list[int],
            out: list[object], **kw: object) -> threading.Thread:
    def update(round_id: int, state: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        calls.append(round_id)
        return SECRET.copy()

    def body() -> None:
        try:
            out.append(run_client(transport, keys=keys, update=update,
                                  settings=ClientSettings(heartbeat_s=0.2, idle_timeout_s=10.0),
                                  **kw))  # type: ignore[arg-type]
        except PolicyRequired as exc:
            out.append(exc)

    th = threading.Thread(target=body)
    th.start()
    return th


def test_run_client_without_a_policy_refuses_and_sends_nothing(
        parties: tuple[CurveKeyPair, dict[int, ClientKeys]],
        curve_pair: tuple[ServerTransport, ClientTransport]) -> None:
    server, transport = curve_pair
    calls: list[int] = []
    out: list[object] = []
    th = _client(transport, parties[1][1], calls, out)
    th.join(timeout=10)
    assert not th.is_alive()
    assert len(out) == 1 and isinstance(out[0], PolicyRequired)
    text = str(out[0])
    assert "ClientPolicy.from_key_folder" in text and "insecure=True" in text
    assert server.recv(1000) is None  # not even a hello: the server cannot route to it
    with pytest.raises(PeerUnreachable):
        server.send(1, 1, CONTROL, _plain_start().encode())
    assert calls == []


def test_control_insecure_true_hands_a_plain_server_the_update_in_the_clear(
        parties: tuple[CurveKeyPair, dict[int, ClientKeys]],
        curve_pair: tuple[ServerTransport, ClientTransport]) -> None:
    server, transport = curve_pair
    calls: list[int] = []
    out: list[object] = []
    th = _client(transport, parties[1][1], calls, out, insecure=True)
    try:
        hello = server.recv(10_000)
        assert hello is not None and hello.envelope.stage == CONTROL
        start = _plain_start()
        server.send(1, 1, CONTROL, start.encode())
        got = None
        for _ in range(50):
            msg = server.recv(200)
            if msg is not None and msg.envelope.stage == start.first_stage:
                got = msg
                break
        assert got is not None, "the client sent nothing at the protocol stage"
        plain = create_server(start.context())
        plain.receive(1, decode(bytes(got.payload)))
        plain.close_stage([2, 3])
        read = plain.result.values
        assert np.allclose(read, SECRET, atol=2.0 ** -15)  # the update, in the clear
    finally:
        server.send(1, 1, CONTROL, control_message("bye"))
        th.join(timeout=15)
    assert calls == [1] and out == [0]


def test_a_policy_and_insecure_together_are_refused(
        parties: tuple[CurveKeyPair, dict[int, ClientKeys]]) -> None:
    policy = ClientPolicy(config_args={"protocol": "secagg+", "n": N, "active": False}, dim=DIM)
    with pytest.raises(ValueError, match="not both"):
        client_app._Session(Wire(1), None, lambda r, s: s, ClientSettings(), policy,  # type: ignore[arg-type]
                            insecure=True)
    with pytest.raises(PolicyRequired):
        client_app._Session(Wire(1), None, lambda r, s: s, ClientSettings())  # type: ignore[arg-type]
