"""``secagg flower demo --deployment``: our protocols on Flower's deployment runtime, checked.

Starts a :class:`~secagg.fl_core.flower.deployment.Federation` (a SuperLink and ``--clients``
SuperNodes as processes, TLS on unless ``--insecure``), submits one run of the demo ServerApp
(:mod:`secagg.fl_core.flower.apps`), and checks every round: the aggregate must equal the exact
sum of :func:`~secagg.fl_core.flower.apps.demo_update` over the round's survivors. Writes a JSON
report (``--json``; see :func:`run_demo`) and exits 0 only if every round is correct.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import threading
import time
from collections.abc import Mapping
from importlib.metadata import version
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np

from secagg.fl_core.flower.apps import demo_update
from secagg.fl_core.flower.deployment import DeploymentError, Federation, NodeConfigValue
from secagg.fl_core.flower.policy import NODE_POLICY_KEY

__all__ = ["PROTOCOLS", "check_round", "demo_main", "run_demo", "write_active_federation"]

PROTOCOLS = ("plain", "secagg", "secagg+")


def check_round(doc: Mapping[str, Any], *, dim: int, clients: int) -> tuple[bool, float | None]:
    """(correct, max abs error) of one round of the ServerApp's result: the aggregate equals
    the sum of the survivors' demo updates exactly, and the survivors are known partitions."""
    survivors, agg = doc["survivors"], doc["aggregate"]
    if agg is None or not survivors or not set(survivors) <= set(range(clients)):
        return False, None
    want = np.zeros(dim, np.float64)
    for pid in survivors:
        want += demo_update(pid, doc["round"], dim).astype(np.float64)
    got = np.asarray(agg, dtype=np.float64)
    if got.shape != want.shape:
        return False, None
    return bool(np.array_equal(got, want)), float(np.max(np.abs(got - want), initial=0.0))


def _by_partition(d: Mapping[str, int]) -> dict[str, int]:
    return dict(sorted(d.items(), key=lambda kv: (not kv[0].isdigit(), int(kv[0])
                                                  if kv[0].isdigit() else 0, kv[0])))


def write_active_federation(folder: Path, *, clients: int, protocol: str, dim: int,
                            ) -> tuple[Path, Path, dict[int, Path]]:
    """Identity keys and policy files of an active-mode federation, as ``secagg keygen
    client`` and each node's operator would write them: partition ``p`` is client ``p + 1``
    with its own key folder (its secret, every card) and policy file; the server gets the
    public policy and the cards. Returns (server policy, cards folder, node policy files).

    Raises:
        OSError: the folder cannot be written.
    """
    from secagg.fl_core.identity import keyfiles
    from secagg.fl_core.identity.keys import ClientKeys

    public = {"protocol": protocol, "n": clients, "active": True, "clip": 1.0, "dim": dim}
    every, cards = folder / "all", folder / "cards"
    ids = range(1, clients + 1)
    for cid in ids:
        keyfiles.write_client_keys(every, ClientKeys.generate(cid))
    cards.mkdir(parents=True, exist_ok=True)
    for pub in sorted(every.glob("client-*.public.json")):
        shutil.copy2(pub, cards / pub.name)
    own: dict[int, Path] = {}
    for cid in ids:
        node = folder / f"node-{cid}"
        shutil.copytree(cards, node / "keys")
        shutil.copy2(keyfiles.client_paths(every, cid)[1], node / "keys")
        own[cid - 1] = _write_policy(node / "policy.json",
                                     {**public, "keys": "keys", "client_id": cid})
    shutil.rmtree(every)  # each secret now lives only in its node's folder
    return _write_policy(folder / "server-policy.json", public), cards, own


def _write_policy(path: Path, doc: Mapping[str, Any]) -> Path:
    path.write_text(json.dumps(doc, indent=1) + "\n")
    path.chmod(0o644)  # the operator's file: not writable by others
    return path


