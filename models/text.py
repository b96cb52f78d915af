"""Unlabeled text for continued pre-training: documents, a causal-LM batch, user text files.

:class:`TextData` holds documents only (no labels, no prompts): the loss is the causal-LM
cross-entropy on every token of a document (padding excepted), the held-out metric its
perplexity. It has the ``subset``/``len``/``labels`` shape of the other data sets (one group,
``labels`` all 0), so the seeded hold-out split and the IID partition treat it like them.

User files (:func:`load_text_file`): ``.txt`` with one document per line (blank lines skipped),
or ``.csv``/``.tsv``/``.jsonl``/``.ndjson`` with a ``text`` column (other columns, a label
among them, are ignored). Malformed files raise :class:`secagg.models.errors.DataFormatError`
naming the file and line.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from secagg.models.errors import AssetNotFoundError, DataFormatError
from secagg.models.jsonl import jsonl_objects
from secagg.models.loading import TaskKind

__all__ = ["TEXT_SUFFIXES", "TextData", "load_text_file", "text_batch"]

IntArray = npt.NDArray[np.int64]
#: suffix -> CSV delimiter (None: JSON lines, "" : one document per line)
TEXT_SUFFIXES: dict[str, str | None] = {".txt": "", ".csv": ",", ".tsv": "\t", ".jsonl": None,
                                        ".ndjson": None}
_IGNORE = -100  # secagg.models.batching.IGNORE_INDEX (batching imports this module)


@dataclass(frozen=True)
class TextData:
    """Unlabeled documents (a causal LM learns every token).

    Raises:
        DataFormatError: a document is not a non-empty string.
    """

    name: str
    texts: tuple[str, ...]
    labels: IntArray = field(init=False, repr=False, compare=False)
    label_names: tuple[str, ...] = field(init=False, default=("text",))

    task = TaskKind.CAUSAL_LM

    def __post_init__(self) -> None:
        object.__setattr__(self, "texts", tuple(self.texts))
        for i, t in enumerate(self.texts):
            if not isinstance(t, str) or not t.strip():
                raise DataFormatError(f"document {i} of {self.name!r} is not a non-empty string")
        labels = np.zeros(len(self.texts), dtype=np.int64)
        labels.flags.writeable = False
        object.__setattr__(self, "labels", labels)

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def num_labels(self) -> int:
        """One group (documents carry no label)."""
        return 1

    def subset(self, indices: Sequence[int] | IntArray) -> TextData:
        """The documents at ``indices``, in that order."""
        idx = np.asarray(indices, dtype=np.int64)
        return TextData(self.name, tuple(self.texts[int(i)] for i in idx))


def text_batch(tokenizer: Any, texts: Sequence[str], *, max_length: int
               ) -> dict[str, torch.Tensor]:
    """Tokenise documents (truncated to ``max_length`` tokens, right-padded to the longest);
    ``labels`` copy every real token and hold -100 on padding."""
    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length,
                    return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    labels = ids.masked_fill(mask == 0, _IGNORE)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def load_text_file(path: str | Path, *, column: str = "text") -> TextData:
    """Read a user text file (see the module docstring).

    Raises:
        AssetNotFoundError: no such file.
        DataFormatError: an unknown suffix, not UTF-8, broken CSV/JSON, a missing or empty
            ``text`` value, or no documents.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise AssetNotFoundError(f"{p} is not a file")
    suffix = p.suffix.lower()
    if suffix not in TEXT_SUFFIXES:
        raise DataFormatError(f"{p}: unknown text file type {suffix!r} "
                              f"({', '.join(TEXT_SUFFIXES)})")
    try:
        raw = p.read_bytes().decode("utf-8")  # no newline translation: a lone \r stays
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"{p}: not valid utf-8: {exc.reason}") from None
    delimiter = TEXT_SUFFIXES[suffix]
    if delimiter == "":
        # "\n" only: str.splitlines would also split inside a line at \x1c, \u2028, ...
        texts = [line.strip() for line in raw.split("\n") if line.strip()]
    elif delimiter is None:
        texts = _jsonl_texts(p, raw, column)
    else:
        texts = _csv_texts(p, raw, delimiter, column)
    if not texts:
        raise DataFormatError(f"{p}: no documents")
    return TextData(p.stem, tuple(texts))


def _value(p: Path, line: int, row: dict[str, Any], column: str) -> str:
    if column not in row:
        raise DataFormatError(f"{p}:{line}: missing column {column!r}")
    value = row[column]
    if not isinstance(value, str):
        raise DataFormatError(f"{p}:{line}: column {column!r} must be a string, got "
                              f"{type(value).__name__}")
    if not value.strip():
        raise DataFormatError(f"{p}:{line}: column {column!r} is empty")
    return value.strip()


def _jsonl_texts(p: Path, raw: str, column: str) -> list[str]:
    # split on "\n" only: str.splitlines also breaks at "\r" and "\x1c" inside reviews
    return [_value(p, line_no, obj, column) for line_no, obj in jsonl_objects(p, raw.split("\n"))]


def _csv_texts(p: Path, raw: str, delimiter: str, column: str) -> list[str]:
    reader = csv.DictReader(io.StringIO(raw, newline=""), delimiter=delimiter, strict=True)
    out = []
    try:
        header = reader.fieldnames
        if not header:
            raise DataFormatError(f"{p}: empty file (no header row)")
        if column not in header:
            raise DataFormatError(f"{p}:1: header {header} lacks column {column!r}")
        for row in reader:
            if None in row or None in row.values():
                raise DataFormatError(f"{p}:{reader.line_num}: row has the wrong number of "
                                      f"fields for the header's {len(header)}")
            out.append(_value(p, reader.line_num, row, column))
    except csv.Error as exc:
        raise DataFormatError(f"{p}:{reader.line_num}: malformed CSV: {exc}") from None
    return out
