"""A Flower server that keeps fresh books: each node's own privacy ledger (issue 21, attack 2).

The adversary starts a fresh ``SecAggWorkflow`` (a fresh accountant, no accountant file) for
every one of 12 rounds, against nodes whose policy plans 3 DP rounds: its own accountant never
stops it. The nodes are real ``ClientApp``s with ``secagg_mod``, pinned by policy files whose
``[dp]`` table comes with their ledger file (``ledger``). Checked: the nodes answer rounds 1-3
and release nothing in rounds 4-12 (their app does not even train); each ledger spends exactly
the epsilon its policy promises; restarted nodes (new objects, same files) still refuse, and
refuse a round id they charged before even without a ``state`` file; the ledger is saved
before the app trains; an epsilon budget binds; a DP policy without a ledger is refused; a
ledger of another node or policy is refused. Controls: with the ledger switched off (the code
before it) the same server gets every round, each node spending epsilon 34.6 where its policy
promises 13.95, and a restarted node answers a replayed round id.
"""

from __future__ import annotations

import json
import shutil
import stat
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Message

from secagg.fl_core.flower import (
    NODE_POLICY_KEY,
    FederationPolicy,
    NodePolicyError,
    SecAggWorkflow,
    load_node_policy,
)
from secagg.fl_core.flower.ledger import (
    BudgetExhausted,
    LedgerError,
    charge_node_ledger,
    node_ledger,
)
from secagg.fl_core.runtime.policy import PolicyMismatch
from secagg.protocols.errors import ThresholdError

from ._nodes import (
    LEDGER,
    LocalGrid,
    Node,
    default_update,
    federation,
    fit_for,
    phase,
    record,
    server_side,
    write_policy,
)

__all__ = ["server_side"]  # the fixture, imported for pytest

IDS = (1, 2, 3, 4, 5, 6)
DIM = 2_000
DP: dict[str, Any] = {"clip": 2.0, "noise_multiplier": 0.7, "rounds": 3, "delta": 1e-5}
PUBLIC: dict[str, Any] = {"protocol": "secagg+", "n": 6, "min_cohort": 5, "dim": DIM, "dp": DP}
NODE_IDS = {cid: 8_000 + cid for cid in IDS}


@pytest.fixture
def fed(tmp_path: Path) -> Any:
    return federation(tmp_path, IDS, PUBLIC)


def make_nodes(fed: Any, update: Callable[[int, int, int], np.ndarray] = default_update
               ) -> dict[int, Node]:
    """Fresh SuperNodes (a restart: new objects and Contexts, the same files)."""
    return {NODE_IDS[c]: Node(NODE_IDS[c], {NODE_POLICY_KEY: str(fed.policies[c])}, c, DIM,
                              update) for c in IDS}


class WatchingGrid(LocalGrid):
    """:class:`LocalGrid` that records, per round, the protocol ids whose start was answered
    (an answered start carries the node's first message: it has trained and, with DP, noised
    its update)."""

    def __init__(self, nodes: Mapping[int, Node], released: dict[int, set[int]]) -> None:
        super().__init__(nodes)
        self.released = released

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None
                         ) -> list[Message]:
        messages = list(messages)
        replies = super().send_and_receive(messages, timeout=timeout)
        for msg, reply in zip(messages, replies, strict=True):  # no hook: nothing dropped
            if phase(msg) == "start" and not reply.has_error():
                rec = record(msg)
                self.released.setdefault(int(rec["round"]), set()).add(int(rec["cid"]))
        return replies


def fresh_books_server(fed: Any, nodes: Mapping[int, Node], rounds: Iterable[int]
                       ) -> dict[int, set[int]]:
    """The attack: a fresh workflow (fresh accountant, no file) for every round. Returns the
    protocol ids that released into each round."""
    released: dict[int, set[int]] = {}
    for rnd in rounds:
        wf = SecAggWorkflow.from_policy(fed.server_policy, keys=fed.cards)
        assert wf.accountant is not None and wf.accountant.charged_rounds == 0
        try:
            wf.run_round(WatchingGrid(nodes, released), fit_for(nodes, DIM), round_id=rnd)
        except ThresholdError:  # every node refused
            pass
    return released


