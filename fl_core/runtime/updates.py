"""What a client computes for a round: the update callables the client session drives.

A plain :data:`UpdateFn` maps ``(round_id, broadcast state)`` to the contribution; richer
tasks implement one of the protocols below, which the session detects with ``isinstance``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

__all__ = ["RoundAwareUpdate", "StepAwareUpdate", "UpdateFn", "VoidableUpdate"]

UpdateFn = Callable[[int, npt.NDArray[np.float64]], npt.NDArray[np.float64]]


@runtime_checkable
class RoundAwareUpdate(Protocol):
    """An update that adds exact distributed noise: it needs the round's size and threshold
    (from the client's own policy) and returns the seeds of its removable noise, which the
    SecAgg client releases once the survivors are known (:mod:`secagg.fl_core.dp.exact`)."""

    def __call__(self, round_id: int, state: npt.NDArray[np.float64]
                 ) -> npt.NDArray[np.float64]:
        """The contribution without a round context (threshold design)."""
        ...

    def for_round(self, round_id: int, state: npt.NDArray[np.float64], *, n: int, t: int
                  ) -> tuple[npt.NDArray[np.float64], dict[int, bytes] | None]:
        """The contribution to a round of ``n`` clients with threshold ``t``, and its
        removable noise seeds (None: none)."""
        ...


@runtime_checkable
class StepAwareUpdate(Protocol):
    """An update that needs the round start's ``step`` (the count of applied rounds), e.g. the
    chunked full-weight pretrain job, where step ``j`` asks for chunk ``j mod K`` of training
    round ``j // K`` (:mod:`secagg.fl_core.finetune.chunked`). Refusing (a ``ValueError``)
    makes the client sit the round out."""

    def __call__(self, round_id: int, state: npt.NDArray[np.float64]
                 ) -> npt.NDArray[np.float64]:
        """The contribution without a step (refused by step-aware tasks)."""
        ...

    def for_step(self, round_id: int, step: int, state: npt.NDArray[np.float64]
                 ) -> npt.NDArray[np.float64]:
        """The contribution to round ``round_id`` at ``step`` from the broadcast ``state``."""
        ...


@runtime_checkable
class VoidableUpdate(Protocol):
    """An update that keeps books of its releases (a privacy ledger) and can un-charge a
    round that released nothing: the client session calls :meth:`void` when a round ends
    (abort, newer round, protocol error, stop) before its input left, i.e. while the
    participant was in :data:`secagg.protocols.transitions.INPUT_PENDING`. Only a task whose
    contribution leaves no data-dependent state behind may implement it."""

    def __call__(self, round_id: int, state: npt.NDArray[np.float64]
                 ) -> npt.NDArray[np.float64]:
        """The contribution to round ``round_id``."""
        ...

    def void(self, round_id: int) -> bool:
        """Un-charge round ``round_id``; True when a charge was removed.

        Raises:
            OSError: the books could not be written (the round stays charged).
        """
        ...
