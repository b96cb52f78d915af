"""``secagg serve`` and ``secagg client``: argument wiring around the server and client apps.

Security defaults: CurveZMQ with the ZAP allowlist of the key folder, and the protocol in
active mode (messages signed with the identity keys bound to the Curve keys). ``--insecure``
turns both off (passive protocol, no Curve) and says so loudly. CKKS (``ckks``,
``ckks+mask``) carries its dealer-free key setup over the transport (see
:mod:`secagg.fl_core.runtime.driver`); the server holds only the keyless context and the encrypted
sum.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from secagg.fl_core.runtime.cohort import population_args
from secagg.fl_core.runtime.cohort_floor import (
    CohortFloorError,
    check_min_cohort,
    distributed_dp,
)
from secagg.fl_core.runtime.driver import DriverSettings
from secagg.fl_core.runtime.policy import ClientPolicy, dp_policy
from secagg.protocols.transitions import ServerStage

if TYPE_CHECKING:
    from secagg.fl_core.finetune.app import Prepared

__all__ = ["add_client_args", "add_common_args", "add_serve_args", "client_main",
           "config_args", "serve_main"]

PROTOCOLS = ("plain", "secagg", "secagg+", "ckks", "ckks+mask")
_INSECURE_WARNING = ("secagg: --insecure: CurveZMQ is OFF and the protocol runs in passive "
                     "mode; anyone on the network can read, forge or join. Tests only.")


def _stage_deadline(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    stages = [s.value for s in ServerStage if s.value not in ("done", "aborted")]
    if name not in stages:
        raise argparse.ArgumentTypeError(f"unknown stage {name!r}; stages are {stages}")
    if not sep or seconds <= 0:
        raise argparse.ArgumentTypeError(f"expected STAGE=SECONDS, got {text!r}")
    return name, seconds


def add_common_args(p: argparse.ArgumentParser) -> None:
    """Flags shared by serve, client and run."""
    p.add_argument("--protocol", choices=PROTOCOLS, default="secagg+")
    p.add_argument("--n", type=int, default=None,
                   help="clients per round, the cohort (default: the job's clients; 8 with --dim)")
    p.add_argument("--dim", type=int, default=None,
                   help="run the synthetic federation of length-DIM vectors instead of a "
                   "fine-tuning job")
    p.add_argument("--keys", default="keys", help="key folder (secagg keygen)")
    p.add_argument("--insecure", action="store_true",
                   help="no CurveZMQ, passive protocol: FOR TESTS ONLY")
    p.add_argument("-v", "--verbose", action="count", default=0)
    p.add_argument("--config", metavar="FILE",
                   help="TOML settings (fl_core.config_file); flags override the file")


def add_serve_args(p: argparse.ArgumentParser, *, run: bool = False) -> None:
    """Server flags (also taken by ``run``, whose files live in a run folder:
    :mod:`secagg.fl_core.cli.run_folder`)."""
    p.add_argument("--rounds", type=int, default=None,
                   help="completed rounds to run (default: the job's 20; 3 with --dim)")
    p.add_argument("--deadline", type=float, default=10.0, help="seconds per stage")
    p.add_argument("--stage-deadline", type=_stage_deadline, action="append", default=[],
                   metavar="STAGE=SECONDS", help="override one stage's deadline")
    p.add_argument("--join-timeout", type=float, default=None,
                   help="seconds to wait for a cohort before a round aborts (default 30; "
                   "300 for a fine-tuning job, whose clients load a model first)")
    p.add_argument("--min-clients", type=int, default=None, metavar="M",
                   help="run a round with min(n, live) clients when that is >= M "
                   "(default: exactly n); the round's threshold is re-derived for it")
    if run:
        p.add_argument("--run-dir", metavar="DIR",
                       help="the run folder (default: a fresh .secagg/runs/<UTC time>/)")
        p.add_argument("--checkpoint", default=None,
                       help="checkpoint file (default: <run folder>/checkpoint; alone, its "
                       "folder is the run folder)")
        p.add_argument("--resume", nargs="?", const="", default=None, metavar="RUN",
                       help="continue run RUN (an id under .secagg/runs/ or a folder); bare: "
                       "the run of --run-dir or --checkpoint")
        p.add_argument("--json", dest="json_path",
                       help="write the summary here (default: <run folder>/run_summary.json)")
    else:
        p.add_argument("--checkpoint", default="secagg.ckpt", help="checkpoint file")
        p.add_argument("--resume", action="store_true", help="continue from --checkpoint")
        p.add_argument("--json", dest="json_path", help="write a per-round summary here")
    p.add_argument("--no-state-broadcast", dest="state_broadcast", action="store_false",
                   help="leave the float64 global state out of round starts (benchmarks)")
    p.add_argument("--server-workers", type=int, default=1, metavar="N",
                   help="ckks: add the uploads in N worker processes (default 1: in the "
                   "server process); TenSEAL holds the GIL, so this is how a server uses more "
                   "cores")
    p.add_argument("--crash-after", help=argparse.SUPPRESS)


def add_client_args(p: argparse.ArgumentParser) -> None:
    """Client-only flags."""
    p.add_argument("--connect", default="tcp://127.0.0.1:7700")
    p.add_argument("--id", type=int, required=True, dest="client_id")
    p.add_argument("--idle-timeout", type=float, default=120.0)
    p.add_argument("--state", help="file keeping the last round id across restarts "
                   "(public; lets a restarted client rejoin)")
    p.add_argument("--stats", help="append per-round training/protocol seconds here (JSON lines)")
    p.add_argument("--ledger", help="fine-tuning job: this party's privacy ledger (JSON; the "
                   "rounds it released into, kept across restarts): it refuses a round id at "
                   "or below one it released into, and past the job's rounds or "
                   "--epsilon-budget; a full-weight job keeps the chunks it answered beside it "
                   "(NAME.chunks.json)")
    p.add_argument("--aggregates", help="append each round's decoded aggregate here "
                   "(JSON lines; CKKS clients decrypt it themselves)")
    p.add_argument("--min-clients", type=int, default=None, metavar="M",
                   help="the smallest cohort this client takes part in (default: exactly n); "
                   "the server's --min-clients must be the same (part of the pinned policy)")
    p.add_argument("--crash-at", help=argparse.SUPPRESS)
    p.add_argument("--replay", action="store_true", help=argparse.SUPPRESS)


def config_args(ns: argparse.Namespace) -> dict[str, Any]:
    """The :class:`secagg.protocols.config.SecAggConfig` arguments the flags ask for."""
    args: dict[str, Any] = {"protocol": ns.protocol, "n": ns.n}
    if ns.protocol != "plain":
        args["active"] = not ns.insecure
    return args


def client_policy(ns: argparse.Namespace, prep: Prepared | None) -> ClientPolicy:
    """``secagg client``'s policy: the config its own flags (or job, ``prep``) derive, its
    ``--min-clients``, and in active mode every client card of its ``--keys`` folder
    (:meth:`ClientPolicy.from_key_folder`).

    Raises:
        ValueError / ConfigError: a policy that does not validate (bad ``--min-clients``,
            active mode with no peer cards); CohortFloorError (a ValueError):
            ``--min-clients`` below the cohort floor.
        OSError / KeyFileError: the key folder cannot be read.
    """
    args = prep.config_args if prep is not None else config_args(ns)
    return ClientPolicy.from_key_folder(
        args, dim=prep.dim if prep is not None else ns.dim, keys=ns.keys,
        min_cohort=getattr(ns, "min_clients", None),
        dp=dp_policy(prep.dp) if prep is not None else None)


def _logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(processName)s %(name)s %(levelname)s %(message)s")


def _refuse_ckks(ns: argparse.Namespace) -> int | None:
    if ns.insecure:
        print(_INSECURE_WARNING, file=sys.stderr)
    return None


def serve_main(ns: argparse.Namespace, *, progress_stream: Any = None) -> int:
    """``secagg serve``; return the exit status (0: every round done)."""
    from secagg.fl_core.errors import FlCoreError
    from secagg.fl_core.identity import keyfiles
    from secagg.fl_core.runtime.checkpoint import CheckpointError
    from secagg.fl_core.runtime.policy import dp_policy
    from secagg.fl_core.runtime.rounds import limits_for
    from secagg.fl_core.runtime.server_app import ServerSettings, serve
    from secagg.fl_core.transport.sockets import ServerTransport

    _logging(ns.verbose)
    if (code := _refuse_ckks(ns)) is not None:
        return code
    if ns.server_workers < 1 or (ns.server_workers > 1 and ns.protocol != "ckks"):
        print("secagg serve: --server-workers must be >= 1, and above 1 only with --protocol "
              "ckks", file=sys.stderr)
        return 2

    def emit(event: dict[str, Any]) -> None:
        if progress_stream is not None:
            progress_stream.write(json.dumps(event) + "\n")
            progress_stream.flush()

    prep = None
    if ns.dim is None:
        from secagg.fl_core.finetune.commands import prepare_from_args

        if (prep := prepare_from_args(ns, "serve")) is None:
            return 2
    try:  # before a socket is bound (the driver checks it again)
        check_min_cohort(prep.config_args if prep else config_args(ns),
                         getattr(ns, "min_clients", None),
                         dp=distributed_dp(dp_policy(prep.dp) if prep else None))
    except CohortFloorError as exc:
        print(f"secagg serve: {exc}", file=sys.stderr)
        return 2
    task = None
    if prep is not None:  # its initial evaluation runs before the socket is bound: a bound
        # server that reads nothing for long lets connected clients' hellos fill its queues
        # and their connections drop (issue 22: round 1 lost at load 12 to 15)
        from secagg.fl_core.finetune.commands import server_task_for

        task = server_task_for(prep, emit)
    limits = limits_for(ns.n, ns.dim, ckks=ns.protocol.startswith("ckks"))
    args = prep.config_args if prep else config_args(ns)
    try:
        if ns.insecure:
            transport = ServerTransport(ns.bind, limits=limits, insecure=True)
        else:
            allowlist = keyfiles.load_allowlist(ns.keys)
            args = population_args(args, len(allowlist))  # cohorts drawn from all the cards
            transport = ServerTransport(
                ns.bind, limits=limits, keys=keyfiles.load_server_keys(
                    keyfiles.server_paths(ns.keys)[1]), allowlist=allowlist)
    except (OSError, FlCoreError) as exc:
        print(f"secagg serve: {exc}", file=sys.stderr)
        return 1
    settings = ServerSettings(
        config_args=args, dim=ns.dim,
        rounds=ns.rounds, checkpoint=Path(ns.checkpoint), resume=ns.resume,
        json_path=Path(ns.json_path) if ns.json_path and prep is None else None,
        driver=DriverSettings(deadline_s=ns.deadline, stage_deadlines=dict(ns.stage_deadline),
                              join_timeout_s=ns.join_timeout,
                              min_clients=getattr(ns, "min_clients", None),
                              state_float32=prep is not None),
        broadcast_state=getattr(ns, "state_broadcast", True) or prep is not None,
        dp_policy=dp_policy(prep.dp) if prep is not None else None,
        crash_after=ns.crash_after, server_workers=ns.server_workers)
    emit({"event": "listening", "endpoint": transport.endpoint})
    with transport:
        try:
            ckpt = serve(transport, settings, progress=emit if progress_stream else None,
                         task=task)
        except (CheckpointError, FileExistsError, ValueError) as exc:
            print(f"secagg serve: {exc}", file=sys.stderr)
            return 2
    if prep is not None and task is not None:
        from secagg.fl_core.finetune.commands import finish_server

        finish_server(prep, task, ckpt, ns.json_path, emit)
    emit({"event": "done", "step": ckpt.step})
    print(f"secagg serve: {ckpt.step} rounds applied (last round id {ckpt.last_round_id})",
          file=sys.stderr)
    stopped = task is not None and task.stop_reason() is not None
    return 0 if ckpt.step >= ns.rounds or stopped else 1


def client_main(ns: argparse.Namespace) -> int:
    """``secagg client``; return the exit status."""
    from secagg.fl_core.errors import FlCoreError, TransportError
    from secagg.fl_core.identity import keyfiles
    from secagg.fl_core.runtime.client_app import ClientSettings, run_client
    from secagg.fl_core.runtime.rounds import limits_for
    from secagg.fl_core.transport.sockets import ClientTransport

    _logging(ns.verbose)
    if (code := _refuse_ckks(ns)) is not None:
        return code
    update = None
    job_prep = None  # the job's prepared state, when there is a job (it sets ns.dim)
    if ns.dim is None:
        from secagg.fl_core.finetune.commands import client_task_from_args, prepare_from_args

        if (prep := prepare_from_args(ns, f"client {ns.client_id}")) is None:
            return 2
        job_prep = prep
        try:
            update = client_task_from_args(ns, prep)
        except ValueError as exc:
            print(f"secagg client {ns.client_id}: {exc}", file=sys.stderr)
            return 2
    limits = limits_for(ns.n, ns.dim, ckks=ns.protocol.startswith("ckks"))
    keys = None
    try:  # the client's own round policy, from its own flags, job and key folder
        policy = client_policy(ns, job_prep)
    except (FlCoreError, OSError, ValueError) as exc:
        print(f"secagg client {ns.client_id}: policy: {exc}", file=sys.stderr)
        return 2
    try:
        if ns.insecure:
            transport = ClientTransport(ns.connect, client_id=ns.client_id, limits=limits,
                                        insecure=True)
        else:
            keys = keyfiles.load_client_keys(keyfiles.client_paths(ns.keys, ns.client_id)[1])
            transport = ClientTransport(
                ns.connect, client_id=ns.client_id, limits=limits, keys=keys.curve,
                server_public=keyfiles.load_server_public(keyfiles.server_paths(ns.keys)[0]))
        with transport:
            done = run_client(transport, keys=keys, update=update, policy=policy,
                              settings=ClientSettings(
                idle_timeout_s=ns.idle_timeout, crash_at=ns.crash_at, replay=ns.replay,
                state_file=Path(ns.state) if ns.state else None,
                aggregates_file=Path(ns.aggregates) if getattr(ns, "aggregates", None)
                else None, stats_file=Path(ns.stats) if getattr(ns, "stats", None) else None))
    except (TransportError, FlCoreError, OSError) as exc:
        print(f"secagg client {ns.client_id}: {exc}", file=sys.stderr)
        return 1
    print(f"secagg client {ns.client_id}: {done} rounds completed", file=sys.stderr)
    return 0