def epsilon_after(rounds: int, policy: Path | Mapping[str, Any]) -> float:
    """The accountant's epsilon after ``rounds`` rounds of ``policy``'s mechanism."""
    fp = (FederationPolicy.load(policy) if isinstance(policy, Path)
          else FederationPolicy.from_mapping(policy))
    assert fp.dp is not None
    acc = fp.dp.accountant()
    assert acc is not None
    return acc.epsilon(rounds * fp.dp.steps_per_round)


def ledger_of(fed: Any, cid: int) -> Any:
    got = node_ledger(load_node_policy(fed.policies[cid]))
    assert got is not None
    return got


def test_a_server_with_fresh_books_each_round_gets_only_the_planned_rounds(
        fed: Any, server_side: None) -> None:
    promise = epsilon_after(3, fed.server_policy)
    assert promise == pytest.approx(13.95, abs=0.01)
    nodes = make_nodes(fed)
    released = fresh_books_server(fed, nodes, range(1, 13))
    assert released == {rnd: set(IDS) for rnd in (1, 2, 3)}  # nothing in rounds 4-12
    for node in nodes.values():
        assert node.trained == [1, 2, 3]
        assert len(node.errors) == 9
        assert all(isinstance(e, BudgetExhausted) for e in node.errors)
        ledger = ledger_of(fed, node.cid)
        assert ledger.rounds == [1, 2, 3]
        assert ledger.epsilon == pytest.approx(promise, rel=1e-12)
        path = fed.policies[node.cid].parent / LEDGER
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    restarted = make_nodes(fed)  # new processes, the same ledger files
    assert fresh_books_server(fed, restarted, (13, 14)) == {}
    for node in restarted.values():
        assert node.trained == []
        assert all(isinstance(e, BudgetExhausted) for e in node.errors)
        assert ledger_of(fed, node.cid).rounds == [1, 2, 3]


