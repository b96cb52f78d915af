"""A party's own books: what it has released, kept by the party, across restarts.

The server's accountant stops an honest server; a malicious one can simply keep starting
rounds, or restart a client and replay round ids it has already answered. Each round a party
releases a contribution, and the job's epsilon holds for ``job.rounds`` such releases only (with
``--noise-multiplier`` fixed, a server running more rounds would pass every per-round policy
check). So every party keeps a ledger (:class:`PrivacyLedger`) of the rounds it has released
into, charged BEFORE the contribution is computed (as the server charges before a round starts),
and refuses:

- a round id at or below the highest it has charged (:class:`RoundReplayed`): round ids only
  grow (the server reserves each in its checkpoint before the round start goes out, and a
  resumed server goes on above it), so an id seen before is a replay. There is no retry
  exemption: no caller charges a round id twice (the client session hands each round id to the
  task once), and a restarted process that answered again would release a second contribution
  (a fresh noise draw with DP; without DP a bit-identical update, whose difference between two
  cohorts' sums is one party's update) while the book said one;
- a round past the job's rounds or ``epsilon_budget`` (:class:`BudgetExhausted`; DP jobs).

A charge is voided (:meth:`PrivacyLedger.void`) only when the party itself saw the round end
before its input left it (an abort, a newer round or a protocol error while it was still in
:data:`secagg.protocols.transitions.INPUT_PENDING`): nothing of its data was released, whatever
the server says. Voided ids stay used. Distillation's task never voids (its private local step
persists in the model that later rounds release).

A chunked full-weight job (no DP) keeps :class:`ChunkAnswers` instead: the highest step it has
answered, persisted before the chunk is returned (:mod:`secagg.fl_core.finetune.chunked`).

Both files (``secagg client --ledger FILE``, the chunk answers in :func:`chunk_answers_path`
beside it; ``secagg run`` gives every client one in its run folder) are bound to the job's
digest and the party, and written atomically (temp file, fsync, rename, mode 0600) before the
release exists. Without a file the book lives in memory and a restarted process starts a fresh
one (said in the log). For a continual job this is the lifetime budget: one ledger over every
stage.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from secagg.fl_core.finetune.job import FinetuneJob
from secagg.fl_core.finetune.privacy import ResolvedDp

__all__ = ["BudgetExhausted", "ChunkAnswers", "LedgerError", "PrivacyLedger", "RoundReplayed",
           "chunk_answers_path"]

log = logging.getLogger("secagg.fl_core.finetune")


class BudgetExhausted(ValueError):
    """One more release would exceed this party's budget: the party sits the round out."""


class RoundReplayed(ValueError):
    """A round id (or chunk step) at or below one this party has already released into: a
    replay, refused whatever process answered it before."""


class LedgerError(ValueError):
    """The ledger file is unreadable, or belongs to another job or party."""


def _read_bound(path: Path, job: FinetuneJob, client_id: int, what: str) -> dict[str, Any]:
    """The document in ``path``, checked to be this job's and this party's.

    Raises:
        LedgerError: unreadable, not a JSON object, or of another job or party.
    """
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise LedgerError(f"cannot read the {what} {path}: {exc}") from None
    if not isinstance(doc, dict):
        raise LedgerError(f"cannot read the {what} {path}: not a JSON object")
    if doc.get("job") != job.digest or doc.get("client") != client_id:
        raise LedgerError(f"the {what} {path} belongs to another job or party")
    return doc


