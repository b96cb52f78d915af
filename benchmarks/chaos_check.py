"""The checks the chaos harness (:mod:`benchmarks.chaos`) runs on a synthetic ``secagg run`` job
after every run of it (fresh or resumed): pure functions over the server's round summaries
(the checkpoint's ``history``, which is what ``run_summary.json`` holds too) and its state.

- **sums**: every applied round's aggregate equals the sum of
  :func:`secagg.fl_core.runtime.rounds.synthetic_update` over its survivors, computed here
  independently, within ``survivors * 2^-scale`` per coordinate (``scale``: the fractional bits
  of the round's :class:`secagg.protocols.config.SecAggConfig`); survivors are a subset of the
  sampled cohort and at least the round's threshold; ``weight_total`` is the survivor count.
- **once**: round ids are unique and increasing; applied rounds carry steps ``1..k`` in order;
  the checkpoint's step is ``k``; its state is the sum of the applied means (a round applied
  twice, or an aggregate not recorded, changes it).
- **typed**: an applied round has no error; every other round has an error string of a known,
  typed form (its reason, grouped for the report).
- **bounded**: no round outlasts its deadlines: each stage within its deadline plus slack, the
  round within the sum of its stages' deadlines plus slack, the cohort wait within the join
  timeout plus slack.
- **released** (only where the summaries carry it): released rounds >= applied rounds, every
  applied round was released, and no released round is marked ``voided`` (not charged).
- **stable**: a later snapshot of the history starts with the earlier one, unchanged (a resume
  rewrites nothing).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from secagg.fl_core.runtime.rounds import synthetic_update
from secagg.protocols.config import SecAggConfig

__all__ = ["CheckReport", "Limits", "check_history", "check_released", "check_stable",
           "reason_of"]

Summary = Mapping[str, Any]

_NO_COHORT = re.compile(r"^round \d+ aborted: fewer than \d+ clients connected after")
_NOT_STARTED = re.compile(r"^round \d+ not started: ")
_TYPED = re.compile(r"^round \d+ aborted: ([A-Z][A-Za-z]*(?:Error|Exception|Abort\w*)): (.*)$",
                    re.S)


@dataclass(frozen=True)
class Limits:
    """What a job was run with: the deadlines bound each round."""

    dim: int = 64
    protocol: str = "secagg+"
    deadline_s: float = 2.0
    stage_deadlines: Mapping[str, float] = field(default_factory=dict)
    join_timeout_s: float = 10.0
    refill_wait_s: float = 3.0
    slack_s: float = 5.0
    """Added to every bound: process scheduling under starvation, crypto on a busy core."""

    def deadline(self, stage: str) -> float:
        """The deadline of ``stage`` (a name such as ``"advertise"``)."""
        return float(self.stage_deadlines.get(stage, self.deadline_s))


@dataclass
class CheckReport:
    """The verdict on one history: which checks passed, what failed, and the counts."""

    checks: dict[str, bool] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    applied: int = 0
    aborted: Counter[str] = field(default_factory=Counter)
    lost: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every check passed."""
        return all(self.checks.values())

    def fail(self, check: str, text: str) -> None:
        """Record a failed ``check`` with a precise ``text``."""
        self.checks[check] = False
        if len(self.problems) < 50:
            self.problems.append(f"{check}: {text}")


def reason_of(error: str) -> str | None:
    """The typed reason of an aborted round's error string (``"ProtocolError: too few ..."``
    with numbers masked, so equal causes group), or None for an untyped error."""
    if _NO_COHORT.match(error):
        return "no cohort (join timeout)"
    if _NOT_STARTED.match(error):
        return "cohort config invalid"
    m = _TYPED.match(error)
    if m is None:
        return None
    detail = re.sub(r"\[[^\]]*\]|\{[^}]*\}|\d+(\.\d+)?", "N", m.group(2))
    return f"{m.group(1)}: {detail[:70]}"


def _expected_sum(survivors: Sequence[int], round_id: int, dim: int) -> npt.NDArray[np.float64]:
    total = np.zeros(dim)
    for cid in survivors:
        total += synthetic_update(int(cid), int(round_id), dim)
    return total


def _check_applied(r: Summary, limits: Limits, rep: CheckReport) -> npt.NDArray[np.float64]:
    """Check one applied round's sum; return its mean (what the server's state gained)."""
    rid, survivors, sampled = r["round"], list(r["survivors"]), list(r["sampled"])
    agg = r.get("aggregate")
    if agg is None or len(agg) != limits.dim:
        rep.fail("sums", f"round {rid}: applied without a {limits.dim}-value aggregate")
        return np.zeros(limits.dim)
    if not set(survivors) <= set(sampled) or len(set(survivors)) != len(survivors):
        rep.fail("sums", f"round {rid}: survivors {survivors} not a subset of {sampled}")
    if len(survivors) < int(r.get("threshold", 0)) or not survivors:
        rep.fail("sums", f"round {rid}: {len(survivors)} survivors < threshold "
                 f"{r.get('threshold')}")
    if r.get("weight_total") not in (None, float(len(survivors))):
        rep.fail("sums", f"round {rid}: weight_total {r.get('weight_total')} != "
                 f"{len(survivors)} survivors")
    scale = SecAggConfig(protocol=limits.protocol, n=max(len(sampled), 1)).scale
    bound = max(len(survivors), 1) * 2.0 ** -scale
    got = np.asarray(agg, dtype=np.float64)
    err = float(np.max(np.abs(got - _expected_sum(survivors, rid, limits.dim))))
    if not err <= bound:
        rep.fail("sums", f"round {rid}: aggregate off by {err:.3g} > {bound:.3g} "
                 f"(survivors {survivors})")
    return got / max(len(survivors), 1)