def test_control_without_the_ledger_the_server_gets_every_round(
        fed: Any, server_side: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("secagg.fl_core.flower.mod.charge_node_ledger",
                        lambda node, round_id: None)  # the code before the ledger
    nodes = make_nodes(fed)
    assert fresh_books_server(fed, nodes, range(1, 13)) == {
        rnd: set(IDS) for rnd in range(1, 13)}
    assert all(n.trained == list(range(1, 13)) and n.errors == [] for n in nodes.values())
    spent, promise = epsilon_after(12, fed.server_policy), epsilon_after(3, fed.server_policy)
    assert spent == pytest.approx(34.60, abs=0.01) and promise == pytest.approx(13.95, abs=0.01)


def test_a_replayed_round_id_is_refused_after_a_restart(fed: Any, server_side: None) -> None:
    assert "state" not in json.loads(fed.policies[1].read_text())  # no round-id state file
    assert fresh_books_server(fed, make_nodes(fed), (1, 2)) == {1: set(IDS), 2: set(IDS)}
    restarted = make_nodes(fed)
    assert fresh_books_server(fed, restarted, (2, 1)) == {}
    for node in restarted.values():
        assert node.trained == [] and len(node.errors) == 2
        assert all(isinstance(e, PolicyMismatch) and e.field == "round_id"
                   for e in node.errors)
    assert fresh_books_server(fed, restarted, (3,)) == {3: set(IDS)}  # control: budget left
    assert ledger_of(fed, 1).rounds == [1, 2, 3]


def test_control_without_the_ledger_a_restarted_node_answers_a_replayed_round(
        fed: Any, server_side: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("secagg.fl_core.flower.mod.charge_node_ledger",
                        lambda node, round_id: None)
    assert fresh_books_server(fed, make_nodes(fed), (1, 2)) == {1: set(IDS), 2: set(IDS)}
    restarted = make_nodes(fed)
    assert fresh_books_server(fed, restarted, (2,)) == {2: set(IDS)}
    assert all(n.trained == [2] for n in restarted.values())


def test_the_ledger_is_saved_before_the_app_trains(fed: Any, server_side: None) -> None:
    seen: dict[tuple[int, int], list[int]] = {}

    def update(cid: int, rnd: int, dim: int) -> np.ndarray:
        doc = json.loads((fed.policies[cid].parent / LEDGER).read_text())
        seen[cid, rnd] = doc["rounds"]
        if (cid, rnd) == (1, 2):
            raise RuntimeError("the app crashes")
        return default_update(cid, rnd, dim)

    nodes = make_nodes(fed, update)
    released = fresh_books_server(fed, nodes, (1, 2))
    assert released[1] == set(IDS) and 1 not in released[2]
    assert all(seen[c, 1] == [1] and seen[c, 2] == [1, 2] for c in IDS)
    assert ledger_of(fed, 1).rounds == [1, 2]  # a round whose app failed stays charged


def test_the_nodes_epsilon_budget_binds(tmp_path: Path, server_side: None) -> None:
    budget = (epsilon_after(1, PUBLIC) + epsilon_after(2, PUBLIC)) / 2
    fed = federation(tmp_path, IDS, {**PUBLIC, "dp": {**DP, "epsilon_budget": budget}})
    nodes = make_nodes(fed)
    assert fresh_books_server(fed, nodes, (1, 2, 3)) == {1: set(IDS)}
    for node in nodes.values():
        assert node.trained == [1] and len(node.errors) == 2
        assert all(isinstance(e, BudgetExhausted) and "exceed" in str(e) for e in node.errors)
        assert ledger_of(fed, node.cid).epsilon < budget


def test_a_dp_node_without_a_ledger_refuses_every_round(tmp_path: Path,
                                                        server_side: None) -> None:
    fed = federation(tmp_path, IDS, PUBLIC, ledger=False)
    with pytest.raises(NodePolicyError, match="ledger"):
        load_node_policy(fed.policies[1])
    nodes = make_nodes(fed)
    with pytest.raises(ThresholdError):
        SecAggWorkflow.from_policy(fed.server_policy, keys=fed.cards).run_round(
            LocalGrid(nodes), fit_for(nodes, DIM), round_id=1)
    for node in nodes.values():
        assert node.trained == [] and node.errors
        assert all(isinstance(e, NodePolicyError) and "ledger" in str(e) for e in node.errors)
    for cid, path in fed.policies.items():  # control: the operator names a ledger
        write_policy(path, {**json.loads(path.read_text()), "ledger": LEDGER})
    assert fresh_books_server(fed, make_nodes(fed), (1,)) == {1: set(IDS)}


def test_a_ledger_of_another_node_or_policy_is_refused(fed: Any, server_side: None) -> None:
    assert fresh_books_server(fed, make_nodes(fed), (1,)) == {1: set(IDS)}
    own, other = (fed.policies[c].parent / LEDGER for c in (1, 2))
    saved = own.read_bytes()
    shutil.copy(other, own)  # node 2's ledger in node 1's place
    nodes = make_nodes(fed)
    assert fresh_books_server(fed, nodes, (2,)) == {2: set(IDS) - {1}}
    assert [type(e) for e in nodes[NODE_IDS[1]].errors] == [LedgerError]
    own.write_bytes(saved)
    doc = json.loads(fed.policies[1].read_text())
    changed = write_policy(fed.policies[1].parent / "changed.json",
                           {**doc, "min_cohort": 6})  # the same [dp] table, another policy
    with pytest.raises(LedgerError, match="another"):
        charge_node_ledger(load_node_policy(changed), 3)
    ledger = charge_node_ledger(load_node_policy(fed.policies[1]), 3)  # control
    assert ledger is not None and ledger.rounds == [1, 3]
