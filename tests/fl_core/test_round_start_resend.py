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

from secagg.fl_core.errors import PeerUnreachable
from secagg.fl_core.runtime.client_app import ClientSettings, run_client
from secagg.fl_core.runtime.driver import DriverSettings, RoundDriver
from secagg.fl_core.runtime.rounds import limits_for
from secagg.fl_core.transport.common import SocketOptions
from secagg.fl_core.transport.sockets import ClientTransport, ServerTransport

N, DIM = 3, 8
ARGS = {"protocol": "secagg+", "n": N}
TIGHT = SocketOptions(rcvhwm=4, sndhwm=4, heartbeat_ivl_ms=100, heartbeat_timeout_ms=500,
                      heartbeat_ttl_ms=1000)


def start_clients(server: ServerTransport, *, hello_s: float = 0.05, idle_s: float = 20.0,
                  ckks: bool = False, options: SocketOptions | None = None,
                  ) -> list[threading.Thread]:
    """Clients 1..N in threads, running the real client loop (insecure, no policy)."""
    limits = limits_for(N, DIM, ckks=ckks)

    def body(cid: int) -> None:
        with ClientTransport(server.endpoint, client_id=cid, limits=limits, insecure=True,
                             options=options) as t:
            run_client(t, insecure=True, settings=ClientSettings(heartbeat_s=hello_s,
                                                                 idle_timeout_s=idle_s))

    threads = [threading.Thread(target=body, args=(c,), daemon=True) for c in range(1, N + 1)]
    for th in threads:
        th.start()
    return threads


@pytest.mark.parametrize("busy_before", [1, 2], ids=["after-bind", "between-rounds"])
def test_idle_cohort_gets_the_round_start_after_the_server_was_busy(busy_before: int) -> None:
    server = ServerTransport("tcp://127.0.0.1:*", limits=limits_for(N, DIM), insecure=True,
                             options=TIGHT)
    threads = start_clients(server, options=TIGHT)
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

    threads = start_clients(server, idle_s=30.0, ckks=True, options=TIGHT)
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


class StaleRoutes:
    """The server's transport, but every send fails with ``PeerUnreachable`` until
    ``until`` (monotonic): the routes of an idle cohort gone stale while the server was busy,
    its clients reconnected and about to say hello on their new connections."""

    def __init__(self, inner: ServerTransport, until: float) -> None:
        self.inner, self.until = inner, until

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def send(self, client_id: int, *args: object, **kw: object) -> None:
        if time.monotonic() < self.until:
            raise PeerUnreachable(f"client {client_id} is no longer connected")
        self.inner.send(client_id, *args, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("grace_s", [3.0, 0.0], ids=["grace", "control-no-grace"])
def test_stale_routes_are_not_a_dead_cohort(grace_s: float) -> None:
    """The liveness probe, 0.5 s into the advertise stage, finds every member unreachable
    (stale routes: issue 22, a distillation round "aborted: only 0 clients completed
    advertise" in 0.5 s). Unreachable counts as gone only after the grace without a word;
    the members' hellos clear it, the round start is resent once routes work (1.5 s), and the
    round completes. The control, without the grace, declares the whole cohort dead at once."""
    server = ServerTransport("tcp://127.0.0.1:*", limits=limits_for(N, DIM), insecure=True)

    threads = start_clients(server)
    with server:
        settings = DriverSettings(join_timeout_s=10.0, deadline_s=8.0, dead_grace_s=grace_s)
        driver = RoundDriver(server, config_args=ARGS, settings=settings)
        assert driver.wait_for_clients(N, 10.0) == [1, 2, 3]
        driver.sampler.transport = driver.transport = StaleRoutes(  # type: ignore[assignment]
            server, time.monotonic() + 1.5)
        driver.sampler.available = lambda: [1, 2, 3]  # type: ignore[method-assign]
        t0 = time.monotonic()
        out = driver.run_round(1, 0, np.zeros(DIM))
        took = time.monotonic() - t0
        driver.transport = server
        driver.goodbye(1)
        time.sleep(0.2)
    for th in threads:
        th.join(timeout=10)
    if grace_s:
        assert out.ok and out.included == (1, 2, 3), (out.error, out.stages)
        assert took < 8.0, out.stages  # inside the deadline: nothing waited it out
    else:
        assert not out.ok and "only 0 clients completed advertise" in (out.error or "")
        assert took < 1.5, took
