"""A round that released nothing is not charged, and a server cannot make a released round
look like one (issue 22).

Each party decides by its own view: a client un-charges a round only when it saw the round end
while its participant had not sent its input (:data:`INPUT_PENDING`); the server un-charges
only a round that aborted before it asked for inputs. The adversary below is a server driving
three real client sessions (real fine-tuning task, MiniLM on TREC, DP, real SecAgg+ server
participant): it aborts rounds at every stage, before and after the inputs, and lies about
it. The ledgers must void exactly the rounds whose input never left.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from secagg.fl_core.finetune.client_task import FinetuneClientTask
from secagg.fl_core.finetune.distill_server import DistillServerTask
from secagg.fl_core.finetune.ledger import PrivacyLedger
from secagg.fl_core.finetune.server_task import FinetuneServerTask
from secagg.fl_core.runtime import client_app
from secagg.fl_core.runtime.client_app import ClientSettings
from secagg.fl_core.runtime.policy import policy_digest
from secagg.fl_core.runtime.rounds import control_message, stage_number
from secagg.protocols.harness import create_server
from secagg.protocols.transitions import ServerStage
from secagg.protocols.wire import encode
from tests.fl_core._wire import Wire
from tests.fl_core.finetune.test_ledger import _Federation

IDS = (1, 2, 3)


@pytest.fixture(scope="module")
def fed() -> _Federation:
    return _Federation()


class Cohort:
    """Three real client sessions with ledger files, and the server participant of a round."""

    def __init__(self, fed: _Federation, folder: Path) -> None:
        self.fed = fed
        self.ledgers = {c: PrivacyLedger(fed.job, fed.prep.dp, c, folder / f"c{c}.json")
                        for c in IDS}
        self.wires = {c: Wire(c) for c in IDS}
        prep = fed.prep
        self.sessions = {
            c: client_app._Session(
                self.wires[c], fed.keys[c],  # type: ignore[arg-type]
                FinetuneClientTask(fed.job, c, prep.model, prep.data.client(c), prep.dp,
                                   ledger=self.ledgers[c]),
                ClientSettings(), fed.policy) for c in IDS}

    def charged(self) -> dict[int, list[int]]:
        return {c: json.loads(p.path.read_text())["rounds"]  # type: ignore[union-attr]
                for c, p in self.ledgers.items()}

    def run(self, round_id: int, abort_after: ServerStage | None) -> bool:
        """Start round ``round_id``, drive it honestly, and abort it once the server has
        closed ``abort_after`` (None: run to the end). Returns whether the server saw a
        masked input."""
        start = self.fed.start(round_id)
        ctx = start.context(policy_digest(self.fed.policy.document))
        server = create_server(ctx)
        sent = {c: len(w.sent) for c, w in self.wires.items()}
        for s in self.sessions.values():
            s.on_start(start)
        saw_input = False
        while server.stage is not ServerStage.DONE:
            stage = server.stage
            for c, w in self.wires.items():
                for _, _, raw in w.sent[sent[c]:]:
                    server.receive_data(c, raw)
                sent[c] = len(w.sent)
            saw_input |= stage is ServerStage.MASKED_INPUT and bool(server.received)
            replies = server.close_stage(server.expected - server.received)
            if stage is abort_after:
                for s in self.sessions.values():
                    s.on_control(round_id, memoryview(control_message("abort", round=round_id)))
                return saw_input
            for c, msg in replies.items():
                self.sessions[c].on_protocol(round_id, stage_number(server.stage), encode(msg))
        return saw_input


def test_the_clients_void_exactly_the_rounds_whose_input_never_left(
        fed: _Federation, tmp_path: Path) -> None:
    """The server aborts round 1 after the reveal and round 2 after the share stage (both
    before any input), round 3 after the masked inputs arrived (it has them: a lie that
    "nothing happened" must not void it), round 4 completes. The job has 2 rounds: with the
    voids, rounds 3 and 4 are the two the clients charge; without them (the control: a
    session whose task cannot void) round 3 would already be refused."""
    cohort = Cohort(fed, tmp_path)
    assert not cohort.run(1, ServerStage.REVEAL)
    assert cohort.charged() == {c: [] for c in IDS}
    assert not cohort.run(2, ServerStage.SHARE)
    assert cohort.charged() == {c: [] for c in IDS}
    assert cohort.run(3, ServerStage.MASKED_INPUT)  # the server holds the masked inputs
    assert cohort.charged() == {c: [3] for c in IDS}
    assert cohort.run(4, None)
    assert cohort.charged() == {c: [3, 4] for c in IDS}
    for c, ledger in cohort.ledgers.items():
        assert ledger.voided == [1, 2]
        assert cohort.sessions[c].voided == [1, 2]
        assert ledger.epsilon == pytest.approx(
            PrivacyLedger(fed.job, fed.prep.dp, c).dp.accountant().epsilon(  # type: ignore
                2 * fed.prep.dp.steps_per_round))
    # a replay of a voided round id is still refused (the id stays used)
    before = len(cohort.wires[1].sent)
    cohort.sessions[1].on_start(fed.start(2))
    assert len(cohort.wires[1].sent) == before


def test_control_without_voids_the_aborted_rounds_use_up_the_job(fed: _Federation,
                                                                  tmp_path: Path) -> None:
    """The control: tasks without ``void`` (as before issue 22) stay charged for the two
    rounds aborted before any input, so the 2-round job refuses its first real round."""

    class NoVoid(FinetuneClientTask):
        void = None  # type: ignore[assignment]

    cohort = Cohort(fed, tmp_path)
    for c, s in cohort.sessions.items():
        s.update = NoVoid(fed.job, c, fed.prep.model, fed.prep.data.client(c), fed.prep.dp,
                          ledger=cohort.ledgers[c])
    cohort.run(1, ServerStage.REVEAL)
    cohort.run(2, ServerStage.SHARE)
    assert cohort.charged() == {c: [1, 2] for c in IDS}
    before = {c: len(w.sent) for c, w in cohort.wires.items()}
    for s in cohort.sessions.values():
        s.on_start(fed.start(3))
    assert {c: len(w.sent) for c, w in cohort.wires.items()} == before  # budget spent


def test_a_restarted_client_forgets_nothing_it_voided(fed: _Federation, tmp_path: Path) -> None:
    cohort = Cohort(fed, tmp_path)
    cohort.run(1, ServerStage.SHARE)
    again = PrivacyLedger(fed.job, fed.prep.dp, 1, cohort.ledgers[1].path)
    assert again.rounds == [] and again.voided == [1]
    from secagg.fl_core.finetune.ledger import RoundReplayed

    with pytest.raises(RoundReplayed):
        again.charge(1)


def test_the_server_voids_only_rounds_that_never_asked_for_inputs(fed: _Federation) -> None:
    """The server's accountant: charged at reservation, taken back only for an abort before
    the input stage, never for distillation."""
    prep = fed.prep
    task = FinetuneServerTask(fed.job, prep.model, prep.data, prep.dp, cohort=3)
    task.begin_round(1)
    task.begin_round(2)
    assert task.charged_rounds == 2
    assert not task.void_round(7)  # never charged
    assert task.void_round(1)
    assert not task.void_round(1)  # once
    assert task.charged_rounds == 1
    distill = DistillServerTask.__new__(DistillServerTask)
    distill.__dict__.update(task.__dict__)
    distill.voidable = False
    distill.begin_round(3)
    assert not distill.void_round(3)



def test_a_replayed_round_id_never_voids_the_charge_it_replays(fed: _Federation,
                                                                tmp_path: Path) -> None:
    """The adversary completes round 1, then replays its round start to the same process
    and to a restarted one (a fresh session and task over the same ledger file). Both refuse
    (the ledger's replay rule), and the refusal, a round that ended with nothing sent, must
    not void round 1's charge: a task voids only the charge it made for that very call."""
    cohort = Cohort(fed, tmp_path)
    assert cohort.run(1, None)
    assert cohort.charged()[1] == [1]
    s, wire = cohort.sessions[1], cohort.wires[1]
    before = len(wire.sent)
    s.last_round = 0  # as if the state file were lost: only the ledger stands in the way
    s.on_start(fed.start(1))
    assert len(wire.sent) == before
    restarted, wire2 = fed.session(PrivacyLedger(fed.job, fed.prep.dp, 1,
                                                 cohort.ledgers[1].path))
    restarted.on_start(fed.start(1))
    assert wire2.sent == []
    assert cohort.charged()[1] == [1]
    assert PrivacyLedger(fed.job, fed.prep.dp, 1, cohort.ledgers[1].path).voided == []
