"""Server checkpoints, written atomically after every round.

Write path: temporary file in the same folder, ``fsync``, ``rename`` over the old one,
``fsync`` of the folder; a crash at any instant leaves either the old or the new checkpoint,
never a torn one. Format: ``.npz``-free and pickle-free: a JSON header (version, round ids,
membership, accountant slot, history) and the float64 global state, ``u32 header length |
header | state | extra arrays``
(the header lists each extra array's name and length; a server task keeps optimizer moments
there).

Rounds are idempotent by id. ``last_round_id`` is the last round id *started* (reserved with
:meth:`Checkpoint.reserve` before its round-start messages go out) and ``applied_round_id``
the last one whose aggregate is in ``state``. An aggregate is applied and the checkpoint
written in one atomic step, so a crash between aggregate and checkpoint loses the in-memory
application only: the resumed server has the old state and runs a *new* round id for the
same step. Never reusing a round id matters for privacy: a second aggregate of the same
inputs over a different survivor set would tell their difference.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from secagg.fl_core.errors import FlCoreError

__all__ = ["CHECKPOINT_VERSION", "Checkpoint", "CheckpointError", "resume", "write_atomic"]

CHECKPOINT_VERSION: Final = 2
_READABLE: Final = (1, 2)
_LEN: Final = struct.Struct(">I")


class CheckpointError(FlCoreError, ValueError):
    """A checkpoint file is missing, torn or of another version."""


@dataclass(frozen=True)
class Checkpoint:
    """The server state that must survive a crash.

    ``step``: aggregates applied so far (the model version); ``membership``: the client ids
    of the federation; ``accountant``: the server task's JSON state (the privacy accountant's
    ``state_dict`` among it); ``extra``: the task's float64 arrays (optimizer moments);
    ``history``: one small summary per finished round.
    """

    step: int
    last_round_id: int
    applied_round_id: int
    state: npt.NDArray[np.float64] = field(repr=False)
    membership: tuple[int, ...] = ()
    accountant: dict[str, Any] | None = None
    history: tuple[dict[str, Any], ...] = ()
    extra: dict[str, npt.NDArray[np.float64]] = field(default_factory=dict, repr=False)

    @classmethod
    def fresh(cls, dim: int, membership: tuple[int, ...] = ()) -> Checkpoint:
        """Step 0, no round run, a zero state of ``dim`` values."""
        return cls(0, 0, 0, np.zeros(dim), membership)

    def reserve(self, round_id: int, *, task_state: dict[str, Any] | None = None
                ) -> Checkpoint:
        """This checkpoint with ``round_id`` marked started (write it before the round) and,
        when given, the task's state as charged for that round (its privacy accountant)."""
        return replace(self, last_round_id=max(self.last_round_id, round_id),
                       accountant=task_state if task_state is not None else self.accountant)

    def apply(self, round_id: int, aggregate: npt.NDArray[np.float64] | None,
              summary: dict[str, Any]) -> Checkpoint:
        """Add ``aggregate`` to the state once per round id (a second apply of the same or an
        older id changes nothing); an aborted round (None) only records its summary."""
        return self.advance(round_id, None if aggregate is None else self.state + aggregate,
                            summary)

    def advance(self, round_id: int, state: npt.NDArray[np.float64] | None,
                summary: dict[str, Any], *, task_state: dict[str, Any] | None = None,
                extra: dict[str, npt.NDArray[np.float64]] | None = None) -> Checkpoint:
        """Replace the state with ``state`` (a step) once per round id, with the task's state;
        ``state`` None (an aborted round) only records the summary."""
        if round_id <= self.applied_round_id:
            return self
        history = (*self.history, summary)
        if state is None:
            return replace(self, last_round_id=max(self.last_round_id, round_id),
                           history=history)
        return replace(self, step=self.step + 1, last_round_id=max(self.last_round_id, round_id),
                       applied_round_id=round_id, state=state, history=history,
                       accountant=task_state if task_state is not None else self.accountant,
                       extra=dict(extra) if extra is not None else self.extra)

    def to_bytes(self) -> bytes:
        """The file's bytes."""
        head = json.dumps({
            "version": CHECKPOINT_VERSION, "step": self.step,
            "last_round_id": self.last_round_id, "applied_round_id": self.applied_round_id,
            "dim": int(self.state.shape[0]), "membership": list(self.membership),
            "accountant": self.accountant, "history": list(self.history),
            "extra": [[k, int(v.shape[0])] for k, v in self.extra.items()],
        }).encode()
        arrays = [self.state, *self.extra.values()]
        return _LEN.pack(len(head)) + head + b"".join(
            np.ascontiguousarray(a, "<f8").tobytes() for a in arrays)

    @classmethod
    def from_bytes(cls, data: bytes) -> Checkpoint:
        """Parse a checkpoint file's bytes.

        Raises:
            CheckpointError: torn, malformed or of another version.
        """
        try:
            (n,) = _LEN.unpack_from(data)
            head = json.loads(data[_LEN.size:_LEN.size + n])
            if head["version"] not in _READABLE:
                raise CheckpointError(f"checkpoint version {head['version']} is not supported")
            raw = data[_LEN.size + n:]
            layout = [("state", int(head["dim"]))] + [
                (str(k), int(v)) for k, v in head.get("extra", [])]
            if len(raw) != 8 * sum(length for _, length in layout):
                raise CheckpointError("checkpoint state has the wrong length (torn file?)")
            arrays: dict[str, npt.NDArray[np.float64]] = {}
            offset = 0
            for name, length in layout:
                arrays[name] = np.frombuffer(raw, "<f8", length, offset).astype(np.float64)
                offset += 8 * length
            state = arrays.pop("state")
            return cls(step=int(head["step"]), last_round_id=int(head["last_round_id"]),
                       applied_round_id=int(head["applied_round_id"]), state=state,
                       membership=tuple(int(c) for c in head["membership"]),
                       accountant=head["accountant"], history=tuple(head["history"]),
                       extra=arrays)
        except (struct.error, ValueError, KeyError, TypeError) as exc:
            if isinstance(exc, CheckpointError):
                raise
            raise CheckpointError(f"unreadable checkpoint: {exc}") from None


def write_atomic(path: str | Path, ckpt: Checkpoint) -> None:
    """Write ``ckpt`` to ``path`` atomically and durably (temp file, fsync, rename, fsync dir).

    Raises:
        OSError: the folder is not writable or the disk is full (the old file survives).
    """
    target = Path(path)
    folder = target.parent
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(ckpt.to_bytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dfd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def resume(path: str | Path) -> Checkpoint:
    """Load the checkpoint at ``path``.

    Raises:
        CheckpointError: no such file, or it is unreadable.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}") from None
    return Checkpoint.from_bytes(data)
