"""The client's own privacy ledger: a server that keeps starting rounds past the job's budget
gets nothing from the party, across restarts too (:mod:`secagg.fl_core.finetune.ledger`)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from secagg.fl_core.finetune.app import prepare
from secagg.fl_core.finetune.client_task import FinetuneClientTask
from secagg.fl_core.finetune.job import FinetuneJob
from secagg.fl_core.finetune.ledger import BudgetExhausted, LedgerError, PrivacyLedger
from secagg.fl_core.finetune.privacy import ResolvedDp, resolve_dp
from secagg.fl_core.identity.keys import Allowlist, ClientKeys
from secagg.fl_core.runtime import client_app
from secagg.fl_core.runtime.client_app import ClientSettings
from secagg.fl_core.runtime.policy import ClientPolicy, dp_policy
from secagg.fl_core.runtime.rounds import RoundStart
from tests.fl_core._wire import Wire

JOB = FinetuneJob(num_clients=3, rounds=3, noise_multiplier=1.0, epsilon=None)


def _dp(job: FinetuneJob) -> ResolvedDp:
    return resolve_dp(job, dim=1000, sizes=(400, 400, 400), cohort=3, threshold=3)


def test_the_ledger_refuses_past_the_jobs_rounds_and_remembers(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    ledger = PrivacyLedger(JOB, _dp(JOB), 2, path)
    for r in (1, 2, 4):  # ids may skip (aborted rounds)
        ledger.charge(r)
    ledger.charge(4)  # the same round again (a retried call) is not charged twice
    assert ledger.rounds == [1, 2, 4]
    with pytest.raises(BudgetExhausted, match="all 3 rounds"):
        ledger.charge(5)
    # a restarted party reads its file and still refuses
    again = PrivacyLedger(JOB, _dp(JOB), 2, path)
    assert again.rounds == [1, 2, 4]
    with pytest.raises(BudgetExhausted):
        again.charge(6)
    # the file binds job and party
    with pytest.raises(LedgerError, match="another job or party"):
        PrivacyLedger(JOB, _dp(JOB), 3, path)
    other = replace(JOB, rounds=4)
    with pytest.raises(LedgerError, match="another job or party"):
        PrivacyLedger(other, _dp(other), 2, path)
    path.write_text("{broken")
    with pytest.raises(LedgerError, match="cannot read"):
        PrivacyLedger(JOB, _dp(JOB), 2, path)


def test_the_ledger_epsilon_is_the_servers_and_the_budget_binds() -> None:
    job = replace(JOB, rounds=10, epsilon_budget=None)
    dp = _dp(job)
    acc = dp.accountant()
    assert acc is not None
    eps = [acc.epsilon(k) for k in range(1, 5)]
    budget = (eps[1] + eps[2]) / 2  # two rounds fit, three do not
    ledger = PrivacyLedger(replace(job, epsilon_budget=budget), dp, 1)
    ledger.charge(1)
    ledger.charge(2)
    assert ledger.epsilon == pytest.approx(eps[1])
    with pytest.raises(BudgetExhausted, match="would exceed epsilon"):
        ledger.charge(3)
    assert ledger.rounds == [1, 2]


def test_without_dp_nothing_is_refused() -> None:
    job = replace(JOB, dp="none", noise_multiplier=None)
    ledger = PrivacyLedger(job, _dp(job), 1)
    for r in range(1, 10):
        ledger.charge(r)
    assert ledger.rounds == [] and ledger.epsilon == 0.0


def test_a_server_running_past_the_budget_gets_nothing(tmp_path: Path) -> None:
    """The adversary: a server that keeps starting well-formed rounds after the job's 2
    rounds (with ``--noise-multiplier`` fixed every per-round policy check passes). The real
    client session with the real fine-tuning task (MiniLM, TREC, DP) answers 2 rounds and
    then sends nothing, also after a restart from its ledger file."""
    job = FinetuneJob(num_clients=3, rounds=2, noise_multiplier=1.0, epsilon=None,
                      records_per_round=12, eval_size=16, max_length=12)
    prep = prepare(job, protocol="secagg+", n=3, active=True)
    keys = {c: ClientKeys.generate(c) for c in (1, 2, 3)}
    allow = Allowlist(k.card for k in keys.values())
    vks = {c: card.identity for c, card in allow.items()}
    policy = ClientPolicy(config_args=prep.config_args, dim=prep.dim, verify_keys=vks,
                          dp=dp_policy(prep.dp), min_round_interval_s=1e-6, round_burst=100)
    ledger_file = tmp_path / "client-1.ledger.json"

    def session() -> tuple[client_app._Session, Wire]:
        task = FinetuneClientTask(job, 1, prep.model, prep.data.client(1), prep.dp,
                                  ledger=PrivacyLedger(job, prep.dp, 1, ledger_file))
        wire = Wire(1)
        s = client_app._Session(wire, keys[1], task, ClientSettings(), policy)  # type: ignore[arg-type]
        return s, wire

    def start(round_id: int) -> RoundStart:
        return RoundStart(round_id=round_id, step=round_id - 1, first_stage=1,
                          config=prep.config_args, dim=prep.dim, clients=(1, 2, 3),
                          verify_keys={c: vk.to_bytes() for c, vk in vks.items()},
                          state=prep.model.get_vector().astype(np.float64),
                          policy=policy.document)

    s, wire = session()
    answered: list[int] = []
    for r in (1, 2, 3, 4):
        before = len(wire.sent)
        s.on_start(start(r))
        if len(wire.sent) > before:
            answered.append(r)
    assert answered == [1, 2]  # rounds 3 and 4: refused before any noised value existed
    assert json.loads(ledger_file.read_text())["rounds"] == [1, 2]
    # a restarted party (a fresh session and task over the same ledger file)
    s2, wire2 = session()
    s2.on_start(start(5))
    assert wire2.sent == []
    # the control: a fresh ledger (another run) answers
    ledger_file.unlink()
    s3, wire3 = session()
    s3.on_start(start(6))
    assert wire3.sent and wire3.sent[0][0] == 6
