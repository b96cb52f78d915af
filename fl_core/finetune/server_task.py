"""The fine-tuning job's server side: global adapter weights, the DP step, the accountant.

The server sees only the secure sum of the survivors' (noised) contributions. Record level,
distributed noise: the sum is ``(sum of clipped per-example gradients) / C + noise`` on the
fixed-point grid; the server rescales it to the noised mean gradient ``C * sum / (q N)`` (``q
N`` is the expected batch, a public constant, as in DP-SGD with Poisson sampling) and takes an
Adam step, which is post-processing. Other modes carry updates: the job's ``server_optimizer``
(FedAvg, FedAvgM or FedAdam at ``server_lr``, :mod:`secagg.fl_core.finetune.server_opt`) steps
on their mean (client level: over the cohort size ``n``, a public constant, times ``C``).

The server also holds the public hold-out set and the same pretrained model, and evaluates
the global weights before round 1 and at the end.

Privacy is charged BEFORE a round can release anything: :meth:`begin_round` steps the
accountant when the round is reserved, and the server writes that state with the reservation
(:func:`secagg.fl_core.runtime.server_app.serve`) before any round-start message goes out. The
server
process sees the unmasked sum inside the round, so a crash (or a malicious server) after the
sum but before the checkpoint must still find the round charged. A reserved round counts even
if it aborts, unless it aborted before the server asked for any input (no shares relay sent;
:attr:`secagg.fl_core.runtime.driver.RoundOutcome.released`): then no input left any party and
:meth:`FinetuneServerTask.void_round` takes the charge back (not for distillation). A crash
in between leaves it charged. The job's ``(epsilon, delta)`` is for ``rounds`` charged rounds,
so the task stops once those are spent (or earlier, at ``epsilon_budget``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import numpy.typing as npt

from secagg.fl_core.dp import Placement, PrivacyAccountant, Unit, released_noise
from secagg.fl_core.finetune.job import FinetuneJob
from secagg.fl_core.finetune.party import JobData
from secagg.fl_core.finetune.privacy import ResolvedDp
from secagg.fl_core.finetune.server_opt import ServerOptimizer
from secagg.fl_core.runtime.driver import RoundOutcome
from secagg.models import AdaptedModel, evaluate

__all__ = ["FinetuneServerTask"]

log = logging.getLogger("secagg.fl_core.finetune")

Vector = npt.NDArray[np.float64]
_BETA1, _BETA2, _EPS = 0.9, 0.999, 1e-8


class FinetuneServerTask:
    """:class:`secagg.fl_core.runtime.tasks.ServerTask` of a fine-tuning job."""

    def __init__(self, job: FinetuneJob, model: AdaptedModel, data: JobData, dp: ResolvedDp,
                 *, cohort: int, on_eval: Callable[[dict[str, Any]], None] | None = None,
                 ) -> None:
        self.job, self.model, self.data, self.dp = job, model, data, dp
        self.on_eval = on_eval
        self.cohort = cohort
        self.accountant: PrivacyAccountant | None = dp.accountant()
        self.dim = model.num_trainable
        self.initial_vector = model.get_vector().astype(np.float64)  # before any set_vector
        self._m = np.zeros(self.dim)
        self._v = np.zeros(self.dim)
        self._t = 0
        #: the step on the mean update of the update-carrying modes (FedAvg, FedAvgM, FedAdam)
        self.server_opt = ServerOptimizer(job.server_optimizer, dim=self.dim,
                                          lr=job.server_lr, momentum=job.server_momentum)
        self.evals: list[dict[str, Any]] = []
        self.expected_batch = dp.accountant_rate * sum(data.sizes)
        #: client level: the expected number of real (not sat-out) updates in the sum
        self.expected_updates = cohort * (job.client_sample_rate or 1.0)
        self._charged: set[int] = set()
        #: rounds whose sum had released noise components removed (exact distributed noise)
        self.released_rounds = 0
        cfg = dp.config
        #: record level with distributed noise, or local noise and one local step: the sum is
        #: of (noised) clipped gradient sums and the server takes the optimizer step
        self.steps_on_gradients = cfg is not None and cfg.unit is Unit.RECORD and (
            cfg.placement is Placement.DISTRIBUTED or job.local_steps == 1)

    # -- ServerTask ----------------------------------------------------------------------

    def initial_state(self, dim: int) -> Vector:
        """The model's initial adapter weights (every party initialises them alike), evaluated
        on the hold-out set (the "before" of the summary)."""
        state = self.initial_vector.copy()
        self.evaluate(state, 0)
        return state

    def apply(self, state: Vector, out: RoundOutcome) -> Vector | None:
        """One step from the round's sum (None when the round aborted)."""
        if out.aggregate is None:
            return None
        total, cfg = out.aggregate, self.dp.config
        if not np.all(np.isfinite(total)):
            log.error("round %d: non-finite aggregate refused", out.round_id)
            return None
        total = self._strip_released(total, out)
        if self.steps_on_gradients:
            grad = total * (self.job.clip / self.expected_batch)
            return state - self._step(grad)
        if cfg is not None and cfg.unit is Unit.CLIENT:
            mean = total * (self.job.clip / self.expected_updates)
        else:
            mean = total / max(out.weight_total, 1.0)
        return state + self.server_opt.step(mean)

    def begin_round(self, round_id: int) -> None:
        """Charge round ``round_id`` before it runs (the caller persists :meth:`state_dict`
        before any message of the round goes out). Charging the same id twice is a no-op."""
        if self.accountant is not None and round_id not in self._charged:
            self.accountant.step(self.dp.steps_per_round)
        self._charged.add(round_id)

    voidable = True
    """A round that released nothing may be un-charged: clients compute each contribution
    from the broadcast state alone (False for distillation, whose private local steps
    persist in the models that later rounds release)."""

    def void_round(self, round_id: int) -> bool:
        """Un-charge round ``round_id``, which aborted before the server asked for any input
        (:attr:`RoundOutcome.released` False): no party's input left it, so the mechanism
        never ran. Each client voids its own ledger by its own view of the round. Returns
        True when a charge was removed."""
        if not self.voidable or self.accountant is None or round_id not in self._charged:
            return False
        self.accountant.unstep(self.dp.steps_per_round)
        self._charged.discard(round_id)
        return True

    def report(self, out: RoundOutcome) -> dict[str, Any]:
        """Epsilon and delta spent so far. A round nobody charged with :meth:`begin_round`
        (an in-process driver that calls only apply/report) is charged here when it applied."""
        doc: dict[str, Any] = {}
        if out.round_id not in self._charged and out.ok and self.accountant is not None:
            self.accountant.step(self.dp.steps_per_round)
        if out.released_noise:
            doc["noise_released_by"] = len(out.released_noise)
        if self.accountant is not None:
            doc["epsilon"] = round(self.accountant.epsilon(), 4)
            doc["delta"] = self.dp.delta_after(self.charged_rounds)
        return doc

    @property
    def charged_rounds(self) -> int:
        """Rounds the accountant has been charged for."""
        if self.accountant is None:
            return 0
        return self.accountant.steps // self.dp.steps_per_round

    def stop_reason(self) -> str | None:
        """Stop when the job's rounds are all charged (its epsilon is spent: aborted rounds
        count), or when one more round would spend more than ``epsilon_budget``."""
        if self.accountant is None:
            return None
        if self.charged_rounds >= self.job.rounds:
            return (f"privacy: all {self.job.rounds} rounds of the job are charged "
                    f"(epsilon {self.accountant.epsilon():.3f})")
        budget = self.job.epsilon_budget
        if budget is None:
            return None
        if self.accountant.epsilon(self.accountant.steps + self.dp.steps_per_round) > budget:
            return (f"privacy budget: one more round would exceed epsilon {budget} "
                    f"(spent {self.accountant.epsilon():.3f})")
        return None

    def state_dict(self) -> tuple[dict[str, Any], dict[str, Vector]]:
        """Accountant, Adam and server-optimizer state."""
        doc = self._with_accountant({"task": "finetune", "job": self.job.digest,
                                     "adam_t": self._t, "evals": self.evals})
        opt_doc, opt_arrays = self.server_opt.state_dict()
        return doc | opt_doc, {"adam_m": self._m, "adam_v": self._v} | opt_arrays

    def load_state_dict(self, doc: dict[str, Any] | None, arrays: dict[str, Vector]) -> None:
        """Restore from a checkpoint of the same job.

        Raises:
            ValueError: the checkpoint is of another job or task, or its server-optimizer
                state does not fit the job's.
        """
        if doc is None:
            return
        if doc.get("task") != "finetune" or doc.get("job") != self.job.digest:
            raise ValueError("the checkpoint belongs to another job (job digest differs)")
        self._t = int(doc["adam_t"])
        self.evals = list(doc.get("evals", []))
        self._m, self._v = arrays["adam_m"].copy(), arrays["adam_v"].copy()
        self.server_opt.load_state_dict(doc, arrays)
        self._restore_accountant(doc)

    # -- helpers -------------------------------------------------------------------------

    def _strip_released(self, total: Vector, out: RoundOutcome) -> Vector:
        """Subtract the noise components the survivors released (exact distributed noise:
        what is left carries exactly ``sigma``). The sum is in units of ``C``."""
        if not out.released_noise or self.dp.config is None:
            return total
        n, t = len(out.sampled), out.threshold
        if (n, t) not in self.dp.exact_cohorts:
            log.error("round %d: noise released for an uncalibrated round (n=%d, t=%d); "
                      "ignored (the sum keeps it)", out.round_id, n, t)
            return total
        unit_cfg = replace(self.dp.config, clip=1.0)
        released = released_noise(out.released_noise, unit_cfg, n, t, total.shape[0])
        self.released_rounds += 1
        return total - released

    def _step(self, grad: Vector) -> Vector:
        if self.job.optimizer == "sgd":  # heavy-ball momentum; the buffer lives in _m
            self._t += 1
            self._m = _BETA1 * self._m + grad
            return self.job.lr * self._m
        self._t += 1
        self._m = _BETA1 * self._m + (1 - _BETA1) * grad
        self._v = _BETA2 * self._v + (1 - _BETA2) * grad * grad
        m_hat = self._m / (1 - _BETA1 ** self._t)
        v_hat = self._v / (1 - _BETA2 ** self._t)
        step: Vector = self.job.lr * m_hat / (np.sqrt(v_hat) + _EPS)
        return step

    def evaluate(self, state: Vector, step: int) -> dict[str, Any]:
        """Metrics of ``state`` on the hold-out set, recorded with ``step``."""
        start = time.perf_counter()
        self._load_for_eval(state)
        res = evaluate(self.model, self.data.test, max_length=self.job.max_length)
        doc: dict[str, Any] = {"step": step, "examples": res.examples,
                               "loss": round(res.loss, 5),
                               "seconds": round(time.perf_counter() - start, 2)}
        for name in ("accuracy", "macro_f1", "perplexity"):
            value = getattr(res, name, None)
            if value is not None:
                doc[name] = round(float(value), 5)
        self.evals.append(doc)
        if self.on_eval is not None:
            self.on_eval(doc)
        return doc

    def _load_for_eval(self, state: Vector) -> None:
        """Put the weights that :meth:`evaluate` measures into the model (here: ``state``)."""
        self.model.set_vector(state)

    def _with_accountant(self, doc: dict[str, Any]) -> dict[str, Any]:
        """``doc`` plus the accountant's state (when DP is on)."""
        if self.accountant is not None:
            doc["accountant"] = self.accountant.state_dict()
        return doc

    def _restore_accountant(self, doc: dict[str, Any]) -> None:
        if self.accountant is not None and "accountant" in doc:
            self.accountant.load_state_dict(doc["accountant"])
