"""``benchmarks.experiments.federated_optim`` end to end at its seconds-long ``--tiny`` size.

Real MiniLM + LoRA on TREC, the real SecAgg+ round; one federated and one centralized run of
the chosen configuration (local SGD, the server optimizer).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.experiments import federated_optim

pytestmark = pytest.mark.slow


def test_federated_optim_runs_tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECAGG_EXPERIMENTS_OUT", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    federated_optim.main(["--tiny", "--seeds", "0", "--ref-seeds", "--only", "lora_chosen"])
    doc = json.loads((tmp_path / "federated_optim.json").read_text())
    fed, central = doc["runs"]
    assert (fed["row"], central["row"]) == ("lora_chosen_fed", "lora_chosen_central")
    # the same job (optimizers, steps, batch, seed): only the data split differs
    assert fed["job"] == central["job"]
    assert fed["job"]["local_optimizer"] == federated_optim.CHOSEN["local_optimizer"]
    assert fed["job"]["server_optimizer"] == federated_optim.CHOSEN["server_optimizer"]
    assert fed["local_trainings_per_round"] == central["local_trainings_per_round"] == 4
    assert central["centralized"] is True and fed["centralized"] is False
    for run in (fed, central):
        assert 0.0 <= run["accuracy_after"] <= 1.0
    gap = doc["summary"]["lora_chosen_gap_fed_minus_central"]
    assert gap["n"] == 1
