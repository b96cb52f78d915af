"""Federated continued pre-training (``--objective pretrain``) over real processes: ``secagg
run`` with the real SmolLM2-135M on real drug-review text written as a user ``.txt`` file, LoRA
with record-level distributed DP, and all 134.5M weights streamed through SecAgg+ in chunks,
where the server's applied mean of every chunk is checked against what each client says it
sent. Bad text files and DP on full weights are refused before any process starts."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from secagg.models import drug_reviews
from secagg.protocols.config import SecAggConfig

pytestmark = pytest.mark.slow

PY = [sys.executable, "-m", "secagg.fl_core.cli"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TINY = ["--objective", "pretrain", "--model", "smollm2", "--clients", "2", "--rounds", "1",
        "--max-length", "32", "--eval-size", "6", "--batch-size", "4", "--insecure"]


@pytest.fixture(scope="module")
def docs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 real drug reviews, one document per line (a user's unlabeled text file)."""
    path = tmp_path_factory.mktemp("text") / "reviews.txt"
    path.write_text("".join(" ".join(t.split()) + "\n" for t in drug_reviews().texts[:30]))
    return path


def _run(tmp: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    summary = tmp / "summary.json"
    proc = subprocess.run([*PY, "run", *TINY, *args, "--run-dir", str(tmp / "run"),
                           "--json", str(summary)],
                          capture_output=True, text=True, timeout=400, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, json.loads(summary.read_text())


def _check_common(doc: dict[str, Any]) -> None:
    assert doc["objective"] == "pretrain" and doc["rounds"] == 1
    before, after = doc["perplexity_before"], doc["perplexity_after"]
    assert math.isfinite(before) and math.isfinite(after) and before > 1 and after > 1
    rss = doc["peak_rss_mb"]
    assert set(rss) == {"server", "client-1", "client-2"}
    assert all(300 < v < 20_000 for v in rss.values())  # a loaded SmolLM2 in every party


def test_lora_pretrain_with_record_level_dp(tmp_path: Path, docs: Path) -> None:
    _, doc = _run(tmp_path, "--data", str(docs), "--adapter", "lora", "--dp", "record",
                  "--epsilon", "8", "--records-per-round", "8", "--lr", "0.003")
    _check_common(doc)
    assert doc["dim"] == doc["aggregated_dim"] == 921_600 and doc["chunks_per_round"] == 1
    assert doc["dp"]["unit"] == "record" and 0 < doc["epsilon"] <= 8 * (1 + 1e-6)
    bits = SecAggConfig(**doc["protocol"]).bits
    assert 921_600 * bits / 8 < doc["bytes_up_per_client_per_round"] < (
        921_600 * bits / 8 * 1.05 + 20_000)


def test_full_weights_stream_in_chunks_and_apply_the_clients_mean(tmp_path: Path,
                                                                  docs: Path) -> None:
    chunk = 1 << 24  # 16.8M values: K = 9 sub-rounds per training round
    _, doc = _run(tmp_path, "--data", str(docs), "--adapter", "full", "--dp", "none",
                  "--local-steps", "1", "--lr", "0.0002", "--chunk-size", str(chunk))
    _check_common(doc)
    k = doc["chunks_per_round"]
    assert doc["dim"] == 134_515_008 and doc["aggregated_dim"] == chunk
    assert k == math.ceil(134_515_008 / chunk) == doc["sub_rounds"] == 9
    # the upload of a training round is K packed chunk vectors, nothing model-sized twice
    bits = SecAggConfig(**doc["protocol"]).bits
    assert k * chunk * bits / 8 < doc["bytes_up_per_client_per_round"] < (
        k * chunk * bits / 8 * 1.05 + 100_000)
    # every client's stats line says which chunk it sent and that chunk's functionals on the
    # protocol's grid; the secure sum is exact there, so the server's mean must match theirs
    sent: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for cid in (1, 2):
        path = tmp_path / "run" / f"client-{cid}.stats.jsonl"
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if "chunk" in row:
                sent[row["round"]].append(row)
    rounds = [r for r in doc["per_round"] if r["ok"]]
    assert [r["chunk"] for r in rounds] == list(range(k))
    moved = 0.0
    for r in rounds:
        rows = sent[r["round"]]
        assert sorted(x["client"] for x in rows) == r["survivors"] == [1, 2]
        assert all(x["chunk"] == r["chunk"] and x["training_round"] == 0 for x in rows)
        for name in ("sum", "alt"):
            want = sum(x[name] for x in rows) / len(rows)
            assert abs(r[f"mean_{name}"] - want) <= 1e-9 * max(1.0, abs(want))
        # FedAvg at server_lr 1 moved the server's weights by that mean (float32 weights)
        assert abs(r["applied_sum"] - r["mean_sum"]) <= 1e-3 * abs(r["mean_sum"]) + 1e-3
        moved += abs(r["mean_sum"])
    assert moved > 1e-3  # the clients' updates were not zero


def test_bad_text_and_dp_on_full_weights_are_refused_before_any_process(
        tmp_path: Path, docs: Path) -> None:
    bad = tmp_path / "notes.jsonl"
    bad.write_text('{"text": "fine"}\n{"body": "no text column"}\n')
    for args, cause in (
            (["--data", str(bad)], "notes.jsonl:2: column 'text' is missing"),
            (["--data", str(docs), "--adapter", "full"], "runs without DP (pass --dp none)"),
            (["--data", str(docs), "--adapter", "prefix"], "trains --adapter lora or full"),
            (["--data", str(tmp_path / "none.txt")], "no such file")):
        proc = subprocess.run([*PY, "run", *TINY, *args, "--run-dir", str(tmp_path / "r")],
                              capture_output=True, text=True, timeout=60, env=ENV)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert cause in proc.stderr
        assert not (tmp_path / "r").exists()
