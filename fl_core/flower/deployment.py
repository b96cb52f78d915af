"""A local Flower federation on the deployment runtime: a SuperLink and N SuperNodes as processes.

:class:`Federation` starts ``flower-superlink`` and ``flower-supernode`` (Flower 1.42: one
HTTP(S) endpoint on the SuperLink serves the Fleet, Control and Runtime APIs; SuperNodes connect
to it with ``--superlink``) from the Python environment this runs in, each in a process group of
its own with its log in the run folder, and submits runs with ``flwr run --stream`` against a
FAB it writes (``app/pyproject.toml``: the components are :mod:`secagg.fl_core.flower.apps`).
With ``tls=True`` (the default) it writes a throwaway CA and server certificate first
(:mod:`._tls`) and starts the SuperLink with ``--ssl-ca-certfile/--ssl-certfile/--ssl-keyfile``
and every SuperNode and ``flwr`` with the CA as root certificate.

Node config: every SuperNode gets ``partition-id`` and ``num-partitions``, plus
``secagg-insecure = true`` (passive mode: the node trusts the server,
:mod:`secagg.fl_core.flower.policy`) unless its ``node_config`` entries name ``secagg-policy``.
SuperNodes heartbeat every ~4 s (``heartbeat_interval=10``, the SuperLink's minimum; Flower's
30 s is no flag: :mod:`._supernode`): a SIGKILLed node is offline within about 20 s, and the
workflow drops it then (:mod:`.stage_wait`), not at its stage timeout.

Extension points: ``node_config`` adds entries to a node's ``--node-config`` (its ClientApp
reads them from ``ctxt.node_config``), and :meth:`Federation.submit` passes ``workflow_kwargs``
to the ServerApp's :class:`SecAggWorkflow` through the run config.

Clean-up on every exit path (:meth:`Federation.close`, also from ``__exit__``): each process
tree (Flower's SuperExec runs in a session of its own) gets SIGTERM, then SIGKILL after
``grace`` seconds; on Linux the children also get SIGTERM if this process dies first.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from secagg.fl_core.errors import FlCoreError
from secagg.fl_core.flower import _procs
from secagg.fl_core.flower._supernode import supernode_command
from secagg.fl_core.flower._tls import TlsFiles, write_throwaway_tls
from secagg.fl_core.flower.apps import RUN_CONFIG_DEFAULTS
from secagg.fl_core.flower.policy import NODE_INSECURE_KEY, NODE_POLICY_KEY

__all__ = ["DeploymentError", "DeploymentTimeout", "Federation", "FlowerRun", "ProcessStartError",
           "RunFailed", "app_pyproject"]

NodeConfigValue = str | int | float | bool
_NODE_ID = re.compile(r"SuperNode ID: (\d+)")
_IN_USE = re.compile(r"address already in use|Errno 98", re.I)
_CONNECTION = "secagg-local"


class DeploymentError(FlCoreError):
    """Base class of the deployment launcher's errors."""


class ProcessStartError(DeploymentError):
    """A SuperLink or SuperNode exited or did not come up; the message ends with its log tail."""


class RunFailed(DeploymentError):
    """A run ended without a complete result (the ServerApp raised, or wrote nothing)."""


class DeploymentTimeout(DeploymentError, TimeoutError):
    """A run did not finish in time."""


