"""`secagg keygen`: safe file modes, no silent overwrite, loadable results."""

from __future__ import annotations

import argparse
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from secagg.fl_core.cli import entry as cli
from secagg.fl_core.identity import keyfiles


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_server_and_client_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "keys"
    assert cli.main(["keygen", "server", "--out", str(out)]) == 0
    assert cli.main(["keygen", "client", "--out", str(out), "--ids", "1-3,7"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        ["server.public.json", "server.secret.json"]
        + [f"client-{i}.{k}.json" for i in (1, 2, 3, 7) for k in ("public", "secret")]
    )
    for p in out.iterdir():
        assert _mode(p) == (0o600 if p.name.endswith(".secret.json") else 0o644), p.name
    assert _mode(out) == 0o700
    allowlist = keyfiles.load_allowlist(out)
    assert sorted(allowlist) == [1, 2, 3, 7]
    for cid in allowlist:
        assert keyfiles.load_client_keys(keyfiles.client_paths(out, cid)[1]).card == allowlist[cid]
    assert "0600" in capsys.readouterr().out


def test_existing_keys_are_kept_unless_forced(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["keygen", "client", "--out", str(tmp_path), "--ids", "2"]) == 0
    before = (tmp_path / "client-2.secret.json").read_bytes()
    # 1 and 3 are new, 2 exists: nothing at all is written
    assert cli.main(["keygen", "client", "--out", str(tmp_path), "--ids", "1-3"]) == 1
    assert "exist" in capsys.readouterr().err
    assert not (tmp_path / "client-1.secret.json").exists()
    assert (tmp_path / "client-2.secret.json").read_bytes() == before
    assert cli.main(["keygen", "client", "--out", str(tmp_path), "--ids", "1-3", "--force"]) == 0
    assert (tmp_path / "client-2.secret.json").read_bytes() != before
    assert _mode(tmp_path / "client-2.secret.json") == 0o600


@pytest.mark.parametrize("argv", [["keygen", "client", "--out", "x"],
                                  ["keygen", "server", "--out", "x", "--ids", "1"],
                                  ["keygen", "client", "--out", "x", "--ids", "3-1"],
                                  ["keygen", "client", "--out", "x", "--ids", "a"],
                                  ["keygen", "nobody", "--out", "x"]])
def test_bad_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2


def test_parse_ids() -> None:
    assert cli.parse_ids("5,1-3,2") == [1, 2, 3, 5]
    for bad in ("", "-1", "1-", "0-1000000", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            cli.parse_ids(bad)


def test_console_script_keygen_and_bench_registry(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "secagg.fl_core.cli", "keygen", "server", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert _mode(tmp_path / "server.secret.json") == 0o600
    assert cli.BENCHMARKS["transport"] == "benchmarks.transport"
