"""Run folders of ``secagg run``: every run starts fresh in a folder of its own, and
``--resume RUN`` names the run it continues.

A ``secagg run`` without ``--run-dir``, ``--checkpoint`` or ``--resume`` creates
``.secagg/runs/<UTC time>/`` (``YYYYmmdd-HHMMSS``; ``-2``, ``-3``, ... when that is taken) in the
current folder and keeps everything of the run inside it::

    run.json              the runtime settings (protocol, n, dim, insecure, rounds) a resume reuses
    job.json              the fine-tuning job (no --dim); its digest is in every checkpoint
    keys/                 CurveZMQ and identity keys, made for this run (not with --keys/--insecure)
    checkpoint            the server's state after every round
    run_summary.json      the summary (--json puts it elsewhere)
    client-<i>.stats.jsonl
    client-<i>.log        what client i wrote to stderr (secagg.fl_core.cli.supervise)

``--run-dir DIR`` chooses the folder instead; ``--checkpoint FILE`` alone makes the file's folder
the run folder (``make run`` does this). A fresh run refuses a folder that already holds a
checkpoint, the clients' books of an earlier run, or another job's ``job.json``.
``--resume RUN`` takes a run id (a folder under ``.secagg/runs/``) or a folder path; a bare
``--resume`` continues the run of ``--run-dir`` or ``--checkpoint``. Resuming takes the protocol,
cohort, dimension and job from the folder; a flag that contradicts them is refused before anything
starts (and the server checks the job digest against the checkpoint again).

Only the standard library and the (numpy-only) checkpoint reader: these checks run before any
process starts.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from secagg.fl_core.errors import FlCoreError

__all__ = ["RUNS_ROOT", "RunFolder", "RunFolderError", "apply", "check_checkpoint", "check_fresh",
           "create", "locate", "restore_settings", "save_settings"]

RUNS_ROOT = Path(".secagg") / "runs"
SETTINGS = "run.json"
# runtime settings a resumed run takes from run.json (None in ns: the flag was not given)
_RESTORED = ("protocol", "n", "dim", "insecure")
_DEFAULTS: dict[str, Any] = {"protocol": "secagg+", "insecure": False}


class RunFolderError(FlCoreError, ValueError):
    """A run folder cannot be used: no such run to resume, a fresh run over an existing
    checkpoint, or a resume whose flags contradict the run."""


@dataclass(frozen=True)
class RunFolder:
    """Where one run keeps its files; explicit ``--checkpoint``/``--keys``/``--json`` win."""

    path: Path
    resume: bool
    new: bool  # a fresh folder under RUNS_ROOT, created by :func:`create`
    checkpoint_flag: str | None = None
    keys_flag: str | None = None
    json_flag: str | None = None

    @property
    def run_id(self) -> str:
        """How ``--resume`` names this run (its folder name under RUNS_ROOT, else its path)."""
        return self.path.name if self.path.parent == RUNS_ROOT else str(self.path)

    @property
    def checkpoint(self) -> Path:
        """The server's checkpoint file."""
        return Path(self.checkpoint_flag) if self.checkpoint_flag else self.path / "checkpoint"

    @property
    def job(self) -> Path:
        """The job file."""
        return self.path / "job.json"


def _find(ref: str) -> Path:
    for candidate in (Path(ref), RUNS_ROOT / ref):
        if candidate.is_dir():
            return candidate
    runs = sorted(p.name for p in RUNS_ROOT.iterdir() if p.is_dir()) if RUNS_ROOT.is_dir() else []
    known = f"runs here: {', '.join(runs[-5:])}" if runs else f"no runs under {RUNS_ROOT}/"
    raise RunFolderError(f"--resume {ref}: no such run folder ({known})")


def locate(ns: argparse.Namespace) -> RunFolder:
    """The run folder the flags name (nothing is written).

    Raises:
        RunFolderError: ``--resume`` names no run folder, contradicts ``--run-dir``, or is bare
            without ``--run-dir``/``--checkpoint``.
    """
    flags = {"checkpoint_flag": ns.checkpoint, "keys_flag": ns.keys, "json_flag": ns.json_path}
    ref: str | None = ns.resume
    if ref:
        path = _find(ref)
        if ns.run_dir and Path(ns.run_dir).resolve() != path.resolve():
            raise RunFolderError(f"--resume {ref} and --run-dir {ns.run_dir} name different runs")
        return RunFolder(path, True, False, **flags)
    if ns.run_dir or ns.checkpoint:
        path = Path(ns.run_dir) if ns.run_dir else Path(ns.checkpoint).parent
        if ref is not None and not path.is_dir():
            raise RunFolderError(f"--resume: no run folder at {path}")
        return RunFolder(path, ref is not None, False, **flags)
    if ref is not None:
        raise RunFolderError("--resume needs the run it continues: --resume RUN (an id under "
                             f"{RUNS_ROOT}/ or a folder)")
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return RunFolder(RUNS_ROOT / stamp, False, True, **flags)


