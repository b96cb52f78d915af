"""The Flower app of the deployment demo: a thin ``ServerApp`` / ``ClientApp`` over our integration.

A FAB whose ``[tool.flwr.app.components]`` name ``secagg.fl_core.flower.apps:server_app`` and
``secagg.fl_core.flower.apps:client_app`` runs this module in Flower's ``flwr-serverapp`` and
``flwr-clientapp`` processes (the launcher, :mod:`secagg.fl_core.flower.deployment`, writes such a
FAB; the ``secagg`` package must be installed where those processes run).

* ``server_app`` (Message API): waits for ``clients`` SuperNodes, then runs ``rounds`` rounds of
  :meth:`SecAggWorkflow.run_round` on the nodes ``grid.get_node_ids()`` lists each round, and
  writes every finished round to the JSON file ``result-path`` (run config; see
  :data:`RUN_CONFIG_DEFAULTS`). ``workflow-kwargs`` is a JSON object of extra
  :class:`SecAggWorkflow` keywords (``clip``, ``k``, ``threshold``, ...); ``policy`` and ``keys``
  make it :meth:`SecAggWorkflow.from_policy` (the nodes then name their own ``secagg-policy``).
* ``client_app``: ``mods=[stage_marker_mod, secagg_mod]``; its train handler returns
  :func:`demo_update` of the node's ``partition-id`` (node config) and the round, so whoever
  knows the survivors knows the exact sum. Extra node-config entries reach every mod in
  ``ctxt.node_config`` untouched.

Node config the demo reads (``flower-supernode --node-config``): ``partition-id`` (required);
``marker-dir``: write ``r<round>-s<stage>.in`` when a protocol stage's message arrives and
``.out`` once answered (stage 1 is the round's first message); ``hold-at`` ``"R:S"`` with
``hold-seconds``: on arrival of stage S of round R, write the marker and then wait, a test hook
that lets a test kill the node at a known point in a round.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable
from flwr.serverapp import Grid, ServerApp

from secagg.fl_core.flower._state import RECORD
from secagg.fl_core.flower.mod import secagg_mod
from secagg.fl_core.flower.result import FlowerRound
from secagg.fl_core.flower.workflow import SecAggWorkflow

__all__ = ["RUN_CONFIG_DEFAULTS", "PollingGrid", "client_app", "demo_update", "server_app",
           "stage_marker_mod"]

log = logging.getLogger(__name__)

RUN_CONFIG_DEFAULTS: dict[str, str | int | float] = {
    "result-path": "",
    "protocol": "secagg+",
    "rounds": 2,
    "clients": 3,
    "dim": 64,
    "timeout": 30.0,
    "node-wait": 120.0,
    "poll-interval": 0.1,
    "workflow-kwargs": "{}",
    "policy": "",
    "keys": "",
}
"""Run config of the demo ServerApp (the FAB's ``[tool.flwr.app.config]``): ``timeout`` is
:class:`SecAggWorkflow`'s per-stage timeout, ``node-wait`` how long to wait for ``clients``
nodes, ``poll-interval`` how often a stage polls the SuperLink for replies; ``policy`` (a path)
makes it :meth:`SecAggWorkflow.from_policy` of that file, with ``keys`` the allowlist folder of
client cards (active mode)."""

DEMO_RECORD = "secagg.demo"
"""ConfigRecord (train content) with the round and dimension; MetricRecord (train reply) with the
node's partition id."""


def demo_update(partition_id: int, round_id: int, dim: int) -> npt.NDArray[np.float32]:
    """The update of ``partition_id`` in ``round_id``: multiples of 2^-8 in [-0.5, 0.5), so the
    fixed-point sum at 8 or more fractional bits is exact."""
    rng = np.random.default_rng([partition_id, round_id])
    return (rng.integers(-128, 128, dim) / 256).astype(np.float32)


# -- client ------------------------------------------------------------------------------


def _stage_of(msg: Message, ctxt: Context) -> tuple[int, int] | None:
    """(round, stage) of a protocol message; stage 1 is the round's first message."""
    cfg = msg.content.config_records.get(RECORD)
    phase = cfg.get("phase") if cfg is not None else None
    rnd = cfg.get("round") if cfg is not None else None
    if phase not in ("start", "step") or not isinstance(rnd, int):
        return None
    seen = ctxt.state.config_records.setdefault("secagg.demo.stages", ConfigRecord())
    stage = 1 if phase == "start" else cast(int, seen.get(f"r{rnd}", 1)) + 1
    seen[f"r{rnd}"] = stage
    return rnd, stage


def stage_marker_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """Write per-(round, stage) marker files into ``marker-dir`` and hold at ``hold-at``."""
    where = _stage_of(msg, ctxt)
    folder = ctxt.node_config.get("marker-dir")
    if where is None or not isinstance(folder, str) or not folder:
        return call_next(msg, ctxt)
    rnd, stage = where
    marker = Path(folder) / f"r{rnd}-s{stage}"
    marker.with_suffix(".in").touch()
    if ctxt.node_config.get("hold-at") == f"{rnd}:{stage}":
        time.sleep(float(cast(float, ctxt.node_config.get("hold-seconds", 600.0))))
    reply = call_next(msg, ctxt)
    marker.with_suffix(".out").touch()
    return reply


client_app = ClientApp(mods=[stage_marker_mod, secagg_mod])


@client_app.train()
def _train(msg: Message, ctxt: Context) -> Message:
    pid = int(cast(int, ctxt.node_config["partition-id"]))
    cfg = msg.content.config_records[DEMO_RECORD]
    update = demo_update(pid, int(cast(int, cfg["round"])), int(cast(int, cfg["dim"])))
    return Message(RecordDict({"update": ArrayRecord([update]),
                               DEMO_RECORD: MetricRecord({"partition-id": pid})}), reply_to=msg)


# -- server ------------------------------------------------------------------------------


class PollingGrid(Grid):
    """A ``Grid`` whose ``send_and_receive`` polls for replies every ``interval`` seconds.

    Flower's deployment grid sleeps 3 s between polls, which puts a 3 s floor under every
    ``send_and_receive``; everything else is the wrapped grid's. (:class:`SecAggWorkflow`
    no longer needs it: it pushes and polls itself, :mod:`secagg.fl_core.flower.stage_wait`.)
    """

    def __init__(self, inner: Grid, interval: float) -> None:
        self._inner = inner
        self._interval = interval

    def set_run(self, run: Any) -> None:
        self._inner.set_run(run)

    @property
    def run(self) -> Any:
        return self._inner.run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:
        return self._inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self._inner.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._inner.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        """Push, then pull until every reply is in or ``timeout`` seconds have passed."""
        waiting = set(self.push_messages(messages))
        end = math.inf if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while waiting:
            got = list(self.pull_messages(waiting))
            replies += got
            waiting -= {m.metadata.reply_to_message_id for m in got}
            left = end - time.monotonic()
            if not waiting or left <= 0:
                break
            time.sleep(min(self._interval, left))
        return replies


def _settings(run_config: Any) -> dict[str, Any]:
    """The run config over :data:`RUN_CONFIG_DEFAULTS`, type-checked.

    Raises:
        ValueError: a value of the wrong type, no ``result-path``, bad ``workflow-kwargs``.
    """
    out: dict[str, Any] = {}
    for key, default in RUN_CONFIG_DEFAULTS.items():
        value = run_config.get(key, default)
        kind = float if isinstance(default, float) else type(default)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ValueError(f"run config {key!r} must be {kind.__name__}, got {value!r}")
        out[key] = value
    if not out["result-path"]:
        raise ValueError("run config 'result-path' is empty")
    kwargs = json.loads(out["workflow-kwargs"])
    if not isinstance(kwargs, dict):
        raise ValueError("run config 'workflow-kwargs' must be a JSON object")
    out["workflow-kwargs"] = kwargs
    return out


def _wait_for_nodes(grid: Grid, count: int, seconds: float) -> None:
    end = time.monotonic() + seconds
    while len(list(grid.get_node_ids())) < count:
        if time.monotonic() > end:
            raise TimeoutError(f"fewer than {count} SuperNodes connected within {seconds} s")
        time.sleep(0.2)


def _round_record(rnd: int, res: FlowerRound) -> dict[str, Any]:
    pid_of: dict[int, int] = {}  # protocol id -> partition id (known from the train reply)
    for cid, content in res.fit_replies.items():
        rec = content.metric_records.get(DEMO_RECORD)
        if rec is not None and isinstance(rec.get("partition-id"), int):
            pid_of[cid] = cast(int, rec["partition-id"])
    nodes = {str(res.node_of[c]): pid_of.get(c) for c in res.node_of}
    return {
        "round": rnd, "seconds": res.seconds, "nodes": nodes,
        "survivors": sorted(pid_of[c] for c in res.included if c in pid_of),
        "survivor_nodes": sorted(res.included_nodes),
        "seen_dead": {str(n): t for n, t in sorted(res.seen_dead.items())},
        "weight_total": res.weight_total,
        "aggregate": None if res.aggregate is None else [float(v) for v in res.aggregate],
        "bytes_up": {str(pid_of.get(c, f"node-{res.node_of[c]}")): b
                     for c, b in sorted(res.bytes_up.items())},
        "bytes_down": {str(pid_of.get(c, f"node-{res.node_of[c]}")): b
                       for c, b in sorted(res.bytes_down.items())},
    }


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, path)  # readers never see a half-written file


