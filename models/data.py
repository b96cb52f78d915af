"""Data sets as plain immutable records, a stratified hold-out split, and user CSV/JSONL files.

Two shapes of data:

- :class:`ClassificationData`: ``texts`` with integer ``labels`` into ``label_names``.
- :class:`InstructionData`: ``prompts`` and ``responses`` (causal-LM fine-tuning), with
  integer ``labels`` naming a group (e.g. a topic) so that clients can be label-skewed too.

User files hold one example per row/line with columns ``text,label`` (classification) or
``prompt,response`` and an optional ``label`` (instruction tuning). Malformed files raise
:class:`secagg.models.errors.DataFormatError` naming the file and line.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from secagg.models.errors import AssetNotFoundError, DataFormatError, PartitionError
from secagg.models.jsonl import jsonl_objects
from secagg.models.loading import TaskKind
from secagg.models.text import TextData

__all__ = [
    "ClassificationData",
    "Dataset",
    "InstructionData",
    "load_csv",
    "load_file",
    "load_jsonl",
    "make_labels",
    "train_test_split",
]

IntArray = npt.NDArray[np.int64]


def _frozen_labels(labels: Sequence[int] | IntArray, n_names: int, n: int) -> IntArray:
    arr = np.array(labels, dtype=np.int64)
    if arr.shape != (n,):
        raise DataFormatError(f"labels must have shape ({n},), got {arr.shape}")
    if n and (arr.min() < 0 or arr.max() >= n_names):
        raise DataFormatError(f"labels must lie in [0, {n_names})")
    arr.flags.writeable = False
    return arr


@dataclass(frozen=True)
class ClassificationData:
    """Texts with integer labels indexing ``label_names``.

    Raises:
        DataFormatError: lengths disagree or a label is out of range.
    """

    name: str
    texts: tuple[str, ...]
    labels: IntArray
    label_names: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "texts", tuple(self.texts))
        object.__setattr__(
            self, "labels", _frozen_labels(self.labels, len(self.label_names), len(self.texts))
        )

    task = TaskKind.CLASSIFICATION

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def num_labels(self) -> int:
        """Number of classes."""
        return len(self.label_names)

    def subset(self, indices: Sequence[int] | IntArray) -> ClassificationData:
        """The examples at ``indices``, in that order."""
        idx = np.asarray(indices, dtype=np.int64)
        return ClassificationData(
            self.name, tuple(self.texts[i] for i in idx), self.labels[idx], self.label_names
        )


@dataclass(frozen=True)
class InstructionData:
    """Prompt -> response pairs, with group labels (a single group when none is known).

    Raises:
        DataFormatError: lengths disagree or a label is out of range.
    """

    name: str
    prompts: tuple[str, ...]
    responses: tuple[str, ...]
    labels: IntArray
    label_names: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompts", tuple(self.prompts))
        object.__setattr__(self, "responses", tuple(self.responses))
        if len(self.prompts) != len(self.responses):
            raise DataFormatError("prompts and responses differ in length")
        object.__setattr__(
            self, "labels", _frozen_labels(self.labels, len(self.label_names), len(self.prompts))
        )

    task = TaskKind.CAUSAL_LM

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def num_labels(self) -> int:
        """Number of groups."""
        return len(self.label_names)

    def subset(self, indices: Sequence[int] | IntArray) -> InstructionData:
        """The examples at ``indices``, in that order."""
        idx = np.asarray(indices, dtype=np.int64)
        return InstructionData(
            self.name,
            tuple(self.prompts[i] for i in idx),
            tuple(self.responses[i] for i in idx),
            self.labels[idx],
            self.label_names,
        )


Dataset = ClassificationData | InstructionData | TextData


def make_labels(raw: Sequence[str]) -> tuple[IntArray, tuple[str, ...]]:
    """Map label strings to ids: numeric order if all are integers, else sorted text order."""
    unique = set(raw)
    try:
        names = sorted(unique, key=int)
    except ValueError:
        names = sorted(unique)
    index = {name: i for i, name in enumerate(names)}
    return np.array([index[r] for r in raw], dtype=np.int64), tuple(names)


def train_test_split(data: Dataset, *, test_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Stratified hold-out split: about ``test_fraction`` of every label goes to the test set.

    Raises:
        TypeError: ``seed`` is not an int.
        PartitionError: ``test_fraction`` is not in (0, 1), or a side would be empty.
    """
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError("seed must be an int")
    if not 0.0 < test_fraction < 1.0:
        raise PartitionError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    test: list[int] = []
    for label in np.unique(data.labels):
        members = np.flatnonzero(data.labels == label)
        rng.shuffle(members)
        test.extend(members[: round(len(members) * test_fraction)].tolist())
    test_idx = np.sort(np.array(test, dtype=np.int64))
    train_idx = np.setdiff1d(np.arange(len(data)), test_idx)
    if len(test_idx) == 0 or len(train_idx) == 0:
        raise PartitionError("the split leaves one side empty")
    return data.subset(train_idx), data.subset(test_idx)


# -- user files ---------------------------------------------------------------------------------


def _required(task: TaskKind, text: str, label: str, prompt: str, response: str) -> list[str]:
    return [text, label] if task is TaskKind.CLASSIFICATION else [prompt, response]


