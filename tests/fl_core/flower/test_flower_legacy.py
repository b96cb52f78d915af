"""A classic Flower app (NumPyClient + FedAvg + DefaultWorkflow) switched to our SecAgg by
the two lines of :mod:`secagg.fl_core.flower`'s docstring, under the Ray simulation engine, in
active mode: each node pins its own policy file and key folder (node config
``secagg-policy``), the workflow reads the same policy and the allowlist. The global model
after each round is the mean of the surviving clients' updates; in round 2 one client's
``fit`` raises (it drops at the first stage and is left out)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import flwr.compat.common.recorddict_compat as compat
import numpy as np
import pytest
from flwr.client import ClientApp, NumPyClient
from flwr.common import Context, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import LegacyContext, ServerApp, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow
from flwr.server.workflow.constant import MAIN_PARAMS_RECORD
from flwr.simulation import run_simulation

from secagg.fl_core.flower import (
    NODE_POLICY_KEY,
    SecAggWorkflow,
    secagg_mod,
    simulation_node_config,
)

from ._nodes import federation

N, SHAPES, ROUNDS, FAILS = 4, [(3, 5), (7,)], 2, (2, 1)
"""Clients, model layout, rounds, (round, partition) whose fit raises."""


def update(pid: int, rnd: int) -> list[np.ndarray]:
    rng = np.random.default_rng([pid, rnd])
    return [rng.uniform(-0.5, 0.5, s).astype(np.float32) for s in SHAPES]


class App(NumPyClient):
    def __init__(self, pid: int) -> None:
        self.pid = pid

    def fit(self, parameters: Any, config: Any) -> tuple[list[np.ndarray], int, dict[str, Any]]:
        rnd = int(config["server_round"])
        if (rnd, self.pid) == FAILS:
            raise RuntimeError("simulated dropout")
        return update(self.pid, rnd), 10, {}


def client_fn(context: Context) -> Any:
    return App(int(context.node_config["partition-id"])).to_client()


SEEN: list[list[np.ndarray]] = []


@pytest.mark.slow
def test_fedavg_app_with_our_secagg(tmp_path: Path) -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    dim = sum(int(np.prod(s)) for s in SHAPES)
    fed = federation(tmp_path, range(1, N + 1),
                     {"protocol": "secagg", "n": N, "min_cohort": N - 1, "clip": 1.0,
                      "dim": dim})
    node_config = simulation_node_config(by_partition={
        cid - 1: {NODE_POLICY_KEY: str(path)} for cid, path in fed.policies.items()})
    strategy = FedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=N,
                      min_available_clients=N, accept_failures=True,
                      on_fit_config_fn=lambda r: {"server_round": r},
                      initial_parameters=ndarrays_to_parameters(
                          [np.zeros(s, np.float32) for s in SHAPES]))
    fit = SecAggWorkflow.from_policy(fed.server_policy, keys=fed.cards, timeout=60.0)

    def recording_fit(grid: Any, context: Any) -> None:
        fit(grid, context)
        params = compat.arrayrecord_to_parameters(
            context.state.array_records[MAIN_PARAMS_RECORD], keep_input=True)
        SEEN.append(parameters_to_ndarrays(params))

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Any, context: Context) -> None:
        legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=ROUNDS),
                               strategy=strategy)
        DefaultWorkflow(fit_workflow=recording_fit)(grid, legacy)

    run_simulation(server_app=server_app,
                   client_app=ClientApp(client_fn=client_fn, mods=[node_config, secagg_mod]),
                   num_supernodes=N,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": 2, "num_gpus": 0,
                                                 "include_dashboard": False,
                                                 "logging_level": "WARNING"}},
                   verbose_logging=False)
    assert len(SEEN) == ROUNDS
    for rnd, got in enumerate(SEEN, start=1):
        live = [p for p in range(N) if (rnd, p) != FAILS]
        assert len(live) == (N - 1 if rnd == FAILS[0] else N)
        for j, s in enumerate(SHAPES):
            want = np.mean([update(p, rnd)[j].astype(np.float64) for p in live], axis=0)
            assert got[j].shape == s
            assert np.max(np.abs(got[j] - want)) < 1e-4
