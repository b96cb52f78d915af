"""The server loop: rounds over a transport, the global state, checkpoints, summaries.

The global state is a float64 vector whose meaning belongs to a
:class:`secagg.fl_core.runtime.tasks.ServerTask`: the synthetic federation's
:class:`secagg.fl_core.runtime.tasks.FedAvgTask` adds the survivors' mean update; the fine-tuning
job's task
holds adapter weights, takes a DP Adam step and keeps the privacy accountant. Per round: let the
task charge the round (:meth:`ServerTask.begin_round`) and reserve the round id in the checkpoint
together with the task's charged state, run the round
(:class:`secagg.fl_core.runtime.driver.RoundDriver`), apply it (the task), checkpoint the state
with the
task's state in one atomic write, report. ``rounds`` counts *completed* steps: an aborted round
does not count, and the loop gives up after ``max_aborts`` aborts in a row or when the task
says stop (a spent privacy budget).

CKKS: the server holds no key and never sees a plaintext aggregate. Its plaintext state stays
zero (a round counts as a step, adding nothing); the round's *encrypted* sum is its state,
written atomically next to the checkpoint (``<checkpoint>.encsum``: the wire bytes of the
:class:`secagg.protocols.messages.EncryptedSum`) before the checkpoint that records the step. The
clients decrypt it and each applies the decoded mean to its own copy of the model; clients do
not report the mean back (that would hand the server the very plaintext CKKS keeps from it).
``broadcast_state=False`` (``--no-state-broadcast``) leaves the float64 state out of round
starts (always the case under CKKS). ``server_workers`` > 1 (``--server-workers``, ``ckks``
only) adds the uploads in that many worker processes, started once for the whole run
(:mod:`secagg.fl_core.runtime.ckks_workers`); each round's summary has the seconds spent adding
(``server_add``).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from secagg.fl_core.runtime.checkpoint import Checkpoint, resume, write_atomic
from secagg.fl_core.runtime.ckks_workers import InProcessSummer, WorkerPool, summer_for
from secagg.fl_core.runtime.driver import DriverSettings, RoundDriver, RoundOutcome
from secagg.fl_core.runtime.tasks import FedAvgTask, ServerTask
from secagg.fl_core.transport.sockets import ServerTransport
from secagg.protocols.config import ProtocolKind
from secagg.protocols.transitions import ServerStage

__all__ = ["ServerSettings", "encsum_path", "serve"]

log = logging.getLogger("secagg.fl_core.server")


@dataclass
class ServerSettings:
    """Everything :func:`serve` needs besides the transport."""

    config_args: dict[str, Any]
    dim: int
    rounds: int
    checkpoint: Path
    driver: DriverSettings = field(default_factory=DriverSettings)
    resume: bool = False
    json_path: Path | None = None
    max_aborts: int = 3
    aggregate_in_json_max_dim: int = 4096
    broadcast_state: bool = True
    dp_policy: dict[str, Any] | None = None
    """The job's DP mechanism (:func:`secagg.fl_core.runtime.policy.dp_policy`): part of the policy
    every client pins, bound into each round's context."""
    crash_after: str | None = None
    """Tests only: ``"aggregate:R"`` or ``"checkpoint:R"`` kills -9 this process there."""
    server_workers: int = 1
    """``ckks``: processes that add the uploads (1: in this process)."""


def _summary(out: RoundOutcome, step: int, drops: Mapping[Any, int], max_dim: int,
             ) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "round": out.round_id, "step": step, "ok": out.ok, "error": out.error,
        "threshold": out.threshold,
        "sampled": list(out.sampled), "survivors": list(out.included),
        "bytes_up": out.bytes_up, "bytes_down": out.bytes_down,
        "seconds": round(out.seconds, 4), "join_seconds": round(out.join_seconds, 4),
        "stages": out.stages, "rejected": out.rejected, "released": out.released,
        "late_or_out_of_stage": out.late,
        "transport_drops": {getattr(k, "name", str(k)): v for k, v in drops.items()},
    }
    if out.key_epoch is not None:
        doc["key_epoch"] = out.key_epoch
        doc["key_setup_seconds"] = round(out.key_setup_seconds, 4)
    if out.encrypted is not None:
        doc["encrypted_sum_bytes"] = len(out.encrypted)
    if out.server_add is not None:
        doc["server_add"] = out.server_add
    if out.aggregate is not None and out.aggregate.shape[0] <= max_dim:
        doc["aggregate"] = out.aggregate.tolist()
        doc["weight_total"] = out.weight_total
    return doc


def _maybe_crash(settings: ServerSettings, where: str, round_id: int) -> None:
    if settings.crash_after == f"{where}:{round_id}":
        log.warning("crash_after=%s: kill -9 of myself", settings.crash_after)
        os.kill(os.getpid(), signal.SIGKILL)


