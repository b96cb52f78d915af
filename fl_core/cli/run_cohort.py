"""``secagg run``'s ``--min-clients``: the cohort floor as its default, and nothing below it.

``secagg run`` lets the rounds of a SecAgg/SecAgg+ job shrink after a lost party (survivors
carry on; every round size is calibrated). It used to let them shrink to 2, where a server with
one sybil runs {victim, sybil} rounds: the sum minus the sybil's input is the victim's, with
``sigma/sqrt(2)`` of noise. Here, before any file or process exists, the default becomes the
cohort floor (:mod:`secagg.fl_core.runtime.cohort_floor`) and a smaller ``--min-clients`` is
refused; the server (``secagg serve``) and every client's policy refuse it again on their own.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from secagg.fl_core.finetune.job import FinetuneJob

__all__ = ["apply_cohort_floor"]

_SHRINKING = ("secagg", "secagg+")  # the protocols whose job rounds may shrink by default


def _job(ns: argparse.Namespace) -> FinetuneJob | None:
    """The job ``secagg run`` will run (a resume: its run folder's ``job.json`` under the
    flags), or None when it cannot be read (the runner's preflight then says why)."""
    from secagg.fl_core.cli.run_folder import RunFolderError, locate
    from secagg.fl_core.finetune.cli_args import job_from_args
    from secagg.fl_core.finetune.job import JobError

    probe = argparse.Namespace(**vars(ns))
    try:
        if ns.resume is not None and not getattr(ns, "job", None):
            run = locate(ns)
            if run.resume and run.job.is_file():
                probe.job = str(run.job)
        return job_from_args(probe, rounds=ns.rounds)
    except (JobError, RunFolderError, OSError, ValueError):
        return None


def apply_cohort_floor(ns: argparse.Namespace) -> str | None:
    """Default ``ns.min_clients`` to the cohort floor where a job's rounds may shrink (a
    SecAgg/SecAgg+ job of more than 2 parties), or check a given one against it; return the
    refusal (one line) or None. Inputs that make no config are left to the runner's checks.

    Raises:
        Nothing: every refusal is returned.
    """
    from secagg.fl_core.cli.commands import config_args
    from secagg.fl_core.finetune.preflight import (
        PreflightError,
        check_min_clients,
        job_cohort_floor,
    )
    from secagg.fl_core.runtime.cohort_floor import CohortFloorError, check_min_cohort
    from secagg.protocols.errors import ConfigError

    given = getattr(ns, "min_clients", None)
    try:
        if ns.dim is not None:  # the synthetic federation: no DP, rounds of n unless given
            if given is not None:
                check_min_cohort(config_args(ns), given, dp=False)
            return None
        job = _job(ns)
        if job is None:
            return None
        cohort: dict[str, Any] = {"protocol": ns.protocol, "active": not ns.insecure,
                                  "n": ns.n if ns.n is not None else job.num_clients}
        if given is not None:
            check_min_clients(job, min_clients=given, **cohort)
        elif ns.protocol in _SHRINKING and cohort["n"] > 2:
            ns.min_clients = job_cohort_floor(job, **cohort)
    except (CohortFloorError, PreflightError) as exc:
        return str(exc)
    except (ConfigError, TypeError, ValueError):
        return None
    return None
