"""Server optimizers on the mean update (FedAvg, FedAvgM, FedAdam) and their job fields.

The expected steps are written out by hand from the papers' update rules (Hsu et al. 2019,
Reddi et al. 2021 Algorithm 2), not computed by the module under test.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from secagg.fl_core.finetune.cli_args import add_job_args, job_from_args
from secagg.fl_core.finetune.job import FinetuneJob, JobError
from secagg.fl_core.finetune.privacy import resolve_dp
from secagg.fl_core.finetune.server_opt import ServerOptimizer
from secagg.fl_core.finetune.server_task import FinetuneServerTask
from secagg.fl_core.runtime.checkpoint import Checkpoint, resume, write_atomic
from secagg.fl_core.runtime.driver import RoundOutcome

NONE: dict[str, Any] = {"dp": "none", "epsilon": None}

#: digests of jobs written before the server/local optimizer fields existed (computed with the
#: previous job.py): leaving the new fields at their defaults must not change them
OLD_DIGESTS = {
    "default": "3e722900d9fc8f4fa917ee1c800de0ee149dafa75f02593adff9b7da89af1907",
    "none_8_steps": "9e2e71d06b7d40a745c4a53b3346bde97b368bcfb45145f4cc2be84ca3697e1f",
    "client_8": "e38f832dd8b08ae4c5eac8589ff80d6f6eecdbf2193975b9d37ebcadc04a0e93",
}


def _vec(*x: float) -> np.ndarray:
    return np.array(x, dtype=np.float64)


# -- the maths ---------------------------------------------------------------------------


def test_fedavg_is_the_scaled_mean_and_stateless() -> None:
    opt = ServerOptimizer("avg", dim=2, lr=0.5, momentum=0.9)
    assert np.array_equal(opt.step(_vec(1.0, -2.0)), _vec(0.5, -1.0))
    assert np.array_equal(opt.step(_vec(3.0, 0.0)), _vec(1.5, 0.0))  # no memory
    assert opt.state_dict() == ({}, {})


def test_fedavgm_heavy_ball_by_hand() -> None:
    opt = ServerOptimizer("avgm", dim=2, lr=0.5, momentum=0.9)
    # m1 = mean1 = (1, -2): step 0.5 * m1
    assert np.allclose(opt.step(_vec(1.0, -2.0)), _vec(0.5, -1.0), rtol=0, atol=1e-15)
    # m2 = 0.9 * (1, -2) + (3, 0) = (3.9, -1.8): step (1.95, -0.9)
    assert np.allclose(opt.step(_vec(3.0, 0.0)), _vec(1.95, -0.9), rtol=0, atol=1e-15)
    # m3 = 0.9 * (3.9, -1.8) + (0, 0) = (3.51, -1.62): momentum keeps moving on a zero update
    assert np.allclose(opt.step(_vec(0.0, 0.0)), _vec(1.755, -0.81), rtol=0, atol=1e-15)


def test_fedadam_by_hand() -> None:
    lr, b1, b2, tau = 0.1, 0.9, 0.99, 1e-3
    opt = ServerOptimizer("adam", dim=2, lr=lr, momentum=b1)
    # step 1, mean (2, -0.5): m = 0.1 * mean = (0.2, -0.05); v = 0.99 tau^2 + 0.01 mean^2
    v1 = (0.99e-6 + 0.04, 0.99e-6 + 0.0025)
    want1 = _vec(0.1 * 0.2 / (math.sqrt(v1[0]) + 1e-3), 0.1 * -0.05 / (math.sqrt(v1[1]) + 1e-3))
    got1 = opt.step(_vec(2.0, -0.5))
    assert np.allclose(got1, want1, rtol=1e-12, atol=0)
    assert got1[0] == pytest.approx(0.0995013, abs=1e-7)  # ~lr * sign: no bias correction
    # step 2, mean (0, 1): m = 0.9 m1 + 0.1 mean = (0.18, 0.055); v = 0.99 v1 + 0.01 mean^2
    v2 = (0.99 * v1[0], 0.99 * v1[1] + 0.01)
    want2 = _vec(0.1 * 0.18 / (math.sqrt(v2[0]) + tau), 0.1 * 0.055 / (math.sqrt(v2[1]) + tau))
    assert np.allclose(opt.step(_vec(0.0, 1.0)), want2, rtol=1e-12, atol=0)
    assert b2 == 0.99  # the constants the hand computation used


@pytest.mark.parametrize("kind", ["avgm", "adam"])
def test_state_round_trip_continues_identically(kind: str) -> None:
    rng = np.random.default_rng(0)
    means = [rng.normal(size=5) for _ in range(4)]
    straight = ServerOptimizer(kind, dim=5, lr=0.3, momentum=0.8)
    for mean in means[:2]:
        straight.step(mean)
    doc, arrays = straight.state_dict()
    assert all(a.dtype == np.float64 for a in arrays.values())
    resumed = ServerOptimizer(kind, dim=5, lr=0.3, momentum=0.8)
    resumed.load_state_dict(doc, {k: v.copy() for k, v in arrays.items()})
    for mean in means[2:]:
        assert np.array_equal(resumed.step(mean), straight.step(mean))


def test_optimizer_refuses_bad_arguments_and_foreign_state() -> None:
    with pytest.raises(ValueError, match="kind"):
        ServerOptimizer("sgd", dim=2, lr=1.0, momentum=0.9)
    with pytest.raises(ValueError, match="momentum"):
        ServerOptimizer("avgm", dim=2, lr=1.0, momentum=1.0)
    with pytest.raises(ValueError, match="lr"):
        ServerOptimizer("avgm", dim=2, lr=0.0, momentum=0.5)
    opt = ServerOptimizer("avgm", dim=2, lr=1.0, momentum=0.9)
    with pytest.raises(ValueError, match="shape"):
        opt.step(np.zeros(3))
    adam = ServerOptimizer("adam", dim=2, lr=1.0, momentum=0.9)
    adam.step(_vec(1.0, 1.0))
    doc, arrays = adam.state_dict()
    with pytest.raises(ValueError, match="server optimizer"):
        opt.load_state_dict(doc, arrays)
    with pytest.raises(ValueError, match="wrong length"):
        ServerOptimizer("adam", dim=3, lr=1.0, momentum=0.9).load_state_dict(doc, arrays)


# -- the server task and its checkpoint ---------------------------------------------------


def _server(job: FinetuneJob, dim: int = 3) -> FinetuneServerTask:
    """A server task over a stand-in model (only its length and initial vector are used)."""
    model: Any = SimpleNamespace(num_trainable=dim, get_vector=lambda: np.zeros(dim, np.float32))
    data: Any = SimpleNamespace(sizes=(10, 10))
    dp = resolve_dp(job, dim=dim, sizes=(10, 10), cohort=2, threshold=2)
    return FinetuneServerTask(job, model, data, dp, cohort=2)


def _round(r: int, total: np.ndarray) -> RoundOutcome:
    return RoundOutcome(r, (1, 2), aggregate=total, weight_total=2.0, included=(1, 2))


def _apply(task: FinetuneServerTask, state: np.ndarray, r: int, total: np.ndarray
           ) -> np.ndarray:
    new = task.apply(state, _round(r, total))
    assert new is not None
    return new


def test_server_task_steps_with_the_jobs_optimizer() -> None:
    avg = _server(FinetuneJob(**NONE, server_lr=0.5))
    state = avg.apply(np.zeros(3), _round(1, _vec(2.0, -4.0, 0.0)))  # mean (1, -2, 0)
    assert state is not None and np.allclose(state, _vec(0.5, -1.0, 0.0))
    avgm = _server(FinetuneJob(**NONE, server_lr=0.5, server_optimizer="avgm"))
    s1 = avgm.apply(np.zeros(3), _round(1, _vec(2.0, -4.0, 0.0)))
    assert s1 is not None
    s2 = avgm.apply(s1, _round(2, _vec(6.0, 0.0, 0.0)))  # mean (3, 0, 0): m = (3.9, -1.8, 0)
    assert s2 is not None and np.allclose(s2, _vec(0.5 + 1.95, -1.0 - 0.9, 0.0))


def test_server_task_checkpoint_round_trip(tmp_path: Path) -> None:
    job = FinetuneJob(**NONE, server_lr=0.05, server_optimizer="adam")
    rng = np.random.default_rng(1)
    totals = [rng.normal(size=3) for _ in range(4)]
    straight, state = _server(job), np.zeros(3)
    for r, total in enumerate(totals[:2], 1):
        state = _apply(straight, state, r, total)
    doc, arrays = straight.state_dict()
    path = tmp_path / "ckpt.bin"
    write_atomic(path, Checkpoint(2, 2, 2, state, accountant=doc, extra=arrays))
    back = resume(path)
    assert back is not None
    resumed = _server(job)
    resumed.load_state_dict(back.accountant, back.extra)
    s_a, s_b = state.copy(), back.state.copy()
    for r, total in enumerate(totals[2:], 3):
        s_a = _apply(straight, s_a, r, total)
        s_b = _apply(resumed, s_b, r, total)
    assert np.array_equal(s_a, s_b)


def test_old_checkpoints_still_load() -> None:
    """A FedAvg job's checkpoint has exactly the keys it had before; one without any
    server-optimizer entry (written before they existed) loads into a fresh optimizer."""
    job = FinetuneJob(**NONE)
    doc, arrays = _server(job).state_dict()
    assert set(arrays) == {"adam_m", "adam_v"} and "server_opt" not in doc
    fresh = _server(FinetuneJob(**NONE))
    fresh.load_state_dict(doc, arrays)  # no error
    assert fresh.server_opt.t == 0


def test_checkpoint_of_another_server_optimizer_is_refused() -> None:
    avgm = _server(FinetuneJob(**NONE, server_optimizer="avgm"))
    avgm.apply(np.zeros(3), _round(1, _vec(1.0, 1.0, 1.0)))
    doc, arrays = avgm.state_dict()
    adam = _server(FinetuneJob(**NONE, server_optimizer="adam"))
    with pytest.raises(ValueError, match="another job"):  # the job digest tells them apart
        adam.load_state_dict(doc, arrays)


# -- job fields: digest, validation, flags --------------------------------------------------


def test_digest_of_existing_jobs_unchanged() -> None:
    assert FinetuneJob().digest == OLD_DIGESTS["default"]
    assert FinetuneJob(**NONE, local_steps=8).digest == OLD_DIGESTS["none_8_steps"]
    assert FinetuneJob(dp="client", num_clients=8).digest == OLD_DIGESTS["client_8"]
    text = FinetuneJob().to_json()
    for name in ("server_optimizer", "server_momentum", "local_optimizer"):
        assert name not in text


def test_non_default_fields_enter_the_digest_and_round_trip() -> None:
    base = FinetuneJob(**NONE)
    digests = {base.digest}
    for kw in ({"server_optimizer": "avgm"}, {"server_optimizer": "adam"},
               {"server_momentum": 0.5}, {"local_optimizer": "sgd"}):
        job = FinetuneJob(**NONE, **kw)
        assert next(iter(kw)) in job.to_json()
        digests.add(job.digest)
        assert FinetuneJob.from_dict(json.loads(job.to_json())) == job
    assert len(digests) == 5


@pytest.mark.parametrize(("kw", "match"), [
    ({**NONE, "server_optimizer": "sgd"}, "server_optimizer"),
    ({**NONE, "local_optimizer": "adam"}, "local_optimizer"),
    ({**NONE, "server_momentum": 1.0}, "server_momentum"),
    ({**NONE, "server_momentum": -0.1}, "server_momentum"),
    ({**NONE, "server_momentum": True}, "server_momentum"),
    ({"server_optimizer": "adam"}, "steps on gradients"),  # record level, distributed noise
    ({"noise": "local", "server_optimizer": "avgm"}, "steps on gradients"),  # one local step
    ({"local_optimizer": "sgd"}, "local_optimizer"),  # record-level local DP-SGD uses optimizer
])
def test_bad_optimizer_fields_raise_job_error(kw: dict[str, Any], match: str) -> None:
    with pytest.raises(JobError, match=match):
        FinetuneJob(**kw)


def test_update_carrying_modes_accept_server_optimizers() -> None:
    FinetuneJob(noise="local", local_steps=4, server_optimizer="adam")
    FinetuneJob(dp="client", server_optimizer="avgm", local_optimizer="sgd")
    FinetuneJob(**NONE, server_optimizer="adam", server_momentum=0.0, local_optimizer="sgd")


def test_cli_flags_set_the_fields() -> None:
    p = argparse.ArgumentParser()
    add_job_args(p)
    ns = p.parse_args(["--dp", "none", "--server-optimizer", "avgm", "--server-momentum", "0.7",
                       "--local-optimizer", "sgd"])
    job = job_from_args(ns)
    assert (job.server_optimizer, job.server_momentum, job.local_optimizer) == ("avgm", 0.7,
                                                                                 "sgd")
    assert job_from_args(p.parse_args([])).digest == OLD_DIGESTS["default"]