def _toml_value(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    raise TypeError(f"config {key!r}: {type(value).__name__} is not a str, int, finite float "
                    "or bool")


def _write_toml(path: Path, entries: Mapping[str, Any]) -> Path:
    """Flat ``key = value`` TOML (Flower's ``--node-config``/``--run-config`` take a file)."""
    lines = []
    for key, value in entries.items():
        if not re.fullmatch(r"[A-Za-z0-9_-]+", key):
            raise ValueError(f"config key {key!r}: letters, digits, '-' and '_' only")
        lines.append(f"{key} = {_toml_value(key, value)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def app_pyproject() -> str:
    """The FAB's ``pyproject.toml``: our ServerApp/ClientApp and the run config defaults.

    ``dependencies`` is empty on purpose: runtime installation is off in the launcher
    (``secagg[flower]`` must already be installed where the apps run).
    """
    config = "\n".join(f"{k} = {_toml_value(k, v)}" for k, v in RUN_CONFIG_DEFAULTS.items())
    return f"""[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "secagg-deployment-demo"
version = "1.0.0"
description = "secagg_mod and SecAggWorkflow on Flower's deployment runtime"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "secagg"

[tool.flwr.app.components]
serverapp = "secagg.fl_core.flower.apps:server_app"
clientapp = "secagg.fl_core.flower.apps:client_app"

[tool.flwr.app.config]
{config}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:])


class FlowerRun:
    """One submitted run: ``flwr run --stream`` (it exits when the run ends) and the result file
    the ServerApp writes after every round."""

    def __init__(self, proc: subprocess.Popen[bytes], result_path: Path, log_path: Path) -> None:
        self.proc, self.result_path, self.log_path = proc, result_path, log_path

    def read(self) -> dict[str, Any] | None:
        """The result so far (None before the first round ends)."""
        try:
            doc: dict[str, Any] = json.loads(self.result_path.read_text())
        except (OSError, ValueError):
            return None
        return doc

    def wait(self, timeout: float) -> dict[str, Any]:
        """Wait for the run to end; return the ServerApp's result (``done`` true).

        Raises:
            DeploymentTimeout: not finished within ``timeout`` seconds.
            RunFailed: the run ended without a complete result (its error and log tail say why).
        """
        end = time.monotonic() + timeout
        while (doc := self.read()) is None or not (doc["done"] or doc["error"]):
            if self.proc.poll() is not None:
                doc = self.read()  # the ServerApp writes its last word before the run ends
                break
            if time.monotonic() > end:
                raise DeploymentTimeout(f"run not finished after {timeout} s; log tail:\n"
                                        f"{_tail(self.log_path)}")
            time.sleep(0.2)
        if doc is None or not doc["done"]:
            reason = doc["error"] if doc else "no result written"
            raise RunFailed(f"run failed: {reason}; log tail:\n{_tail(self.log_path)}")
        return doc


class Federation:
    """A SuperLink and ``clients`` SuperNodes (partition ids ``0..clients-1``) under ``folder``.

    Use as a context manager; :meth:`start` runs on entry.
    """

    def __init__(self, folder: Path, *, clients: int, tls: bool = True,
                 node_config: Mapping[int, Mapping[str, NodeConfigValue]] | None = None,
                 start_timeout: float = 120.0, grace: float = 5.0,
                 task_poll_interval: float = 0.1, superlink_args: Sequence[str] = (),
                 supernode_args: Sequence[str] = (),
                 heartbeat_interval: float | None = 10.0) -> None:
        """``node_config[pid]``: extra ``--node-config`` entries of partition ``pid``;
        ``superlink_args``/``supernode_args``: extra flags of every ``flower-superlink`` /
        ``flower-supernode`` (e.g. SuperNode authentication); ``heartbeat_interval``: the
        SuperNodes' heartbeat in seconds (:mod:`._supernode`; 10, the SuperLink's minimum,
        has a killed node seen dead within about 20 s), None: Flower's own 30 s (40-60 s).

        Raises:
            ValueError: ``clients`` < 1, ``node_config`` names an unknown partition, or a
                heartbeat interval the SuperLink would refuse.
        """
        if clients < 1:
            raise ValueError("clients must be >= 1")
        self._supernode = supernode_command(heartbeat_interval)
        extra = dict(node_config or {})
        if not set(extra) <= set(range(clients)):
            raise ValueError(f"node_config names partitions outside 0..{clients - 1}")
        self.folder, self.clients, self.tls = folder.resolve(), clients, tls
        self.node_config = extra
        self.superlink_args, self.supernode_args = list(superlink_args), list(supernode_args)
        self.start_timeout, self.grace = start_timeout, grace
        self.tls_files: TlsFiles | None = None
        self.address = ""
        self.node_ids: dict[int, int] = {}
        """Partition id -> Flower node id, from each SuperNode's log."""
        self._superlink: subprocess.Popen[bytes] | None = None
        self._nodes: dict[int, subprocess.Popen[bytes]] = {}
        self._runs: list[subprocess.Popen[bytes]] = []
        self._n_runs = 0
        bin_dir = str(Path(sys.executable).parent)  # Flower finds its helpers on PATH
        self._env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
                     "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
                     "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": str(task_poll_interval)}
        self._bin = Path(bin_dir)

    # -- processes -------------------------------------------------------------------------

    def _exe(self, name: str) -> str:
        path = self._bin / name
        return str(path) if path.exists() else name

    def _spawn(self, cmd: list[str], log: Path, home: Path) -> subprocess.Popen[bytes]:
        home.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, cwd=self.folder,
                                    env={**self._env, "FLWR_HOME": str(home)},
                                    start_new_session=True, preexec_fn=_die_with_parent)

    def _start_superlink(self) -> None:
        tls = self.tls_files
        for _ in range(3):  # a free port can be taken between the probe and the bind
            port = _free_port()
            cmd = [self._exe("flower-superlink"), "--port", str(port),
                   "--disable-runtime-dependency-installation", *self.superlink_args]
            cmd += (["--ssl-ca-certfile", str(tls.ca_cert), "--ssl-certfile",
                     str(tls.server_cert), "--ssl-keyfile", str(tls.server_key)]
                    if tls else ["--insecure"])
            log = self.folder / "superlink.log"
            self._superlink = proc = self._spawn(cmd, log, self.folder / "superlink-home")
            end = time.monotonic() + self.start_timeout
            while proc.poll() is None and time.monotonic() < end:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                except OSError:
                    time.sleep(0.2)
                    continue
                self.address = f"127.0.0.1:{port}"
                return
            if proc.poll() is None:
                raise ProcessStartError(f"flower-superlink did not listen within "
                                        f"{self.start_timeout} s; log tail:\n{_tail(log)}")
            if not _IN_USE.search(_tail(log)):
                raise ProcessStartError(f"flower-superlink exited ({proc.returncode}); log "
                                        f"tail:\n{_tail(log)}")
        raise ProcessStartError("flower-superlink: no free port after 3 tries")

    def _start_node(self, pid: int) -> subprocess.Popen[bytes]:
        home = self.folder / f"supernode-{pid}"
        home.mkdir(parents=True, exist_ok=True)
        extra = self.node_config.get(pid, {})
        conf: dict[str, NodeConfigValue] = {"partition-id": pid, "num-partitions": self.clients}
        if NODE_POLICY_KEY not in extra:
            conf[NODE_INSECURE_KEY] = True  # passive mode: this node trusts the server
        conf.update(extra)
        exe = self._supernode or [self._exe("flower-supernode")]
        cmd = [*exe, "--superlink", self.address,
               "--port", str(_free_port()),
               "--node-config", str(_write_toml(home / "node-config.toml", conf)),
               *self.supernode_args]
        cmd += (["--root-certificates", str(self.tls_files.ca_cert)] if self.tls_files
                else ["--insecure"])
        return self._spawn(cmd, self.folder / f"supernode-{pid}.log", home / "flwr-home")

    def _await_nodes(self) -> None:
        end = time.monotonic() + self.start_timeout
        retries = dict.fromkeys(self._nodes, 2)  # its Runtime API port taken: a new port
        while len(self.node_ids) < self.clients:
            for pid, proc in list(self._nodes.items()):
                log = self.folder / f"supernode-{pid}.log"
                if pid in self.node_ids:
                    continue
                if proc.poll() is not None:
                    if retries[pid] > 0 and _IN_USE.search(_tail(log)):
                        retries[pid] -= 1
                        self._nodes[pid] = self._start_node(pid)
                        continue
                    raise ProcessStartError(f"flower-supernode {pid} exited ({proc.returncode});"
                                            f" log tail:\n{_tail(log)}")
                if m := _NODE_ID.search(log.read_text(errors="replace")):
                    self.node_ids[pid] = int(m.group(1))
            if time.monotonic() > end:
                missing = sorted(set(self._nodes) - set(self.node_ids))
                raise ProcessStartError(
                    f"SuperNodes {missing} not connected within {self.start_timeout} s; log "
                    f"tail of {missing[0]}:\n{_tail(self.folder / f'supernode-{missing[0]}.log')}")
            time.sleep(0.2)

    def _write_cli_config(self) -> None:
        conn: dict[str, Any] = {"address": self.address}
        if self.tls_files:
            conn["root-certificates"] = str(self.tls_files.ca_cert)
        else:
            conn["insecure"] = True
        body = "\n".join(f"{k} = {_toml_value(k, v)}" for k, v in conn.items())
        (self.folder / "superlink-home" / "config.toml").write_text(
            f'[superlink]\ndefault = "{_CONNECTION}"\n\n[superlink.{_CONNECTION}]\n{body}\n')

    def start(self) -> None:
        """Write the FAB (and TLS files), start the SuperLink, then the SuperNodes; return once
        every SuperNode has connected.

        Raises:
            ProcessStartError: a process exited or did not come up in ``start_timeout``.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "app").mkdir(exist_ok=True)
        (self.folder / "app" / "pyproject.toml").write_text(app_pyproject())
        if self.tls:
            self.tls_files = write_throwaway_tls(self.folder / "tls")
        try:
            self._start_superlink()
            self._write_cli_config()
            for pid in range(self.clients):
                self._nodes[pid] = self._start_node(pid)
            self._await_nodes()
        except BaseException:
            self.close()
            raise

    def submit(self, *, protocol: str = "secagg+", rounds: int = 2, dim: int = 64,
               timeout: float = 30.0, workflow_kwargs: Mapping[str, Any] | None = None,
               clients: int | None = None, policy: Path | None = None,
               keys: Path | None = None) -> FlowerRun:
        """Submit one run of the demo ServerApp (``flwr run APP --run-config FILE --stream``).

        ``timeout`` is the workflow's per-stage timeout; ``workflow_kwargs`` (JSON-able) go to
        :class:`SecAggWorkflow`; the ServerApp waits for ``clients`` nodes (default: all).
        ``policy`` (and ``keys``, the folder of client cards) run
        :meth:`SecAggWorkflow.from_policy` instead (``protocol`` is then the policy's).

        Raises:
            DeploymentError: the federation is not started.
            ValueError: a setting is not representable in the run config.
        """
        if not self.node_ids:
            raise DeploymentError("start the federation first (Federation.start or `with`)")
        self._n_runs += 1
        stem = self.folder / f"run-{self._n_runs}"
        result = stem.with_suffix(".json")
        config = {"result-path": str(result), "protocol": protocol,
                  "rounds": rounds, "clients": clients or self.clients, "dim": dim,
                  "timeout": float(timeout), "node-wait": float(self.start_timeout),
                  "workflow-kwargs": json.dumps(dict(workflow_kwargs or {})),
                  "policy": str(policy.resolve()) if policy else "",
                  "keys": str(keys.resolve()) if keys else ""}
        run_toml = _write_toml(stem.with_suffix(".toml"), config)
        cmd = [self._exe("flwr"), "run", str(self.folder / "app"), _CONNECTION,
               "--run-config", str(run_toml), "--stream"]
        log = stem.with_suffix(".log")
        proc = self._spawn(cmd, log, self.folder / "superlink-home")
        self._runs.append(proc)
        return FlowerRun(proc, result, log)

    def pids(self) -> set[int]:
        """Every live process of this federation (started here, or below one that was)."""
        procs = [*self._runs, *self._nodes.values(), *([self._superlink] if self._superlink
                                                       else [])]
        return {pid for p in procs for pid in _procs.descendants(p.pid) | {p.pid}
                if _procs.alive(pid)}

    def node_pids(self, partition_id: int) -> set[int]:
        """The live processes of SuperNode ``partition_id`` (SuperExec, ClientApps included)."""
        p = self._nodes[partition_id]
        return {pid for pid in _procs.descendants(p.pid) | {p.pid} if _procs.alive(pid)}

    def kill_node(self, partition_id: int) -> None:
        """SIGKILL SuperNode ``partition_id`` with its SuperExec and ClientApp processes."""
        proc = self._nodes[partition_id]
        _procs.kill_tree(proc, grace=0.0)

    def close(self) -> None:
        """Stop everything started here (runs, SuperNodes, SuperLink); SIGKILL after ``grace``."""
        procs = [*self._runs, *self._nodes.values()]
        if self._superlink is not None:
            procs.append(self._superlink)
        _procs.stop_trees(procs, grace=self.grace)

    def __enter__(self) -> Federation:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
