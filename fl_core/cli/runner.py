"""``secagg run``: a server and N clients as separate OS processes on localhost.

The server runs as ``python -m secagg.fl_core.cli serve --progress`` and reports JSON lines on its
stdout (listening endpoint, stage changes, round summaries); this process starts the clients
once the server listens, renders progress with rich (round, stage, survivors, bytes,
seconds), and watches them all (:mod:`secagg.fl_core.cli.supervise`): a client that fails gets
one line with its last error line (its stderr is kept in ``client-<i>.log``), too few clients
left for a round stop the run at once (exit status 1), the processes are stopped together
within seconds of the last round, and SIGINT/SIGTERM stop everything and leave the run
resumable (exit status 130/143). Without ``--insecure`` it writes key files into ``--keys``
first if that folder has none.

Every run lives in a run folder (:mod:`secagg.fl_core.cli.run_folder`: a fresh
``.secagg/runs/<UTC time>/`` unless ``--run-dir``, ``--checkpoint`` or ``--resume RUN`` names one).
Bad input (a missing or malformed data file, an unknown model, too few parties, a fresh run over
an existing checkpoint, the clients' books of an earlier run or another job's ``job.json``, a
resume that changes the job) is refused here, in one line and exit status 2, before any process
starts (:mod:`secagg.fl_core.finetune.preflight`).

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from secagg.fl_core.cli import run_folder
from secagg.fl_core.cli.run_folder import RunFolder
from secagg.fl_core.cli.supervise import (
    GOODBYE_GRACE_S,
    ClientGroup,
    ServerLines,
    Stopped,
    spawn,
    stop,
    stop_on_signals,
)

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


@dataclass
class _View:
    """What the runner shows while the server works."""

    console: Console
    bar: Progress
    task: TaskID
    rows: list[dict[str, Any]] = field(default_factory=list)


def _show(ev: dict[str, Any], view: _View, ns: argparse.Namespace, group: ClientGroup) -> bool:
    """Act on one progress event of the server; True when it is done.

    Raises:
        OSError: a client could not be started.
    """
    kind, bar, console = ev.get("event"), view.bar, view.console
    if kind == "listening":
        for cid in range(1, ns.population + 1):
            group.start(cid, _client_cmd(ns, ev["endpoint"], cid), _client_env(ns))
        bar.update(view.task, description=f"{ns.population} clients starting")
    elif kind == "stage":
        bar.update(view.task, description=f"round {ev['round']}: {ev['stage']}")
    elif kind == "eval" and "stage" in ev:  # continual: every stage's hold-out set
        console.print(f"after stage {ev['stage']!r} (round {ev['round_id']}"
                      f"{'' if ev['complete'] else ', cut short'}): accuracy per stage "
                      f"{ev['accuracy_per_stage']}")
    elif kind == "eval":
        metric = "accuracy" if "accuracy" in ev else "perplexity"
        console.print(f"evaluation after {ev['step']} rounds: {metric} "
                      f"{ev.get(metric)}, loss {ev['loss']} ({ev['examples']} held out)")
    elif kind == "baselines":
        bar.update(view.task, description="baselines: majority class, linear probe (once "
                   "per machine)")
    elif kind == "stopped":
        console.print(f"[yellow]stopped: {ev['reason']}[/yellow]")
    elif kind == "summary":
        view.rows.append(ev)
        console.print(_describe(ev))
        bar.update(view.task, advance=1 if ev["ok"] else 0,
                   description=f"round {ev['round']} done" + (
                       f", epsilon {ev['epsilon']:.2f}" if "epsilon" in ev else ""))
    return kind == "done"


def _follow(server: subprocess.Popen[str], group: ClientGroup, ns: argparse.Namespace,
            console: Console) -> str | None:
    """Show the server's progress until it is done or gone, watching the clients between its
    lines; return None, or why the run must stop now (too few clients left for a round).

    Raises:
        OSError: a client could not be started.
    """
    out: IO[str] | None = server.stdout
    assert out is not None
    lines = ServerLines(out)
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
               MofNCompleteColumn(), TimeElapsedColumn())
    cause = None
    with Progress(*columns, console=console, transient=False) as bar:
        view = _View(console, bar, bar.add_task("starting the server (loading model and data)",
                                                total=ns.rounds))
        while (line := lines.get(timeout=0.5)) is not None:
            try:
                ev = json.loads(line) if line else {}
            except ValueError:
                ev = {}
            if isinstance(ev, dict) and _show(ev, view, ns, group):
                break
            dead, cause = group.check()
            for text in dead:
                console.print(text, markup=False, highlight=False, soft_wrap=True)
            if cause is not None:
                break
    if view.rows:
        console.print(_table(view.rows))
    return cause


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
    run_folder.check_fresh(run, job_json=job.to_json() if job else None)
    run = run_folder.create(run)
    ns.run_id = run.run_id
    run_folder.apply(run, ns)
    if job is not None:
        _prepare_job(ns, run, job)
    run_folder.save_settings(run, ns)
    return where or f"run folder {run.path} (continue it with: secagg run --resume {run.run_id})"


def _run(ns: argparse.Namespace, console: Console) -> int:
    """Start the server and its clients, follow them, stop them all; return the exit status.

    Raises:
        Stopped: a signal (everything started has been stopped).
    """
    from secagg.fl_core.finetune.job import JobError

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
    group = ClientGroup(Path(ns.checkpoint).parent,
                        floor=getattr(ns, "min_clients", None) or ns.n)
    server: subprocess.Popen[str] = spawn(_server_cmd(ns), stdout=subprocess.PIPE, text=True)
    code = 1
    try:
        cause = _follow(server, group, ns, console)
        if cause is None:
            code = server.wait(timeout=60)
        else:
            print(f"secagg run: stopped: {cause}; {_resume_hint(ns)}", file=sys.stderr)
    except subprocess.TimeoutExpired:
        print("secagg run: the server did not exit within 60 s of its last round",
              file=sys.stderr)
    finally:
        # clients told goodbye exit at once; the rest (and all of them when the server failed
        # or the run stops) get SIGTERM, then SIGKILL: seconds in all, not 15 s each
        procs: list[subprocess.Popen[Any]] = [server, *group.procs]
        try:
            stop(procs, grace=GOODBYE_GRACE_S if server.poll() == 0 else 0.0)
        except Stopped:  # a signal while waiting: stop at once (a second one is ignored)
            stop(procs, grace=0.0)
            raise
        finally:
            group.close()
    if ns.dim is None:
        from secagg.fl_core.finetune.report import finish_run

        finish_run(ns, console, [_stats_path(ns, c) for c in range(1, ns.population + 1)])
    return code


def _resume_hint(ns: argparse.Namespace) -> str:
    run_id = getattr(ns, "run_id", None)
    return (f"the run folder is kept (secagg run --resume {run_id} continues it)"
            if run_id else "nothing was started")


def run_main(ns: argparse.Namespace) -> int:
    """``secagg run``; return the exit status (the server's; 1: the run stopped early, too
    few clients left; 2: bad input, nothing started; 128 + N: signal N stopped it)."""
    console = Console(stderr=True)
    ns.population = ns.n
    with stop_on_signals():
        try:
            return _run(ns, console)
        except Stopped as exc:
            print(f"secagg run: stopped by {exc}: server and clients stopped; "
                  f"{_resume_hint(ns)}", file=sys.stderr)
            return exc.exit_status