def _write_bound(path: Path, job: FinetuneJob, client_id: int, body: dict[str, Any]) -> None:
    """Write ``body`` with the job digest and party atomically (temp file, fsync, rename).

    Raises:
        OSError: the file cannot be written.
    """
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"job": job.digest, "client": client_id, **body}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class PrivacyLedger:
    """Rounds this party has released into, against its job's budget."""

    def __init__(self, job: FinetuneJob, dp: ResolvedDp, client_id: int,
                 path: Path | None = None) -> None:
        """Raises:
            LedgerError: ``path`` exists but is unreadable or of another job or party."""
        self.job, self.dp, self.client_id, self.path = job, dp, client_id, path
        self.rounds: list[int] = []
        #: rounds charged, then voided: they released nothing (their ids stay used)
        self.voided: list[int] = []
        if path is not None and path.exists():
            doc = _read_bound(path, job, client_id, "privacy ledger")
            try:
                self.rounds = [int(r) for r in doc["rounds"]]
                self.voided = [int(r) for r in doc.get("voided", [])]
            except (KeyError, TypeError, ValueError) as exc:
                raise LedgerError(f"cannot read the privacy ledger {path}: {exc!r}") from None
        elif path is None:
            log.info("client %d: no ledger file: a restarted process forgets the rounds "
                     "it has released into", client_id)

    @property
    def epsilon(self) -> float:
        """This party's epsilon after the rounds charged so far (0.0 without DP)."""
        acc = self.dp.accountant()
        return 0.0 if acc is None else acc.epsilon(len(self.rounds) * self.dp.steps_per_round)

    def charge(self, round_id: int) -> None:
        """Record a release into round ``round_id``, persisted before returning. Without DP
        only the replay rule applies (no budget).

        Raises:
            RoundReplayed: ``round_id`` is at or below the highest round charged (by this
                process or any earlier one over the same file).
            BudgetExhausted: the job's rounds are all charged, or one more round would exceed
                ``epsilon_budget``.
            OSError: the ledger file cannot be written (nothing is released then).
        """
        seen = max([*self.rounds, *self.voided], default=0)
        if round_id <= seen:
            raise RoundReplayed(f"client {self.client_id}: round {round_id} refused: already "
                                f"charged round {seen} (a replayed round id)")
        if self.dp.config is not None:
            self._check_budget(round_id)
        self.rounds.append(round_id)
        self._save()

    def void(self, round_id: int) -> bool:
        """Un-charge round ``round_id``: the caller saw the round end before this party's
        input left it (the client was still in
        :data:`secagg.protocols.transitions.INPUT_PENDING`), so nothing of its data was
        released and the noise drawn for it was never seen. Only the latest charge can be
        voided (a task whose rounds leave state behind, such as distillation's private local
        model, has no ``void``); the id stays used, so the replay rule still refuses it.
        Returns True when a charge was removed (persisted before returning).

        Raises:
            OSError: the ledger file cannot be written (the round stays charged).
        """
        if not self.rounds or self.rounds[-1] != round_id:
            return False
        self.voided.append(round_id)
        self.rounds.pop()
        try:
            self._save()
        except OSError:
            self.rounds.append(round_id)
            self.voided.pop()
            raise
        log.info("client %d: round %d released nothing: not charged (epsilon %.3f)",
                 self.client_id, round_id, self.epsilon)
        return True

    def _save(self) -> None:
        if self.path is not None:
            body: dict[str, Any] = {"rounds": self.rounds}
            if self.voided:
                body["voided"] = self.voided
            _write_bound(self.path, self.job, self.client_id, body)

    def _check_budget(self, round_id: int) -> None:
        if len(self.rounds) >= self.job.rounds:
            raise BudgetExhausted(f"client {self.client_id}: released into all {self.job.rounds} "
                                  f"rounds of the job (epsilon {self.epsilon:.3f}); round "
                                  f"{round_id} refused")
        budget = self.job.epsilon_budget
        acc = self.dp.accountant()
        if budget is not None and acc is not None and acc.epsilon(
                (len(self.rounds) + 1) * self.dp.steps_per_round) > budget:
            raise BudgetExhausted(f"client {self.client_id}: round {round_id} would exceed "
                                  f"epsilon {budget} (spent {self.epsilon:.3f})")


def chunk_answers_path(ledger_path: Path) -> Path:
    """Where the chunk answers of a party live, beside its ledger file
    (``client-1.ledger.json`` -> ``client-1.chunks.json``)."""
    stem = ledger_path.name.removesuffix(".json").removesuffix(".ledger")
    return ledger_path.with_name(f"{stem}.chunks.json")


class ChunkAnswers:
    """The highest step of a chunked job this party has answered (-1: none), persisted before
    each answer leaves, so no step is answered twice, across restarts too."""

    def __init__(self, job: FinetuneJob, client_id: int, path: Path | None = None) -> None:
        """Raises:
            LedgerError: ``path`` exists but is unreadable or of another job or party."""
        self.job, self.client_id, self.path = job, client_id, path
        self.last = -1
        if path is not None and path.exists():
            doc = _read_bound(path, job, client_id, "chunk answers")
            last = doc.get("last_step")
            if not isinstance(last, int) or isinstance(last, bool) or last < -1:
                raise LedgerError(f"cannot read the chunk answers {path}: last_step {last!r}")
            self.last = last
        elif path is None:
            log.info("client %d: no chunk answers file: a restarted process forgets the "
                     "chunks it has answered", client_id)

    def record(self, step: int) -> None:
        """Record an answer to ``step``, persisted before returning.

        Raises:
            RoundReplayed: ``step`` is at or below the highest step answered.
            OSError: the file cannot be written (nothing is answered then).
        """
        if step <= self.last:
            raise RoundReplayed(f"client {self.client_id}: step {step} replayed (already "
                                f"answered step {self.last}): a chunk is answered at most once")
        self.last = step  # before the write: a failed write leaves the step refused
        if self.path is not None:
            _write_bound(self.path, self.job, self.client_id, {"last_step": step})
