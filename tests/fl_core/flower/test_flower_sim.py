"""Our protocols over Flower's simulation engine (Ray backend), Message API.

One ``run_simulation`` drives several rounds (Ray start-up is paid once): secagg+ with every
client, secagg+ with a client that raises at the masked-input stage, ckks (key setup first)
and ckks+mask. Each round's aggregate must equal the plaintext sum of the survivors.

The nodes here have no policy file: they opt in to trusting the server
(``secagg-insecure``), the passive path of an unpinned ``SecAggWorkflow``. Pinned nodes in
active mode over the same engine: ``test_flower_legacy.py`` and ``test_flower_dp.py``.
"""

from __future__ import annotations

import os
import time
from typing import Any, cast

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation

from secagg.fl_core.flower import (
    NODE_INSECURE_KEY,
    SecAggWorkflow,
    secagg_mod,
    simulation_node_config,
)
from secagg.fl_core.flower._state import RECORD
from secagg.protocols.errors import ThresholdError

N, DIM = 5, 64
FAIL_PID = 2


def update(pid: int, rnd: int) -> np.ndarray:
    return np.random.default_rng([pid, rnd]).uniform(-0.5, 0.5, DIM).astype(np.float32)


FAIL_ROUNDS = {2, 4}


def fail_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """Partition FAIL_PID raises at its second protocol step (it has the shares and must send
    its masked input) in FAIL_ROUNDS: a client that fails, not one that sleeps."""
    cfg = msg.content.config_records.get(RECORD)
    pid = cast(int, ctxt.node_config["partition-id"])
    if cfg is not None and cfg.get("phase") == "step" and pid == FAIL_PID:
        rnd = cast(int, cfg.get("round"))
        seen = ctxt.state.config_records.setdefault("test.steps", ConfigRecord())
        steps = cast(int, seen.get(f"r{rnd}", 0)) + 1
        seen[f"r{rnd}"] = steps
        if rnd in FAIL_ROUNDS and steps == 2:
            raise RuntimeError("simulated dropout: crash before the masked input")
    return call_next(msg, ctxt)


client_app = ClientApp(mods=[simulation_node_config({NODE_INSECURE_KEY: True}), fail_mod,
                             secagg_mod])


@client_app.train()
def train(msg: Message, ctxt: Context) -> Message:
    pid = cast(int, ctxt.node_config["partition-id"])
    rnd = cast(int, msg.content.config_records["cfg"]["round"])
    return Message(RecordDict({"arrays": ArrayRecord([update(pid, rnd)])}), reply_to=msg)


RESULTS: list[dict[str, Any]] = []
REPLAY: list[ThresholdError] = []
PLAN = [("secagg+", 1), ("secagg+", 2), ("ckks", 3), ("ckks+mask", 4), ("secagg", 5),
        ("ckks-hidden", 6)]
"""(workflow, round); "ckks-hidden" is ckks with reveal_ckks_sum=False."""


def workflow(name: str) -> SecAggWorkflow:
    if name == "ckks-hidden":
        return SecAggWorkflow("ckks", clip=1.0, timeout=60.0, reveal_ckks_sum=False)
    return SecAggWorkflow(name, clip=1.0, timeout=60.0)


def make_server() -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        nodes: list[int] = []
        for _ in range(600):  # the simulation registers its nodes after the ServerApp starts
            nodes = sorted(grid.get_node_ids())
            if len(nodes) == N:
                break
            time.sleep(0.1)
        wfs: dict[str, SecAggWorkflow] = {}
        for name, rnd in PLAN:
            wf = wfs.setdefault(name, workflow(name))
            fit = {nid: RecordDict({"arrays": ArrayRecord([np.zeros(DIM, np.float32)]),
                                    "cfg": ConfigRecord({"round": rnd})}) for nid in nodes}
            res = wf.run_round(grid, fit, round_id=rnd)
            RESULTS.append({"name": name, "round": rnd, "res": res})
        # A server that replays a round id gets no second masked input from anyone.
        fit = {nid: RecordDict({"arrays": ArrayRecord([np.zeros(DIM, np.float32)]),
                                "cfg": ConfigRecord({"round": 5})}) for nid in nodes}
        try:
            wfs["secagg"].run_round(grid, fit, round_id=5)
        except ThresholdError as exc:
            REPLAY.append(exc)

    return app


@pytest.mark.slow
def test_protocols_over_flower_simulation() -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    run_simulation(
        server_app=make_server(), client_app=client_app, num_supernodes=N,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                        "init_args": {"num_cpus": 2, "num_gpus": 0, "include_dashboard": False,
                                      "logging_level": "WARNING"}},
        verbose_logging=False)
    assert [(r["name"], r["round"]) for r in RESULTS] == PLAN
    assert len(REPLAY) == 1
    for r in RESULTS:
        name, rnd, res = r["name"], r["round"], r["res"]
        if name == "ckks-hidden":  # the sum stays with the clients
            assert res.aggregate is None and res.included == ()
            continue
        k = len(res.included)
        assert k == (N - 1 if rnd in FAIL_ROUNDS else N), (name, res.included_nodes)
        assert all(res.bytes_up[c] > DIM for c in res.included)  # a masked vector went up
        # The node -> partition map is Flower's: with a failure, the one left out is FAIL_PID.
        pids = [p for p in range(N) if k == N or p != FAIL_PID]
        want = sum(update(p, rnd).astype(np.float64) for p in pids)
        tol = 1e-3 if name.startswith("ckks") else 1e-4
        assert res.aggregate is not None
        assert np.max(np.abs(res.aggregate - want)) < tol, (name, rnd)
