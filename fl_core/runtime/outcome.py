"""The round driver's settings and what it reports of each round (plain data)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from secagg.protocols.transitions import ServerStage

__all__ = ["DriverSettings", "RoundOutcome"]


@dataclass(frozen=True)
class DriverSettings:
    """Deadlines in seconds: ``stage_deadlines`` by stage name (``"advertise"`` ...)
    override ``deadline_s``; ``join_timeout_s`` bounds the wait for a cohort (``n`` clients,
    or ``min_clients`` when set) before a round aborts. ``min_clients``: a round may run with
    fewer than ``n`` live clients, down to this many (None: exactly ``n``), once no new
    client has connected for ``refill_wait_s`` (the first round waits for ``n`` up to
    ``join_timeout_s``; see :class:`secagg.fl_core.runtime.cohort.CohortSampler`)."""

    deadline_s: float = 10.0
    stage_deadlines: Mapping[str, float] = field(default_factory=dict)
    join_timeout_s: float = 30.0
    min_clients: int | None = None
    refill_wait_s: float = 3.0
    dead_grace_s: float = 3.0
    """A cohort member whose route fails (the liveness probe's ``PeerUnreachable``) counts as
    gone only once it has stayed unreachable, without a word, this long (at most half the
    stage's deadline). After the server was busy, routes go stale while the clients reconnect
    at once and say hello within their heartbeat: without the grace a whole cohort was declared
    gone 0.5 s into a stage (issue 22, a distillation round lost that way)."""
    state_float32: bool = False
    """Broadcast the global state as float32 (half the bytes): for models trained in float32,
    whose clients cast it to float32 anyway."""

    def deadline(self, stage: ServerStage) -> float:
        """The deadline of ``stage`` in seconds."""
        return float(self.stage_deadlines.get(stage.value, self.deadline_s))


@dataclass
class RoundOutcome:
    """What happened in one round (``aggregate`` is None when it aborted)."""

    round_id: int
    sampled: tuple[int, ...]
    aggregate: npt.NDArray[np.float64] | None = None
    weight_total: float = 0.0
    included: tuple[int, ...] = ()
    error: str | None = None
    stages: list[dict[str, Any]] = field(default_factory=list)
    bytes_up: int = 0
    bytes_down: int = 0
    seconds: float = 0.0
    join_seconds: float = 0.0
    rejected: int = 0
    late: int = 0
    encrypted: bytes | None = field(default=None, repr=False)
    """CKKS: the wire bytes of the encrypted sum (the server has no plaintext aggregate)."""
    key_epoch: int | None = None
    key_setup_seconds: float = 0.0
    server_add: dict[str, Any] | None = None
    """CKKS with a summer: seconds the server spent adding (``ckks_workers`` stats)."""
    threshold: int = 0
    """The round's protocol threshold (0: the round did not start): a completed round had at
    least this many survivors."""
    released: bool = False
    """The round reached its input stage: the server asked the cohort for its inputs (SecAgg:
    it sent the shares relays; plain and CKKS: the round start). A round that aborted before
    released nothing, and its charge is voided (:func:`secagg.fl_core.runtime.server_app.serve`)."""
    released_noise: dict[int, dict[int, bytes]] = field(default_factory=dict, repr=False)
    """SecAgg/SecAgg+: the removable noise seeds the survivors released, ``{client: {level:
    seed}}`` (the application expands and subtracts them: :mod:`secagg.fl_core.dp.exact`)."""

    @property
    def ok(self) -> bool:
        """True if the round produced an aggregate (CKKS: an encrypted sum)."""
        return self.aggregate is not None or self.encrypted is not None