def restore_settings(ns: argparse.Namespace) -> None:
    """Fill the runtime flags left unset (None) from a resumed run's ``run.json``, then from
    their defaults.

    Raises:
        RunFolderError: an unreadable ``run.json``, or a flag that contradicts it.
    """
    saved: dict[str, Any] = {}
    run = None
    if ns.resume is not None:
        try:
            run = locate(ns)
        except RunFolderError:
            pass  # secagg run reports it, before anything starts
    if run is not None:
        path = run.path / SETTINGS
        if path.is_file():
            try:
                saved = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise RunFolderError(f"cannot read {path}: {exc}") from None
        for key in _RESTORED:
            if key in saved and getattr(ns, key) not in (None, saved[key]):
                flag = f"--{key}" if key != "insecure" else "--insecure"
                raise RunFolderError(f"{flag} {getattr(ns, key)} contradicts the resumed run "
                                     f"{run.run_id} ({key} = {saved[key]}); a resume continues "
                                     "the same run")
        if ns.rounds is None and saved.get("dim") is not None:
            ns.rounds = saved.get("rounds")
    for key in _RESTORED:
        if getattr(ns, key) is None:
            setattr(ns, key, saved.get(key, _DEFAULTS.get(key)))


def check_checkpoint(run: RunFolder, *, job_digest: str | None, dim: int | None) -> str | None:
    """A fresh run must find no checkpoint; a resumed one a checkpoint of the same job (or
    none yet). Returns a line saying where a resumed run starts.

    Raises:
        RunFolderError: a fresh run over a checkpoint, an unreadable checkpoint, or one of
            another job or dimension.
    """
    from secagg.fl_core.runtime.checkpoint import CheckpointError, resume

    path = run.checkpoint
    if not run.resume:
        if path.exists():
            raise RunFolderError(f"{path} exists (an earlier run): continue it with --resume "
                                 f"{run.run_id}, or start fresh in another folder (a bare "
                                 "secagg run makes one)")
        return None
    if not path.exists():
        return f"resuming run {run.run_id}: no checkpoint yet, starting at round 1"
    try:
        ckpt = resume(path)
    except CheckpointError as exc:
        raise RunFolderError(f"--resume {run.run_id}: {exc}") from None
    recorded = (ckpt.accountant or {}).get("job")
    if job_digest is not None and recorded != job_digest:
        raise RunFolderError(f"--resume {run.run_id}: the checkpoint belongs to another job "
                             "(job digest differs)")
    if dim is not None and ckpt.state.shape[0] != dim:
        raise RunFolderError(f"--resume {run.run_id}: the checkpoint holds {ckpt.state.shape[0]}"
                             f" values, not --dim {dim}")
    return f"resuming run {run.run_id} after {ckpt.step} applied rounds"


_BOOKS = ("client-*.ledger.json", "client-*.chunks.json", "client-*.state")


def check_fresh(run: RunFolder, *, job_json: str | None) -> None:
    """A fresh run must find no other run's files in its folder (``--checkpoint`` beside an
    old one, two runs given one ``--run-dir``): the clients' books of an earlier run (their
    clients would refuse every round id that run used, or its ledger), or the ``job.json`` of
    another job (the new run would overwrite it). ``job_json``: this run's job
    (:meth:`FinetuneJob.to_json`), None for ``--dim``. A resume is not checked here.

    Raises:
        RunFolderError: the folder holds a client's ledger, chunk answers or state file, or a
            ``job.json`` that is not this run's job (one line naming the file).
    """
    if run.resume:
        return
    again = (f"continue that run with --resume {run.run_id}, or start fresh in another folder "
             "(a bare secagg run makes one)")
    folder = run.checkpoint.parent
    found = sorted(p.name for pattern in _BOOKS for p in folder.glob(pattern))
    if found:
        raise RunFolderError(
            f"{folder} holds the clients' books of an earlier run ({', '.join(found[:3])}"
            f"{', ...' if len(found) > 3 else ''}): a client releases nothing twice, so its "
            f"clients would sit out; {again}")
    if run.job.exists():
        try:
            same = job_json is not None and json.loads(run.job.read_text()) == json.loads(
                job_json)
        except (OSError, ValueError):
            same = False
        if not same:
            what = "another job" if job_json is not None else "a fine-tuning job, not --dim"
            raise RunFolderError(f"{run.job} holds {what} (an earlier run's): {again}")


def create(run: RunFolder) -> RunFolder:
    """Make the folder (a new one gets ``-2``, ``-3``, ... when its name is taken)."""
    if not run.new:
        run.path.mkdir(parents=True, exist_ok=True)
        return run
    run.path.parent.mkdir(parents=True, exist_ok=True)
    for k in range(1, 1000):
        path = run.path if k == 1 else run.path.with_name(f"{run.path.name}-{k}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return replace(run, path=path)
    raise RunFolderError(f"cannot create a run folder under {run.path.parent}")


def apply(run: RunFolder, ns: argparse.Namespace) -> None:
    """Point ``--checkpoint``, ``--keys`` and ``--json`` into the run folder unless given."""
    ns.checkpoint = str(run.checkpoint)
    ns.keys = run.keys_flag or str(run.path / "keys")
    ns.json_path = run.json_flag or str(run.path / "run_summary.json")
    ns.resume = run.resume


def save_settings(run: RunFolder, ns: argparse.Namespace) -> None:
    """Write ``run.json``: what :func:`restore_settings` gives back to a resume."""
    doc = {key: getattr(ns, key) for key in _RESTORED} | {"rounds": ns.rounds}
    (run.path / SETTINGS).write_text(json.dumps(doc, sort_keys=True) + "\n")
