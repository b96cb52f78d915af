"""Train, validation and test for the experiments (issue 23): every choice on validation, the
test set read once per reported row, and the tooling refuses anything else.

- Validation: :func:`benchmarks.experiments.sim.run_job` always carves a validation set out of
  the parties' training records (``job.eval_size`` of them, seeded by the job's seed:
  :func:`secagg.fl_core.finetune.party.carve_validation`), before DP is calibrated on the
  parties' sizes. No party trains on it, and a selecting run (``split="val"``, the default) and
  the final run of the chosen setting (``split="test"``) train on exactly the same records.
- :class:`TestReads`: the book of test reads (``test_reads.json`` beside the results). A
  reported row claims its key before the test set is evaluated; a second claim of the same key
  is refused (:class:`TestReread`), whichever process made the first.
- :func:`choose`: picks the best of a set of runs and refuses any run evaluated on the test
  split (:class:`SelectedOnTest`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

__all__ = ["SelectedOnTest", "Split", "TestReads", "TestReread", "choose"]

Split = Literal["val", "test"]


class TestReread(RuntimeError):
    """A reported row's test set was already read."""


class SelectedOnTest(ValueError):
    """A choice was asked for among runs evaluated on the test split."""


class TestReads:
    """The book of test reads of one results folder."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "test_reads.json"

    def _load(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            raise TestReread(f"{self.path} is unreadable ({exc}): refusing to read the test set "
                             "without its book") from None
        return doc if isinstance(doc, dict) else {}

    def claim(self, row: str) -> None:
        """Record that ``row`` reads the test set now (persisted before returning).

        Raises:
            TestReread: ``row`` read it before.
        """
        doc = self._load()
        if row in doc:
            raise TestReread(f"row {row!r} already read the test set ({doc[row]}); a reported "
                             "row reads it once: choose on validation, then report")
        doc[row] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, self.path)

    def rows(self) -> dict[str, Any]:
        """Every row that has read the test set, with when."""
        return self._load()


def choose(runs: Sequence[dict[str, Any]], key: Callable[[dict[str, Any]], float]
           ) -> dict[str, Any]:
    """The run with the largest ``key``; every run must have been evaluated on validation.

    Raises:
        SelectedOnTest: a run was evaluated on the test split (or does not say).
        ValueError: no runs.
    """
    if not runs:
        raise ValueError("choose needs at least one run")
    for run in runs:
        if run.get("split") != "val":
            raise SelectedOnTest(f"run {run.get('label')!r} was evaluated on "
                                 f"{run.get('split')!r}: choices are made on validation only")
    return max(runs, key=key)
