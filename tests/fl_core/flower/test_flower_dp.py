"""Distributed DP over Flower: the node's own noise, the server's accountant.

The nodes are real ``ClientApp``s with ``secagg_mod`` pinned by policy files with a ``[dp]``
table; the server is :class:`SecAggWorkflow` from the same file. Checked: the released sum
carries exactly the calibrated noise (``sigma C`` per coordinate, after the survivors' excess
levels are subtracted; before, ``s/t`` times more), also with a dropout; the epsilon reported is
``secagg run``'s for the same job; the accountant is charged (and written) before a round sends
anything, and a round past the budget sends nothing; a server asking for less noise is refused.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation

from secagg.fl_core.dp import clip_l2, released_noise
from secagg.fl_core.finetune.job import FinetuneJob
from secagg.fl_core.finetune.privacy import resolve_dp
from secagg.fl_core.flower import (
    NODE_POLICY_KEY,
    FederationPolicy,
    FlowerRound,
    PrivacyBudgetExhausted,
    SecAggWorkflow,
    load_node_policy,
    secagg_mod,
    simulation_node_config,
)
from secagg.fl_core.flower._state import RECORD
from secagg.fl_core.flower.ledger import node_ledger
from secagg.fl_core.runtime.policy import PolicyMismatch
from secagg.protocols.errors import ThresholdError

from ._nodes import (
    LocalGrid,
    Node,
    capture,
    federation,
    fit_for,
    phase,
    policy_of,
    record,
    server_side,
    with_record,
    write_policy,
)

__all__ = ["server_side"]  # the fixture, imported for pytest

IDS = (1, 2, 3, 4, 5, 6)
DIM, CLIP, SIGMA = 20_000, 2.0, 0.7
DP: dict[str, Any] = {"clip": CLIP, "noise_multiplier": SIGMA, "rounds": 3, "delta": 1e-5}
PUBLIC: dict[str, Any] = {"protocol": "secagg+", "n": 6, "min_cohort": 5, "dim": DIM, "dp": DP}


def update(cid: int, rnd: int, dim: int) -> np.ndarray:
    """Norms from about 0.5 to 3 times the clip bound: some are clipped."""
    scale = 0.01 * cid
    return np.random.default_rng([cid, rnd]).uniform(-scale, scale, dim).astype(np.float32)


def clipped_sum(ids: tuple[int, ...], rnd: int, dim: int = DIM) -> np.ndarray:
    return sum(clip_l2(update(c, rnd, dim).astype(np.float64), CLIP)[0] for c in ids)


def make_nodes(fed: Any) -> dict[int, Node]:
    return {100 + c: Node(100 + c, {NODE_POLICY_KEY: str(fed.policies[c])}, c, DIM, update)
            for c in IDS}


def noise_ratio(res: FlowerRound, policy: FederationPolicy, rnd: int) -> float:
    """Variance of (released sum - clipped inputs) over the calibrated ``(sigma C)^2``."""
    assert policy.dp is not None and policy.dp.config is not None and res.aggregate is not None
    resid = res.aggregate - clipped_sum(res.included, rnd, res.aggregate.shape[0])
    return float(np.var(resid)) / (policy.dp.config.noise_multiplier * CLIP) ** 2


def raw_ratio(res: FlowerRound, policy: FederationPolicy, rnd: int) -> float:
    """The same before the released levels were subtracted (the control)."""
    assert policy.dp is not None and policy.dp.config is not None and res.aggregate is not None
    cfg = policy.dp.config
    n, t = len(res.node_of), policy.round_config(len(res.node_of)).threshold
    unit = replace(cfg, clip=1.0)
    dim = res.aggregate.shape[0]
    raw = res.aggregate + released_noise(res.released_noise, unit, n, t, dim) * CLIP
    return float(np.var(raw - clipped_sum(res.included, rnd, dim))) / (
        cfg.noise_multiplier * CLIP) ** 2


@pytest.fixture
def fed(tmp_path: Path) -> Any:
    return federation(tmp_path, IDS, PUBLIC)


def test_released_sum_carries_exactly_the_calibrated_noise(fed: Any, server_side: None) -> None:
    policy = FederationPolicy.load(fed.server_policy)
    nodes = make_nodes(fed)
    wf = SecAggWorkflow.from_policy(policy, keys=fed.cards)
    res = wf.run_round(LocalGrid(nodes), fit_for(nodes, DIM), round_id=1)
    assert res.included == IDS and len(res.released_noise) == 6
    assert abs(noise_ratio(res, policy, 1) - 1.0) < 0.1
    assert abs(raw_ratio(res, policy, 1) - 6 / 4) < 0.15  # control: s/t before the release
    steps: dict[int, int] = {}

    def drop_6_before_masked_input(msg: Message) -> Message | None:
        if phase(msg) == "step" and msg.metadata.dst_node_id == 106:
            steps[6] = steps.get(6, 0) + 1
            if steps[6] == 2:
                return None
        return msg

    res = wf.run_round(LocalGrid(nodes, drop_6_before_masked_input), fit_for(nodes, DIM),
                       round_id=2)
    assert res.included == (1, 2, 3, 4, 5)
    assert abs(noise_ratio(res, policy, 2) - 1.0) < 0.1
    assert abs(raw_ratio(res, policy, 2) - 5 / 4) < 0.12
    # the epsilon secagg run reports for the same job after two rounds
    job = FinetuneJob(dp="client", noise="distributed", clip=CLIP, noise_multiplier=SIGMA,
                      epsilon=None, delta=1e-5, rounds=3, num_clients=6)
    cohorts = tuple((m, policy.round_config(m).threshold) for m in (5, 6))
    acc = resolve_dp(job, dim=DIM, sizes=(1,), cohort=6, threshold=4, cohorts=cohorts
                     ).accountant()
    assert acc is not None
    acc.step(2)
    assert res.epsilon == pytest.approx(acc.epsilon(), rel=1e-12)


def test_no_dp_control_sum_is_exact(tmp_path: Path, server_side: None) -> None:
    """The same federation without ``[dp]``: the sum is the plain sum (no clipping, no
    noise)."""
    fed = federation(tmp_path, IDS, {**{k: v for k, v in PUBLIC.items() if k != "dp"},
                                     "clip": 1.0})
    nodes = make_nodes(fed)
    wf = SecAggWorkflow.from_policy(fed.server_policy, keys=fed.cards)
    res = wf.run_round(LocalGrid(nodes), fit_for(nodes, DIM), round_id=1)
    want = sum(update(c, 1, DIM).astype(np.float64) for c in IDS)
    assert res.epsilon is None and np.max(np.abs(res.aggregate - want)) < 1e-3  # type: ignore[operator]


def _weaker_start(tmp_path: Path, fed: Any, nodes: dict[int, Node]) -> Message:
    """The start a server running half the noise sends (its own, self-consistent policy)."""
    weak = write_policy(tmp_path / "weak.json", {**PUBLIC, "dp": {**DP,
                                                               "noise_multiplier": SIGMA / 2}})
    got: list[Message] = []

    def hook(msg: Message) -> Message | None:
        if phase(msg) == "start" and record(msg)["cid"] == 1:
            got.append(msg)
        return None if phase(msg) == "start" else msg

    with pytest.raises(ThresholdError):  # nobody answers the start
        SecAggWorkflow.from_policy(weak, keys=fed.cards).run_round(
            LocalGrid(nodes, hook), fit_for(nodes, DIM), round_id=1)
    return got[0]


DOWNGRADES = [
    ("half the noise in the server's policy", ("policy.dp",),
     lambda m: {"policy": json.dumps({**policy_of(m), "dp": {
         **policy_of(m)["dp"], "noise_multiplier": policy_of(m)["dp"]["noise_multiplier"] / 2}})}),
    ("no DP in the server's policy", ("policy.dp",),
     lambda m: {"policy": json.dumps({**policy_of(m), "dp": None})}),
    ("a server calibrated for half the noise", ("bits", "clip"), None),
]


@pytest.mark.parametrize(("name", "fields", "change"), DOWNGRADES,
                         ids=[d[0] for d in DOWNGRADES])
def test_a_server_asking_for_less_noise_is_refused(fed: Any, tmp_path: Path, server_side: None,
                                                   name: str, fields: tuple[str, ...],
                                                   change: Any) -> None:
    nodes = make_nodes(fed)
    node = nodes[101]
    wf = SecAggWorkflow.from_policy(fed.server_policy, keys=fed.cards)
    captured = capture(wf, nodes, fit_for(nodes, DIM), 1)
    honest = captured[1]
    bad = _weaker_start(tmp_path, fed, nodes) if change is None else with_record(
        honest, **change(honest))
    with pytest.raises(PolicyMismatch) as err:
        node(bad)
    assert err.value.field in fields and node.trained == [] and node.participant is None
    reply = node(honest)  # control
    assert reply.content.config_records[RECORD]["data"] and node.trained == [1]


def test_the_accountant_is_charged_before_a_round_sends_anything(fed: Any, tmp_path: Path,
                                                                 server_side: None) -> None:
    state = tmp_path / "accountant.json"
    nodes = make_nodes(fed)
    wf = SecAggWorkflow.from_policy(fed.server_policy, keys=fed.cards, accountant_file=state)
    steps: list[int] = []

    def crash_at_unmask(msg: Message) -> Message | None:
        if phase(msg) == "step":
            steps.append(1)
            if len(steps) == 4 * len(IDS):  # the server holds every masked input now
                raise RuntimeError("the server process dies")
        return msg

    with pytest.raises(RuntimeError, match="dies"):
        wf.run_round(LocalGrid(nodes, crash_at_unmask), fit_for(nodes, DIM), round_id=1)
    assert json.loads(state.read_text())["accountant"]["steps"] == 1
    restarted = SecAggWorkflow.from_policy(fed.server_policy, keys=fed.cards,
                                           accountant_file=state)
    assert restarted.accountant is not None and restarted.accountant.charged_rounds == 1
    for rnd in (2, 3):  # control: the planned rounds run
        res = restarted.run_round(LocalGrid(nodes), fit_for(nodes, DIM), round_id=rnd)
        assert res.included == IDS
    grid = LocalGrid(nodes)
    with pytest.raises(PrivacyBudgetExhausted, match="planned"):
        restarted.run_round(grid, fit_for(nodes, DIM), round_id=4)
    assert grid.sent == []
    assert all(n.trained == [1, 2, 3] for n in nodes.values())


def test_a_round_past_the_epsilon_budget_is_refused(fed: Any, tmp_path: Path,
                                                    server_side: None) -> None:
    acc = FederationPolicy.load(fed.server_policy).dp.accountant()  # type: ignore[union-attr]
    assert acc is not None
    budget = (acc.epsilon(1) + acc.epsilon(2)) / 2
    path = write_policy(tmp_path / "budget.json", {**PUBLIC, "dp": {**DP,
                                                                  "epsilon_budget": budget}})
    nodes = make_nodes(fed)
    state = tmp_path / "accountant.json"
    wf = SecAggWorkflow.from_policy(path, keys=fed.cards, accountant_file=state)
    res = wf.run_round(LocalGrid(nodes), fit_for(nodes, DIM), round_id=1)  # control
    assert res.epsilon is not None and res.epsilon < budget
    restarted = SecAggWorkflow.from_policy(path, keys=fed.cards, accountant_file=state)
    grid = LocalGrid(nodes)
    with pytest.raises(PrivacyBudgetExhausted, match="exceed"):
        restarted.run_round(grid, fit_for(nodes, DIM), round_id=2)
    assert grid.sent == []  # not even the hello of a server that has not met the nodes


# -- over Flower's simulation engine (Ray) ----------------------------------------------------

SIM_N, SIM_DIM, FAIL_CID = 5, 10_000, 3
SIM_RESULTS: list[FlowerRound] = []


def sim_fail_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """Client FAIL_CID raises in round 2 when it should send its masked input."""
    cfg = msg.content.config_records.get(RECORD)
    pid = cast(int, ctxt.node_config["partition-id"])
    if cfg is not None and cfg.get("phase") == "step" and pid + 1 == FAIL_CID:
        seen = ctxt.state.config_records.setdefault("test.steps", ConfigRecord())
        key = f"r{cfg.get('round')}"
        seen[key] = cast(int, seen.get(key, 0)) + 1
        if cfg.get("round") == 2 and seen[key] == 2:
            raise RuntimeError("simulated dropout before the masked input")
    return call_next(msg, ctxt)


def _sim_apps(policies: dict[int, str], server_policy: str, cards: str
              ) -> tuple[ServerApp, ClientApp]:
    client_app = ClientApp(mods=[
        simulation_node_config(by_partition={cid - 1: {NODE_POLICY_KEY: path}
                                             for cid, path in policies.items()}),
        sim_fail_mod, secagg_mod])

    @client_app.train()
    def train(msg: Message, ctxt: Context) -> Message:
        cid = cast(int, ctxt.node_config["partition-id"]) + 1
        rnd = cast(int, msg.content.config_records["cfg"]["round"])
        return Message(RecordDict({"arrays": ArrayRecord([update(cid, rnd, SIM_DIM)])}),
                       reply_to=msg)

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        nodes: list[int] = []
        for _ in range(600):
            nodes = sorted(grid.get_node_ids())
            if len(nodes) == SIM_N:
                break
            time.sleep(0.1)
        wf = SecAggWorkflow.from_policy(server_policy, keys=cards, timeout=120.0)
        for rnd in (1, 2):
            fit = {nid: RecordDict({"arrays": ArrayRecord([np.zeros(SIM_DIM, np.float32)]),
                                    "cfg": ConfigRecord({"round": rnd})}) for nid in nodes}
            SIM_RESULTS.append(wf.run_round(grid, fit, round_id=rnd))

    return server_app, client_app


@pytest.mark.slow
def test_active_dp_rounds_over_flower_simulation(tmp_path: Path) -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ids = tuple(range(1, SIM_N + 1))
    # min_cohort: the cohort floor of n = 5 with DP (docs/parameters.md#cohort-floor)
    public = {"protocol": "secagg+", "n": SIM_N, "min_cohort": SIM_N, "dim": SIM_DIM,
              "dp": {**DP, "rounds": 2}}
    fed = federation(tmp_path, ids, public)
    server_app, client_app = _sim_apps({c: str(p) for c, p in fed.policies.items()},
                                       str(fed.server_policy), str(fed.cards))
    run_simulation(
        server_app=server_app, client_app=client_app, num_supernodes=SIM_N,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                        "init_args": {"num_cpus": 2, "num_gpus": 0, "include_dashboard": False,
                                      "logging_level": "WARNING"}},
        verbose_logging=False)
    policy = FederationPolicy.load(fed.server_policy)
    assert [r.included for r in SIM_RESULTS] == [ids, tuple(c for c in ids if c != FAIL_CID)]
    for rnd, res in enumerate(SIM_RESULTS, start=1):
        assert abs(noise_ratio(res, policy, rnd) - 1.0) < 0.15, rnd
        # round 1: 5 inputs, threshold 4, level 1 is excess (released, removed); round 2:
        # 4 inputs, nothing is excess and nothing is released
        t = policy.round_config(SIM_N).threshold
        assert bool(res.released_noise) == (len(res.included) > t), rnd
    acc = policy.dp.accountant()  # type: ignore[union-attr]
    assert acc is not None
    acc.step(2)
    assert SIM_RESULTS[-1].epsilon == pytest.approx(acc.epsilon(), rel=1e-12)
    for cid in ids:  # each node's own books, kept by its Ray workers (FAIL_CID too: it
        # dropped after its round-2 start, so that round is charged)
        ledger = node_ledger(load_node_policy(fed.policies[cid]))
        assert ledger is not None and ledger.rounds == [1, 2]