def run_demo(folder: Path, *, clients: int = 3, rounds: int = 2, protocol: str = "secagg+",
             dim: int = 64, tls: bool = True, timeout: float = 30.0, run_timeout: float = 600.0,
             workflow_kwargs: Mapping[str, Any] | None = None,
             node_config: Mapping[int, Mapping[str, NodeConfigValue]] | None = None,
             active: bool = False) -> dict[str, Any]:
    """Run the demo in ``folder`` and return the report.

    ``active``: every node pins a policy file of its own with its identity keys
    (:func:`write_active_federation`), the server runs ``SecAggWorkflow.from_policy``.

    The report: ``engine`` ("deployment"), ``flower_version``, ``protocol``, ``clients``,
    ``rounds``, ``dim``, ``tls``, ``mode`` ("active" or "passive"), ``correct`` (every
    round), ``bytes_up_per_client`` and ``bytes_down_per_client`` (partition id -> wire bytes
    of our protocol over all rounds, from ``FlowerRound.bytes_up``/``bytes_down``),
    ``startup_seconds``, ``wall_seconds``,
    ``per_round`` (``round``, ``seconds``, ``survivors``, ``correct``, ``max_abs_error``,
    ``bytes_up``, ``bytes_down``), ``run_folder``.

    Raises:
        ProcessStartError: a SuperLink or SuperNode did not start.
        RunFailed, DeploymentTimeout: the run failed or did not finish in ``run_timeout``.
    """
    t0 = time.perf_counter()
    policy = cards = None
    nodes = {p: dict((node_config or {}).get(p, {})) for p in range(clients)}
    if active:
        policy, cards, own = write_active_federation(folder / "active", clients=clients,
                                                     protocol=protocol, dim=dim)
        for p in nodes:
            nodes[p][NODE_POLICY_KEY] = str(own[p])
    with Federation(folder, clients=clients, tls=tls, node_config=nodes) as fed:
        t_up = time.perf_counter()
        run = fed.submit(protocol=protocol, rounds=rounds, dim=dim, timeout=timeout,
                         workflow_kwargs=workflow_kwargs, policy=policy, keys=cards)
        result = run.wait(run_timeout)
    per_round: list[dict[str, Any]] = []
    up: dict[str, int] = {}
    down: dict[str, int] = {}
    for r in result["rounds"]:
        ok, err = check_round(r, dim=dim, clients=clients)
        per_round.append({"round": r["round"], "seconds": round(r["seconds"], 3),
                          "survivors": r["survivors"], "correct": ok, "max_abs_error": err,
                          "bytes_up": _by_partition(r["bytes_up"]),
                          "bytes_down": _by_partition(r["bytes_down"])})
        for total, part in ((up, r["bytes_up"]), (down, r["bytes_down"])):
            for pid, b in part.items():
                total[pid] = total.get(pid, 0) + b
    up, down = _by_partition(up), _by_partition(down)
    return {
        "engine": "deployment", "flower_version": version("flwr"), "protocol": protocol,
        "clients": clients, "rounds": rounds, "dim": dim, "tls": tls,
        "mode": "active" if active else "passive",
        "correct": len(per_round) == rounds and all(r["correct"] for r in per_round),
        "bytes_up_per_client": up, "bytes_down_per_client": down,
        "startup_seconds": round(t_up - t0, 3),
        "wall_seconds": round(time.perf_counter() - t0, 3),
        "per_round": per_round, "workflow_kwargs": dict(workflow_kwargs or {}),
        "run_folder": str(folder),
    }


def _node_config(entries: list[tuple[str, Any]], clients: int,
                 ) -> dict[int, dict[str, NodeConfigValue]]:
    out: dict[int, dict[str, NodeConfigValue]] = {}
    for pid in range(clients):
        out[pid] = {k: v.replace("{pid}", str(pid)) if isinstance(v, str) else v
                    for k, v in entries}
    return out


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through Federation.__exit__: nothing is orphaned


def demo_main(ns: argparse.Namespace) -> int:
    """Run ``secagg flower demo`` (options: ``secagg.fl_core.cli.entry``); 0 if every round is
    correct, 1 if not or on failure, 2 on bad arguments."""
    if min(ns.clients, ns.rounds, ns.dim) < 1 or ns.timeout <= 0 or ns.protocol not in PROTOCOLS:
        print("secagg flower demo: --clients, --rounds, --dim and --timeout must be positive, "
              f"--protocol one of {', '.join(PROTOCOLS)}", file=sys.stderr)
        return 2
    from secagg.fl_core.cli import run_folder

    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    folder = (Path(ns.run_dir) if ns.run_dir else
              run_folder.create(run_folder.RunFolder(
                  run_folder.RUNS_ROOT / f"flower-{stamp}", False, True)).path)
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if main else None
    try:
        report = run_demo(folder, clients=ns.clients, rounds=ns.rounds, protocol=ns.protocol,
                          dim=ns.dim, tls=ns.tls, timeout=ns.timeout, run_timeout=ns.run_timeout,
                          workflow_kwargs=dict(ns.workflow_arg),
                          node_config=_node_config(ns.node_config, ns.clients),
                          active=ns.active)
    except (DeploymentError, ValueError, TypeError) as exc:
        print(f"secagg flower demo: {exc}", file=sys.stderr)
        return 1
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
    text = json.dumps(report, indent=1) + "\n"
    (folder / "demo.json").write_text(text)
    if ns.json_path:
        Path(ns.json_path).write_text(text)
    for r in report["per_round"]:
        print(f"round {r['round']}: {r['seconds']:.1f} s, survivors {r['survivors']}, "
              f"{'correct' if r['correct'] else 'WRONG'}")
    print(f"{report['protocol']} on Flower {report['flower_version']} deployment runtime, "
          f"{'TLS' if report['tls'] else 'no TLS'}: "
          f"{'correct' if report['correct'] else 'NOT correct'}; "
          f"wall {report['wall_seconds']:.1f} s; report in {folder / 'demo.json'}")
    return 0 if report["correct"] else 1
