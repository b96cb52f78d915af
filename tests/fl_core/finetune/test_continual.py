"""Continual learning's schedule, stage plan, replay pools and summary arithmetic (no model:
the real TREC data and the real job split; the processes are in test_continual_process.py)."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.fl_core.finetune.cli_args import add_job_args, job_from_args
from secagg.fl_core.finetune.continual import (
    PACKAGED_SCHEDULES,
    ScheduleError,
    StagePlan,
    forgetting,
    resolve_schedule,
    schedule_rounds,
    validate_schedule,
)
from secagg.fl_core.finetune.continual_tasks import build_plan
from secagg.fl_core.finetune.job import FinetuneJob, JobError
from secagg.fl_core.finetune.party import load_job_data


def _ns(*argv: str) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    add_job_args(ap)
    return ap.parse_args(list(argv))


@pytest.mark.parametrize("name", sorted(PACKAGED_SCHEDULES))
def test_packaged_schedules_are_valid(name: str) -> None:
    doc = resolve_schedule(name)
    assert doc == validate_schedule(PACKAGED_SCHEDULES[name])
    assert schedule_rounds(doc) == 18 and len(doc["stages"]) == 3


def test_schedule_files_toml_and_json(tmp_path: Path) -> None:
    toml = tmp_path / "s.toml"
    toml.write_text('[[stages]]\nlabels = ["HUM"]\nrounds = 2\n'
                    '[[stages]]\nname = "places"\nlabels = ["LOC", "NUM"]\nrounds = 1\n')
    doc = resolve_schedule(str(toml))
    assert doc == {"name": "s", "stages": [
        {"name": "stage 1", "rounds": 2, "labels": ["HUM"]},
        {"name": "places", "rounds": 1, "labels": ["LOC", "NUM"]}]}
    js = tmp_path / "t.json"
    js.write_text(json.dumps({"stages": [{"slice": [0, 0.5], "rounds": 1},
                                         {"slice": [0.5, 1], "rounds": 3}]}))
    assert [s["slice"] for s in resolve_schedule(str(js))["stages"]] == [[0.0, 0.5], [0.5, 1.0]]


@pytest.mark.parametrize("doc,needle", [
    ({}, "non-empty 'stages'"),
    ({"stages": []}, "non-empty 'stages'"),
    ({"stages": [{"labels": ["A"], "rounds": 0}]}, "'rounds' must be a positive int"),
    ({"stages": [{"labels": ["A"], "rounds": True}]}, "'rounds' must be a positive int"),
    ({"stages": [{"labels": ["A"], "slice": [0, 1], "rounds": 1}]}, "exactly one of"),
    ({"stages": [{"rounds": 1}]}, "exactly one of"),
    ({"stages": [{"labels": ["A", "A"], "rounds": 1}]}, "distinct label names"),
    ({"stages": [{"labels": [], "rounds": 1}]}, "distinct label names"),
    ({"stages": [{"slice": [0.5, 0.5], "rounds": 1}]}, "0 <= a < b <= 1"),
    ({"stages": [{"slice": [0, 1.5], "rounds": 1}]}, "0 <= a < b <= 1"),
    ({"stages": [{"labels": ["A"], "rounds": 1}, {"slice": [0, 1], "rounds": 1}]}, "not a mix"),
    ({"stages": [{"labels": ["A"], "rounds": 1, "lr": 3}]}, "unknown keys"),
    ({"stages": [{"labels": ["A"], "rounds": 1}], "extra": 1}, "unknown schedule keys"),
])
def test_bad_schedules_are_refused(doc: dict[str, Any], needle: str) -> None:
    with pytest.raises(ScheduleError, match=needle):
        validate_schedule(doc)


def test_unknown_or_unreadable_schedule(tmp_path: Path) -> None:
    with pytest.raises(ScheduleError, match="neither a packaged schedule"):
        resolve_schedule("no-such-schedule")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ScheduleError, match="cannot read the schedule"):
        resolve_schedule(str(bad))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 9), min_size=1, max_size=6))
def test_round_ids_map_to_their_stage(rounds: list[int]) -> None:
    plan = StagePlan(tuple(f"s{i}" for i in range(len(rounds))), tuple(rounds), (), (), ())
    stage_of = [plan.stage_of(r) for r in range(1, sum(rounds) + 1)]
    # consecutive ids, stage s owning exactly rounds[s] of them, in order
    assert stage_of == [s for s, k in enumerate(rounds) for _ in range(k)]
    assert all(plan.stage_of(plan.last_round(s)) == s for s in range(len(rounds)))
    assert plan.stage_of(sum(rounds) + 5) == len(rounds) - 1


def test_job_flags_set_the_schedule_and_its_rounds() -> None:
    job = job_from_args(_ns("--continual", "trec-classes", "--replay-buffer", "16"))
    assert job.rounds == 18 and job.replay_buffer == 16
    assert job.continual == resolve_schedule("trec-classes")
    assert FinetuneJob.from_dict(json.loads(job.to_json())) == job  # the job file round-trips
    with pytest.raises(ScheduleError, match="differs from the schedule's 18 rounds"):
        job_from_args(_ns("--continual", "trec-classes"), rounds=5)
    with pytest.raises(JobError, match="--replay-buffer applies to a continual job"):
        job_from_args(_ns("--replay-buffer", "4"))
    with pytest.raises(JobError, match="replay_buffer must be an int >= 0"):
        replace(job, replay_buffer=-1)


def test_new_fields_leave_old_job_digests_alone() -> None:
    # a job written before issue 15 (every new field at its default) keeps its digest, so its
    # checkpoints still resume
    assert "continual" not in FinetuneJob().to_json()
    assert FinetuneJob().digest == (
        "3e722900d9fc8f4fa917ee1c800de0ee149dafa75f02593adff9b7da89af1907")


@pytest.fixture(scope="module")
def trec_split() -> tuple[FinetuneJob, Any, StagePlan]:
    job = FinetuneJob(num_clients=4, continual=resolve_schedule("trec-classes"), rounds=18,
                      replay_buffer=10)
    data = load_job_data(job)
    return job, data, build_plan(job, data)


def test_stage_pools_hold_the_stage_and_a_bounded_replay(trec_split: Any) -> None:
    job, data, plan = trec_split
    names = data.train.label_names
    seen: set[int] = set()
    for cid, part in enumerate(data.parts, start=1):
        for s in range(plan.num_stages):
            pool = plan.pool(part, s, replay=job.replay_buffer, seed=(job.seed, cid))
            assert set(pool) <= set(part.tolist())  # only the party's own records
            labels = {names[x] for x in data.train.labels[pool]}
            own = part[plan.train_masks[s][part]]
            assert set(own) <= set(pool)  # every record of the stage
            extra = set(pool) - set(own)
            for e in range(s):  # at most `replay` of each earlier stage, and only those
                from_e = extra & set(part[plan.train_masks[e][part]])
                assert len(from_e) == min(job.replay_buffer, int(plan.train_masks[e][part].sum()))
            later = {x for st_ in job.continual["stages"][s + 1:] for x in st_["labels"]}
            assert not labels & later  # nothing from a stage not yet reached
            again = plan.pool(part, s, replay=job.replay_buffer, seed=(job.seed, cid))
            assert np.array_equal(pool, again)  # a fixed choice
            if s == 0:
                seen |= set(pool.tolist())
    assert len(seen) == int(plan.train_masks[0].sum())  # the parties' stage-1 pools partition it


def test_without_replay_a_pool_is_the_stage_alone(trec_split: Any) -> None:
    job, data, plan = trec_split
    part = data.parts[0]
    for s in range(plan.num_stages):
        pool = plan.pool(part, s, replay=0, seed=(job.seed, 1))
        assert np.array_equal(np.sort(pool), part[plan.train_masks[s][part]])


def test_stage_test_sets_cover_the_hold_out_once(trec_split: Any) -> None:
    plan = trec_split[2]
    counts = np.sum(plan.test_masks, axis=0)
    assert np.all(counts == 1)  # the three label groups split the held-out set
    assert [d["test_examples"] for d in plan.described] == [int(m.sum()) for m in plan.test_masks]


def test_plans_refuse_labels_the_data_lacks_and_empty_stages() -> None:
    job = FinetuneJob(continual=validate_schedule(
        {"stages": [{"labels": ["HUM", "SPORTS"], "rounds": 1}]}), rounds=1)
    data = load_job_data(job)
    with pytest.raises(ScheduleError, match=r"labels \['SPORTS'\] are not in"):
        build_plan(job, data)
    thin = replace(job, continual=validate_schedule(
        {"stages": [{"slice": [0.0, 0.0001], "rounds": 1}]}))
    with pytest.raises(ScheduleError, match="has no training examples"):
        build_plan(thin, data)
    instruct = replace(job, data="chatterbot", continual=validate_schedule(
        {"stages": [{"slice": [0.0, 1.0], "rounds": 1}]}))
    with pytest.raises(ScheduleError, match="needs labelled"):
        build_plan(instruct, load_job_data(instruct))


def test_forgetting_is_the_mean_drop_from_the_best_earlier_accuracy() -> None:
    m = [[0.9, 0.0, 0.0],
         [0.5, 0.8, 0.0],
         [0.3, 0.6, 0.7]]
    assert forgetting(m) == pytest.approx(((0.9 - 0.3) + (0.8 - 0.6)) / 2)
    assert forgetting([[0.4]]) == 0.0
    assert forgetting([[0.2, 0.1], [0.6, 0.5]]) == pytest.approx(-0.4)  # backward transfer
    with pytest.raises(ValueError):
        forgetting([[0.2], [0.3]])


def _outcome(round_id: int, dim: int) -> Any:
    from secagg.fl_core.runtime.driver import RoundOutcome

    return RoundOutcome(round_id=round_id, sampled=(1, 2, 3), aggregate=np.ones(dim),
                        weight_total=3.0, included=(1, 2, 3))


@pytest.fixture(scope="module")
def tiny_prep() -> Any:
    from secagg.fl_core.finetune.app import prepare

    schedule = validate_schedule({"stages": [{"labels": ["DESC", "ENTY"], "rounds": 2},
                                             {"labels": ["HUM", "LOC"], "rounds": 1},
                                             {"labels": ["NUM", "ABBR"], "rounds": 1}]})
    job = FinetuneJob(num_clients=3, continual=schedule, rounds=4, replay_buffer=5,
                      partition="dirichlet", alpha=0.02, optimizer="sgd", lr=0.5,
                      records_per_round=48, eval_size=40, max_length=12, epsilon=6.0)
    return prepare(job, protocol="secagg+", n=3, active=True)


def test_the_server_scales_each_round_by_its_stages_expected_batch(tiny_prep: Any) -> None:
    from secagg.fl_core.finetune.continual_tasks import ContinualServerTask

    prep = tiny_prep
    job, plan = prep.job, prep.plan
    pools = [sum(len(plan.pool(part, s, replay=job.replay_buffer, seed=(job.seed, cid)))
                 for cid, part in enumerate(prep.data.parts, start=1)) for s in range(3)]
    assert pools[1] > int(plan.train_masks[1].sum())  # the replay buffers are in
    for round_id, stage in ((1, 0), (2, 0), (3, 1), (4, 2)):
        task = ContinualServerTask(job, prep.model, prep.data, prep.dp, plan, cohort=3)
        state = np.zeros(prep.dim)
        new = task.apply(state, _outcome(round_id, prep.dim))
        assert new is not None
        # SGD's first step: lr * (sum * C / expected batch), the batch of the round's stage
        batch = prep.dp.accountant_rate * pools[stage]
        assert task.stage_batch[stage] == pytest.approx(batch)
        np.testing.assert_allclose(new, -job.lr * job.clip / batch, rtol=1e-12)


def test_a_party_without_records_in_a_stage_still_sends_its_noise_share(
        tiny_prep: Any) -> None:
    from secagg.fl_core.finetune.continual_tasks import ContinualClientTask

    prep = tiny_prep
    empty = [(cid, s) for cid in (1, 2, 3) for s in range(3)
             if len(prep.plan.pool(prep.data.parts[cid - 1], s, replay=0,
                                   seed=(prep.job.seed, cid))) == 0 and s == 0]
    assert empty, "Dirichlet(0.02) at seed 0 leaves some party without stage-1 records"
    cid, _ = empty[0]
    task = ContinualClientTask(prep.job, cid, prep.model, prep.data, prep.dp, prep.plan)
    assert len(task.pools[0]) == 0
    out = task(1, prep.model.get_vector().astype(np.float64))
    share = prep.dp.config.noise_multiplier / np.sqrt(prep.dp.config.threshold)
    # only noise: a share of std sigma / sqrt(t) per value (units of C), nothing of a gradient
    assert 0.8 * share < float(np.std(out)) < 1.2 * share and abs(float(np.mean(out))) < 0.05
