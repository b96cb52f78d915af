"""The client's own privacy ledger: a server that keeps starting rounds past the job's budget,
or restarts the party and replays round ids it has answered, gets nothing more from it; and a
second ``secagg run`` over the folder of an earlier one is refused before anything starts
(:mod:`secagg.fl_core.finetune.ledger`, :mod:`secagg.fl_core.cli.runner`)."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from secagg.fl_core.cli import runner
from secagg.fl_core.finetune.app import prepare
from secagg.fl_core.finetune.client_task import FinetuneClientTask
from secagg.fl_core.finetune.job import FinetuneJob
from secagg.fl_core.finetune.ledger import (
    BudgetExhausted,
    ChunkAnswers,
    LedgerError,
    PrivacyLedger,
    RoundReplayed,
    chunk_answers_path,
)
from secagg.fl_core.finetune.privacy import ResolvedDp, resolve_dp
from secagg.fl_core.identity.keys import Allowlist, ClientKeys
from secagg.fl_core.runtime import client_app
from secagg.fl_core.runtime.client_app import ClientSettings
from secagg.fl_core.runtime.policy import ClientPolicy, dp_policy
from secagg.fl_core.runtime.rounds import RoundStart
from tests.fl_core._wire import Wire
from tests.fl_core.finetune.test_preflight import refused

JOB = FinetuneJob(num_clients=3, rounds=3, noise_multiplier=1.0, epsilon=None)


def _dp(job: FinetuneJob) -> ResolvedDp:
    return resolve_dp(job, dim=1000, sizes=(400, 400, 400), cohort=3, threshold=3)


def test_the_ledger_refuses_past_the_jobs_rounds_and_remembers(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    ledger = PrivacyLedger(JOB, _dp(JOB), 2, path)
    for r in (1, 2, 4):  # ids may skip (aborted rounds)
        ledger.charge(r)
    for r in (4, 3, 1):  # an id at or below the highest charged: a replay, no retry exemption
        with pytest.raises(RoundReplayed, match=f"round {r} refused: already charged"):
            ledger.charge(r)
    assert ledger.rounds == [1, 2, 4]
    with pytest.raises(BudgetExhausted, match="all 3 rounds"):
        ledger.charge(5)
    # a restarted party reads its file and still refuses
    again = PrivacyLedger(JOB, _dp(JOB), 2, path)
    assert again.rounds == [1, 2, 4]
    with pytest.raises(BudgetExhausted):
        again.charge(6)
    with pytest.raises(RoundReplayed):  # across processes too
        again.charge(4)
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


def test_without_dp_no_budget_binds_but_replays_are_refused(tmp_path: Path) -> None:
    """No DP, no budget; but a replayed round id would release a second update of the same
    round (bit-identical: the non-private batch order is public), so it is refused."""
    job = replace(JOB, dp="none", noise_multiplier=None)
    path = tmp_path / "ledger.json"
    ledger = PrivacyLedger(job, _dp(job), 1, path)
    for r in range(1, 10):
        ledger.charge(r)
    assert ledger.rounds == list(range(1, 10)) and ledger.epsilon == 0.0
    with pytest.raises(RoundReplayed):
        PrivacyLedger(job, _dp(job), 1, path).charge(9)


def test_chunk_answers_persist_and_bind_job_and_party(tmp_path: Path) -> None:
    ledger = tmp_path / "client-2.ledger.json"
    path = chunk_answers_path(ledger)
    assert path == tmp_path / "client-2.chunks.json"
    answers = ChunkAnswers(JOB, 2, path)
    assert answers.last == -1 and not path.exists()
    answers.record(0)
    answers.record(3)
    with pytest.raises(RoundReplayed, match="step 3 replayed"):
        answers.record(3)
    again = ChunkAnswers(JOB, 2, path)  # a restarted party
    assert again.last == 3
    with pytest.raises(RoundReplayed):
        again.record(1)
    with pytest.raises(LedgerError, match="another job or party"):
        ChunkAnswers(JOB, 1, path)
    with pytest.raises(LedgerError, match="another job or party"):
        ChunkAnswers(replace(JOB, rounds=4), 2, path)
    path.write_text(json.dumps({"job": JOB.digest, "client": 2, "last_step": "x"}))
    with pytest.raises(LedgerError, match="cannot read"):
        ChunkAnswers(JOB, 2, path)


class _Federation:
    """A 2-round DP job (MiniLM, TREC) and client 1's pinned policy: what a malicious server
    drives the real client session of party 1 with."""

    def __init__(self) -> None:
        self.job = FinetuneJob(num_clients=3, rounds=2, noise_multiplier=1.0, epsilon=None,
                               records_per_round=12, eval_size=16, max_length=12)
        self.prep = prepare(self.job, protocol="secagg+", n=3, active=True)
        self.keys = {c: ClientKeys.generate(c) for c in (1, 2, 3)}
        allow = Allowlist(k.card for k in self.keys.values())
        self.vks = {c: card.identity for c, card in allow.items()}
        self.policy = ClientPolicy(config_args=self.prep.config_args, dim=self.prep.dim,
                                   verify_keys=self.vks, dp=dp_policy(self.prep.dp),
                                   min_round_interval_s=1e-6, round_burst=100)

    def session(self, ledger: PrivacyLedger, state_file: Path | None = None
                ) -> tuple[client_app._Session, Wire]:
        """A fresh client process: a new session and task over the same files."""
        prep = self.prep
        task = FinetuneClientTask(self.job, 1, prep.model, prep.data.client(1), prep.dp,
                                  ledger=ledger)
        wire = Wire(1)
        s = client_app._Session(wire, self.keys[1], task,  # type: ignore[arg-type]
                                ClientSettings(state_file=state_file), self.policy)
        if state_file is not None and state_file.exists():  # as run_client does at start
            s.last_round, seen = client_app.load_round(state_file)
            s.clock.advance(s.last_round, seen)
        return s, wire

    def start(self, round_id: int) -> RoundStart:
        prep = self.prep
        return RoundStart(round_id=round_id, step=round_id - 1, first_stage=1,
                          config=prep.config_args, dim=prep.dim, clients=(1, 2, 3),
                          verify_keys={c: vk.to_bytes() for c, vk in self.vks.items()},
                          state=prep.model.get_vector().astype(np.float64),
                          policy=self.policy.document)

    def answered(self, s: client_app._Session, wire: Wire, rounds: list[int]) -> list[int]:
        """The round ids among ``rounds`` the session released a contribution into. Each
        answered round is taken to go on past the input stage (as if the server drove it
        there, which :mod:`tests.fl_core.finetune.test_void_rounds_adversary` does with the
        real stages): a round that ended before would be voided (issue 22) and is not what
        these attacks are about."""
        out = []
        for r in rounds:
            before = len(wire.sent)
            s.on_start(self.start(r))
            if len(wire.sent) > before:
                s.input_sent = True
                out.append(r)
        return out


@pytest.fixture(scope="module")
def fed() -> _Federation:
    return _Federation()


def test_a_server_running_past_the_budget_gets_nothing(fed: _Federation,
                                                       tmp_path: Path) -> None:
    """The adversary: a server that keeps starting well-formed rounds after the job's 2
    rounds (with ``--noise-multiplier`` fixed every per-round policy check passes). The real
    client session with the real fine-tuning task (MiniLM, TREC, DP) answers 2 rounds and
    then sends nothing, also after a restart from its ledger file."""
    job, dp = fed.job, fed.prep.dp
    ledger_file = tmp_path / "client-1.ledger.json"
    s, wire = fed.session(PrivacyLedger(job, dp, 1, ledger_file))
    # rounds 3 and 4: refused before any noised value existed
    assert fed.answered(s, wire, [1, 2, 3, 4]) == [1, 2]
    assert json.loads(ledger_file.read_text())["rounds"] == [1, 2]
    # a restarted party (a fresh session and task over the same ledger file)
    s2, wire2 = fed.session(PrivacyLedger(job, dp, 1, ledger_file))
    s2.on_start(fed.start(5))
    assert wire2.sent == []
    # the control: a fresh ledger (another run) answers
    ledger_file.unlink()
    s3, wire3 = fed.session(PrivacyLedger(job, dp, 1, ledger_file))
    s3.on_start(fed.start(6))
    assert wire3.sent and wire3.sent[0][0] == 6


class _RetryExemptLedger(PrivacyLedger):
    """The ledger before issue 21: a round id it has charged is taken for a retry of the same
    release and charged nothing (the control: the defence switched off)."""

    def charge(self, round_id: int) -> None:
        if round_id not in self.rounds:
            super().charge(round_id)


@pytest.mark.parametrize("defence", ["none", "ledger", "state"])
def test_a_restarted_client_releases_nothing_into_replayed_round_ids(
        fed: _Federation, tmp_path: Path, defence: str) -> None:
    """Issue 21, attack 3. The adversary: a server that runs the job's 2 rounds, then restarts
    the party 3 times (a fresh session, task and ledger over the same files, as a restarted
    ``secagg client`` process) and each time replays round ids 1 and 2, with the same global
    state and well-formed round starts.

    - ``none`` (the control: the old retry exemption, no ``--state``, which is how ``secagg
      run`` started clients): 8 noised releases of a 2-round job, and the ledger file lists
      [1, 2];
    - ``ledger``: the ledger refuses any id at or below the highest it charged, whatever
      process charged it (the library path: a client without a state file);
    - ``state``: the client's state file (``secagg run`` now passes ``--state``) refuses
      the replays even with the old ledger.
    """
    job, dp = fed.job, fed.prep.dp
    ledger_file, state = tmp_path / "client-1.ledger.json", tmp_path / "client-1.state"
    kind = _RetryExemptLedger if defence in ("none", "state") else PrivacyLedger
    state_file = state if defence == "state" else None
    released = []
    for _ in range(4):  # the first process, then 3 restarts
        s, wire = fed.session(kind(job, dp, 1, ledger_file), state_file)
        released += fed.answered(s, wire, [1, 2])
    assert json.loads(ledger_file.read_text())["rounds"] == [1, 2]
    if defence == "none":
        assert released == [1, 2] * 4  # the attack succeeds: 8 releases, 2 charged
    else:
        assert released == [1, 2]


def _run_ns(checkpoint: Path) -> argparse.Namespace:
    return argparse.Namespace(protocol="secagg+", n=3, keys="keys", dim=None, job="job.json",
                              insecure=False, join_timeout=10.0, deadline=5.0, min_clients=2,
                              checkpoint=str(checkpoint))


def test_a_second_run_sharing_the_folder_releases_nothing_twice(tmp_path: Path) -> None:
    """Issue 21, attack 3 without an attacker: ``secagg run --checkpoint DIR/c1``, then the
    same job with ``--checkpoint DIR/c2``. Both runs give client 1 the same ledger and state
    files (they live in the run folder, beside the checkpoint), so the second run's round 1 is
    a replay: the ledger refuses it, and ``secagg run`` refuses the second run before any
    process starts."""
    folder = tmp_path / "DIR"
    folder.mkdir()
    cmds = [runner._client_cmd(_run_ns(folder / c), "tcp://127.0.0.1:1", 1) for c in ("c1", "c2")]
    for cmd in cmds:
        assert cmd[cmd.index("--state") + 1] == str(folder / "client-1.state")
    ledger_file = Path(cmds[0][cmds[0].index("--ledger") + 1])
    assert cmds[1][cmds[1].index("--ledger") + 1] == str(ledger_file)
    PrivacyLedger(JOB, _dp(JOB), 1, ledger_file).charge(1)  # the first run's round 1
    with pytest.raises(RoundReplayed):  # the second run's round 1, over the shared file
        PrivacyLedger(JOB, _dp(JOB), 1, ledger_file).charge(1)
    line = refused(tmp_path, "--checkpoint", "DIR/c2")
    assert "holds the clients' books of an earlier run (client-1.ledger.json)" in line
    assert "--resume DIR" in line
    assert not (folder / "c2").exists()
