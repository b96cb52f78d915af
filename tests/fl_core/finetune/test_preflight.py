"""Bad input to ``secagg run`` is refused in the parent process, before any server or client
starts: one line naming the cause, exit status 2, no round table, in well under 5 s; and every
run starts fresh in a folder of its own, ``--resume RUN`` continuing the run it names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from secagg.fl_core.cli.run_folder import RUNS_ROOT
from secagg.fl_core.finetune import preflight
from secagg.fl_core.finetune.job import FinetuneJob, JobError
from secagg.fl_core.runtime.checkpoint import Checkpoint, resume, write_atomic

PY = [sys.executable, "-m", "secagg.fl_core.cli"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


Proc = subprocess.CompletedProcess[str]


def secagg_run(cwd: Path, *args: str, timeout: float = 60) -> tuple[Proc, float]:
    start = time.monotonic()
    proc = subprocess.run([*PY, "run", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=ENV)
    return proc, time.monotonic() - start


def refused(cwd: Path, *args: str) -> str:
    """Run ``secagg run ARGS`` expecting the preflight refusal; return its one line."""
    proc, seconds = secagg_run(cwd, *args, timeout=30)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("secagg run: "), proc.stderr
    assert "round" not in proc.stdout + proc.stderr.replace("rounds", "")  # no round table
    assert seconds < 5, f"took {seconds:.1f} s"
    return lines[0]


# -- the bad inputs of the issue, through the real console script ---------------------------


TWO_CLASSES = "text,label\n" + "".join(f"review {i},{'pos' if i % 2 else 'neg'}\n"
                                       for i in range(40))
BAD_INPUTS: dict[str, tuple[dict[str, str | bytes], list[str], str]] = {
    # id: (files written first, flags, the cause the one line names)
    "missing": ({}, ["--data", "missing.csv"], "missing.csv: no such file"),
    "one-class": ({"one.csv": "text,label\na,pos\nb,pos\nc,pos\n"}, ["--data", "one.csv"],
                  "one class ('pos') in 3 examples; a classifier needs at least 2"),
    "header": ({"cols.csv": "question,answer\nhi,there\n"}, ["--data", "cols.csv"],
               "columns ['question', 'answer'] have neither text,label (classification) nor "
               "prompt,response"),
    "binary": ({"junk.csv": bytes(range(256)) * 8}, ["--data", "junk.csv"],
               "binary data (NUL bytes)"),
    "not-utf8": ({"latin.csv": "text,label\ncaf\xe9,a\n".encode("latin-1")},
                 ["--data", "latin.csv"], "not a UTF-8 text file (byte 0xe9"),
    "too-few": ({"tiny.csv": "text,label\na,x\nb,y\n"}, ["--data", "tiny.csv"],
                "2 examples are too few to hold out"),
    "one-client": ({}, ["--clients", "1"],
                   "--clients 1: secure aggregation needs at least 2 parties"),
    "cohort": ({}, ["--n", "5"], "--n 5 is larger than the 4 parties"),
    "model": ({}, ["--model", "no-such-model"],
              "--model 'no-such-model' is neither a packaged model (minilm, smollm2)"),
    "ckks": ({}, ["--protocol", "ckks"], "over CKKS the server could not take"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_refused_before_anything_starts(tmp_path: Path, case: str) -> None:
    files, flags, cause = BAD_INPUTS[case]
    for name, content in files.items():
        if isinstance(content, bytes):
            (tmp_path / name).write_bytes(content)
        else:
            (tmp_path / name).write_text(content)
    line = refused(tmp_path, *flags)
    assert cause in line, line
    assert not (tmp_path / ".secagg").exists()  # nothing written, no run folder left behind


def test_a_fresh_run_refuses_an_existing_checkpoint(tmp_path: Path) -> None:
    old = tmp_path / "old"
    write_atomic(old / "checkpoint", Checkpoint.fresh(4))
    line = refused(tmp_path, "--run-dir", "old")
    assert "old/checkpoint exists (an earlier run): continue it with --resume old" in line
    line = refused(tmp_path, "--checkpoint", "old/checkpoint")
    assert "--resume old" in line


def test_a_fresh_run_refuses_another_jobs_file(tmp_path: Path) -> None:
    # two runs given one folder (issue 22): the second would overwrite the first's job.json
    old = tmp_path / "old"
    old.mkdir()
    FinetuneJob(data="trec", num_clients=3, rounds=4).save(old / "job.json")
    line = refused(tmp_path, "--checkpoint", "old/c2", "--dim", "8", "--n", "3")
    assert "old/job.json holds a fine-tuning job, not --dim (an earlier run's): continue " \
        "that run with --resume old" in line
    line = refused(tmp_path, "--checkpoint", "old/c2")  # the default job is another job
    assert "old/job.json holds another job (an earlier run's)" in line
    assert sorted(p.name for p in old.iterdir()) == ["job.json"]  # nothing written


def _fake_run(cwd: Path, run_id: str, job: FinetuneJob, *, digest: str | None = None) -> Path:
    folder = cwd / RUNS_ROOT / run_id
    folder.mkdir(parents=True)
    job.save(folder / "job.json")
    (folder / "run.json").write_text(json.dumps({"protocol": "secagg+", "n": job.num_clients,
                                                 "dim": None, "insecure": False}))
    ckpt = Checkpoint.fresh(4)
    write_atomic(folder / "checkpoint", Checkpoint(
        1, 1, 1, ckpt.state, (), accountant={"task": "finetune", "job": digest or job.digest}))
    return folder


def test_a_resume_must_name_a_run_and_keep_its_job(tmp_path: Path) -> None:
    job = FinetuneJob(data="trec", num_clients=3, rounds=4)
    _fake_run(tmp_path, "20250101-000000", job)
    assert "no such run folder (runs here: 20250101-000000)" in refused(
        tmp_path, "--resume", "nope")
    assert "--resume needs the run it continues" in refused(tmp_path, "--resume")
    line = refused(tmp_path, "--resume", "20250101-000000", "--rounds", "9", "--lr", "0.5")
    assert "the flags change the run's job in rounds (4 -> 9), lr (0.02 -> 0.5)" in line
    line = refused(tmp_path, "--resume", "20250101-000000", "--protocol", "secagg")
    assert "--protocol secagg contradicts the resumed run 20250101-000000" in line
    _fake_run(tmp_path, "other", job, digest="0" * 64)
    line = refused(tmp_path, "--resume", str(tmp_path / RUNS_ROOT / "other"))
    assert "the checkpoint belongs to another job (job digest differs)" in line


# -- run folders, over the synthetic federation (seconds, no model) ---------------------------


def _runs(cwd: Path) -> list[Path]:
    return sorted(p for p in (cwd / RUNS_ROOT).iterdir() if p.is_dir())


def test_consecutive_runs_start_fresh_and_resume_continues(tmp_path: Path) -> None:
    synthetic = ["--dim", "16", "--n", "3", "--deadline", "10"]
    for _ in range(2):
        proc, _ = secagg_run(tmp_path, *synthetic, "--rounds", "1")
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "run folder .secagg/runs/" in proc.stderr
    first, second = _runs(tmp_path)
    assert {p.name for p in first.iterdir()} == {"checkpoint", "keys", "run.json",
                                                 "run_summary.json", "client-1.log",
                                                 "client-2.log", "client-3.log"}
    assert resume(first / "checkpoint").step == resume(second / "checkpoint").step == 1
    assert not (tmp_path / "secagg.ckpt").exists() and not (tmp_path / "keys").exists()
    # the resume takes dim, cohort and protocol from the run folder; --rounds is a total
    proc, _ = secagg_run(tmp_path, "--resume", first.name, "--rounds", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resuming run {first.name} after 1 applied rounds" in proc.stderr
    assert resume(first / "checkpoint").step == 2 and resume(second / "checkpoint").step == 1
    rounds = json.loads((first / "run_summary.json").read_text())["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    assert len(_runs(tmp_path)) == 2


# -- the checks themselves ----------------------------------------------------------------------


def test_file_checks_name_the_cause(tmp_path: Path) -> None:
    ok = tmp_path / "ok.csv"
    ok.write_text(TWO_CLASSES)
    info = preflight.inspect_data(str(ok))
    assert (info.task, info.packaged, info.label_counts) == ("classification", False, (20, 20))
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"prompt": "a", "response": "b"}\n\n{"prompt": "c", "response": "d"}\n')
    assert preflight.inspect_data(str(pairs)).task == "causal-lm"
    cases = {
        "rows.csv": ("text,label\na,x\nb\n", "rows.csv:3: row has too few fields"),
        "empty.csv": ("text,label\na,\n", "empty.csv:2: column 'label' is empty"),
        "none.csv": ("text,label\n", "none.csv: no examples"),
        "blank.csv": ("", "blank.csv: empty file (no header row)"),
        "mixed.jsonl": ('{"prompt": "a", "response": "b", "label": "x"}\n'
                        '{"prompt": "a", "response": "b"}\n', "on every row or none"),
        "list.jsonl": ("[1, 2]\n", "list.jsonl:1: expected a JSON object"),
        "int.jsonl": ('{"text": 3, "label": "x"}\n', "int.jsonl:1: column 'text' must be a "
                      "string, got int"),
        "data.parquet": ("x", "unknown data file type '.parquet'"),
    }
    for name, (content, cause) in cases.items():
        (tmp_path / name).write_text(content)
        with pytest.raises(preflight.DataFileError) as exc:
            preflight.inspect_data(str(tmp_path / name))
        assert cause in str(exc.value), (name, str(exc.value))
    with pytest.raises(preflight.DataSourceError, match="a folder, not a file"):
        preflight.inspect_data(str(tmp_path))
    assert preflight.inspect_data("chatterbot").task == "causal-lm"


def test_errors_are_job_errors_and_models_are_checked(tmp_path: Path) -> None:
    assert issubclass(preflight.PreflightError, JobError)
    assert issubclass(preflight.DataFileError, ValueError)
    (tmp_path / "hf").mkdir()
    with pytest.raises(preflight.ModelSourceError, match=r"holds no config\.json"):
        preflight.check_model(str(tmp_path / "hf"))
    (tmp_path / "hf" / "config.json").write_text("{}")
    preflight.check_model(str(tmp_path / "hf"))
    (tmp_path / "m.bin").write_bytes(b"x")
    with pytest.raises(preflight.ModelSourceError, match=r"must be a \.gguf"):
        preflight.check_model(str(tmp_path / "m.bin"))
    preflight.check_model("minilm")
    with pytest.raises(preflight.CohortError, match="distributed noise needs secure"):
        preflight.check_job(FinetuneJob(), protocol="plain", n=4, active=False)
    ok = tmp_path / "ok.csv"
    ok.write_text("text,label\n" + "".join(f"t{i},{i % 2}\n" for i in range(20)))
    with pytest.raises(preflight.DataFileError,
                       match="18 training examples cannot give 20 parties one each"):
        preflight.check_job(FinetuneJob(data=str(ok), num_clients=20), protocol="secagg+", n=20,
                            active=True)


def test_the_names_match_the_models_package() -> None:
    # preflight repeats them to stay free of torch; they must not drift apart
    from secagg.models import MODEL_ALIASES, PACKAGED_DATASETS
    from secagg.models.assets import MINILM_PACKAGE, SMOLLM2_PACKAGE

    assert set(preflight.PACKAGED_DATA) == set(PACKAGED_DATASETS)
    assert set(preflight.MODEL_PACKAGES) == set(MODEL_ALIASES)
    assert preflight.MODEL_PACKAGES == {"minilm": MINILM_PACKAGE, "smollm2": SMOLLM2_PACKAGE}
    for name, package in preflight.PACKAGED_DATA.items():
        assert preflight.inspect_data(name).packaged, (name, package)


def test_the_parent_never_imports_torch(tmp_path: Path) -> None:
    code = ("import sys; from secagg.fl_core import cli; "
            "code = cli.main(['run', '--data', 'missing.csv']); "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules; "
            "raise SystemExit(code)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=30, env=ENV)
    assert proc.returncode == 2, proc.stderr
