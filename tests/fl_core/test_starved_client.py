"""A grace period before a starved peer counts as gone (issue 22).

At load averages of 10 to 20 a client process can get no CPU for seconds. With a 5 s ZMTP
heartbeat timeout libzmq dropped its connection, the server's liveness probe then found no
route and the driver closed the stage without it. The heartbeat timeout is now well above such
a starvation (and above the default stage deadline), so a client frozen for longer than the
old 5 s stays routable and counts as available, while a SIGKILLed client is still seen at once
(its kernel closes the socket: tests/fl_core/test_runtime_refill.py and
tests/fl_core/test_runtime_processes.py::test_client_killed_mid_round_does_not_stall).
Real processes and sockets, default socket options on both ends.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from secagg.fl_core.runtime.driver import DriverSettings, RoundDriver
from secagg.fl_core.runtime.rounds import CONTROL, control_message, limits_for
from secagg.fl_core.transport.common import SocketOptions
from secagg.fl_core.transport.sockets import ServerTransport
from tests.fl_core.test_runtime_refill import _CLIENT

FROZEN_S = 8.0  # past the old 5 s heartbeat timeout (+ its 1 s ping interval)


def test_heartbeat_timeout_outlasts_the_default_stage_deadline() -> None:
    opts = SocketOptions()
    assert opts.heartbeat_timeout_ms >= 1000 * DriverSettings().deadline_s * 2
    assert opts.heartbeat_ttl_ms >= opts.heartbeat_timeout_ms


@pytest.mark.slow
def test_a_client_starved_past_the_old_heartbeat_is_not_gone() -> None:
    t = ServerTransport("tcp://127.0.0.1:*", limits=limits_for(8, 8), insecure=True)
    d = RoundDriver(t, config_args={"protocol": "secagg+", "n": 4},
                    settings=DriverSettings(min_clients=3))
    proc = subprocess.Popen([sys.executable, "-c", _CLIENT, t.endpoint],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        with t:
            assert d.wait_for_clients(1, 20.0) == [7]
            os.kill(proc.pid, signal.SIGSTOP)  # starved: no CPU at all
            t0 = time.monotonic()
            while time.monotonic() - t0 < FROZEN_S:
                assert d.sampler.probe() == [7], time.monotonic() - t0
                time.sleep(0.2)
            os.kill(proc.pid, signal.SIGCONT)
            time.sleep(0.3)
            t.send(7, 0, CONTROL, control_message("ping"))  # the same connection still routes
            assert d.sampler.probe() == [7]
    finally:
        proc.kill()
        proc.wait(timeout=10)
