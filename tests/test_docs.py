"""The user's manual holds: package docstring examples run as doctests, the python blocks of
docs/*.md print what their comments say, every test a doc cites exists, and every ``secagg``
command a doc shows parses with the current CLI."""

from __future__ import annotations

import argparse
import doctest
import importlib
import re
import shlex
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from secagg.fl_core.cli import commands, runner
from secagg.fl_core.cli import entry as cli
from tests.test_readme import check_python_blocks

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))
# ``tests/x/test_y.py::test_z`` as cited in the threat model and elsewhere.
CITED = re.compile(r"(tests/[\w/]+\.py)::(\w+)")
LINK = re.compile(r"\]\((\.\./[^)#\s]+|[\w./-]+\.(?:md|png|json))\)")


SLOW = pytest.mark.slow
# (package, least number of examples its docstring must keep); fl_core and models load ZeroMQ,
# dp-accounting or a real MiniLM, so they are slow.
DOCTESTS = [("secagg", 8), ("protocols", 8), pytest.param("fl_core", 15, marks=SLOW),
            pytest.param("models", 8, marks=SLOW)]


@pytest.mark.parametrize(("package", "least"), DOCTESTS)
def test_package_docstring_examples_run(package: str, least: int) -> None:
    module = importlib.import_module(package)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= least, f"{package} docstring lost its examples"
    assert result.failed == 0


CONSTANT_TYPES = (int, float, str, bytes, tuple, list, frozenset, Mapping)


@pytest.mark.parametrize("package", ["secagg", "protocols", "fl_core", "models"])
def test_public_surface_is_exactly_all(package: str) -> None:
    """Every public name exists and is documented: classes and functions by a docstring,
    constants (a dict or an int carries its type's docstring) by a mention in the package's."""
    module = importlib.import_module(package)
    names = module.__all__
    assert names == sorted(set(names), key=names.index)  # no duplicates
    for name in names:
        assert hasattr(module, name), f"{package}.__all__ names missing {name}"
        obj = getattr(module, name)
        if isinstance(obj, CONSTANT_TYPES):
            assert name in (module.__doc__ or ""), f"{package}.{name} is not documented"
        else:
            assert obj.__doc__, f"{package}.{name} has no docstring"


def test_fl_core_imports_lazily() -> None:
    """``import fl_core`` loads neither ZeroMQ nor torch; a name loads its submodule."""
    code = ("import sys\nfrom secagg import fl_core\n"
            "bad = sorted(m for m in ('zmq', 'torch', 'dp_accounting') if m in sys.modules)\n"
            "assert not bad, bad\n"
            "assert fl_core.limits_for.__module__ == 'secagg.fl_core.runtime.rounds'\n"
            "assert 'zmq' in sys.modules\n"
            "assert 'limits_for' in dir(fl_core)\n"
            "try:\n    fl_core.no_such_name\nexcept AttributeError:\n    pass\n"
            "else:\n    raise SystemExit('no AttributeError')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr


def test_docs_exist() -> None:
    names = {p.name for p in DOCS}
    assert {"quickstart.md", "threat-model.md", "parameters.md", "performance.md",
            "across-hosts.md", "finetuning.md", "flower.md", "api.md"} <= names


# api.md trains a real MiniLM adapter for three parties (about 25 s on 2 busy cores).
RUN_DOCS = [pytest.param(p, marks=SLOW) if p.name == "api.md" else p for p in DOCS]


@pytest.mark.parametrize("doc", RUN_DOCS, ids=lambda p: p.name)
def test_doc_python_blocks_print_what_they_claim(doc: Path) -> None:
    check_python_blocks(doc.read_text())


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_cited_tests_exist(doc: Path) -> None:
    for path, name in CITED.findall(doc.read_text()):
        source = (ROOT / path).read_text()
        assert re.search(rf"^\s*def {name}\(", source, re.M), f"{doc.name} cites {path}::{name}"


@pytest.mark.parametrize("doc", [*DOCS, ROOT / "README.md"], ids=lambda p: p.name)
def test_relative_links_resolve(doc: Path) -> None:
    for target in LINK.findall(doc.read_text()):
        assert (doc.parent / target).exists(), f"{doc.name} links to missing {target}"


BASH = re.compile(r"```bash\n(.*?)```", re.S)
TOML = re.compile(r"```toml\n(.*?)```", re.S)


def _commands(text: str) -> list[list[str]]:
    """Every ``secagg ...`` command line of the bash blocks, continuations joined."""
    out = []
    for block in BASH.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line.startswith("secagg ") and "$" not in line and "..." not in line:
                out.append(shlex.split(line)[1:])
    return out


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> list[argparse.Namespace]:
    """Capture what serve / client / run would run with (nothing is started)."""
    got: list[argparse.Namespace] = []

    def fake(ns: argparse.Namespace, **_: Any) -> int:
        got.append(ns)
        return 0

    monkeypatch.setattr(commands, "serve_main", fake)
    monkeypatch.setattr(commands, "client_main", fake)
    monkeypatch.setattr(runner, "run_main", fake)
    return got


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_doc_commands_parse(doc: Path, tmp_path: Path, seen: list[argparse.Namespace],
                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Each ``secagg`` command shown parses with today's CLI (keygen runs for real)."""
    text = doc.read_text()
    monkeypatch.chdir(tmp_path)
    for toml in TOML.findall(text):
        (tmp_path / "serve.toml").write_text(toml)
    runtime = 0
    for argv in _commands(text):
        if argv[0] == "bench":
            assert argv[1] in cli.BENCHMARKS, argv
            continue
        assert cli.main(argv) == 0, argv
        runtime += argv[0] in ("serve", "client", "run")
        assert len(seen) == runtime, argv
