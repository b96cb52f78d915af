"""The chaos harness (issue 22, :mod:`benchmarks.chaos`): its checker rejects doctored round
summaries (so the harness can fail), and its quick mode -- one real ``secagg run`` job of 15
rounds with a client killed, a client paused past the stage deadline, the server killed and
the run resumed, the connections cut in the proxy -- passes every check."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest

from benchmarks.chaos import quick_spec, run_chaos
from benchmarks.chaos_check import Limits, check_history, check_stable, reason_of
from secagg.fl_core.runtime.rounds import synthetic_update

LIMITS = Limits(dim=8, deadline_s=2.0, join_timeout_s=10.0)


def _round(rid: int, step: int, survivors: list[int], sampled: list[int]) -> dict[str, Any]:
    total = sum(synthetic_update(c, rid, LIMITS.dim) for c in survivors)
    q = np.round(total * 2**16) / 2**16  # what a fixed-point sum looks like
    return {"round": rid, "step": step, "ok": True, "error": None, "threshold": 3,
            "sampled": sampled, "survivors": survivors, "seconds": 0.05, "join_seconds": 0.0,
            "stages": [{"stage": "advertise", "received": 5, "missing": [], "seconds": 0.01}],
            "aggregate": q.tolist(), "weight_total": float(len(survivors)), "released": True}


def _history() -> tuple[list[dict[str, Any]], np.ndarray]:
    hist = [_round(1, 1, [1, 2, 3, 4, 5], [1, 2, 3, 4, 5]),
            {"round": 2, "step": 1, "ok": False, "threshold": 4, "sampled": [1, 2, 3, 4, 5],
             "survivors": [], "seconds": 2.1, "join_seconds": 0.0, "released": False,
             "stages": [{"stage": "advertise", "received": 3, "missing": [2, 5],
                         "seconds": 2.0}],
             "error": "round 2 aborted: ThresholdError: only 3 clients completed advertise, "
                      "need 4"},
            _round(4, 2, [1, 3, 4], [1, 3, 4, 5])]
    state = sum(np.asarray(h["aggregate"]) / len(h["survivors"]) for h in hist if h["ok"])
    return hist, np.asarray(state)


def test_checker_accepts_an_honest_history() -> None:
    hist, state = _history()
    rep = check_history(hist, limits=LIMITS, step=2, state=state, last_round_id=4)
    assert rep.ok, rep.problems
    assert (rep.applied, rep.lost, sum(rep.aborted.values())) == (2, [3], 1)
    assert reason_of(hist[1]["error"]) == ("ThresholdError: only N clients completed "
                                           "advertise, need N")


def _doctor(what: str) -> tuple[list[dict[str, Any]], np.ndarray, int]:
    hist, state = _history()
    step = 2
    if what == "sum":
        hist[2]["aggregate"][3] += 1e-3
    elif what == "survivor":
        hist[2]["survivors"] = [1, 3, 5]  # the sum of other clients
    elif what == "twice":
        hist.append(copy.deepcopy(hist[2]) | {"step": 3})
        state = state + np.asarray(hist[2]["aggregate"]) / 3
        step = 3
    elif what == "state":
        state = state + np.asarray(hist[0]["aggregate"]) / 5  # round 1 applied twice
    elif what == "step":
        step = 3
    elif what == "untyped":
        hist[1]["error"] = "something went wrong"
    elif what == "slow":
        hist[1]["stages"][0]["seconds"] = 60.0
        hist[1]["seconds"] = 60.0
    elif what == "released":
        hist[0]["released"] = False
    return hist, state, step


@pytest.mark.parametrize(("what", "check"), [
    ("sum", "sums"), ("survivor", "sums"), ("twice", "once"), ("state", "once"),
    ("step", "once"), ("untyped", "typed"), ("slow", "bounded"), ("released", "released")])
def test_checker_rejects_a_doctored_history(what: str, check: str) -> None:
    hist, state, step = _doctor(what)
    rep = check_history(hist, limits=LIMITS, step=step, state=state, last_round_id=5)
    assert not rep.ok
    assert rep.checks[check] is False, rep.problems


def test_a_resume_that_rewrites_a_round_is_caught() -> None:
    hist, _ = _history()
    later = copy.deepcopy(hist)
    assert check_stable(hist, later) is None
    later[0]["aggregate"][0] += 0.5
    assert check_stable(hist, later) == "round 1 changed between runs of the job"
    assert check_stable(hist, hist[:1]) is not None


@pytest.mark.slow
def test_quick_chaos_job_passes_every_check() -> None:
    doc = run_chaos([quick_spec()])
    job = doc["jobs"][0]
    assert job["passed"], (job["problems"], job["failure"], job["runs"])
    kinds = [f["kind"] for f in job["faults"]]
    assert {"kill_client", "kill_server", "pause_long"} <= set(kinds), job["faults"]
    assert any(f["params"].get("past_deadline") for f in job["faults"]
               if f["kind"] == "pause_long")
    assert job["resumes"] >= 1 and job["runs"][-1]["cause"] == "done", job["runs"]
    assert job["applied"] == 15 and not job["orphans"]
    assert job["checks"]["via_proxy"]
