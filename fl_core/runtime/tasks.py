"""What the server does with a round's aggregate: the :class:`ServerTask` interface.

:func:`secagg.fl_core.runtime.server_app.serve` owns rounds, checkpoints and crash safety; a task
owns the
meaning of the global state: its initial value, how an aggregate changes it (FedAvg, a DP-SGD
Adam step), what a round reports (epsilon spent, accuracy), when to stop (a privacy budget),
and its own state, checkpointed with the model in one atomic write so a resumed server
neither loses nor repeats a step.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from secagg.fl_core.runtime.driver import RoundOutcome

__all__ = ["FedAvgTask", "ServerTask"]

Vector = npt.NDArray[np.float64]


class ServerTask(Protocol):
    """The server-side application of a federation."""

    def initial_state(self, dim: int) -> Vector:
        """The global state before round 1."""
        ...

    def begin_round(self, round_id: int) -> None:
        """Round ``round_id`` is about to start: charge what it may spend (the privacy
        accountant). Called before the reservation, with :meth:`state_dict`, is written."""
        ...

    def apply(self, state: Vector, out: RoundOutcome) -> Vector | None:
        """The next state after a round, or None when ``out`` aborted (nothing changes)."""
        ...

    def report(self, out: RoundOutcome) -> dict[str, Any]:
        """Fields added to the round's summary (after :meth:`apply`)."""
        ...

    def stop_reason(self) -> str | None:
        """A reason not to start another round (a spent privacy budget), else None."""
        ...

    def state_dict(self) -> tuple[dict[str, Any], dict[str, Vector]]:
        """JSON-able state and float64 arrays to checkpoint."""
        ...

    def load_state_dict(self, doc: dict[str, Any] | None, arrays: dict[str, Vector]) -> None:
        """Restore what :meth:`state_dict` returned (``doc`` None: a fresh start).

        Raises:
            ValueError: the checkpoint holds another task's state.
        """
        ...


class FedAvgTask:
    """The synthetic-update federation: the state accumulates the survivors' mean (server
    learning rate 1). Under CKKS the server has no plaintext: a round is a step that adds
    nothing (the clients apply the decrypted mean to their own copies)."""

    def initial_state(self, dim: int) -> Vector:
        """Zeros."""
        return np.zeros(dim)

    def begin_round(self, round_id: int) -> None:
        """Nothing to charge."""

    def apply(self, state: Vector, out: RoundOutcome) -> Vector | None:
        """``state + sum / weight_total``; CKKS: ``state``; aborted: None."""
        if out.encrypted is not None:
            return state
        if out.aggregate is None:
            return None
        return state + out.aggregate / out.weight_total

    def report(self, out: RoundOutcome) -> dict[str, Any]:
        """Nothing to add."""
        return {}

    def stop_reason(self) -> str | None:
        """Never stops early."""
        return None

    def state_dict(self) -> tuple[dict[str, Any], dict[str, Vector]]:
        """Stateless."""
        return {}, {}

    def load_state_dict(self, doc: dict[str, Any] | None, arrays: dict[str, Vector]) -> None:
        """Stateless."""
