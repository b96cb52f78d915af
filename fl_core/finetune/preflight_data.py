"""What preflight reads of a user's data file, with the standard library only: text, its
CSV/TSV or JSONL rows, the task its columns name and the examples per label
(:mod:`secagg.fl_core.finetune.preflight` runs the checks; importing neither loads torch)."""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from secagg.fl_core.finetune.job import JobError

__all__ = ["CAUSAL_LM", "CLASSIFICATION", "DataFileError", "DataInfo", "PreflightError", "Row",
           "csv_rows", "jsonl_rows", "read_text", "tally", "task_of"]

CLASSIFICATION = "classification"  # the values of secagg.models.TaskKind
CAUSAL_LM = "causal-lm"
# model alias -> the pip package carrying it (secagg.models.MODEL_ALIASES, models/assets.py)


class PreflightError(JobError):
    """The job cannot run; found before any model is loaded. The message names the cause."""


class DataFileError(PreflightError):
    """The data file cannot be used: not text, an unknown header, a malformed row, a single
    class, or too few examples to split."""


@dataclass(frozen=True)
class DataInfo:
    """What a data source holds, as far as the checks need.

    ``task`` is :data:`CLASSIFICATION` or :data:`CAUSAL_LM`; ``label_counts`` (examples per
    label) is known for user files only.
    """

    source: str
    task: str
    packaged: bool
    label_counts: tuple[int, ...] = ()

    @property
    def examples(self) -> int:
        """Examples in a user file (0 for a packaged set: not counted)."""
        return sum(self.label_counts)


def read_text(path: Path) -> str:
    data = path.read_bytes()
    if b"\x00" in data:
        raise DataFileError(f"--data {path}: binary data (NUL bytes), not a CSV/TSV/JSONL text "
                            "file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataFileError(f"--data {path}: not a UTF-8 text file (byte "
                            f"{exc.object[exc.start]:#04x} at offset {exc.start})") from None


Row = tuple[int, dict[str, Any]]


def csv_rows(path: Path, text: str, delimiter: str,
              check_header: Callable[[Path, Sequence[str]], object] | None = None
              ) -> Iterator[Row]:
    """The rows of a CSV/TSV file; ``check_header`` (default: a classification or instruction
    header) refuses a header with a DataFileError."""
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    try:
        header = reader.fieldnames
        if not header:
            raise DataFileError(f"--data {path}: empty file (no header row)")
        (check_header or task_of)(path, header)
        for row in reader:
            if None in row or None in row.values():
                raise DataFileError(f"--data {path}:{reader.line_num}: row has "
                                    f"{'too many' if None in row else 'too few'} fields for the "
                                    f"header's {len(header)}")
            yield reader.line_num, row
    except csv.Error as exc:
        raise DataFileError(f"--data {path}:{reader.line_num}: malformed CSV: {exc}") from None


def jsonl_rows(path: Path, text: str) -> Iterator[Row]:
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataFileError(f"--data {path}:{line_no}: invalid JSON: {exc.msg}") from None
        if not isinstance(obj, dict):
            raise DataFileError(f"--data {path}:{line_no}: expected a JSON object")
        yield line_no, obj


def task_of(path: Path, keys: Collection[str], line: int = 1) -> str:
    if "text" in keys and "label" in keys:
        return CLASSIFICATION
    if "prompt" in keys and "response" in keys:
        return CAUSAL_LM
    raise DataFileError(f"--data {path}:{line}: columns {list(keys)} have neither text,label "
                        "(classification) nor prompt,response (instruction tuning)")


def tally(path: Path, rows: Iterator[Row]) -> DataInfo:
    task: str | None = None
    labels: list[str] = []
    for line, row in rows:
        task = task or task_of(path, row, line)
        columns = ("text", "label") if task == CLASSIFICATION else ("prompt", "response", "label")
        for col in columns:
            if col not in row:
                if col == "label" and task == CAUSAL_LM:
                    continue  # optional for instruction data
                raise DataFileError(f"--data {path}:{line}: missing column {col!r}")
            value = row[col]
            allowed = (str, int) if col == "label" else (str,)
            if isinstance(value, bool) or not isinstance(value, allowed):
                raise DataFileError(f"--data {path}:{line}: column {col!r} must be a string, "
                                    f"got {type(value).__name__}")
            if not str(value).strip():
                raise DataFileError(f"--data {path}:{line}: column {col!r} is empty")
        labels.append(str(row.get("label", "")).strip())
    if task is None:
        raise DataFileError(f"--data {path}: no examples")
    if task == CAUSAL_LM and any(labels) and not all(labels):
        raise DataFileError(f"--data {path}: column 'label' must be on every row or none")
    counts = Counter(labels)
    if task == CLASSIFICATION and len(counts) < 2:
        raise DataFileError(f"--data {path}: one class ({next(iter(counts))!r}) in "
                            f"{len(labels)} examples; a classifier needs at least 2")
    return DataInfo(str(path), task, False, tuple(counts[k] for k in sorted(counts)))
