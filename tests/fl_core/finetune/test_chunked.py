"""Chunked full weights (pretrain ``--adapter full``): the chunk layout, in-place chunk access
on a real model, the at-most-once rule of the client against a replaying server (driving the
real client task), also across restarts (issue 21, attack 4), fresh training randomness, and a
whole training round of chunks through the real SecAgg+ protocol in process: the server's new
weights are the old ones plus the clients' mean update."""

from __future__ import annotations

import itertools
import json
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secagg.fl_core.finetune import chunked, pretrain
from secagg.fl_core.finetune.chunked import (
    ChunkedClientTask,
    ChunkedServerTask,
    ChunkLayout,
    ChunkRefused,
    ModelChunks,
    chunk_functionals,
)
from secagg.fl_core.finetune.job import FinetuneJob
from secagg.fl_core.finetune.ledger import ChunkAnswers, PrivacyLedger, chunk_answers_path
from secagg.fl_core.finetune.party import JobData
from secagg.fl_core.finetune.privacy import resolve_dp
from secagg.fl_core.runtime.client_app import RoundAwareUpdate, StepAwareUpdate
from secagg.fl_core.runtime.driver import RoundOutcome
from secagg.models import AdapterConfig, TaskKind, TextData, build_model
from secagg.protocols import SecAggConfig, run_round

DOCS = TextData("docs", tuple(f"Patient {i} took {i % 7 + 1} mg and felt {w} after it."
                              for i, w in enumerate(["better", "worse", "dizzy", "fine"] * 4)))


@given(dim=st.integers(1, 10_000), chunk=st.integers(1, 3_000), step=st.integers(0, 200))
def test_layout_partitions_the_vector_and_names_each_step(dim: int, chunk: int,
                                                          step: int) -> None:
    lay = ChunkLayout(dim, chunk)
    k_total = lay.chunks
    assert (k_total - 1) * chunk < dim <= k_total * chunk
    spans = [lay.span(k) for k in range(k_total)]
    assert spans[0][0] == 0 and spans[-1][1] == dim
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
    r, k = lay.position(step)
    assert r * k_total + k == step and 0 <= k < k_total
    # the state of step j+1 is the chunk step j updated, in the global after its round
    assert lay.broadcast_of(step + 1) == (r + 1, k)
    assert lay.broadcast_of(0) == (0, k_total - 1)
    last = lay.span(k_total - 1)
    padded = lay.pad(np.ones(last[1] - last[0]))
    assert padded.shape == (chunk,) and padded.sum() == last[1] - last[0]


def test_layout_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        ChunkLayout(0, 4)
    with pytest.raises(ValueError):
        ChunkLayout(10, 4).span(3)
    with pytest.raises(ValueError):
        ChunkLayout(10, 4).position(-1)


@pytest.fixture(scope="module")
def smol_full() -> tuple:  # type: ignore[type-arg]
    """Three identically initialised SmolLM2 full-weight models (server, client 1, client 2)."""
    return tuple(build_model("smollm2", task=TaskKind.CAUSAL_LM, adapter=AdapterConfig.full(),
                             init_seed=0) for _ in range(3))


JOB = FinetuneJob(model="smollm2", data="unused", adapter="full", objective="pretrain",
                  dp="none", num_clients=2, local_steps=1, batch_size=2, max_length=16,
                  lr=1e-4, chunk_size=48_000_000, eval_size=4)


def test_model_chunks_read_and_write_in_place(smol_full: tuple) -> None:  # type: ignore[type-arg]
    model = smol_full[0]
    lay = ChunkLayout(model.num_trainable, 50_000_000)
    chunks = ModelChunks(model, lay)
    before = model.get_vector()
    assert np.array_equal(np.concatenate([chunks.read(k) for k in range(lay.chunks)]), before)
    a, b = lay.span(1)
    chunks.write(1, np.full(b - a, 0.25, dtype=np.float32))
    after = model.get_vector()
    assert np.all(after[a:b] == 0.25)
    assert np.array_equal(after[:a], before[:a]) and np.array_equal(after[b:], before[b:])
    chunks.write(1, before[a:b])
    assert np.array_equal(model.get_vector(), before)
    with pytest.raises(ValueError, match="non-finite"):
        chunks.write(0, np.full(lay.chunk_size, np.nan))


