"""Each experiment script of ``benchmarks/experiments`` runs end to end at a tiny size.

Real MiniLM, real vader-movie data, the real SecAgg+ round and the real DP mechanisms; only the
sizes are tiny (``--tiny --limit 1``: one row per script, one round, 16 held-out examples).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.experiments import (
    adapters,
    centralized_vs_federated,
    client_level,
    dp_epsilon,
    generative,
)
from secagg.models.assets import package_dir, smollm2_gguf
from secagg.models.errors import AssetNotFoundError

pytestmark = pytest.mark.slow


def _doc(out: Path, name: str) -> dict[str, object]:
    path = out / f"{name}.json"
    assert path.exists(), f"{name}.json was not written"
    doc: dict[str, object] = json.loads(path.read_text())
    return doc


def test_experiment_scripts_run_tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECAGG_EXPERIMENTS_OUT", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tiny = ["--tiny", "--limit", "1"]

    centralized_vs_federated.main(tiny)
    central = _doc(tmp_path, "exp1_fedavg_central")
    assert central["centralized"] is True
    assert 0.0 <= float(central["accuracy_after"]) <= 1.0  # type: ignore[arg-type]
    assert (tmp_path / "exp1_centralized_vs_federated.png").stat().st_size > 0

    dp_epsilon.main(["--tiny", "--only", "distributed_eps8"])
    dist = _doc(tmp_path, "exp2_distributed_eps8")
    assert float(dist["epsilon"]) <= 8.0  # type: ignore[arg-type]
    noise = dist["noise_measurement"]
    assert isinstance(noise, dict)
    # the zero-signal round's measured std matches the mechanism's (a 74k-value sample)
    assert noise["measured_mean_std"] == pytest.approx(noise["expected_mean_std"], rel=0.05)
    assert float(dist["bytes_up_per_client_per_round"]) > 0  # type: ignore[arg-type]
    assert (tmp_path / "exp2_dp_epsilon.png").exists()

    client_level.main(tiny)
    cl = _doc(tmp_path, "exp3_client_distributed_eps8")
    assert cl["cohort"] == 4 and cl["job"]["num_clients"] == 8  # type: ignore[index]

    adapters.main(tiny)
    prefix = _doc(tmp_path, "exp4_prefix")
    assert prefix["job"]["adapter"] == "prefix"  # type: ignore[index]
    assert float(prefix["secagg_fraction_of_round"]) < 1.0  # type: ignore[arg-type]


def test_generative_runs_tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SmolLM2 + LoRA on ChatterBot, one round of the distributed-DP row (about 20 s)."""
    try:
        smollm2_gguf()
        package_dir("chatterbot_corpus")
    except AssetNotFoundError as exc:
        pytest.skip(str(exc))
    monkeypatch.setenv("SECAGG_EXPERIMENTS_OUT", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    generative.main(["--tiny", "--seeds", "0", "--only", "distributed"])
    doc = _doc(tmp_path, "generative")
    (run,) = doc["runs"]  # type: ignore[misc]
    assert run["row"] == "distributed_eps8" and run["noise"] == "distributed"
    assert float(run["epsilon"]) <= 8.0 + 1e-6 and float(run["sigma"]) > 0
    assert float(run["perplexity_before"]) > 1.0 and float(run["perplexity_after"]) > 1.0
    # the script's own teacher-forced pass agrees with the server's evaluation
    assert run["check_perplexity_after"] == pytest.approx(run["perplexity_after"], rel=1e-3)
    assert 0.0 <= float(run["token_accuracy_after"]) <= 1.0
    assert run["generations"] and {"before", "after"} <= set(run["generations"][0])
    assert doc["code"]["commit"]  # type: ignore[index]