def _build(
    rows: Iterator[tuple[int, dict[str, Any]]],
    *,
    path: Path,
    task: TaskKind,
    columns: tuple[str, str, str, str],
) -> Dataset:
    text_col, label_col, prompt_col, response_col = columns
    required = _required(task, *columns)
    optional = [] if task is TaskKind.CLASSIFICATION else [label_col]
    values: dict[str, list[str]] = {c: [] for c in required + optional}
    for line, row in rows:
        for col in required + optional:
            if col not in row:
                if col in optional:
                    continue
                raise DataFormatError(f"{path}:{line}: missing column {col!r}")
            value = row[col]
            allowed = (str, int) if col == label_col else (str,)
            if isinstance(value, bool) or not isinstance(value, allowed):
                raise DataFormatError(
                    f"{path}:{line}: column {col!r} must be a string, got {type(value).__name__}"
                )
            value = str(value).strip()
            if not value:
                raise DataFormatError(f"{path}:{line}: column {col!r} is empty")
            values[col].append(value)
    n = len(values[required[0]])
    if n == 0:
        raise DataFormatError(f"{path}: no examples")
    if task is TaskKind.CLASSIFICATION:
        labels, names = make_labels(values[label_col])
        if len(names) < 2:
            raise DataFormatError(
                f"{path}: one class ({names[0]!r}) in {n} examples; classification needs >= 2 "
                "distinct labels"
            )
        return ClassificationData(path.stem, tuple(values[text_col]), labels, names)
    group = values.get(label_col, [])
    if group and len(group) != n:
        raise DataFormatError(f"{path}: column {label_col!r} must be on every row or none")
    labels, names = make_labels(group) if group else (np.zeros(n, dtype=np.int64), ("all",))
    return InstructionData(
        path.stem, tuple(values[prompt_col]), tuple(values[response_col]), labels, names
    )


def _existing(path: str | Path) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise AssetNotFoundError(f"{p} is not a file")
    return p


def load_csv(
    path: str | Path,
    *,
    task: TaskKind,
    text_column: str = "text",
    label_column: str = "label",
    prompt_column: str = "prompt",
    response_column: str = "response",
    delimiter: str = ",",
    encoding: str = "utf-8",
) -> Dataset:
    """Read a CSV file with a header row.

    Raises:
        AssetNotFoundError: no such file.
        DataFormatError: undecodable bytes, broken quoting, no header, a missing column, a row
            with too many or too few fields, an empty value, no rows, or a single class.
    """
    p = _existing(path)
    columns = (text_column, label_column, prompt_column, response_column)

    def rows() -> Iterator[tuple[int, dict[str, Any]]]:
        with p.open(encoding=encoding, newline="") as f:
            reader = csv.DictReader(f, delimiter=delimiter, strict=True)
            header = reader.fieldnames
            if not header:
                raise DataFormatError(f"{p}: empty file (no header row)")
            missing = [c for c in _required(task, *columns) if c not in header]
            if missing:
                raise DataFormatError(f"{p}:1: header {header} lacks column(s) {missing}")
            for row in reader:
                if None in row or None in row.values():
                    raise DataFormatError(
                        f"{p}:{reader.line_num}: row has {'too many' if None in row else 'too few'}"
                        f" fields for the header's {len(header)}"
                    )
                yield reader.line_num, row

    try:
        return _build(rows(), path=p, task=task, columns=columns)
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"{p}: not valid {encoding}: {exc.reason}") from exc
    except csv.Error as exc:
        raise DataFormatError(f"{p}: malformed CSV: {exc}") from exc


def load_jsonl(
    path: str | Path,
    *,
    task: TaskKind,
    text_column: str = "text",
    label_column: str = "label",
    prompt_column: str = "prompt",
    response_column: str = "response",
    encoding: str = "utf-8",
) -> Dataset:
    """Read a JSON Lines file: one JSON object per line (blank lines are skipped).

    Raises:
        AssetNotFoundError: no such file.
        DataFormatError: undecodable bytes, a line that is not a JSON object, a missing key,
            a non-string value, an empty value, no records, or a single class.
    """
    p = _existing(path)
    columns = (text_column, label_column, prompt_column, response_column)

    def rows() -> Iterator[tuple[int, dict[str, Any]]]:
        with p.open(encoding=encoding) as f:
            yield from jsonl_objects(p, f)

    try:
        return _build(rows(), path=p, task=task, columns=columns)
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"{p}: not valid {encoding}: {exc.reason}") from exc


def load_file(path: str | Path, *, task: TaskKind, **columns: str) -> Dataset:
    """Load a ``.csv``, ``.tsv`` or ``.jsonl`` file by its suffix.

    Raises:
        DataFormatError: an unknown suffix; otherwise as :func:`load_csv` / :func:`load_jsonl`.
    """
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        return load_csv(path, task=task, **columns)
    if suffix == ".tsv":
        return load_csv(path, task=task, delimiter="\t", **columns)
    if suffix in (".jsonl", ".ndjson"):
        return load_jsonl(path, task=task, **columns)
    raise DataFormatError(f"{path}: unknown data file type {suffix!r} (csv, tsv, jsonl)")
