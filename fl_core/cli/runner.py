"""``secagg run``: a server and N clients as separate OS processes on localhost.

The server runs as ``python -m secagg.fl_core.cli serve --progress`` and reports JSON lines on its
stdout (listening endpoint, stage changes, round summaries); this process starts the clients
once the server listens, renders progress with rich (round, stage, survivors, bytes,
seconds), and waits for everyone with bounded timeouts. Without ``--insecure`` it writes key
files into ``--keys`` first if that folder has none.

Every run lives in a run folder (:mod:`secagg.fl_core.cli.run_folder`: a fresh
``.secagg/runs/<UTC time>/`` unless ``--run-dir``, ``--checkpoint`` or ``--resume RUN`` names one).
Bad input (a missing or malformed data file, an unknown model, too few parties, a fresh run over
an existing checkpoint or over the clients' books of an earlier run, a resume that changes the
job) is refused here, in one line and exit status 2, before any process starts
(:mod:`secagg.fl_core.finetune.preflight`).

Without ``--dim`` it runs a fine-tuning job (:mod:`secagg.fl_core.finetune`): it writes the job file
into the run folder, starts ``num_clients`` clients on it (each with a stats file and its own
books there: ``--ledger client-<i>.ledger.json``, beside it the chunk answers of a full-weight
job, and ``--state client-<i>.state``, the last round id it started, so a restarted client
never answers a round id twice), shows accuracy and epsilon as rounds finish, and adds the time
split (training / protocol compute / the rest: transport, waiting, server) to the ``--json``
summary.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from secagg.fl_core.cli import run_folder
from secagg.fl_core.cli.run_folder import RunFolder

if TYPE_CHECKING:
    from secagg.fl_core.finetune.job import FinetuneJob

__all__ = ["run_main"]

_PY = [sys.executable, "-m", "secagg.fl_core.cli"]


def _ensure_keys(folder: Path, n: int) -> None:
    from secagg.fl_core.identity import keyfiles, keys

    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not keyfiles.server_paths(folder)[1].exists():
        keyfiles.write_server_keys(folder, keys.CurveKeyPair.generate())
    for cid in range(1, n + 1):
        if not keyfiles.client_paths(folder, cid)[1].exists():
            keyfiles.write_client_keys(folder, keys.ClientKeys.generate(cid))


def _common(ns: argparse.Namespace) -> list[str]:
    args = ["--protocol", ns.protocol, "--n", str(ns.n), "--keys", str(ns.keys)]
    args += ["--dim", str(ns.dim)] if ns.dim is not None else ["--job", str(ns.job)]
    return [*args, "--insecure"] if ns.insecure else args


def _server_cmd(ns: argparse.Namespace) -> list[str]:
    cmd = [*_PY, "serve", *_common(ns), "--bind", f"tcp://127.0.0.1:{ns.port}", "--progress",
           "--rounds", str(ns.rounds), "--deadline", str(ns.deadline),
           "--join-timeout", str(ns.join_timeout), "--checkpoint", str(ns.checkpoint)]
    for name, sec in ns.stage_deadline:
        cmd += ["--stage-deadline", f"{name}={sec}"]
    if ns.resume:
        cmd.append("--resume")
    if ns.json_path:
        cmd += ["--json", ns.json_path]
    if getattr(ns, "min_clients", None):
        cmd += ["--min-clients", str(ns.min_clients)]
    if getattr(ns, "server_workers", 1) != 1:
        cmd += ["--server-workers", str(ns.server_workers)]
    if getattr(ns, "crash_after", None):  # a test's interrupted run
        cmd += ["--crash-after", ns.crash_after]
    return cmd


def _table(rows: list[dict[str, Any]]) -> Table:
    t = Table(title="secagg run")
    cols = ["round", "ok", "survivors", "up MB", "down MB", "seconds"]
    if any("epsilon" in r for r in rows):
        cols.append("epsilon")
    for col in cols:
        t.add_column(col, justify="right")
    for r in rows:
        cells = [str(r["round"]), "yes" if r["ok"] else "ABORTED",
                 f"{len(r['survivors'])}/{len(r['sampled'])}", f"{r['bytes_up'] / 1e6:.2f}",
                 f"{r['bytes_down'] / 1e6:.2f}", f"{r['seconds']:.2f}"]
        if "epsilon" in cols:
            cells.append(f"{r.get('epsilon', 0.0):.3f}")
        t.add_row(*cells)
    return t


def _client_cmd(ns: argparse.Namespace, endpoint: str, cid: int) -> list[str]:
    cmd = [*_PY, "client", *_common(ns), "--connect", endpoint, "--id", str(cid),
           "--idle-timeout", str(ns.join_timeout + 10 * ns.deadline + 300)]
    if getattr(ns, "min_clients", None):  # part of the policy each client pins
        cmd += ["--min-clients", str(ns.min_clients)]
    if ns.dim is None:
        folder = Path(ns.checkpoint).parent
        cmd += ["--stats", str(_stats_path(ns, cid)),
                "--ledger", str(folder / f"client-{cid}.ledger.json"),
                "--state", str(folder / f"client-{cid}.state")]
    return cmd


_BOOKS = ("client-*.ledger.json", "client-*.chunks.json", "client-*.state")


def _refuse_earlier_books(run: RunFolder) -> None:
    """A fresh job run must not find the clients' books of an earlier run in its folder (a
    fresh ``--checkpoint`` beside an old one): its clients would refuse every round id the
    earlier run used, or another job's ledger.

    Raises:
        RunFolderError: the folder holds a client's ledger, chunk answers or state file.
    """
    folder = run.checkpoint.parent
    found = sorted(p.name for pattern in _BOOKS for p in folder.glob(pattern))
    if found:
        raise run_folder.RunFolderError(
            f"{folder} holds the clients' books of an earlier run ({', '.join(found[:3])}"
            f"{', ...' if len(found) > 3 else ''}): a client releases nothing twice, so its "
            f"clients would sit out; continue that run with --resume {run.run_id}, or start "
            "fresh in another folder (a bare secagg run makes one)")


def _client_env(ns: argparse.Namespace) -> dict[str, str]:
    """Clients on one host share its cores: one BLAS/torch pool each, sized to fit (unless the
    caller set OMP_NUM_THREADS); oversubscribed pools were measured to slow training down."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // ns.population)))
    return env


