"""A client busy in its local update (reading nothing from its socket) for longer than the
driver's liveness pings used to allow is still a live client: the stage waits for it until its
deadline. Before the pings backed off, a fixed 0.5 s ping rate filled the busy client's receive
queue, stalled the TCP stream with ZeroMQ's own heartbeats in it, and the server dropped the
connection as dead after 14 s (every `secagg run` whose local training took longer aborted)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from secagg.fl_core.runtime.client_app import ClientSettings, run_client
from secagg.fl_core.runtime.driver import DriverSettings, RoundDriver
from secagg.fl_core.runtime.rounds import limits_for
from secagg.fl_core.transport.sockets import ClientTransport, ServerTransport
from tests.fl_core.test_malicious_server import ARGS, DIM, N, _Federation

Vector = npt.NDArray[np.float64]
BUSY_S = 18.0


def test_a_client_busy_longer_than_the_old_cut_is_waited_for() -> None:
    fed = _Federation()
    server = ServerTransport("tcp://127.0.0.1:*", limits=limits_for(N, DIM), keys=fed.server,
                             allowlist=fed.allowlist)
    done: dict[int, int] = {}

    def update(cid: int) -> Callable[[int, Vector], Vector]:
        def contribution(round_id: int, state: Vector) -> Vector:
            if cid == 2:
                time.sleep(BUSY_S)  # long local training: no socket reads meanwhile
            return np.full(DIM, cid / 10)
        return contribution

    def body(cid: int) -> None:
        with ClientTransport(server.endpoint, client_id=cid, limits=limits_for(N, DIM),
                             keys=fed.clients[cid].curve, server_public=fed.server.public) as t:
            done[cid] = run_client(t, keys=fed.clients[cid], policy=fed.policy(),
                                   update=update(cid), settings=ClientSettings(
                                       idle_timeout_s=60.0))

    threads = [threading.Thread(target=body, args=(c,)) for c in (1, 2, 3)]
    for th in threads:
        th.start()
    with server:
        driver = RoundDriver(server, config_args=ARGS, settings=DriverSettings(
            join_timeout_s=20.0, deadline_s=5.0, stage_deadlines={"advertise": 60.0}))
        t0 = time.monotonic()
        out = driver.run_round(1, 0, np.zeros(DIM))
        took = time.monotonic() - t0
        driver.goodbye(1)
        time.sleep(0.2)
    for th in threads:
        th.join(timeout=30)
    assert out.ok and out.included == (1, 2, 3), (out.error, took)
    assert BUSY_S < took < 40.0
    assert np.allclose(out.aggregate, 0.6, atol=1e-3)  # 0.1 + 0.2 + 0.3, client 2 included
