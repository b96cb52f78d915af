"""Attack 6 of issue 21: cohorts of two. ``secagg run`` let rounds shrink to 2, so a server with
one sybil ran {victim, sybil} rounds: the sum minus the sybil's input is the victim's update,
with the victim's own noise share (``sigma/sqrt(2)``) and no masking left.

The cohort floor (:mod:`secagg.fl_core.runtime.cohort_floor`) is derived from the guarantee the
docs state against ``c`` colluders, multiplier ``sigma*sqrt((t_n - c)/t_n)``: every round size
the parties accept keeps at least that fraction of honest noise, whatever ``c``. The adversary
here is code: a server that sends {victim, sybil} and below-floor round starts to the real
client session holding the policy the fine-tuning job builds (``commands.client_policy``, the
``--min-clients`` ``secagg run`` defaults to). Controls: the same server's round at the floor
is taken, and with the floor switched off the {victim, sybil} round is taken too.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from secagg.fl_core.cli import commands, entry, runner
from secagg.fl_core.dp.exact import retained_fraction
from secagg.fl_core.finetune.app import round_cohorts
from secagg.fl_core.finetune.job import FinetuneJob
from secagg.fl_core.finetune.preflight import CohortError, check_min_clients, job_cohort_floor
from secagg.fl_core.finetune.privacy import resolve_dp
from secagg.fl_core.identity import keyfiles
from secagg.fl_core.identity.keys import ClientKeys, CurveKeyPair
from secagg.fl_core.runtime import client_app, cohort_floor
from secagg.fl_core.runtime import policy as policy_module
from secagg.fl_core.runtime.client_app import ClientSettings
from secagg.fl_core.runtime.cohort_floor import CohortFloorError
from secagg.fl_core.runtime.policy import ClientPolicy
from secagg.fl_core.runtime.rounds import RoundStart
from secagg.protocols.config import SecAggConfig
from tests.fl_core._wire import Wire

N, DIM, SIZES = 8, 64, (300,) * 8
JOB = FinetuneJob(num_clients=N, rounds=5, epsilon=8.0)  # record level, distributed noise


def _threshold(m: int) -> int:
    return SecAggConfig(protocol="secagg+", n=m, active=True).threshold


@pytest.fixture(scope="module")
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("keys")
    keyfiles.write_server_keys(folder, CurveKeyPair.generate())
    for cid in range(1, N + 1):
        keyfiles.write_client_keys(folder, ClientKeys.generate(cid))
    return folder


def _job_policy(key_dir: Path, min_clients: int | None) -> ClientPolicy:
    """The policy ``secagg client --job`` pins (commands.client_policy over what
    ``finetune.app.prepare`` derives, without loading the model)."""
    low = min_clients if min_clients is not None else N
    dp = resolve_dp(JOB, dim=DIM, sizes=SIZES, cohort=N, threshold=_threshold(N),
                    cohorts=round_cohorts("secagg+", N, True, low))
    args = {"protocol": "secagg+", "n": N, "active": True, "clip": dp.protocol_clip,
            "scale": dp.protocol_scale}
    ns = argparse.Namespace(keys=str(key_dir), min_clients=min_clients)
    return commands.client_policy(ns, SimpleNamespace(config_args=args, dim=DIM, dp=dp))  # type: ignore[arg-type]


def _session(key_dir: Path, policy: ClientPolicy
             ) -> tuple[client_app._Session, Wire, list[int]]:
    wire, calls = Wire(1), []

    def update(round_id: int, state: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        calls.append(round_id)  # the update and its noise share exist only from here on
        return np.full(DIM, 0.25)

    keys = keyfiles.load_client_keys(keyfiles.client_paths(key_dir, 1)[1])
    s = client_app._Session(wire, keys, update, ClientSettings(), policy)  # type: ignore[arg-type]
    return s, wire, calls


def _start(policy: ClientPolicy, cohort: tuple[int, ...], round_id: int) -> RoundStart:
    """What a server sends for a round of ``cohort``: the config the rule gives that size."""
    assert policy.verify_keys is not None
    return RoundStart(round_id=round_id, step=0, first_stage=1,
                      config={**policy.config_args, "n": len(cohort)}, dim=DIM, clients=cohort,
                      verify_keys={c: policy.verify_keys[c].to_bytes() for c in cohort},
                      state=np.zeros(DIM), policy=policy.document)


# -- the derivation ----------------------------------------------------------------------------


def test_the_floor_keeps_the_full_cohorts_worst_case_for_every_number_of_sybils() -> None:
    for n in range(3, 31):
        args: dict[str, Any] = {"protocol": "secagg+", "n": n, "active": True}
        floor, t_n = cohort_floor.cohort_floor(args, dp=True), _threshold(n)
        for m in range(floor, n + 1):
            t_m = _threshold(m)
            for c in range(1, t_n):  # c sybils among the t_m survivors the server kept
                honest = (t_m - c) * retained_fraction(m, t_m, t_m)  # of sigma^2
                assert honest >= (t_n - c) / t_n - 1e-12, (n, m, c)
            assert t_m - max(SecAggConfig(**args).corrupt, 1) >= 2  # two honest inputs
        if floor > 2:  # one below the floor breaks it for a single sybil
            t_low = _threshold(floor - 1)
            weaker = (t_low - 1) / t_low < (t_n - 1) / t_n
            assert weaker or t_low - max(SecAggConfig(**args).corrupt, 1) < 2, n


def test_known_floors() -> None:
    def floor(n: int, dp: bool, protocol: str = "secagg+") -> int:
        return cohort_floor.cohort_floor({"protocol": protocol, "n": n, "active": True}, dp=dp)

    assert [floor(n, True) for n in (3, 4, 8, 20)] == [3, 3, 7, 11]  # default job: 4 -> 3
    assert [floor(n, False) for n in (2, 3, 4, 20)] == [2, 3, 3, 3]  # never a round of 2
    assert floor(20, True, "secagg") == 19  # complete graph: t grows with every member
    assert cohort_floor.cohort_floor({"protocol": "plain", "n": 4}, dp=False) == 1


# -- both ends refuse a floor below it -------------------------------------------------------


def test_a_client_policy_below_the_floor_is_refused(key_dir: Path) -> None:
    with pytest.raises(CohortFloorError, match=r"--min-clients\) 2 is below the cohort floor 7"):
        _job_policy(key_dir, 2)  # what `secagg run` passed its clients before: --min-clients 2
    with pytest.raises(CohortFloorError, match="floor 7"):
        _job_policy(key_dir, 6)
    assert _job_policy(key_dir, 7).min_cohort == 7
    # without DP a round of 2 is refused too: the sum minus one's own input is the other's
    with pytest.raises(CohortFloorError, match="floor 3"):
        ClientPolicy(config_args={"protocol": "secagg+", "n": 4, "active": False}, dim=DIM,
                     min_cohort=2)


def test_the_job_refuses_min_clients_below_the_floor() -> None:
    with pytest.raises(CohortError, match="cohort floor 7"):
        check_min_clients(JOB, protocol="secagg+", n=N, active=True, min_clients=2)
    assert check_min_clients(JOB, protocol="secagg+", n=N, active=True, min_clients=7) == 7
    assert job_cohort_floor(JOB, protocol="secagg+", n=N, active=True) == 7
    local = FinetuneJob(num_clients=N, rounds=5, epsilon=8.0, noise="local")  # own full noise
    assert job_cohort_floor(local, protocol="secagg+", n=N, active=True) == 3


# -- the attack ----------------------------------------------------------------------------------


def test_victim_and_sybil_rounds_are_refused_before_any_secret(key_dir: Path) -> None:
    floor = job_cohort_floor(JOB, protocol="secagg+", n=N, active=True)  # secagg run's default
    policy = _job_policy(key_dir, floor)
    s, wire, calls = _session(key_dir, policy)
    for rid, cohort in enumerate([(1, 2), tuple(range(1, floor))], start=1):  # 2, floor - 1
        s.on_start(_start(policy, cohort, rid))
        assert [e.field for e in s.refused][-1] == "cohort", cohort
    assert calls == [] and wire.sent == [] and s.participant is None
    # the control: the same server's round at the floor is taken, and the client speaks
    s.on_start(_start(policy, tuple(range(1, floor + 1)), 3))
    assert len(s.refused) == 2 and calls == [3] and wire.sent and s.participant is not None


def test_without_the_floor_the_victim_keeps_sigma_over_sqrt_2(
        key_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The defence switched off: the policy takes rounds of 2, and the server's {victim, sybil}
    # round is taken; after subtracting what its sybil added, the victim's update carries its
    # own share alone, sigma^2 / 2: no masking and multiplier sigma / sqrt(2) (0.71 sigma).
    monkeypatch.setattr(policy_module, "check_min_cohort", lambda *a, **k: 2)
    policy = _job_policy(key_dir, 2)
    s, wire, calls = _session(key_dir, policy)
    s.on_start(_start(policy, (1, 2), 1))
    assert not s.refused and calls == [1] and wire.sent
    victim = retained_fraction(2, _threshold(2), 2)
    assert victim == pytest.approx(0.5)
    # at the floor: 7 members, threshold 5, one sybil among the 5 survivors kept
    t = _threshold(7)
    at_floor = (t - 1) * retained_fraction(7, t, t)
    assert at_floor == pytest.approx((_threshold(N) - 1) / _threshold(N)) == pytest.approx(0.8)


# -- the command line ----------------------------------------------------------------------------


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[argparse.Namespace]]:
    """What ``secagg run`` would start with (no process is started)."""
    got: list[argparse.Namespace] = []

    def fake(ns: argparse.Namespace, **_: Any) -> int:
        got.append(ns)
        return 0

    monkeypatch.setattr(runner, "run_main", fake)
    yield got


def test_secagg_run_defaults_to_the_floor_and_refuses_below_it(
        tmp_path: Path, started: list[argparse.Namespace],
        capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "run"
    assert entry.main(["run", "--run-dir", str(run_dir)]) == 0  # the default job: 4 parties
    assert started[-1].min_clients == 3  # was 2
    assert entry.main(["run", "--run-dir", str(run_dir), "--clients", "8"]) == 0
    assert started[-1].min_clients == 7
    assert entry.main(["run", "--run-dir", str(run_dir), "--min-clients", "2"]) == 2
    err = capsys.readouterr().err
    assert "--min-clients 2 is below the cohort floor 3" in err and "Use --min-clients 3" in err
    assert len(started) == 2 and not run_dir.exists()  # refused before any file or process
    assert entry.main(["run", "--run-dir", str(run_dir), "--dp", "none", "--min-clients",
                       "2"]) == 2  # without DP too: a round of 2 reveals the other's input
    assert entry.main(["run", "--run-dir", str(run_dir), "--dim", "4", "--n", "8",
                       "--min-clients", "2"]) == 2


def test_secagg_serve_refuses_min_clients_below_the_floor(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--keys", str(tmp_path / "keys"), "--checkpoint", str(tmp_path / "ck"),
              "--bind", "tcp://127.0.0.1:*"]
    assert entry.main(["serve", *common, "--min-clients", "2"]) == 2  # the default DP job
    assert "below the cohort floor 3" in capsys.readouterr().err
    assert entry.main(["serve", *common, "--clients", "8", "--min-clients", "6"]) == 2
    assert "below the cohort floor 7" in capsys.readouterr().err
    assert entry.main(["serve", *common, "--dim", "4", "--n", "8", "--insecure",
                       "--min-clients", "2"]) == 2  # no DP: the protocol's floor, 3
    assert "below the cohort floor 3" in capsys.readouterr().err
    assert not (tmp_path / "ck").exists()
