"""``--config FILE`` (TOML) for secagg serve / client / run: file values, flag overrides,
per-command tables, and errors that name the bad key."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from secagg.fl_core.cli import commands, config_file, runner
from secagg.fl_core.cli import entry as cli

FILE = """
protocol = "secagg"
n = 6
dim = 128
keys = "my-keys"
insecure = true

[serve]
bind = "tcp://127.0.0.1:7711"
rounds = 4
deadline = 2.5
join_timeout = 7
stage-deadline = { unmask = 1.5, share = 3 }
json = "out.json"

[client]
connect = "tcp://127.0.0.1:7711"
id = 3
idle-timeout = 9

[run]
rounds = 2
port = 7799
"""


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> list[argparse.Namespace]:
    """Capture the namespace the runtime commands would run with (nothing is started)."""
    got: list[argparse.Namespace] = []

    def fake(ns: argparse.Namespace, **_: Any) -> int:
        got.append(ns)
        return 0

    monkeypatch.setattr(commands, "serve_main", fake)
    monkeypatch.setattr(commands, "client_main", fake)
    monkeypatch.setattr(runner, "run_main", fake)
    return got


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "secagg.toml"
    path.write_text(text)
    return str(path)


def test_serve_takes_file_values(tmp_path: Path, seen: list[argparse.Namespace]) -> None:
    assert cli.main(["serve", "--config", write(tmp_path, FILE)]) == 0
    (ns,) = seen
    assert (ns.protocol, ns.n, ns.dim, ns.keys, ns.insecure) == ("secagg", 6, 128, "my-keys", True)
    assert (ns.bind, ns.rounds, ns.deadline, ns.join_timeout) == ("tcp://127.0.0.1:7711", 4, 2.5,
                                                                  7.0)
    assert sorted(ns.stage_deadline) == [("share", 3.0), ("unmask", 1.5)]
    assert ns.json_path == "out.json"


def test_flags_override_the_file(tmp_path: Path, seen: list[argparse.Namespace]) -> None:
    path = write(tmp_path, FILE)
    assert cli.main(["serve", "--rounds", "9", "--n", "8", "--config", path,
                     "--stage-deadline", "advertise=4", "--stage-deadline", "unmask=9"]) == 0
    (ns,) = seen
    assert (ns.rounds, ns.n, ns.dim) == (9, 8, 128)
    # per stage: the flag wins where both name it (commands.py builds a dict, later wins)
    assert dict(ns.stage_deadline) == {"unmask": 9.0, "share": 3.0, "advertise": 4.0}


def test_client_and_run_tables(tmp_path: Path, seen: list[argparse.Namespace]) -> None:
    path = write(tmp_path, FILE)
    assert cli.main(["client", "--config", path]) == 0  # --id comes from the file
    assert cli.main(["client", "--config", path, "--id", "5"]) == 0
    assert cli.main(["run", "--config", path]) == 0
    client, client5, run = seen
    assert (client.client_id, client.connect, client.idle_timeout) == (3, "tcp://127.0.0.1:7711",
                                                                      9.0)
    assert client5.client_id == 5 and client5.n == 6
    assert (run.rounds, run.port, run.deadline, run.n) == (2, 7799, 10.0, 6)


def test_without_config_flags_and_defaults_apply(seen: list[argparse.Namespace]) -> None:
    assert cli.main(["serve", "--rounds", "2", "--dim", "10"]) == 0
    assert (seen[0].rounds, seen[0].n, seen[0].config) == (2, 8, None)
    assert cli.main(["serve"]) == 0  # a fine-tuning job: cohort and rounds come from the job
    assert (seen[1].dim, seen[1].n, seen[1].rounds, seen[1].join_timeout) == (
        None, None, None, 300.0)


@pytest.mark.parametrize(("text", "needle"), [
    ("rounds = 3\nbogus = 1\n", "unknown key 'bogus'"),
    ("[serve]\nconnect = 'tcp://x:1'\n", "unknown key 'connect' in [serve]"),
    ("[client]\nwhatever = 1\n", "unknown key 'whatever' in [client]"),
    ("[serve]\ncrash-after = 'aggregate:1'\n", "unknown key 'crash-after' in [serve]"),
    ("n = 'eight'\n", "key 'n'"),
    ("n = true\n", "key 'n'"),
    ("insecure = 1\n", "key 'insecure' must be true or false"),
    ("protocol = 'rot13'\n", "key 'protocol'"),
    ("[serve]\nstage-deadline = { nosuch = 1 }\n", "unknown stage 'nosuch'"),
    ("[serve]\ndeadline = [1, 2]\n", "key 'deadline' must be a single value"),
    ("serve = 3\n", "[serve] must be a table"),
    ("n = \n", "not valid TOML"),
])
def test_bad_files_are_errors_naming_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             seen: list[argparse.Namespace], text: str,
                                             needle: str) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["serve", "--config", write(tmp_path, text)])
    assert exc.value.code == 2
    assert needle in capsys.readouterr().err
    assert not seen


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                      seen: list[argparse.Namespace]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["client", "--id", "1", "--config", str(tmp_path / "nope.toml")])
    assert "cannot read config" in capsys.readouterr().err


def test_load_config_directly(tmp_path: Path) -> None:
    ap = argparse.ArgumentParser()
    commands.add_common_args(ap)
    commands.add_serve_args(ap)
    got = config_file.load_config(write(tmp_path, "verbose = 2\nresume = true\n"), "serve", ap)
    assert got == {"verbose": 2, "resume": True}
