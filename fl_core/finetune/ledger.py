"""The client's own privacy ledger: a party stops releasing when ITS budget is spent.

The server's accountant stops an honest server; a malicious one can simply keep starting
rounds. Each round a party releases a noised contribution, and the job's epsilon holds for
``job.rounds`` such releases only (with ``--noise-multiplier`` fixed, a server running more rounds
would pass every per-round policy check). So every party keeps a ledger of the rounds it has
released into, charged BEFORE the contribution is computed (as the server charges before a
round starts), and refuses a round that would exceed the job's rounds or ``epsilon_budget``.
The ledger file (``secagg client --ledger FILE``; ``secagg run`` gives every client one in its
run folder) survives restarts: it is written atomically before the round's contribution exists.
Without a file the ledger lives in memory and a restarted process starts a fresh one (said in a
warning).

For a continual job this is the lifetime budget: one ledger over every stage.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from secagg.fl_core.finetune.job import FinetuneJob
from secagg.fl_core.finetune.privacy import ResolvedDp

__all__ = ["BudgetExhausted", "LedgerError", "PrivacyLedger"]

log = logging.getLogger("secagg.fl_core.finetune")


class BudgetExhausted(ValueError):
    """One more release would exceed this party's budget: the party sits the round out."""


class LedgerError(ValueError):
    """The ledger file is unreadable, or belongs to another job or party."""


class PrivacyLedger:
    """Rounds this party has released into, against its job's budget."""

    def __init__(self, job: FinetuneJob, dp: ResolvedDp, client_id: int,
                 path: Path | None = None) -> None:
        """Raises:
            LedgerError: ``path`` exists but is unreadable or of another job or party."""
        self.job, self.dp, self.client_id, self.path = job, dp, client_id, path
        self.rounds: list[int] = []
        if path is not None and path.exists():
            self.rounds = self._load(path)
        elif path is None and dp.config is not None:
            log.info("client %d: no ledger file: a restarted process forgets the rounds "
                        "it has released into", client_id)

    def _load(self, path: Path) -> list[int]:
        try:
            doc = json.loads(path.read_text())
            rounds = [int(r) for r in doc["rounds"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise LedgerError(f"cannot read the privacy ledger {path}: {exc}") from None
        if doc.get("job") != self.job.digest or doc.get("client") != self.client_id:
            raise LedgerError(f"the privacy ledger {path} belongs to another job or party")
        return rounds

    @property
    def epsilon(self) -> float:
        """This party's epsilon after the rounds charged so far (0.0 without DP)."""
        acc = self.dp.accountant()
        return 0.0 if acc is None else acc.epsilon(len(self.rounds) * self.dp.steps_per_round)

    def charge(self, round_id: int) -> None:
        """Record a release into round ``round_id`` (persisted before returning); a round
        charged before (a retried call) is not charged twice.

        Raises:
            BudgetExhausted: the job's rounds are all charged, or one more round would exceed
                ``epsilon_budget``.
            OSError: the ledger file cannot be written (nothing is released then).
        """
        if self.dp.config is None or round_id in self.rounds:
            return
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
        self.rounds.append(round_id)
        if self.path is not None:
            tmp = self.path.with_name(self.path.name + ".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump({"job": self.job.digest, "client": self.client_id,
                           "rounds": self.rounds}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