def _start_state(settings: ServerSettings, membership: tuple[int, ...],
                 task: ServerTask) -> Checkpoint:
    if settings.resume and settings.checkpoint.exists():
        ckpt = resume(settings.checkpoint)
        if ckpt.state.shape[0] != settings.dim:
            raise ValueError(f"checkpoint dim {ckpt.state.shape[0]} != --dim {settings.dim}")
        task.load_state_dict(ckpt.accountant, ckpt.extra)
        log.info("resumed at step %d (last round id %d)", ckpt.step, ckpt.last_round_id)
        return ckpt
    if settings.checkpoint.exists() and not settings.resume:
        raise FileExistsError(f"{settings.checkpoint} exists: pass --resume or remove it")
    task.load_state_dict(None, {})
    doc, arrays = task.state_dict()
    return Checkpoint(0, 0, 0, task.initial_state(settings.dim), membership,
                      accountant=doc or None, extra=arrays)


def serve(transport: ServerTransport, settings: ServerSettings,
          progress: Callable[[dict[str, Any]], None] | None = None,
          task: ServerTask | None = None) -> Checkpoint:
    """Run until ``settings.rounds`` steps are applied (or too many aborts in a row, or the
    task says stop); ``task`` defaults to :class:`secagg.fl_core.runtime.tasks.FedAvgTask`.

    Raises:
        CheckpointError: ``--resume`` with an unreadable checkpoint.
        FileExistsError: a checkpoint exists and ``resume`` is off.
        ValueError / ConfigError: bad settings (``server_workers`` > 1 but not ``ckks``).
    """
    proto = settings.config_args.get("protocol")  # validated per round by the driver
    kind = ProtocolKind(proto).value if proto is not None else ""
    wait_s = settings.driver.deadline(ServerStage.MASKED_INPUT)
    with summer_for(kind, settings.server_workers, wait_s=wait_s) as summer:
        return _serve(transport, settings, progress, task, summer)


def _serve(transport: ServerTransport, settings: ServerSettings,
           progress: Callable[[dict[str, Any]], None] | None, task: ServerTask | None,
           summer: InProcessSummer | WorkerPool | None) -> Checkpoint:
    allow = transport.allowlist
    membership = tuple(sorted(allow)) if allow is not None else ()
    task = task if task is not None else FedAvgTask()
    ckpt = _start_state(settings, membership, task)
    driver = RoundDriver(transport, config_args=settings.config_args,
                         settings=settings.driver, progress=progress,
                         broadcast_state=settings.broadcast_state,
                         dp_policy=settings.dp_policy, summer=summer)
    summaries: list[dict[str, Any]] = list(ckpt.history)
    aborts = 0
    while ckpt.step < settings.rounds and aborts < settings.max_aborts:
        if (reason := task.stop_reason()) is not None:
            log.warning("stopping before step %d: %s", ckpt.step + 1, reason)
            if progress is not None:
                progress({"event": "stopped", "step": ckpt.step, "reason": reason})
            break
        round_id = ckpt.last_round_id + 1
        task.begin_round(round_id)  # charged before the round: its sum exists inside run_round
        ckpt = ckpt.reserve(round_id, task_state=task.state_dict()[0] or None)
        write_atomic(settings.checkpoint, ckpt)  # this id is never used again, and is paid for
        out = driver.run_round(round_id, ckpt.step, ckpt.state)
        if out.encrypted is not None:  # CKKS: the ciphertext is the state
            write_bytes_atomic(encsum_path(settings.checkpoint), out.encrypted)
        new_state = task.apply(ckpt.state, out) if out.ok else None
        voided = not out.ok and not out.released and _void(task, round_id)
        summary = _summary(out, ckpt.step + (1 if out.ok else 0), driver.drops,
                           settings.aggregate_in_json_max_dim)
        summary.update(task.report(out))
        if voided:
            summary["voided"] = True
        _maybe_crash(settings, "aggregate", round_id)
        doc, arrays = task.state_dict()
        ckpt = ckpt.advance(round_id, new_state, summary, task_state=doc or None, extra=arrays)
        write_atomic(settings.checkpoint, ckpt)
        _maybe_crash(settings, "checkpoint", round_id)
        aborts = 0 if out.ok else aborts + 1
        summaries.append(summary)
        if settings.json_path is not None:
            _write_json(settings.json_path, summaries)
        if progress is not None:
            progress({"event": "summary", **{k: v for k, v in summary.items()
                                             if k != "aggregate"}})
    if aborts >= settings.max_aborts:
        log.error("giving up after %d aborted rounds in a row", aborts)
    driver.goodbye(ckpt.last_round_id)
    time.sleep(0.2)  # let the goodbyes leave before the socket closes
    return ckpt


def _void(task: ServerTask, round_id: int) -> bool:
    """Un-charge an aborted round that never asked for inputs, where the task allows it
    (``void_round``; a task without it keeps every reserved round charged)."""
    void = getattr(task, "void_round", None)
    if void is None or not void(round_id):
        return False
    log.info("round %d aborted before any input was asked for: not charged", round_id)
    return True


def _write_json(path: Path, summaries: list[dict[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"rounds": summaries}, indent=1))
    os.replace(tmp, path)



def encsum_path(checkpoint: Path) -> Path:
    """Where a CKKS server keeps the last round's encrypted sum."""
    return checkpoint.with_name(checkpoint.name + ".encsum")


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temp file, fsync, rename over ``path``."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