def _client(model, cid: int) -> ChunkedClientTask:  # type: ignore[no-untyped-def]
    return ChunkedClientTask(JOB, cid, model, DOCS.subset(np.arange(cid - 1, 16, 2)),
                             chunk_size=JOB.chunk_size, protocol_clip=1.0, protocol_scale=20)


def test_client_answers_each_chunk_once_and_refuses_a_replaying_server(
        smol_full: tuple) -> None:  # type: ignore[type-arg]
    _, model, _ = smol_full
    start = model.get_vector()
    client = _client(model, 1)
    assert isinstance(client, StepAwareUpdate) and not isinstance(client, RoundAwareUpdate)
    lay = client.layout
    chunks = ModelChunks(model, lay)
    k_total = lay.chunks
    init_last = lay.pad(start[lay.span(k_total - 1)[0]:])
    out0 = client.for_step(1, 0, init_last)  # honest: step 0 trains, answers chunk 0
    update = model.get_vector() - start  # the client's model now holds its local weights
    assert np.allclose(out0[:lay.chunk_size], update[:lay.chunk_size])
    with pytest.raises(ChunkRefused, match="replayed"):  # the same chunk, another round id
        client.for_step(2, 0, init_last)
    honest = lay.pad(chunks.read(0))  # what a server would broadcast (any chunk-0 values)
    out1 = client.for_step(3, 1, honest)  # chunk 1 of the same cached update
    a, b = lay.span(1)
    assert np.allclose(out1[:b - a], update[a:b]) and np.all(out1[b - a:] == 0)
    for step in (0, 1):  # every earlier step stays refused, for any state
        with pytest.raises(ChunkRefused, match="replayed"):
            client.for_step(4, step, honest)
    # a server that skips the rest of the training round: the next round's chunk 0 would
    # train on a model that does not hold the newest global -> refused, nothing answered
    with pytest.raises(ChunkRefused, match="newest global"):
        client.for_step(5, k_total, honest)
    with pytest.raises(ChunkRefused, match="no update"):  # then its chunk 1: no update
        client.for_step(6, k_total + 1, honest)
    with pytest.raises(ChunkRefused):
        client(7, honest)  # without a step: refused
    chunks_model = ModelChunks(model, lay)
    for k in range(k_total):  # restore the shared fixture model
        s, e = lay.span(k)
        chunks_model.write(k, start[s:e])


Request = tuple[int, bool]  # (step, restart the client before it)


