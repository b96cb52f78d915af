"""A whole cohort must not miss a round start (issue 22, "a round lost for 5 minutes").

Real ZeroMQ sockets, the real transports, driver and client loop (clients in threads). The
server reads nothing for a few seconds between two rounds, as when it applies an update or is
starved. The idle clients' hellos fill its receive queues, libzmq stops reading those streams,
drops the connections when their ZMTP heartbeats time out, and the clients reconnect; the hellos
still queued on the dead pipes leave the server routing to closed connections. The round start
then fails for every member ("cannot reach client"), and before the fix the round waited out
its whole advertise deadline while every client sat idle saying hello. Timings are shrunk
(queues of 4, a 0.5 s heartbeat timeout, hellos every 50 ms) so it takes seconds, not minutes.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from secagg.fl_core.runtime.client_app import ClientSettings, run_client
from secagg.fl_core.runtime.driver import DriverSettings, RoundDriver
from secagg.fl_core.runtime.rounds import limits_for
from secagg.fl_core.transport.common import SocketOptions
from secagg.fl_core.transport.sockets import ClientTransport, ServerTransport

N, DIM = 3, 8
ARGS = {"protocol": "secagg+", "n": N}
TIGHT = SocketOptions(rcvhwm=4, sndhwm=4, heartbeat_ivl_ms=100, heartbeat_timeout_ms=500,
                      heartbeat_ttl_ms=1000)


@pytest.mark.parametrize("busy_before", [1, 2], ids=["after-bind", "between-rounds"])
def test_idle_cohort_gets_the_round_start_after_the_server_was_busy(busy_before: int) -> None:
    # after-bind: the server evaluates its initial model after binding while the clients,
    # loaded and connected, say hello (issue 22: round 1 lost "while clients were loading").
    server = ServerTransport("tcp://127.0.0.1:*", limits=limits_for(N, DIM), insecure=True,
                             options=TIGHT)

    def body(cid: int) -> None:
        with ClientTransport(server.endpoint, client_id=cid, limits=limits_for(N, DIM),
                             insecure=True, options=TIGHT) as t:
            run_client(t, insecure=True, settings=ClientSettings(heartbeat_s=0.05,
                                                                 idle_timeout_s=20.0))

    threads = [threading.Thread(target=body, args=(c,), daemon=True) for c in (1, 2, 3)]
    for th in threads:
        th.start()
    with server:
        driver = RoundDriver(server, config_args=ARGS, settings=DriverSettings(
            join_timeout_s=10.0, deadline_s=4.0))
        if busy_before == 2:
            first = driver.run_round(1, 0, np.zeros(DIM))
            assert first.ok and first.included == (1, 2, 3), first.error
        else:
            assert driver.wait_for_clients(N, 10.0) == [1, 2, 3]
        time.sleep(3.0)  # the server is busy: it reads nothing
        t0 = time.monotonic()
        out = driver.run_round(busy_before, 1, np.zeros(DIM))
        took = time.monotonic() - t0
        driver.goodbye(busy_before)
        time.sleep(0.2)
    for th in threads:
        th.join(timeout=10)
    assert out.ok and out.included == (1, 2, 3), (out.error, out.stages)
    assert took < 3.0, out.stages  # well inside the 4 s advertise deadline


def test_idle_cohort_gets_the_ckks_key_announcement_after_the_server_was_busy() -> None:
    """The same loss hits a CKKS ``keys`` announcement (the key setup runs before round 1):
    it is resent as a round start is, and a client answers a copy with the messages it sent
    for the first one, so the setup completes and the round with it."""
    pytest.importorskip("tenseal")
    server = ServerTransport("tcp://127.0.0.1:*", limits=limits_for(N, DIM, ckks=True),
                             insecure=True, options=TIGHT)

    def body(cid: int) -> None:
        with ClientTransport(server.endpoint, client_id=cid,
                             limits=limits_for(N, DIM, ckks=True), insecure=True,
                             options=TIGHT) as t:
            run_client(t, insecure=True, settings=ClientSettings(heartbeat_s=0.05,
                                                                 idle_timeout_s=30.0))

    threads = [threading.Thread(target=body, args=(c,), daemon=True) for c in (1, 2, 3)]
    for th in threads:
        th.start()
    with server:
        driver = RoundDriver(server, config_args={"protocol": "ckks", "n": N, "active": False},
                             settings=DriverSettings(join_timeout_s=10.0, deadline_s=8.0))
        assert driver.wait_for_clients(N, 10.0) == [1, 2, 3]
        time.sleep(3.0)  # the server is busy: it reads nothing
        t0 = time.monotonic()
        out = driver.run_round(1, 0, np.zeros(DIM))
        took = time.monotonic() - t0
        driver.goodbye(1)
        time.sleep(0.2)
    for th in threads:
        th.join(timeout=10)
    assert out.ok and out.included == (1, 2, 3), (out.error, out.stages)
    keys_first = out.stages[0]
    assert keys_first["stage"] == "keys/advertise" and keys_first["missing"] == []
    assert took < 8.0, out.stages  # inside the first deadline: nothing waited it out