def _stats_path(ns: argparse.Namespace, cid: int) -> Path:
    return Path(ns.checkpoint).with_name(f"client-{cid}.stats.jsonl")


def _describe(ev: dict[str, Any]) -> str:
    text = (f"round {ev['round']}: {'ok' if ev['ok'] else ev['error']}, "
            f"survivors {len(ev['survivors'])}/{len(ev['sampled'])}, "
            f"{(ev['bytes_up'] + ev['bytes_down']) / 1e6:.2f} MB, {ev['seconds']:.2f} s")
    if "epsilon" in ev:
        text += f", epsilon {ev['epsilon']:.3f}"
    return text


def _follow(server: subprocess.Popen[str], ns: argparse.Namespace, console: Console,
            ) -> list[subprocess.Popen[bytes]]:
    clients: list[subprocess.Popen[bytes]] = []
    rows: list[dict[str, Any]] = []
    out: IO[str] | None = server.stdout
    assert out is not None
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
               MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("starting the server (loading model and data)", total=ns.rounds)
        for line in out:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            kind = ev.get("event")
            if kind == "listening":
                endpoint = ev["endpoint"]
                clients = [subprocess.Popen(_client_cmd(ns, endpoint, cid), env=_client_env(ns))
                           for cid in range(1, ns.population + 1)]
                bar.update(task, description=f"{ns.population} clients starting")
            elif kind == "stage":
                bar.update(task, description=f"round {ev['round']}: {ev['stage']}")
            elif kind == "eval" and "stage" in ev:  # continual: every stage's hold-out set
                console.print(f"after stage {ev['stage']!r} (round {ev['round_id']}"
                              f"{'' if ev['complete'] else ', cut short'}): accuracy per stage "
                              f"{ev['accuracy_per_stage']}")
            elif kind == "eval":
                metric = "accuracy" if "accuracy" in ev else "perplexity"
                console.print(f"evaluation after {ev['step']} rounds: {metric} "
                              f"{ev.get(metric)}, loss {ev['loss']} ({ev['examples']} held out)")
            elif kind == "stopped":
                console.print(f"[yellow]stopped: {ev['reason']}[/yellow]")
            elif kind == "summary":
                rows.append(ev)
                console.print(_describe(ev))
                bar.update(task, advance=1 if ev["ok"] else 0,
                           description=f"round {ev['round']} done" + (
                               f", epsilon {ev['epsilon']:.2f}" if "epsilon" in ev else ""))
            elif kind == "done":
                break
    if rows:
        console.print(_table(rows))
    return clients


