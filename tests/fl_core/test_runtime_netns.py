"""A SecAgg+ round across network namespaces with emulated latency and loss (CurveZMQ on).

The server runs in one namespace and 4 clients in another, joined by a veth pair with
private addresses ``10.200.X.1`` / ``10.200.X.2``; ``tc netem`` adds 20 ms delay and 1% loss
on both ends (a second case runs without netem, so the namespaces are exercised where the
kernel lacks the netem qdisc). Needs root and iproute2 (and the netem qdisc): skipped with the
reason otherwise.
The namespaces (and with them the veth pair) are removed in a ``finally`` block.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from secagg.fl_core.identity import keyfiles, keys
from secagg.fl_core.runtime.rounds import synthetic_update
from tests.fl_core._reap import reap

pytestmark = pytest.mark.slow

PY = [sys.executable, "-m", "secagg.fl_core.cli"]
N = 4
DIM = 64
TOL = 1e-3
NETEM = ["delay", "20ms", "loss", "1%"]


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)


def _require(ok: bool, reason: str) -> None:
    if not ok:
        pytest.skip(reason)


class Netns:
    """Two namespaces joined by a veth pair, netem on both ends."""

    def __init__(self, netem: bool) -> None:
        self.netem = netem
        tag = os.getpid() % 100_000
        self.server_ns, self.client_ns = f"flsrv{tag}", f"flcli{tag}"
        self.server_if, self.client_if = f"flvs{tag}", f"flvc{tag}"
        self.subnet = f"10.200.{tag % 250}"  # 10.200.<x>.0/24, x from the pid
        self.server_ip, self.client_ip = f"{self.subnet}.1", f"{self.subnet}.2"
        self.created: list[str] = []

    def setup(self) -> None:
        for ns in (self.server_ns, self.client_ns):
            r = _ip("netns", "add", ns)
            _require(r.returncode == 0, f"`ip netns add` failed: {r.stderr.strip()}")
            self.created.append(ns)
        steps = [
            ["link", "add", self.server_if, "type", "veth", "peer", "name", self.client_if],
            ["link", "set", self.server_if, "netns", self.server_ns],
            ["link", "set", self.client_if, "netns", self.client_ns],
            ["-n", self.server_ns, "addr", "add", f"{self.server_ip}/24", "dev", self.server_if],
            ["-n", self.client_ns, "addr", "add", f"{self.client_ip}/24", "dev", self.client_if],
        ]
        for ns, dev in ((self.server_ns, self.server_if), (self.client_ns, self.client_if)):
            steps += [["-n", ns, "link", "set", "lo", "up"], ["-n", ns, "link", "set", dev, "up"]]
        for step in steps:
            r = _ip(*step)
            _require(r.returncode == 0, f"`ip {' '.join(step)}` failed: {r.stderr.strip()}")
        for ns, dev in ((self.server_ns, self.server_if), (self.client_ns, self.client_if)):
            if not self.netem:
                break
            r = subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev,
                                "root", "netem", *NETEM], capture_output=True, text=True,
                               timeout=10)
            _require(r.returncode == 0, f"`tc qdisc add ... netem` failed: {r.stderr.strip()}")

    def teardown(self) -> None:
        if self.created:  # the pair, if it was made but not yet moved into a namespace
            _ip("link", "del", self.server_if)
        for ns in self.created:  # deleting a namespace deletes its end of the veth pair
            _ip("netns", "del", ns)


@pytest.fixture(params=[False, True], ids=["veth", "veth+netem"])
def netns(request: pytest.FixtureRequest) -> Any:
    _require(sys.platform == "linux", "network namespaces need Linux")
    _require(os.geteuid() == 0, "network namespaces need root")
    _require(shutil.which("ip") is not None, "iproute2 (`ip`) is not installed")
    _require(shutil.which("tc") is not None, "iproute2 (`tc`) is not installed")
    env = Netns(netem=request.param)
    try:
        env.setup()
        yield env
    finally:
        env.teardown()


def test_secaggplus_round_across_namespaces_with_netem(netns: Netns, tmp_path: Path) -> None:
    key_dir = tmp_path / "keys"
    keyfiles.write_server_keys(key_dir, keys.CurveKeyPair.generate())
    for cid in range(1, N + 1):
        keyfiles.write_client_keys(key_dir, keys.ClientKeys.generate(cid))
    common = ["--protocol", "secagg+", "--n", str(N), "--dim", str(DIM), "--keys", str(key_dir)]
    endpoint = f"tcp://{netns.server_ip}:7700"
    out = tmp_path / "rounds.json"
    cwd = Path(__file__).resolve().parents[2]
    procs: list[subprocess.Popen[Any]] = []
    try:
        server = subprocess.Popen(
            ["ip", "netns", "exec", netns.server_ns, *PY, "serve", *common, "--bind", endpoint,
             "--rounds", "1", "--deadline", "8", "--join-timeout", "20",
             "--checkpoint", str(tmp_path / "c.ckpt"), "--json", str(out)], cwd=cwd)
        procs.append(server)
        procs += [subprocess.Popen(
            ["ip", "netns", "exec", netns.client_ns, *PY, "client", *common,
             "--connect", endpoint, "--id", str(cid), "--idle-timeout", "30"], cwd=cwd)
            for cid in range(1, N + 1)]
        assert server.wait(timeout=60) == 0
        (r,) = json.loads(out.read_text())["rounds"]
        assert r["ok"] and len(r["survivors"]) == N
        want = np.sum([synthetic_update(c, r["round"], DIM) for c in r["survivors"]], axis=0)
        assert np.abs(np.array(r["aggregate"]) - want).max() < TOL
        for p in procs[1:]:
            assert p.wait(timeout=20) == 0
    finally:
        reap(procs)
