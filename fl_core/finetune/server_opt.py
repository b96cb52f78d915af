"""The server's optimizer on the mean client update (the update-carrying modes).

Each round the server receives the mean update ``mean`` of the parties (new - old weights,
already un-noised or noised as the job's DP mode says: this step is post-processing). As in
Reddi et al. 2021 ("Adaptive Federated Optimization", Algorithm 2) the pseudo-gradient is
``-mean`` and a server optimizer turns it into the step added to the global weights:

- ``avg`` (FedAvg, McMahan et al. 2017): ``step = server_lr * mean``; stateless.
- ``avgm`` (FedAvgM, Hsu et al. 2019): heavy-ball momentum on the pseudo-gradient,
  ``m = beta * m + mean``; ``step = server_lr * m``.
- ``adam`` (FedAdam, Reddi et al. 2021, Algorithm 2, no bias correction, as in the paper):
  ``m = b1 m + (1 - b1) mean``; ``v = b2 v + (1 - b2) mean^2`` (``v`` starts at ``tau^2``);
  ``step = server_lr * m / (sqrt(v) + tau)`` with ``b1 = server_momentum``, ``b2 = 0.99``,
  ``tau = 1e-3`` (the paper's defaults).

State is float64 arrays plus a step count, so a server checkpoint carries it
(:meth:`ServerOptimizer.state_dict`); FedAvg has none, so checkpoints of FedAvg jobs are
exactly as before.
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np
import numpy.typing as npt

__all__ = ["ADAM_BETA2", "ADAM_TAU", "SERVER_OPTIMIZERS", "ServerOptimizer"]

Vector = npt.NDArray[np.float64]

SERVER_OPTIMIZERS: Final = ("avg", "avgm", "adam")
ADAM_BETA2: Final = 0.99
ADAM_TAU: Final = 1e-3
_PREFIX: Final = "server_opt_"


class ServerOptimizer:
    """``step(mean) -> delta`` (the server adds ``delta`` to the global weights).

    Raises:
        ValueError: an unknown ``kind``, a non-positive ``lr``, ``momentum`` outside [0, 1),
            or ``dim`` < 1 (when built).
    """

    def __init__(self, kind: str, *, dim: int, lr: float, momentum: float) -> None:
        if kind not in SERVER_OPTIMIZERS:
            raise ValueError(f"kind must be one of {SERVER_OPTIMIZERS}, got {kind!r}")
        if not (isinstance(dim, int) and dim >= 1):
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr!r}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        self.kind, self.dim, self.lr, self.momentum = kind, dim, lr, momentum
        self.t = 0
        self.m: Vector = np.zeros(dim)
        self.v: Vector = np.full(dim, ADAM_TAU ** 2)

    def step(self, mean: Vector) -> Vector:
        """The step to add to the global weights for the mean update ``mean``.

        Raises:
            ValueError: ``mean`` has the wrong length.
        """
        if mean.shape != (self.dim,):
            raise ValueError(f"mean update has shape {mean.shape}, expected ({self.dim},)")
        self.t += 1
        if self.kind == "avg":
            delta: Vector = self.lr * mean
            return delta
        if self.kind == "avgm":
            self.m = self.momentum * self.m + mean
            return self.lr * self.m
        self.m = self.momentum * self.m + (1.0 - self.momentum) * mean
        self.v = ADAM_BETA2 * self.v + (1.0 - ADAM_BETA2) * mean * mean
        delta = self.lr * self.m / (np.sqrt(self.v) + ADAM_TAU)
        return delta

    def state_dict(self) -> tuple[dict[str, Any], dict[str, Vector]]:
        """JSON state and float64 arrays (none for FedAvg: its checkpoints stay as before)."""
        if self.kind == "avg":
            return {}, {}
        doc: dict[str, Any] = {"server_opt": {"kind": self.kind, "t": self.t}}
        arrays = {_PREFIX + "m": self.m}
        if self.kind == "adam":
            arrays[_PREFIX + "v"] = self.v
        return doc, arrays

    def load_state_dict(self, doc: dict[str, Any], arrays: dict[str, Vector]) -> None:
        """Restore what :meth:`state_dict` wrote. A checkpoint without server-optimizer state
        (written before this module existed, or by FedAvg) leaves the fresh state.

        Raises:
            ValueError: the state is of another optimizer kind or length.
        """
        saved = doc.get("server_opt")
        if saved is None:
            if self.kind != "avg" and any(k.startswith(_PREFIX) for k in arrays):
                raise ValueError("server optimizer arrays without their header")
            return
        if saved.get("kind") != self.kind:
            raise ValueError(f"checkpoint has server optimizer {saved.get('kind')!r}, "
                             f"the job {self.kind!r}")
        names = [_PREFIX + "m"] + ([_PREFIX + "v"] if self.kind == "adam" else [])
        for name in names:
            if name not in arrays or arrays[name].shape != (self.dim,):
                raise ValueError(f"checkpoint array {name} missing or of the wrong length")
        self.t = int(saved["t"])
        self.m = np.asarray(arrays[_PREFIX + "m"], dtype=np.float64).copy()
        if self.kind == "adam":
            self.v = np.asarray(arrays[_PREFIX + "v"], dtype=np.float64).copy()
