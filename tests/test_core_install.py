"""The lean install: the wheel ships one top-level package, ``secagg``, and a venv with only the
core dependencies (no torch, TenSEAL, dp-accounting or Flower) runs a SecAgg+ round through the
public API, in process and over real loopback ZeroMQ sockets. The core dependencies come from the
committed lock, with their hashes."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ("numpy", "cryptography", "pyzmq", "rich")
# The core dependencies and what they pull in; `pip check` below fails if this falls short.
CLOSURE = (*CORE, "cffi", "pycparser", "markdown-it-py", "mdurl", "pygments")

pytestmark = pytest.mark.slow

ROUND = r"""
import importlib.util, sys, tempfile, threading
from pathlib import Path
import numpy as np
import secagg, secagg.protocols as protocols
from secagg import fl_core

heavy = [m for m in ("torch", "tenseal", "transformers", "peft", "dp_accounting", "flwr",
                     "matplotlib") if importlib.util.find_spec(m) is not None]
assert heavy == [], heavy

# In process: SecAgg+ in active mode, one client dropped after sharing its keys.
cfg = protocols.SecAggConfig(protocol="secagg+", n=8, active=True)
xs = {i: np.linspace(-0.5, 0.5, 6) * (i / 8) for i in range(8)}
r = protocols.run_round(cfg, xs, drop={"masked_input": {3}})
want = sum(x for i, x in xs.items() if i != 3)
assert r.included == tuple(i for i in range(8) if i != 3), r.included
assert np.allclose(r.aggregate, want, atol=8 * 2.0 ** -cfg.fixed_point.scale), r.aggregate

# Over real ZeroMQ sockets: a server and three clients in threads.
limits = fl_core.limits_for(3, 4)
server = fl_core.ServerTransport("tcp://127.0.0.1:*", limits=limits, insecure=True)
settings = fl_core.ServerSettings(
    config_args={"protocol": "secagg+", "n": 3, "active": False}, dim=4, rounds=1,
    checkpoint=Path(tempfile.mkdtemp()) / "ck.json",
    driver=fl_core.DriverSettings(join_timeout_s=20.0))
policy = fl_core.ClientPolicy(config_args={"protocol": "secagg+", "n": 3, "active": False},
                              dim=4)
def client(cid):
    with fl_core.ClientTransport(server.endpoint, client_id=cid, limits=limits,
                                 insecure=True) as t:
        fl_core.run_client(t, update=lambda round_id, state: np.full(4, cid / 10),
                           policy=policy, settings=fl_core.ClientSettings(idle_timeout_s=20.0))
threads = [threading.Thread(target=client, args=(c,)) for c in (1, 2, 3)]
for th in threads:
    th.start()
with server:
    ckpt = fl_core.serve(server, settings)
for th in threads:
    th.join()
assert np.allclose(ckpt.state, 0.2, atol=1e-4), ckpt.state  # mean of 0.1, 0.2, 0.3

# CKKS is an extra: asking for it says which.
try:
    protocols.CkksClient
except ImportError as exc:
    assert "secagg[ckks]" in str(exc), exc
else:
    raise AssertionError("CKKS imported without TenSEAL")
bad = sorted(m for m in ("torch", "tenseal", "transformers") if m in sys.modules)
assert bad == [], bad
print("core round ok")
"""


def _clean_env() -> dict[str, str]:
    """The environment without what an earlier test's import of Ray leaves in it (PYTHONPATH
    naming the full venv), so the core venv sees only its own packages."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}


def _locked_blocks(names: tuple[str, ...]) -> str:
    """The lock's entries (pin and hashes) for ``names``."""
    blocks, keep = [], False
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line and not line.startswith((" ", "#")):
            keep = line.split("==")[0] in names
        if keep and not line.lstrip().startswith("#"):
            blocks.append(line)
    return "\n".join(blocks) + "\n"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "-w", str(out), str(ROOT)], check=True)
    (path,) = out.glob("secagg-*.whl")
    return path


def test_wheel_ships_one_namespace_and_no_benchmarks(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"secagg", "secagg-0.1.0.dist-info"}, tops
    for f in ("secagg/protocols/client.py", "secagg/fl_core/cli/entry.py", "secagg/models/data.py",
              "secagg/protocols/py.typed", "secagg/py.typed"):
        assert f in names, f
    meta = zipfile.ZipFile(wheel).read("secagg-0.1.0.dist-info/METADATA").decode()
    core = sorted(line.split(":", 1)[1].strip().split(">")[0] for line in meta.splitlines()
                  if line.startswith("Requires-Dist:") and "extra ==" not in line)
    assert core == sorted(CORE), core


def test_core_only_venv_runs_a_secagg_plus_round(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "core"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    (tmp_path / "core.lock").write_text(_locked_blocks(CLOSURE))
    env = _clean_env()
    pip = [py, "-m", "pip", "install", "--quiet", "--no-deps"]
    subprocess.run([*pip, "--require-hashes", "-r", str(tmp_path / "core.lock")], check=True,
                   env=env, cwd=tmp_path)
    subprocess.run([*pip, str(wheel)], check=True, env=env, cwd=tmp_path)
    check = subprocess.run([py, "-m", "pip", "check"], capture_output=True, text=True, env=env,
                           cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    proc = subprocess.run([py, "-c", ROUND], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().endswith("core round ok")
