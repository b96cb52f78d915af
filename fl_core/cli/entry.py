"""The ``secagg`` console script.

Subcommands grow with the library: ``bench`` runs the benchmark suite (``secagg bench
primitives``, ``secagg bench protocol``, ``secagg bench transport``); ``keygen`` writes CurveZMQ
and identity key files (``secagg keygen server --out keys/``, ``secagg keygen client --out keys/
--ids 1-20``); ``serve`` runs the server (``secagg.fl_core.cli.commands``), ``client`` one client,
and ``run`` a server and N clients as separate processes on localhost
(``secagg.fl_core.cli.runner``),
each run in a fresh folder under ``.secagg/runs/`` (``secagg.fl_core.cli.run_folder``);
``flower demo --deployment`` runs our protocols on Flower's deployment runtime (a SuperLink and
SuperNodes as processes) and checks every round (``secagg.fl_core.flower.demo``, needs the
``[flower]`` extra; flwr is imported only when this command runs).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]

# benchmark name -> module with ``main(argv) -> int``; imported lazily (they pull in numpy,
# TenSEAL and friends, which ``secagg --help`` should not pay for).
BENCHMARKS: dict[str, str] = {
    "primitives": "benchmarks.primitives",
    "protocol": "benchmarks.protocol",
    "ckks": "benchmarks.ckks_bench",
    "ckks-runtime": "benchmarks.ckks_runtime",
    "transport": "benchmarks.transport",
    "runtime": "benchmarks.runtime",
    "scale": "benchmarks.scale",
}
_MAX_IDS_PER_CALL = 100_000


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("secagg")
    except PackageNotFoundError:  # running from a source tree without installing
        return "unknown"


def parse_ids(text: str) -> list[int]:
    """Parse ``"1-3,7"`` into ``[1, 2, 3, 7]`` (sorted, no duplicates).

    Raises:
        argparse.ArgumentTypeError: malformed, empty, a reversed range, or too many ids.
    """
    ids: set[int] = set()
    try:
        for part in text.split(","):
            lo, sep, hi = part.strip().partition("-")
            first, last = int(lo), int(hi) if sep else int(lo)
            if first < 0 or last < first or last - first >= _MAX_IDS_PER_CALL:
                raise ValueError(part)
            ids.update(range(first, last + 1))
            if len(ids) > _MAX_IDS_PER_CALL:
                raise ValueError("too many ids")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"bad id list {text!r}: {exc}") from None
    return sorted(ids)


def _keygen(ns: argparse.Namespace) -> int:
    """Write key files; return the exit status (1 if a file exists and --force is absent)."""
    from secagg.fl_core.errors import KeyFileExists
    from secagg.fl_core.identity import keyfiles, keys

    if not ns.force:  # all or nothing: check every target before writing any
        paths = ([keyfiles.server_paths(ns.out)] if ns.role == "server"
                 else [keyfiles.client_paths(ns.out, cid) for cid in ns.ids])
        existing = [str(p) for pair in paths for p in pair if p.exists()]
        if existing:
            print(f"secagg keygen: {', '.join(existing[:3])} exist(s); nothing written "
                  "(--force overwrites)", file=sys.stderr)
            return 1
    try:
        if ns.role == "server":
            written = [keyfiles.write_server_keys(ns.out, keys.CurveKeyPair.generate(),
                                                  force=ns.force)]
        else:
            written = [keyfiles.write_client_keys(ns.out, keys.ClientKeys.generate(cid),
                                                  force=ns.force) for cid in ns.ids]
    except (KeyFileExists, ValueError) as exc:
        print(f"secagg keygen: {exc}", file=sys.stderr)
        return 1
    for public, secret in written:
        print(f"wrote {public} (0644) and {secret} (0600)")
    if ns.role == "client":
        print("give the server the client-*.public.json files (its allowlist folder); "
              "keep the secret files on their clients")
    return 0


def _add_runtime_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from secagg.fl_core.cli import commands
    from secagg.fl_core.finetune.cli_args import add_job_args

    serve = sub.add_parser("serve", help="run the aggregation server")
    commands.add_common_args(serve)
    commands.add_serve_args(serve)
    add_job_args(serve)
    serve.add_argument("--bind", default="tcp://127.0.0.1:7700")
    serve.add_argument("--progress", action="store_true",
                       help="JSON progress lines on stdout (used by secagg run)")
    client = sub.add_parser("client", help="run one client")
    commands.add_common_args(client)
    commands.add_client_args(client)
    add_job_args(client)
    run = sub.add_parser("run", help="a server and N clients as processes on localhost, "
                         "in a fresh run folder under .secagg/runs/ (--resume RUN continues one)")
    commands.add_common_args(run)
    commands.add_serve_args(run, run=True)
    add_job_args(run)
    run.add_argument("--port", type=int, default=0, help="server port (0: a free one)")
    # None: not given, so a resume takes the run's own (secagg.fl_core.cli.run_folder)
    run.set_defaults(keys=None, protocol=None, insecure=None)


def _key_value(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` with VALUE as JSON if it parses (numbers, true/false), else a string.

    Raises:
        argparse.ArgumentTypeError: no ``=`` or an empty key.
    """
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(raw)
    except ValueError:
        return key, raw


