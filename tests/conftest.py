"""Settings every test process (and the processes it starts) shares."""

from __future__ import annotations

import os

# The job summary's baselines (a linear probe over the whole training set, minutes of feature
# extraction on 2 cores) are measured by their own tests (tests/fl_core/finetune/
# test_baselines_summary.py), not by every process test that finishes a job.
os.environ.setdefault("SECAGG_BASELINES", "off")
