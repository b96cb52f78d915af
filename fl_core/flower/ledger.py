"""A Flower node's own privacy ledger (DESIGN part 6: each party keeps its own books).

The server's accountant (:class:`secagg.fl_core.flower.privacy.RoundAccountant`) stops an
honest server only. One that builds a fresh ``SecAggWorkflow`` (so a fresh accountant) for each
round would get a freshly noised update from every node in every round, far past the epsilon
the node's policy promises for its ``rounds``. So a node whose policy has a ``[dp]`` table keeps
``secagg run``'s :class:`secagg.fl_core.finetune.ledger.PrivacyLedger` in the file its policy
names (``ledger``, required with ``[dp]``: :func:`secagg.fl_core.flower.policy.load_node_policy`
refuses a DP policy without it), and ``secagg_mod`` calls :func:`charge_node_ledger` on every
round start, after the policy check and before the app trains:

- the file is bound to the node's policy digest (the document every round context carries:
  protocol, cohort sizes, ``dim``, the resolved ``[dp]`` mechanism) and to its protocol id (its
  card's id); a ledger of another policy or another node is refused (:class:`LedgerError`);
- a round id at or below the highest it has charged is refused (``PolicyMismatch`` on
  ``round_id``): no retry exemption, so a restarted node never answers a round id twice, with
  or without a ``state`` file;
- once the policy's ``rounds`` are charged, or if one more round would exceed its
  ``epsilon_budget``, the round is refused (:class:`BudgetExhausted`);
- otherwise the round is recorded and the file replaced atomically (written, fsynced,
  renamed) before the function returns. The read-check-write runs under an exclusive lock on
  ``<ledger>.lock``, so two processes of one node cannot both spend the last round.

A round charged whose app or protocol then fails stays charged: the ledger errs on the node's
side.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from secagg.fl_core.finetune.job import FinetuneJob
from secagg.fl_core.finetune.ledger import BudgetExhausted, LedgerError, PrivacyLedger
from secagg.fl_core.flower.policy import NodePolicy, NodePolicyError
from secagg.fl_core.runtime.policy import PolicyMismatch

__all__ = ["BudgetExhausted", "LedgerError", "charge_node_ledger", "node_ledger"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _PolicyBoundJob(FinetuneJob):
    """The ``[dp]`` table's job (its ``rounds`` and ``epsilon_budget`` are what the ledger
    charges against) whose identity, the digest a ledger file is bound to, is the node's
    policy digest: the job alone leaves out ``dim``, the cohort sizes and the protocol, on
    which the calibration depends."""

    policy_digest: str = ""

    @property
    def digest(self) -> str:
        """The node's policy digest (hex)."""
        return self.policy_digest


def node_ledger(node: NodePolicy) -> PrivacyLedger | None:
    """The node's ledger as its file holds it now (None: the policy has no ``[dp]``).

    Raises:
        NodePolicyError: a ``[dp]`` policy without ``ledger`` (or ``dim``).
        LedgerError: the file is unreadable, or bound to another policy or node.
    """
    fed = node.federation
    if fed.dp is None or fed.dp_settings is None:
        return None
    if node.ledger_file is None or fed.dim is None:
        raise NodePolicyError("a [dp] policy needs ledger (and dim): refused")
    job = _PolicyBoundJob(**asdict(fed.dp_settings.job(fed.n)),
                          policy_digest=fed.digest(fed.dim).hex())
    return PrivacyLedger(job, fed.dp, node.client_id, node.ledger_file)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``<path>.lock`` (one read-check-write at a time, across the
    node's processes).

    Raises:
        OSError: the lock file cannot be opened.
    """
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released when the descriptor closes
        yield
    finally:
        os.close(fd)


def charge_node_ledger(node: NodePolicy, round_id: int) -> PrivacyLedger | None:
    """Charge round ``round_id`` to the node's ledger, persisted before this returns (a no-op
    returning None for a policy without ``[dp]``).

    Raises:
        PolicyMismatch: (``round_id``) the id is at or below the highest charged.
        BudgetExhausted: the policy's ``rounds`` are all charged, or one more round would
            exceed its ``epsilon_budget``.
        LedgerError, NodePolicyError: see :func:`node_ledger`.
        OSError: the ledger (or its lock) cannot be written; nothing is released then.
    """
    if node.federation.dp is None:
        return None
    if node.ledger_file is None:
        raise NodePolicyError("a [dp] policy needs ledger: refused")
    with _locked(node.ledger_file):
        ledger = node_ledger(node)
        assert ledger is not None
        if ledger.rounds and round_id <= max(ledger.rounds):
            raise PolicyMismatch("round_id", f"round {round_id} is not after round "
                                 f"{max(ledger.rounds)}, the last in my privacy ledger: "
                                 "refused (no round id gets two releases)")
        try:
            ledger.charge(round_id)
        except BudgetExhausted as exc:
            log.warning("client %d: privacy ledger refuses round %d: %s", node.client_id,
                        round_id, exc)
            raise
    return ledger