def _check_time(r: Summary, limits: Limits, rep: CheckReport) -> None:
    rid, slack = r["round"], limits.slack_s
    total = 0.0
    for st in r.get("stages", []):
        d = limits.deadline(str(st["stage"]).removeprefix("keys/"))
        total += d
        if float(st["seconds"]) > d + slack:
            rep.fail("bounded", f"round {rid} stage {st['stage']}: {st['seconds']} s > "
                     f"deadline {d} s + {slack} s")
    if float(r.get("seconds", 0.0)) > total + slack:
        rep.fail("bounded", f"round {rid}: {r['seconds']} s > its stages' deadlines "
                 f"{total} s + {slack} s")
    join_bound = limits.join_timeout_s + limits.refill_wait_s + slack
    if float(r.get("join_seconds", 0.0)) > join_bound:
        rep.fail("bounded", f"round {rid}: waited {r['join_seconds']} s for a cohort > "
                 f"{join_bound} s")


def check_history(history: Sequence[Summary], *, limits: Limits, step: int | None = None,
                  state: npt.NDArray[np.float64] | None = None,
                  last_round_id: int | None = None) -> CheckReport:
    """Run every check of this module's docstring on one job's round summaries; ``step``,
    ``state`` and ``last_round_id`` come from its checkpoint (None: not checked). Round ids
    reserved (``<= last_round_id``) but absent from the history are *lost* (a server killed
    mid-round): counted, not a failure.

    Raises:
        Nothing: malformed summaries fail a check instead (KeyError is reported as such).
    """
    rep = CheckReport(checks=dict.fromkeys(("sums", "once", "typed", "bounded"), True))
    mean_total = np.zeros(limits.dim)
    ids: list[int] = []
    try:
        for r in history:
            rid = int(r["round"])
            if ids and rid <= ids[-1]:
                rep.fail("once", f"round id {rid} after {ids[-1]} (repeated or out of order)")
            ids.append(rid)
            if r["ok"]:
                rep.applied += 1
                if r.get("error"):
                    rep.fail("typed", f"round {rid}: applied but error {r['error']!r}")
                if int(r["step"]) != rep.applied:
                    rep.fail("once", f"round {rid}: step {r['step']}, expected {rep.applied}")
                mean_total += _check_applied(r, limits, rep)
            else:
                reason = reason_of(str(r.get("error") or ""))
                if reason is None:
                    rep.fail("typed", f"round {rid}: aborted without a typed reason: "
                             f"{r.get('error')!r}")
                    reason = "UNTYPED"
                rep.aborted[reason] += 1
            _check_time(r, limits, rep)
    except (KeyError, TypeError, ValueError) as exc:
        rep.fail("once", f"malformed summary: {type(exc).__name__}: {exc}")
    if step is not None and step != rep.applied:
        rep.fail("once", f"checkpoint step {step} != {rep.applied} applied rounds")
    if state is not None and not np.allclose(state, mean_total, rtol=0.0, atol=1e-9):
        rep.fail("once", "checkpoint state != the sum of the applied rounds' means "
                 f"(max diff {float(np.max(np.abs(state - mean_total))):.3g})")
    if last_round_id is not None:
        rep.lost = sorted(set(range(1, last_round_id + 1)) - set(ids))
        if ids and ids[-1] > last_round_id:
            rep.fail("once", f"round {ids[-1]} in the history beyond last id {last_round_id}")
    check_released(history, rep)
    return rep


def check_released(history: Sequence[Summary], rep: CheckReport) -> None:
    """The **released** check (where the summaries carry ``released``), recorded in ``rep``."""
    marked = [r for r in history if "released" in r]
    if not marked:
        return
    rep.checks.setdefault("released", True)
    released = sum(bool(r["released"]) for r in marked)
    applied = sum(bool(r.get("ok")) for r in marked)
    if released < applied:
        rep.fail("released", f"{released} released rounds < {applied} applied")
    for r in marked:
        if r.get("ok") and not r["released"]:
            rep.fail("released", f"round {r['round']}: applied but not released")
        if r.get("voided") and (r["released"] or r.get("ok")):
            rep.fail("released", f"round {r['round']}: voided (not charged) but released")


def check_stable(before: Sequence[Summary], after: Sequence[Summary]) -> str | None:
    """None when ``after`` starts with ``before`` unchanged; else what changed."""
    if len(after) < len(before):
        return f"history shrank from {len(before)} to {len(after)} rounds"
    for old, new in zip(before, after, strict=False):
        if old != new:
            return f"round {old.get('round')} changed between runs of the job"
    return None
