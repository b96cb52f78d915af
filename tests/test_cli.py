"""The console script parses and dispatches."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from secagg.fl_core.cli import entry as cli


def test_help_lists_bench(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    assert "bench" in capsys.readouterr().out


def test_unknown_benchmark_is_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "nope"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_console_script_runs_as_module() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "secagg.fl_core.cli", "--version"], capture_output=True, text=True
    )
    assert proc.returncode == 0 and proc.stdout.startswith("secagg ")


def test_run_resume_names_a_run_and_serve_resume_stays_a_flag(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from secagg.fl_core.cli import commands, runner

    seen: list[argparse.Namespace] = []
    monkeypatch.setattr(runner, "run_main", lambda ns: seen.append(ns) or 0)
    monkeypatch.setattr(commands, "serve_main", lambda ns, **_: seen.append(ns) or 0)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["run", "--resume", "20250101-120000"]) == 0
    assert cli.main(["run", "--checkpoint", "r/checkpoint", "--resume"]) == 0  # bare: that run
    assert cli.main(["run"]) == 0
    assert cli.main(["serve", "--resume", "--dim", "4"]) == 0
    named, bare, fresh, serve = seen
    assert (named.resume, bare.resume, fresh.resume, serve.resume) == (
        "20250101-120000", "", None, True)
    # unset runtime flags get their defaults (a resume would take its run's own first)
    assert (fresh.protocol, fresh.insecure, fresh.keys, fresh.checkpoint) == (
        "secagg+", False, None, None)
    assert (serve.keys, serve.checkpoint) == ("keys", "secagg.ckpt")


def test_run_refuses_a_missing_data_file_in_one_line(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli.main(["run", "--data", "missing.csv"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("secagg run: --data missing.csv: no such file") and err.count("\n") == 1
    assert not (tmp_path / ".secagg").exists()
