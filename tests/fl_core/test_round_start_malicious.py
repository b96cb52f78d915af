"""A resent round start must not give a malicious server a second session for one round id.

The driver resends a round start to cohort members that say hello without answering
(:mod:`secagg.fl_core.runtime.round_start`). A client answers a byte-identical copy with the
byte-identical first messages it already sent, and answers nothing to a *different* round start
under a round id it has taken part in (another state, another cohort, another step): the server
sees at most one advert per client and round id, so it cannot compare two sessions of one round.
Real sockets and the real client loop; the server is a bare transport that plays the adversary.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from secagg.fl_core.runtime.client_app import ClientSettings, run_client
from secagg.fl_core.runtime.rounds import CONTROL, RoundStart, control_message, limits_for
from secagg.fl_core.transport.sockets import ClientTransport, ServerTransport

N, DIM, ME = 3, 8, 2
ARGS = {"protocol": "secagg+", "n": N}


def _start(*, state: float = 0.0, step: int = 0, clients: tuple[int, ...] = (1, 2, 3)) -> bytes:
    return RoundStart(round_id=1, step=step, first_stage=1, config=ARGS, dim=DIM,
                      clients=clients, verify_keys=None,
                      state=np.full(DIM, state)).encode()


def _protocol_messages(server: ServerTransport, seconds: float) -> list[bytes]:
    """Every non-control message from the client within ``seconds``."""
    got: list[bytes] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        msg = server.recv(max(1, int(left * 1000)))
        if msg is not None and msg.envelope.stage != CONTROL:
            assert msg.envelope.round_id == 1
            got.append(bytes(msg.payload))
    return got


def test_a_resent_round_start_never_opens_a_second_session() -> None:
    server = ServerTransport("tcp://127.0.0.1:*", limits=limits_for(N, DIM), insecure=True)

    def body() -> None:
        with ClientTransport(server.endpoint, client_id=ME, limits=limits_for(N, DIM),
                             insecure=True) as t:
            run_client(t, insecure=True, settings=ClientSettings(heartbeat_s=0.1,
                                                                 idle_timeout_s=20.0))

    th = threading.Thread(target=body, daemon=True)
    th.start()
    with server:
        t0 = time.monotonic()
        while ME not in server.clients and time.monotonic() - t0 < 10:
            server.recv(100)
        original = _start()
        server.send(ME, 1, CONTROL, original)
        first = _protocol_messages(server, 1.5)
        assert len(first) == 1  # the advert
        server.send(ME, 1, CONTROL, original)  # a copy: the same advert, byte for byte
        assert _protocol_messages(server, 1.0) == first
        # Different starts under the same round id: nothing, not a second advert.
        for other in (_start(state=1.0), _start(step=5), _start(clients=(2, 3, 4))):
            server.send(ME, 1, CONTROL, other)
            assert _protocol_messages(server, 0.7) == []
        server.send(ME, 1, CONTROL, control_message("bye"))
    th.join(timeout=10)