def _job_for(ns: argparse.Namespace, run: RunFolder) -> FinetuneJob:
    """The job to run: the flags over ``--job`` (a resume: over the run's ``job.json``, which
    they may only repeat), checked before any process starts.

    Raises:
        JobError: an invalid job, a resume that changes the job, or a preflight check.
    """
    from secagg.fl_core.finetune.cli_args import job_from_args
    from secagg.fl_core.finetune.job import FinetuneJob, JobError
    from secagg.fl_core.finetune.preflight import check_job

    saved = None
    if run.resume and run.job.is_file():
        saved = FinetuneJob.load(run.job)
        ns.job = ns.job or str(run.job)
    job = job_from_args(ns, rounds=ns.rounds)
    if saved is not None and job != saved:
        changed = [f"{k} ({getattr(saved, k)!r} -> {getattr(job, k)!r})"
                   for k in FinetuneJob.__dataclass_fields__
                   if getattr(saved, k) != getattr(job, k)]
        raise JobError(f"--resume {run.run_id}: the flags change the run's job in "
                       f"{', '.join(changed)}; a resume continues the same job")
    check_job(job, protocol=ns.protocol, n=ns.n if ns.n is not None else job.num_clients,
              active=not ns.insecure)
    if job.continual is not None:  # the stages against the data's labels, before any process
        from secagg.fl_core.finetune.continual_tasks import build_plan
        from secagg.fl_core.finetune.party import load_job_data

        build_plan(job, load_job_data(job))
    return job


def _prepare_job(ns: argparse.Namespace, run: RunFolder, job: FinetuneJob) -> None:
    """Job mode: write the job file into the run folder, default the deadlines (the cohort
    floor, ``--min-clients``, was set before:
    :func:`secagg.fl_core.cli.run_cohort.apply_cohort_floor`)."""
    ns.job = str(run.job)
    job.save(ns.job)
    ns.population = job.num_clients
    ns.n = ns.n if ns.n is not None else job.num_clients
    ns.rounds = job.rounds
    if not any(name == "advertise" for name, _ in ns.stage_deadline):
        ns.stage_deadline = [*ns.stage_deadline, ("advertise", 300.0)]  # local training
    for cid in range(1, ns.population + 1):
        _stats_path(ns, cid).unlink(missing_ok=True)


def _start(ns: argparse.Namespace) -> str:
    """Check everything that can be checked without a model, then make the run folder;
    return the line that says where the run is.

    Raises:
        JobError, RunFolderError: bad input (nothing has been written).
    """
    run = run_folder.locate(ns)
    job = _job_for(ns, run) if ns.dim is None else None
    where = run_folder.check_checkpoint(run, job_digest=job.digest if job else None,
                                        dim=ns.dim)
    if job is not None and not run.resume:
        _refuse_earlier_books(run)
    run = run_folder.create(run)
    run_folder.apply(run, ns)
    if job is not None:
        _prepare_job(ns, run, job)
    run_folder.save_settings(run, ns)
    return where or f"run folder {run.path} (continue it with: secagg run --resume {run.run_id})"


def run_main(ns: argparse.Namespace) -> int:
    """``secagg run``; return the exit status (the server's; 2: bad input, nothing started)."""
    from secagg.fl_core.finetune.job import JobError

    console = Console(stderr=True)
    ns.population = ns.n
    try:
        where = _start(ns)
    except (JobError, run_folder.RunFolderError) as exc:
        print(f"secagg run: {exc}", file=sys.stderr)
        return 2
    console.print(where, highlight=False, soft_wrap=True)
    if not ns.insecure:
        _ensure_keys(Path(ns.keys), ns.population)
    if ns.port == 0:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ns.port = s.getsockname()[1]
    server = subprocess.Popen(_server_cmd(ns), stdout=subprocess.PIPE, text=True)
    clients: list[subprocess.Popen[bytes]] = []
    try:
        clients = _follow(server, ns, console)
        code = server.wait(timeout=120)
    finally:
        # clients of a server that died can only idle out: do not wait for that
        grace = 15.0 if server.poll() == 0 else 1.0
        procs: list[subprocess.Popen[Any]] = [server, *clients]
        for p in procs:
            try:
                p.wait(timeout=grace if p is not server else 0.1)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
    if ns.dim is None:
        from secagg.fl_core.finetune.report import finish_run

        finish_run(ns, console, [_stats_path(ns, c) for c in range(1, ns.population + 1)])
    return code