def _drive(model, requests: list[Request],  # type: ignore[no-untyped-def]
           answers: Callable[[], ChunkAnswers]) -> list[int]:
    """Send each requested step (its broadcast the initial chunk), restarting the client (a
    new task, the model back at the initial weights, ``answers()`` for its books) where asked;
    the steps answered."""
    start = model.get_vector()
    lay = ChunkLayout(model.num_trainable, JOB.chunk_size)
    client: ChunkedClientTask | None = None
    answered: list[int] = []
    for i, (step, restart) in enumerate(requests):
        if client is None or restart:
            client = ChunkedClientTask(JOB, 1, model, DOCS, chunk_size=JOB.chunk_size,
                                       protocol_clip=1.0, answers=answers())
            client._train = lambda round_id, r, c=client: _fake_train(c, r)  # type: ignore[method-assign,misc]
        a, b = lay.span(lay.broadcast_of(step)[1])
        try:  # the broadcast is the initial chunk (the fake update is zero)
            client.for_step(i + 1, step, lay.pad(start[a:b]))
            answered.append(step)
        except ChunkRefused:
            pass
    assert np.array_equal(model.get_vector(), start)
    return answered


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(requests=st.lists(st.tuples(st.integers(0, 5), st.booleans()), min_size=1, max_size=6))
def test_no_request_sequence_gets_a_step_answered_twice(
        smol_full: tuple, requests: list[Request]) -> None:  # type: ignore[type-arg]
    """Any sequence of requested steps and client restarts (the adversary's choice): answered
    steps strictly increase, so no (training round, chunk) of an update is ever answered
    twice, by one process or by its restarts (the answers file persists across them)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "client-1.chunks.json"
        answered = _drive(smol_full[1], requests, lambda: ChunkAnswers(JOB, 1, path))
    assert answered == sorted(set(answered))


def test_the_control_without_persisted_answers_answers_a_step_twice(
        smol_full: tuple) -> None:  # type: ignore[type-arg]
    """The same driver with the answers kept in memory only (before issue 21): one restart
    and the replayed step 0 is answered again."""
    answered = _drive(smol_full[1], [(0, False), (0, True)], lambda: ChunkAnswers(JOB, 1))
    assert answered == [0, 0]


def _fake_train(client: ChunkedClientTask, r: int) -> dict[str, float]:
    # the at-most-once bookkeeping is what is searched here; the training itself is covered
    # by the tests around this one
    client._update = np.zeros(client.layout.dim, dtype=np.float32)
    client._update_round = r
    client.versions[:] = -1
    return {}


def _restore(model, start: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    """Put the initial weights back (what a restarted process builds from the job)."""
    lay = ChunkLayout(model.num_trainable, JOB.chunk_size)
    chunks = ModelChunks(model, lay)
    for k in range(lay.chunks):
        a, b = lay.span(k)
        chunks.write(k, start[a:b])


def test_a_restarted_client_refuses_replayed_steps(
        smol_full: tuple, tmp_path: Path,  # type: ignore[type-arg]
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 21, attack 4. The adversary: a server that gets step 0 (chunk 0 of training
    round 0) and step 1 from party A, restarts A (a new process: initial model, new objects,
    the same files; built as ``secagg client --ledger`` builds it) and replays steps 0 and 1.
    Were A (and B) to answer step 0 again with a bit-identical update, the sum of {A, B, C}
    minus that of {A, B} would be C's exact chunk (no DP in this job).

    With the answers persisted beside the ledger the restarted A refuses both steps before
    touching its model. The control: a restarted A whose answers lived in memory answers
    step 0 again, bit-identically under the training seed of before the change (a function
    of job, party and training round, pinned here for both of A's processes)."""
    _, model, _ = smol_full
    start = model.get_vector()
    lay = ChunkLayout(model.num_trainable, JOB.chunk_size)
    monkeypatch.setattr(chunked, "random_below",
                        lambda upper: (JOB.seed * 1_000_003 + 1) * 1_000_003 + 0)
    data = JobData(DOCS, DOCS.subset(np.arange(4)), (np.arange(0, 16, 2), np.arange(1, 16, 2)))
    dp = resolve_dp(JOB, dim=lay.chunk_size, sizes=(8, 8), cohort=2, threshold=2)
    ledger_file = tmp_path / "client-1.ledger.json"

    def process(*, books: bool) -> ChunkedClientTask:
        _restore(model, start)
        task = pretrain.client_task(JOB, 1, model, data, dp, 1.0, None,
                                    PrivacyLedger(JOB, dp, 1, ledger_file if books else None))
        assert isinstance(task, ChunkedClientTask)
        return task

    init_last = lay.pad(start[lay.span(lay.chunks - 1)[0]:])
    first = process(books=True)
    out0 = first.for_step(1, 0, init_last)
    first.for_step(2, 1, lay.pad(ModelChunks(model, lay).read(0)))
    answers_file = chunk_answers_path(ledger_file)
    assert json.loads(answers_file.read_text())["last_step"] == 1
    restarted = process(books=True)
    for step in (0, 1):
        with pytest.raises(ChunkRefused, match="replayed"):
            restarted.for_step(3 + step, step, init_last)
    assert np.array_equal(model.get_vector(), start)  # refused before anything was written
    control = process(books=False)
    again = control.for_step(5, 0, init_last)
    assert np.array_equal(again, out0)  # the attack: the same chunk of the same update
    _restore(model, start)


def test_fresh_runs_of_a_party_train_different_updates(
        smol_full: tuple) -> None:  # type: ignore[type-arg]
    """Two fresh processes of one party (same job, data and initial model) answer step 0
    with different updates: the training seed is fresh CSPRNG randomness, so a restarted
    party whose answers file was lost does not recompute its update bit for bit (3 local
    steps over 16 documents: equal batches by chance about 1e-6)."""
    _, model, _ = smol_full
    start = model.get_vector()
    job = replace(JOB, local_steps=3)
    lay = ChunkLayout(model.num_trainable, job.chunk_size)
    init_last = lay.pad(start[lay.span(lay.chunks - 1)[0]:])
    outs = []
    for _ in range(2):
        _restore(model, start)
        task = ChunkedClientTask(job, 1, model, DOCS, chunk_size=job.chunk_size,
                                 protocol_clip=1.0)
        outs.append(task.for_step(1, 0, init_last))
    assert not np.array_equal(outs[0], outs[1])
    assert np.abs(outs[0]).max() > 0 and np.abs(outs[1]).max() > 0
    _restore(model, start)


