"""Distributed DP over Flower: the node's noise share and the server's accountant.

The mechanism, calibration and accounting are ``secagg run``'s, client level with distributed
noise over SecAgg/SecAgg+ (:mod:`secagg.fl_core.finetune.privacy`, the ``[dp]`` table of the
policy file resolved by :func:`secagg.fl_core.finetune.privacy.resolve_dp`):

- **node** (:func:`noised_update`): the app's update is clipped to L2 norm ``C``, divided by
  ``C`` and given this node's exact distributed noise for the round's ``(n, t)``
  (:func:`secagg.fl_core.dp.add_exact_noise`: a never-revealed base and removable levels whose
  seeds the protocol client holds and releases only on a survivor count it trusts). Every
  parameter comes from the node's own policy file; the noise from a
  :class:`secagg.fl_core.dp.NoiseSource` (AES-CTR keyed from the OS CSPRNG).
- **server** (:class:`RoundAccountant`): charges the accountant for a round, and writes its
  state, before any message of that round goes out (a crash or an abort after the sum still
  leaves the round charged); refuses a round once the planned rounds are charged or one more
  would exceed ``epsilon_budget`` (:class:`PrivacyBudgetExhausted`); after the round subtracts
  the released noise components (the sum then carries exactly ``sigma C``) and rescales from
  units of ``C``.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from secagg.fl_core.dp import NoiseSource, PrivacyAccountant, add_exact_noise, clip_l2
from secagg.fl_core.dp import released_noise as expand_released
from secagg.fl_core.errors import FlCoreError
from secagg.fl_core.finetune.privacy import ResolvedDp
from secagg.fl_core.flower.policy import FederationPolicy
from secagg.fl_core.runtime.policy import PolicyMismatch

__all__ = ["PrivacyBudgetExhausted", "RoundAccountant", "noised_update"]

log = logging.getLogger(__name__)

Vector = npt.NDArray[np.float64]


class PrivacyBudgetExhausted(FlCoreError):
    """The server refuses a round: its planned rounds are all charged, or one more would
    spend more than ``epsilon_budget``. Nothing of the round was sent."""


def noised_update(x: Vector, dp: ResolvedDp, *, n: int, t: int
                  ) -> tuple[Vector, dict[int, bytes]]:
    """This node's contribution to a round of ``n`` with threshold ``t``: ``x`` clipped to
    ``C``, in units of ``C``, with its exact distributed noise; and the seeds of its
    removable levels (for :meth:`secagg.protocols.client.SecAggClient.hold_removable`).

    Raises:
        PolicyMismatch: (``cohort``) the policy's noise is not calibrated for ``(n, t)``.
        ValueError: ``x`` is not a finite 1-D vector.
    """
    cfg = dp.config
    assert cfg is not None
    if (n, t) not in dp.exact_cohorts:
        raise PolicyMismatch("cohort", f"my DP is calibrated for rounds "
                             f"{list(dp.exact_cohorts)}, not n={n}, t={t}")
    clipped, _ = clip_l2(x, cfg.clip)
    out, seeds = add_exact_noise(clipped / cfg.clip, replace(cfg, clip=1.0), n, t,
                                 NoiseSource())
    bound = dp.protocol_clip
    clamped = int(np.count_nonzero(np.abs(out) > bound))
    if clamped:  # its probability is in the accounted delta (clamp_probability)
        log.warning("%d noised values beyond the protocol range +-%g clamped", clamped, bound)
        np.clip(out, -bound, bound, out=out)
    return out, seeds


class RoundAccountant:
    """The server's accountant over Flower (as :class:`FinetuneServerTask`'s).

    ``state_file`` (optional) keeps the accountant across server restarts: it is read when
    the accountant is built and rewritten, atomically, by every :meth:`charge`.

    Raises:
        ValueError: the policy has no ``[dp]`` table.
        DpConfigError: the state file belongs to another mechanism.
    """

    def __init__(self, policy: FederationPolicy, *, state_file: str | Path | None = None
                 ) -> None:
        if policy.dp is None or policy.dp.config is None or policy.dp_settings is None:
            raise ValueError("the policy has no [dp] table")
        self.dp: ResolvedDp = policy.dp
        self.rounds = policy.dp_settings.rounds
        self.budget = policy.dp_settings.epsilon_budget
        acc = self.dp.accountant()
        assert acc is not None
        self.accountant: PrivacyAccountant = acc
        self.charged: set[int] = set()
        self.state_file = None if state_file is None else Path(state_file)
        if self.state_file is not None and self.state_file.exists():
            doc = json.loads(self.state_file.read_text())
            self.accountant.load_state_dict(doc["accountant"])
            self.charged = {int(r) for r in doc.get("charged", [])}

    @property
    def charged_rounds(self) -> int:
        """Rounds charged so far."""
        return self.accountant.steps // self.dp.steps_per_round

    @property
    def epsilon(self) -> float:
        """Epsilon spent so far (at the accountant's delta)."""
        return self.accountant.epsilon()

    @property
    def delta(self) -> float:
        """The delta of the charged rounds (conversion delta plus their clamp terms)."""
        return self.dp.delta_after(self.charged_rounds)

    def stop_reason(self) -> str | None:
        """Why the next round must not run (None: it may)."""
        if self.charged_rounds >= self.rounds:
            return (f"all {self.rounds} planned rounds are charged (epsilon "
                    f"{self.epsilon:.3f})")
        steps = self.accountant.steps + self.dp.steps_per_round
        if self.budget is not None and self.accountant.epsilon(steps) > self.budget:
            return (f"one more round would exceed epsilon {self.budget} (spent "
                    f"{self.epsilon:.3f})")
        return None

    def check(self, round_id: int) -> None:
        """Raises PrivacyBudgetExhausted if round ``round_id`` (not charged yet) must not run
        (:meth:`stop_reason`)."""
        reason = None if round_id in self.charged else self.stop_reason()
        if reason is not None:
            raise PrivacyBudgetExhausted(f"round {round_id} refused: {reason}")

    def charge(self, round_id: int) -> None:
        """Charge round ``round_id`` (a no-op for an id already charged) and persist, before
        anything of the round is sent.

        Raises:
            PrivacyBudgetExhausted: see :meth:`stop_reason`.
            OSError: the state file cannot be written (the round must not run then).
        """
        if round_id in self.charged:
            return
        self.check(round_id)
        self.accountant.step(self.dp.steps_per_round)
        self.charged.add(round_id)
        if self.state_file is not None:
            self._save(self.state_file)

    def _save(self, path: Path) -> None:
        doc = {"accountant": self.accountant.state_dict(), "charged": sorted(self.charged)}
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("w") as f:
            f.write(json.dumps(doc))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def release(self, total: Vector, released: dict[int, dict[int, bytes]], *, n: int,
                t: int, round_id: int) -> Vector:
        """The round's sum in value units: the released noise components subtracted (the
        rest carries exactly ``sigma C``; ``secagg run``'s ``_strip_released``), times
        ``C``."""
        cfg = self.dp.config
        assert cfg is not None
        if released:
            if (n, t) in self.dp.exact_cohorts:
                total = total - expand_released(released, replace(cfg, clip=1.0), n, t,
                                                total.shape[0])
            else:
                log.error("round %d: noise released for an uncalibrated round (n=%d, t=%d); "
                          "ignored (the sum keeps it)", round_id, n, t)
        return total * cfg.clip

    def report(self) -> dict[str, Any]:
        """Epsilon and delta spent so far, and the rounds charged."""
        return {"epsilon": self.epsilon, "delta": self.delta,
                "rounds_charged": self.charged_rounds}
