"""The job description, its flags, and the DP resolution every party computes alike."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import pytest

from secagg.fl_core.dp import Placement, Unit
from secagg.fl_core.finetune.cli_args import add_job_args, job_from_args
from secagg.fl_core.finetune.job import FinetuneJob, JobError
from secagg.fl_core.finetune.privacy import resolve_dp
from secagg.fl_core.finetune.report import time_split
from secagg.fl_core.runtime.checkpoint import Checkpoint
from secagg.protocols.config import SecAggConfig

SIZES = (2400, 2300, 2500, 2300)
DIM = 74_498


@pytest.mark.parametrize("bad", [
    {"adapter": "lorax"}, {"dp": "both"}, {"noise": "central"}, {"rounds": 0},
    {"clip": -1.0}, {"lr": float("nan")}, {"epsilon": 1.0, "noise_multiplier": 1.0},
    {"dp": "record", "epsilon": None}, {"delta": 1.5}, {"test_fraction": 1.0},
])
def test_job_rejects_nonsense(bad: dict[str, object]) -> None:
    with pytest.raises(JobError):
        FinetuneJob(**bad)  # type: ignore[arg-type]


def test_job_json_round_trip_and_digest(tmp_path: Path) -> None:
    job = FinetuneJob(rounds=7, dp="client", noise="local", epsilon=None, noise_multiplier=1.3)
    job.save(tmp_path / "job.json")
    back = FinetuneJob.load(tmp_path / "job.json")
    assert back == job and back.digest == job.digest
    assert FinetuneJob(rounds=8).digest != FinetuneJob(rounds=7).digest
    with pytest.raises(JobError, match="unknown job keys"):
        FinetuneJob.from_dict({"rounds": 3, "epochs": 2})
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(JobError):
        FinetuneJob.load(tmp_path / "bad.json")


def test_flags_override_the_job_file(tmp_path: Path) -> None:
    FinetuneJob(rounds=9, data="trec").save(tmp_path / "job.json")
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int)
    add_job_args(p)
    ns = p.parse_args(["--job", str(tmp_path / "job.json"), "--clients", "6",
                       "--noise-multiplier", "1.1"])
    job = job_from_args(ns, rounds=None)
    assert (job.data, job.rounds, job.num_clients) == ("trec", 9, 6)
    assert job.noise_multiplier == 1.1 and job.epsilon is None  # sigma given: no eps target
    assert job_from_args(ns, rounds=4).rounds == 4


def test_record_distributed_reaches_the_target_epsilon_and_fits_the_ring() -> None:
    job = FinetuneJob(rounds=30, epsilon=4.0, records_per_round=256)
    dp = resolve_dp(job, dim=DIM, sizes=SIZES, cohort=4, threshold=3)
    assert dp.config is not None
    assert dp.config.unit is Unit.RECORD and dp.config.placement is Placement.DISTRIBUTED
    assert dp.accountant_rate == pytest.approx(256 / sum(SIZES))
    acc = dp.accountant()
    assert acc is not None
    acc.step(30)
    assert 0.97 * 4.0 <= acc.epsilon() <= 4.0 * (1 + 1e-6)
    # the shares carry a bit more than the effective multiplier (rounding of the sum)
    assert dp.config.noise_multiplier > dp.accountant_multiplier
    assert dp.delta == pytest.approx(1 / sum(SIZES) ** 1.1)
    # range: a party's batch of clipped gradients plus 10 share deviations, within 32 bits
    expected_batch = 2500 * dp.accountant_rate
    assert dp.protocol_clip > expected_batch + 10 * dp.config.noise_multiplier / math.sqrt(3)
    cfg = SecAggConfig(protocol="secagg+", n=4, clip=dp.protocol_clip,
                       scale=dp.protocol_scale, threshold=3)
    assert cfg.bits <= 32 and dp.clamp_probability < 1e-10


def test_local_noise_accounts_every_local_step() -> None:
    job = FinetuneJob(rounds=10, noise="local", local_steps=3, epsilon=2.0)
    dp = resolve_dp(job, dim=DIM, sizes=SIZES, cohort=4, threshold=3)
    assert dp.config is not None and dp.config.threshold == 1 and dp.steps_per_round == 3
    acc = dp.accountant()
    assert acc is not None
    acc.step(10 * 3)
    assert acc.epsilon() == pytest.approx(2.0, rel=0.03)
    # the same epsilon with distributed noise needs the same multiplier in the sum, but each
    # party's share is sqrt(t) smaller: the mean of n=4 local noises is sqrt(4) noisier
    dist = resolve_dp(FinetuneJob(rounds=30, epsilon=2.0), dim=DIM, sizes=SIZES, cohort=4,
                      threshold=3)
    assert dist.config is not None and dist.config.share_std() < dist.config.noise_multiplier


def test_client_level_with_few_parties_warns_and_none_turns_dp_off() -> None:
    dp = resolve_dp(FinetuneJob(dp="client", rounds=20), dim=DIM, sizes=SIZES, cohort=4,
                    threshold=3)
    assert dp.warning and dp.accountant_rate == 1.0
    off = resolve_dp(FinetuneJob(dp="none", epsilon=None), dim=DIM, sizes=SIZES, cohort=4,
                     threshold=3)
    assert off.config is None and off.accountant() is None


def test_unreachable_target_is_a_clear_error() -> None:
    with pytest.raises(ValueError):
        # dp-accounting's RDP orders leave an epsilon floor (about 0.22 at delta 1e-100)
        resolve_dp(FinetuneJob(rounds=30, epsilon=0.1, delta=1e-100), dim=DIM, sizes=SIZES,
                   cohort=4, threshold=3)


def test_checkpoint_keeps_task_arrays_and_reads_version_1() -> None:
    ckpt = Checkpoint(3, 4, 3, np.arange(5.0), (1, 2), accountant={"task": "x"},
                      extra={"adam_m": np.ones(5), "adam_v": np.full(5, 2.0)})
    back = Checkpoint.from_bytes(ckpt.to_bytes())
    assert back.accountant == {"task": "x"} and back.step == 3
    assert np.array_equal(back.state, ckpt.state)
    assert np.array_equal(back.extra["adam_v"], np.full(5, 2.0))
    with pytest.raises(ValueError):
        Checkpoint.from_bytes(ckpt.to_bytes()[:-8])  # torn: an extra array is short
    plain = Checkpoint(1, 1, 1, np.zeros(3))
    assert Checkpoint.from_bytes(plain.to_bytes()).extra == {}


def test_time_split_from_client_stats(tmp_path: Path) -> None:
    summary = {"per_round": [{"round": 1, "ok": True, "seconds": 4.0},
                             {"round": 2, "ok": False, "seconds": 9.0},
                             {"round": 3, "ok": True, "seconds": 6.0}]}
    for cid, (t, p) in enumerate([(2.0, 0.2), (3.0, 0.4)], start=1):
        lines = [f'{{"round": {r}, "train_s": {t}}}\n{{"round": {r}, "protocol_s": {p}}}'
                 for r in (1, 3)]
        (tmp_path / f"c{cid}").write_text("\n".join(lines) + "\nnot json\n")
    split = time_split(summary, [tmp_path / "c1", tmp_path / "c2", tmp_path / "missing"])
    assert split["round_s"] == 5.0 and split["training_s"] == 2.5
    assert split["protocol_s"] == pytest.approx(0.3) and split["other_s"] == pytest.approx(2.2)


def test_user_csv_and_jsonl_data_are_split_and_partitioned(tmp_path: Path) -> None:
    from secagg.fl_core.finetune.party import load_job_data, task_kind
    from secagg.models.loading import TaskKind

    rows = [f"review number {i} was {'great' if i % 3 else 'awful'}" for i in range(120)]
    csv = tmp_path / "mine.csv"
    csv.write_text("text,label\n" + "\n".join(
        f"{t},{'pos' if i % 3 else 'neg'}" for i, t in enumerate(rows)) + "\n")
    data = load_job_data(FinetuneJob(data=str(csv), num_clients=3, partition="iid",
                                     eval_size=10))
    assert task_kind(data.train) is TaskKind.CLASSIFICATION and len(data.test) == 10
    assert sum(data.sizes) == len(data.train) and len(data.client(2)) == data.sizes[1]
    parts = [set(p.tolist()) for p in data.parts]
    assert not (parts[0] & parts[1]) and not (parts[1] & parts[2])  # disjoint private parts
    with pytest.raises(JobError):
        data.client(4)
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text("\n".join(
        f'{{"prompt": "say {i}", "response": "{i}"}}' for i in range(40)) + "\n")
    pairs = load_job_data(FinetuneJob(data=str(jsonl), num_clients=2))
    assert task_kind(pairs.train) is TaskKind.CAUSAL_LM and sum(pairs.sizes) == len(pairs.train)
    with pytest.raises(JobError, match="neither a packaged set"):
        load_job_data(FinetuneJob(data=str(tmp_path / "missing.csv")))


def test_distributed_noise_needs_secure_aggregation() -> None:
    from secagg.fl_core.finetune.app import prepare

    # refused before anything is loaded: each party's share alone would reach the server
    with pytest.raises(JobError, match="distributed noise needs secure aggregation"):
        prepare(FinetuneJob(), protocol="plain", n=4, active=False)
    with pytest.raises(JobError, match="CKKS"):
        prepare(FinetuneJob(), protocol="ckks", n=4, active=False)


# -- client-level amplification, the clamp term in delta, charging before release -------------


def test_client_level_claims_no_amplification_unless_clients_self_sample() -> None:
    # 16 parties, the server picks 4 per round: the old accountant took q = 4/16 and reported
    # epsilon 8.0 at sigma 0.783 over 30 rounds; against the server that picks the cohort
    # there is no amplification and the same noise spends about 39.6
    job = FinetuneJob(dp="client", num_clients=16, rounds=30, epsilon=None,
                      noise_multiplier=0.783)
    dp = resolve_dp(job, dim=DIM, sizes=(300,) * 16, cohort=4, threshold=3)
    acc = dp.accountant()
    assert acc is not None and dp.accountant_rate == 1.0
    assert dp.describe()["amplification"].startswith("none")
    acc.step(30)
    assert acc.epsilon() == pytest.approx(39.63, abs=0.05)
    # clients that flip their own coins (rate from their own job file) do amplify
    own = FinetuneJob(dp="client", num_clients=16, rounds=30, epsilon=None,
                      noise_multiplier=0.783, client_sample_rate=0.25)
    dps = resolve_dp(own, dim=DIM, sizes=(300,) * 16, cohort=16, threshold=11)
    acc_s = dps.accountant()
    assert acc_s is not None and dps.accountant_rate == 0.25
    assert acc_s.epsilon(30) < 0.5 * acc.epsilon()
    with pytest.raises(JobError, match="client_sample_rate"):
        FinetuneJob(client_sample_rate=0.5)  # record level: records are sampled already
    with pytest.raises(JobError, match="client_sample_rate"):
        FinetuneJob(dp="client", client_sample_rate=1.5)
    assert "client_sample_rate" not in FinetuneJob().to_json()  # old digests unchanged


def test_a_client_that_sits_out_sends_its_noise_share_on_a_zero_update() -> None:
    from types import SimpleNamespace

    from secagg.fl_core.dp import NoiseSource
    from secagg.fl_core.finetune.client_task import FinetuneClientTask

    job = FinetuneJob(dp="client", num_clients=16, rounds=30, epsilon=None,
                      noise_multiplier=0.783, client_sample_rate=0.3)
    dp = resolve_dp(job, dim=DIM, sizes=(300,) * 16, cohort=16, threshold=11)
    task = FinetuneClientTask(job, 1, SimpleNamespace(), SimpleNamespace(), dp)  # type: ignore[arg-type]
    task.noise = NoiseSource.for_testing(b"coins")
    draws = [task._sampled_in() for _ in range(4000)]
    assert 0.27 < sum(draws) / len(draws) < 0.33


def test_reported_delta_includes_the_clamp_probability() -> None:
    job = FinetuneJob(rounds=20, epsilon=8.0)
    dp = resolve_dp(job, dim=DIM, sizes=SIZES, cohort=4, threshold=3)
    total = 1 / sum(SIZES) ** 1.1
    assert dp.clamp_probability > 0 and dp.delta == pytest.approx(total, rel=1e-12)
    # the RDP conversion gets what the clamps leave; after all rounds the two add up to delta
    assert dp.accountant_delta == pytest.approx(total - 20 * dp.clamp_probability, rel=1e-12)
    assert dp.delta_after(20) == pytest.approx(total, rel=1e-12)
    acc = dp.accountant()
    assert acc is not None and acc.delta == dp.accountant_delta
    doc = dp.describe()
    assert doc["delta_conversion"] < doc["delta"] and doc["clamp_probability_per_round"] > 0
    with pytest.raises(JobError, match="clamp"):
        resolve_dp(FinetuneJob(rounds=20, epsilon=8.0, delta=1e-12), dim=DIM, sizes=SIZES,
                   cohort=4, threshold=3)
    local = resolve_dp(FinetuneJob(rounds=20, epsilon=8.0, noise="local"), dim=DIM,
                       sizes=SIZES, cohort=4, threshold=3)
    assert local.clamp_probability == 0.0 and local.accountant_delta == local.delta


class _Crash(Exception):
    pass


def test_a_round_released_before_its_checkpoint_is_still_charged(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """serve() with a fake driver: the server dies after round 2's sum exists (and after the
    task reported it) but before the checkpoint that applies it. The resumed server must find
    round 2 charged, and the job stops when its planned rounds are all charged."""
    from types import SimpleNamespace
    from typing import Any

    from secagg.fl_core.finetune.server_task import FinetuneServerTask
    from secagg.fl_core.runtime import server_app
    from secagg.fl_core.runtime.checkpoint import resume
    from secagg.fl_core.runtime.driver import RoundOutcome

    dim, rounds = 6, 3
    job = FinetuneJob(rounds=rounds, epsilon=None, noise_multiplier=1.0)
    dp = resolve_dp(job, dim=dim, sizes=(100, 100, 100), cohort=3, threshold=2)

    class Task(FinetuneServerTask):
        def evaluate(self, state: Any, step: int) -> dict[str, Any]:
            return {}

    def task() -> Task:
        model = SimpleNamespace(num_trainable=dim, get_vector=lambda: np.zeros(dim))
        return Task(job, model, SimpleNamespace(sizes=(100, 100, 100)), dp,  # type: ignore[arg-type]
                    cohort=3)

    class Driver:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.drops: dict[Any, int] = {}

        def run_round(self, round_id: int, step: int, state: Any) -> RoundOutcome:
            return RoundOutcome(round_id, (1, 2, 3), aggregate=np.ones(dim), weight_total=3.0,
                                included=(1, 2, 3), threshold=2)

        def goodbye(self, round_id: int) -> None:
            pass

    def crash(settings: Any, where: str, round_id: int) -> None:
        if settings.crash_after == f"{where}:{round_id}":
            raise _Crash

    monkeypatch.setattr(server_app, "RoundDriver", Driver)
    monkeypatch.setattr(server_app, "_maybe_crash", crash)
    monkeypatch.setattr("secagg.fl_core.runtime.server_app.time.sleep", lambda s: None)
    path = tmp_path / "ckpt"
    transport = SimpleNamespace(allowlist=None)
    settings = server_app.ServerSettings(config_args={}, dim=dim, rounds=rounds,
                                         checkpoint=path, crash_after="aggregate:2")
    first = task()
    with pytest.raises(_Crash):
        server_app.serve(transport, settings, task=first)  # type: ignore[arg-type]
    assert first.accountant is not None and first.accountant.steps == 2
    on_disk = resume(path)
    assert (on_disk.step, on_disk.last_round_id) == (1, 2)  # round 2's sum never applied...
    second = task()
    second.load_state_dict(on_disk.accountant, on_disk.extra)
    assert second.accountant is not None and second.accountant.steps == 2  # ...but charged
    settings.resume, settings.crash_after = True, None
    final = server_app.serve(transport, settings, task=second)  # type: ignore[arg-type]
    # one round of the 3 planned is left to spend: it runs, then the job stops, charged 3
    assert (final.step, final.last_round_id) == (2, 3)
    assert second.accountant.steps == rounds
    assert second.stop_reason() is not None and "charged" in (second.stop_reason() or "")
    assert final.history[-1]["delta"] == pytest.approx(dp.delta_after(rounds))


def test_exact_noise_is_calibrated_for_every_round_size() -> None:
    """With cohorts, the multiplier holds for every round size and survivor count (the same
    sigma as the threshold design at its t), the range is sized for the smallest t, and a
    client refuses a round of a size its DP was not calibrated for."""
    from types import SimpleNamespace

    from secagg.fl_core.finetune.app import round_cohorts
    from secagg.fl_core.finetune.client_task import FinetuneClientTask

    job = FinetuneJob(rounds=20, epsilon=8.0)
    cohorts = round_cohorts("secagg+", 4, True, 2)
    assert cohorts == ((2, 2), (3, 3), (4, 3))
    exact = resolve_dp(job, dim=DIM, sizes=SIZES, cohort=4, threshold=3, cohorts=cohorts)
    plain = resolve_dp(job, dim=DIM, sizes=SIZES, cohort=4, threshold=3)
    assert exact.config is not None and plain.config is not None
    assert exact.exact_cohorts == cohorts and not plain.exact_cohorts
    assert exact.accountant_multiplier == plain.accountant_multiplier
    assert exact.config.noise_multiplier == pytest.approx(plain.config.noise_multiplier,
                                                          rel=1e-6)
    assert exact.config.threshold == 2  # a party of a 2-round adds sigma^2/2: the range
    assert exact.protocol_clip > plain.protocol_clip
    task = FinetuneClientTask(job, 1, SimpleNamespace(), SimpleNamespace(), exact)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="calibrated"):
        task.for_round(1, np.zeros(4), n=5, t=3)
    with pytest.raises(ValueError, match="calibrated"):
        task.for_round(1, np.zeros(4), n=4, t=2)  # a lower threshold than the rule's
    with pytest.raises(Exception, match="min clients"):
        round_cohorts("secagg+", 4, True, 1)
