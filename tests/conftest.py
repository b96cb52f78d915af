"""Settings every test process (and the processes it starts) shares."""

from __future__ import annotations

import os

import pytest

# The job summary's baselines (a linear probe over the whole training set, minutes of feature
# extraction on 2 cores) are measured by their own tests (tests/fl_core/finetune/
# test_baselines_summary.py), not by every process test that finishes a job.
os.environ.setdefault("SECAGG_BASELINES", "off")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "soak: minutes-long controls kept out of CI's 30 minutes "
        "(run them with: pytest -m soak)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Soak tests run only when asked for by marker expression (``-m soak``)."""
    if "soak" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="soak: run with pytest -m soak")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)