def _add_flower_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    flower = sub.add_parser("flower", help="our protocols inside Flower (needs secagg[flower])")
    actions = flower.add_subparsers(dest="flower_action", required=True)
    p = actions.add_parser("demo", help="secagg_mod + SecAggWorkflow on a local Flower "
                           "federation, every round checked against the exact sum")
    p.add_argument("--deployment", dest="engine", action="store_const", const="deployment",
                   default="deployment", help="Flower's deployment runtime: a SuperLink and "
                   "SuperNodes as processes (the only engine so far, and the default)")
    p.add_argument("--clients", type=int, default=3, help="SuperNodes (default 3)")
    p.add_argument("--rounds", type=int, default=2, help="rounds (default 2)")
    p.add_argument("--protocol", choices=["plain", "secagg", "secagg+"], default="secagg+")
    p.add_argument("--dim", type=int, default=64, help="values per update (default 64)")
    p.add_argument("--timeout", type=float, default=30.0,
                   help="SecAggWorkflow's per-stage timeout in seconds (default 30)")
    p.add_argument("--run-timeout", type=float, default=600.0,
                   help="limit for the whole run in seconds (default 600)")
    tls = p.add_mutually_exclusive_group()
    tls.add_argument("--tls", dest="tls", action="store_true", default=True,
                     help="HTTPS with a throwaway CA in the run folder (the default)")
    tls.add_argument("--insecure", dest="tls", action="store_false", help="plain HTTP")
    p.add_argument("--active", action="store_true",
                   help="active mode: identity keys and a policy file per node, written into "
                   "the run folder; the server runs SecAggWorkflow.from_policy")
    p.add_argument("--workflow-arg", type=_key_value, action="append", default=[],
                   metavar="KEY=JSON", help="extra SecAggWorkflow keyword, e.g. clip=0.5 "
                   "(repeatable)")
    p.add_argument("--node-config", type=_key_value, action="append", default=[],
                   metavar="KEY=VALUE", help="extra node-config entry of every SuperNode; "
                   "'{pid}' in the value becomes its partition id (repeatable)")
    p.add_argument("--run-dir", help="run folder (default: a fresh .secagg/runs/flower-<time>/)")
    p.add_argument("--json", dest="json_path", help="also write the JSON report here")