server_app = ServerApp()


@server_app.main()
def _main(grid: Grid, context: Context) -> None:
    cfg = _settings(context.run_config)
    path = Path(cfg["result-path"])
    doc: dict[str, Any] = {"done": False, "error": None, "protocol": cfg["protocol"],
                           "dim": cfg["dim"], "timeout": cfg["timeout"], "rounds": []}
    try:
        _wait_for_nodes(grid, cfg["clients"], cfg["node-wait"])
        kwargs = {"poll_interval": cfg["poll-interval"], **cfg["workflow-kwargs"]}
        wf = (SecAggWorkflow.from_policy(cfg["policy"], keys=cfg["keys"] or None,
                                         timeout=cfg["timeout"], **kwargs)
              if cfg["policy"] else
              SecAggWorkflow(cfg["protocol"], timeout=cfg["timeout"], **kwargs))
        zeros = np.zeros(cfg["dim"], np.float32)
        for rnd in range(1, cfg["rounds"] + 1):
            nodes = sorted(grid.get_node_ids())
            fit = {nid: RecordDict({"model": ArrayRecord([zeros]), DEMO_RECORD: ConfigRecord(
                {"round": rnd, "dim": cfg["dim"]})}) for nid in nodes}
            res = wf.run_round(grid, fit, round_id=rnd)
            doc["rounds"].append(_round_record(rnd, res))
            log.info("round %d: %d of %d nodes in the sum, %.2f s", rnd, len(res.included),
                     len(nodes), res.seconds)
            _write_json(path, doc)
        doc["done"] = True
    except Exception as exc:
        doc["error"] = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        _write_json(path, doc)
