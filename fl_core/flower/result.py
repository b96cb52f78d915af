"""What one secure round over Flower yields (:class:`FlowerRound`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from flwr.app import RecordDict

__all__ = ["FlowerRound"]


@dataclass
class FlowerRound:
    """One round over Flower: the sum, who is in it, traffic (wire bytes) and wall time.

    With DP the ``aggregate`` is in the app's units (the released noise removed, rescaled
    from units of the clip bound) and carries the mechanism's noise of std ``sigma C``."""

    aggregate: npt.NDArray[np.float64] | None
    included: tuple[int, ...]
    weight_total: float
    node_of: dict[int, int]
    """Protocol id -> Flower node id."""
    seconds: float
    bytes_up: dict[int, int] = field(default_factory=dict)
    bytes_down: dict[int, int] = field(default_factory=dict)
    fit_replies: dict[int, RecordDict] = field(default_factory=dict, repr=False)
    """The app's train reply (arrays emptied) per protocol id, from the first stage."""
    epsilon: float | None = None
    """DP: epsilon spent after this round (the accountant was charged before it ran)."""
    delta: float | None = None
    """DP: the delta of that epsilon (conversion delta plus the rounds' clamp terms)."""
    released_noise: dict[int, dict[int, bytes]] = field(default_factory=dict, repr=False)
    """DP: ``{client: {level: seed}}`` of the noise components the survivors released (already
    subtracted from ``aggregate``)."""
    seen_dead: dict[int, float] = field(default_factory=dict)
    """Flower node ids seen dead during the round (the SuperLink said ``NODE_UNAVAILABLE`` or
    stopped listing them; :mod:`secagg.fl_core.flower.stage_wait`): the wall-clock time
    (``time.time()``) when seen. They count as missing, as a timeout does."""

    @property
    def included_nodes(self) -> tuple[int, ...]:
        """Flower node ids whose input is in the sum."""
        return tuple(self.node_of[c] for c in self.included)

    @property
    def mean(self) -> npt.NDArray[np.float64] | None:
        """The (weighted) mean update, if the sum is known to the server."""
        if self.aggregate is None or self.weight_total <= 0:
            return None
        return self.aggregate / self.weight_total
