"""Reading JSONL data files: one JSON object per non-blank line (shared by the labelled and
instruction loaders, :mod:`secagg.models.data`, and the text corpora, :mod:`secagg.models.text`)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from secagg.models.errors import DataFormatError

__all__ = ["jsonl_objects"]


def jsonl_objects(p: Path, lines: Iterable[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for every non-blank line of a JSONL source.

    Raises:
        DataFormatError: a line that is not JSON, or not a JSON object.
    """
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataFormatError(f"{p}:{line_no}: invalid JSON: {exc.msg}") from None
        if not isinstance(obj, dict):
            raise DataFormatError(f"{p}:{line_no}: expected a JSON object")
        yield line_no, obj
