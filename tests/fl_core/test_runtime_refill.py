"""Cohort refill after a permanent client death (``--min-clients``): the round config is
rebuilt for the smaller cohort (threshold re-derived or re-validated), a SIGKILLed client stops
counting as available within a few heartbeats, and a federation whose population equals ``n``
keeps completing rounds after one client is dead for good (real processes, CurveZMQ on)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from secagg.fl_core.identity import keyfiles, keys
from secagg.fl_core.runtime.driver import DriverSettings, RoundDriver
from secagg.fl_core.runtime.rounds import CONTROL, control_message, limits_for, synthetic_update
from secagg.fl_core.transport.common import SocketOptions
from secagg.fl_core.transport.sockets import ServerTransport
from secagg.protocols.errors import ConfigError
from tests.fl_core._reap import reap
from tests.fl_core.test_runtime_processes import free_port

PY = [sys.executable, "-m", "secagg.fl_core.cli"]
TOL = 1e-3
_CLIENT = """
import sys, time
from secagg.fl_core.runtime.rounds import limits_for, control_message
from secagg.fl_core.transport.sockets import ClientTransport
t = ClientTransport(sys.argv[1], client_id=7, limits=limits_for(4, 8), insecure=True)
t.wait_ready(10_000)
t.send(0, 0, control_message("hello"))
print("ready", flush=True)
time.sleep(60)
"""


def _driver(args: dict[str, Any], options: SocketOptions | None = None,
            **settings: Any) -> tuple[ServerTransport, RoundDriver]:
    t = ServerTransport("tcp://127.0.0.1:*", limits=limits_for(8, 8), insecure=True,
                        options=options)
    return t, RoundDriver(t, config_args=args, settings=DriverSettings(**settings))


def test_round_config_rebuilt_for_a_smaller_cohort() -> None:
    t, d = _driver({"protocol": "secagg+", "n": 4}, min_clients=3)
    with t:
        assert d.round_config(4)[1] is d.config
        args, cfg = d.round_config(3)
        assert args["n"] == 3 == cfg.n and d.config_args["n"] == 4
        assert (d.config.threshold, cfg.threshold) == (3, 3) and cfg.k == 2
    t, d = _driver({"protocol": "secagg+", "n": 4, "threshold": 4}, min_clients=3)
    with t, pytest.raises(ConfigError, match="threshold"):
        d.round_config(3)  # an explicit threshold above the new n: the round cannot start
    t, d = _driver({"protocol": "ckks", "n": 8}, min_clients=6)
    with t:
        args, cfg = d.round_config(6)
        assert cfg.ckks_layout is not None and d.config.ckks_layout is not None
        assert args["ckks_preset"] == d.config.ckks_layout.preset.name  # the epoch key's
    with pytest.raises(ValueError, match="min_clients"):
        _driver({"protocol": "secagg+", "n": 4}, min_clients=5)


def test_explicit_threshold_above_new_n_does_not_start_the_round() -> None:
    t, d = _driver({"protocol": "secagg+", "n": 4, "threshold": 4}, min_clients=3,
                   join_timeout_s=2.0, refill_wait_s=0.2)
    proc = subprocess.Popen([sys.executable, "-c", _CLIENT, t.endpoint],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        with t:
            d.sampler.floor = 1  # one live client is "enough" for this check
            out = d.run_round(1, 0, np.zeros(8))
        assert not out.ok and out.sampled == (7,) and out.threshold == 0
        assert out.error is not None and "not started" in out.error
    finally:
        proc.kill()
        proc.wait(timeout=10)


@pytest.mark.parametrize(("sig", "bound_s"), [
    (signal.SIGKILL, 5.0),  # the kernel closes its socket: gone at the next probe
    # Frozen: the connection stays open but ZMTP heartbeats go unanswered, so libzmq drops
    # it after heartbeat_timeout_ms, like a host that vanished. The default (30 s) outlasts a
    # starved client (tests/fl_core/test_starved_client.py); 5 s here keeps the test short.
    pytest.param(signal.SIGSTOP, 15.0, marks=pytest.mark.slow),
], ids=["sigkill", "sigstop"])
def test_dead_client_stops_counting_as_available(sig: signal.Signals, bound_s: float) -> None:
    t, d = _driver({"protocol": "secagg+", "n": 4},
                   SocketOptions(heartbeat_timeout_ms=5_000, heartbeat_ttl_ms=10_000),
                   min_clients=3)
    proc = subprocess.Popen([sys.executable, "-c", _CLIENT, t.endpoint],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        with t:
            assert d.wait_for_clients(1, 20.0) == [7]
            t.send(7, 0, CONTROL, control_message("ping"))  # routable while alive
            os.kill(proc.pid, sig)
            t0 = time.monotonic()
            while d.sampler.probe() and time.monotonic() - t0 < bound_s + 5.0:
                time.sleep(0.05)
            gone_after = time.monotonic() - t0
            assert d.sampler.available() == [] and 7 not in t.clients
            assert gone_after < bound_s, gone_after
    finally:
        proc.kill()  # also ends a stopped process
        proc.wait(timeout=10)


@pytest.mark.slow
def test_refill_after_permanent_death_4_clients_5_rounds(tmp_path: Path) -> None:
    # n = 4 = the population, --min-clients 3. Client 4 SIGKILLs itself when round 1's unmask
    # request reaches it (its masked input is in: round 1 counts it) and never comes back.
    # Rounds 2..5 must each sample the 3 live clients (not wait for, nor sample, the dead
    # one), re-derive the threshold for n = 3 and complete with the survivors' exact sum.
    n, dim, victim = 4, 32, 4
    key_dir = tmp_path / "keys"
    keyfiles.write_server_keys(key_dir, keys.CurveKeyPair.generate())
    for cid in range(1, n + 1):
        keyfiles.write_client_keys(key_dir, keys.ClientKeys.generate(cid))
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    common = ["--protocol", "secagg+", "--n", str(n), "--dim", str(dim), "--keys", str(key_dir)]
    out = tmp_path / "rounds.json"
    procs: list[subprocess.Popen[Any]] = []
    try:
        server = subprocess.Popen([*PY, "serve", *common, "--bind", endpoint, "--rounds", "5",
                                   "--checkpoint", str(tmp_path / "s.ckpt"), "--json", str(out),
                                   "--join-timeout", "30", "--deadline", "4",
                                   "--min-clients", "3"])
        procs.append(server)
        for cid in range(1, n + 1):
            extra = ["--crash-at", "5:1"] if cid == victim else []
            procs.append(subprocess.Popen(
                [*PY, "client", *common, "--connect", endpoint, "--id", str(cid),
                 "--idle-timeout", "40", "--min-clients", "3", *extra]))  # the same policy
        assert server.wait(timeout=120) == 0
    finally:
        reap(procs)
    assert procs[victim].returncode == -9
    rounds = json.loads(out.read_text())["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3, 4, 5]
    assert all(r["ok"] for r in rounds), [r["error"] for r in rounds]
    assert rounds[0]["sampled"] == [1, 2, 3, 4] and victim in rounds[0]["survivors"]
    for r in rounds[1:]:
        assert r["sampled"] == r["survivors"] == [1, 2, 3], r
        assert r["join_seconds"] < 5.0  # no wait for the dead client
    for r in rounds:
        want = np.sum([synthetic_update(c, r["round"], dim) for c in r["survivors"]], axis=0)
        assert np.abs(np.array(r["aggregate"]) - want).max() < TOL, r["round"]