def _run_runtime(ns: argparse.Namespace) -> int:
    from secagg.fl_core.cli import commands

    if ns.command == "run":
        from secagg.fl_core.cli.run_folder import RunFolderError, restore_settings

        try:
            restore_settings(ns)  # a resume's protocol, cohort, dim; then the defaults
        except RunFolderError as exc:
            print(f"secagg run: {exc}", file=sys.stderr)
            return 2
    if ns.dim is not None:  # the synthetic federation: its historic defaults
        ns.n = 8 if ns.n is None else ns.n
        if hasattr(ns, "rounds") and ns.rounds is None:
            ns.rounds = 3
    if getattr(ns, "join_timeout", 0.0) is None:
        ns.join_timeout = 30.0 if ns.dim is not None else 300.0
    if any(v is not None and v < 1 for v in (ns.n, ns.dim, getattr(ns, "rounds", None))):
        print("secagg: --n, --dim and --rounds must be >= 1", file=sys.stderr)
        return 2
    if ns.command == "serve":
        return commands.serve_main(ns, progress_stream=sys.stdout if ns.progress else None)
    if ns.command == "client":
        return commands.client_main(ns)
    from secagg.fl_core.cli.run_cohort import apply_cohort_floor

    if (refusal := apply_cohort_floor(ns)) is not None:  # before any file or process
        print(f"secagg run: {refusal}", file=sys.stderr)
        return 2
    from secagg.fl_core.cli.runner import run_main

    return run_main(ns)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen subcommand; return the process exit status."""
    ap = argparse.ArgumentParser(
        prog="secagg", description="Secure aggregation for federated learning."
    )
    ap.add_argument("--version", action="version", version=f"secagg {_version()}")
    sub = ap.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="run a benchmark and write JSON to benchmarks/results/")
    bench.add_argument("name", choices=sorted(BENCHMARKS), help="which benchmark")
    bench.add_argument("args", nargs=argparse.REMAINDER, help="options of that benchmark (--help)")
    keygen = sub.add_parser(
        "keygen", help="write CurveZMQ (and client identity) key files, secrets mode 0600"
    )
    keygen.add_argument("role", choices=["server", "client"], help="whose keys")
    keygen.add_argument("--out", required=True, help="folder to write into (created 0700)")
    keygen.add_argument("--ids", type=parse_ids, help="client ids, e.g. 1-20,25 (client only)")
    keygen.add_argument("--force", action="store_true", help="overwrite existing key files")
    _add_runtime_parsers(sub)
    _add_flower_parser(sub)
    from secagg.fl_core.cli.config_file import parse_with_config

    ns = parse_with_config(ap, list(sys.argv[1:] if argv is None else argv))
    if ns.command in ("serve", "client", "run"):
        if ns.command != "run":  # a runner's server or client stops when the runner dies
            from secagg.fl_core.cli.supervise import watch_parent

            watch_parent()
        return _run_runtime(ns)
    if ns.command == "flower":
        if min(ns.clients, ns.rounds, ns.dim) < 1 or ns.timeout <= 0:
            ap.error("flower demo: --clients, --rounds, --dim and --timeout must be positive")
        from secagg.fl_core.flower.demo import demo_main  # imports flwr: only here

        return demo_main(ns)
    if ns.command == "bench":
        return _bench(ns.name, ns.args)
    if ns.command == "keygen":
        if (ns.role == "client") != (ns.ids is not None):
            ap.error("keygen: --ids is required for client keys and only for them")
        return _keygen(ns)
    ap.error(f"unknown command {ns.command!r}")
    return 2  # pragma: no cover - ap.error exits


def _bench(name: str, args: list[str]) -> int:
    """Run a benchmark from the source checkout this package is installed from (benchmarks/ is
    not shipped in the wheel); exits 2 with a one-line reason outside a checkout."""
    checkout = Path(__file__).resolve().parents[2]  # fl_core/cli/ -> the repository root
    if not (checkout / "benchmarks" / "__init__.py").is_file():
        print("secagg bench runs from a source checkout (benchmarks/ is not installed): "
              "clone the repository and pip install -e it", file=sys.stderr)
        return 2
    if str(checkout) not in sys.path:
        sys.path.insert(0, str(checkout))
    module = importlib.import_module(BENCHMARKS[name])
    return int(module.main(args))


if __name__ == "__main__":
    raise SystemExit(main())