def test_a_training_round_of_chunks_applies_the_clients_mean(
        smol_full: tuple) -> None:  # type: ignore[type-arg]
    """Two clients and the server, every chunk through in-process SecAgg+ (fixed point with
    the job's protocol range): the server's weights move by exactly the mean update (up to the
    fixed-point grid), and the next round's broadcasts bring each client to the same global."""
    server_model, m1, m2 = smol_full
    start = server_model.get_vector()
    data = JobData(DOCS, DOCS.subset(np.arange(4)), (np.arange(0, 16, 2), np.arange(1, 16, 2)))
    server = ChunkedServerTask(JOB, server_model, data, chunk_size=JOB.chunk_size)
    clients = {1: _client(m1, 1), 2: _client(m2, 2)}
    lay = server.layout
    cfg = SecAggConfig(protocol="secagg+", n=2, clip=1.0, scale=20)
    state = server.initial_state(lay.chunk_size)
    assert server.evals and server.evals[0]["perplexity"] > 1
    sent: dict[int, list[np.ndarray]] = {1: [], 2: []}
    for step in range(lay.chunks + 1):  # one training round, then chunk 0 of the next
        inputs = {cid: c.for_step(step + 1, step, state) for cid, c in clients.items()}
        for cid, vec in inputs.items():
            sent[cid].append(vec)
        if step == lay.chunks:
            break
        res = run_round(cfg, inputs, round_id=step + 1)
        out = RoundOutcome(step + 1, (1, 2), aggregate=res.aggregate,
                           weight_total=res.weight_total, included=res.included)
        new_state = server.apply(state, out)
        assert new_state is not None
        state = new_state
        doc = server.report(out)
        # the secure sum is exact on the grid: the mean's functionals are the mean of the
        # clients' grid values' functionals (the clients' stats report these)
        grid = {c: np.rint(v * 2.0 ** 20) / 2.0 ** 20 for c, v in inputs.items()}
        want = np.mean([chunk_functionals(grid[c]) for c in (1, 2)], axis=0)
        assert doc["chunk"] == step
        assert np.allclose([doc["mean_sum"], doc["mean_alt"]], want, rtol=0, atol=1e-8)
    mean_update = np.concatenate([(sent[1][k] + sent[2][k])[:lay.span(k)[1] - lay.span(k)[0]]
                                  / 2 for k in range(lay.chunks)])
    moved = server_model.get_vector() - start
    assert np.abs(mean_update).max() > 1e-6  # the clients did learn something
    assert np.abs(moved - mean_update).max() < 2e-6  # grid 2^-20 plus float32 rounding
    # after the next round's chunk 0 each client trained again from the same global:
    # its chunks were overwritten by the broadcasts, so both started at the server's weights
    assert clients[1]._update_round == 1 and clients[2]._update_round == 1


def test_an_aborted_chunk_round_stops_the_run_but_an_unstarted_one_is_retried(
        smol_full: tuple) -> None:  # type: ignore[type-arg]
    data = JobData(DOCS, DOCS.subset(np.arange(2)), (np.arange(0, 16, 2), np.arange(1, 16, 2)))
    server = ChunkedServerTask(JOB, smol_full[0], data, chunk_size=JOB.chunk_size)
    never_started = RoundOutcome(1, (), error="too few clients joined")
    assert server.report(never_started) == {} and server.stop_reason() is None
    started = RoundOutcome(2, (1, 2), error="ThresholdError", bytes_down=1000)
    assert server.apply(np.zeros(JOB.chunk_size), started) is None
    server.report(started)
    reason = server.stop_reason()
    assert reason is not None and "at most once" in reason and server.step == 0
    with pytest.raises(ValueError, match="--resume is not supported"):
        server.load_state_dict(server.state_dict()[0], {})
    server.load_state_dict(None, {})  # a fresh start is fine
    assert server.state_dict()[1] == {}  # nothing model-sized goes into the checkpoint
