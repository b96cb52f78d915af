"""The import rules of the house hold: secagg/ and protocols/ stay free of I/O and upper layers,
and every layer is imported through the one installed namespace ``secagg``."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "secagg": {
        "bare:fl_core",
        "bare:models",
        "bare:protocols",
        "torch",
        "zmq",
        "socket",
        "threading",
        "asyncio",
        "multiprocessing",
        "random",
        "fl_core",
        "models",
        "protocols",
        "transformers",
        "peft",
    },
    "protocols": {
        "torch",
        "zmq",
        "socket",
        "threading",
        "asyncio",
        "multiprocessing",
        "random",
        "fl_core",
        "models",
        "transformers",
        "peft",
    },
    "models": {"fl_core", "protocols", "zmq"},
}


LAYERS = ("protocols", "fl_core", "models")


def _layer(module: str) -> str:
    """The layer a module name belongs to: ``secagg.fl_core.x`` -> ``fl_core``, ``torch.nn`` ->
    ``torch``; a bare top-level ``protocols``/``fl_core``/``models`` is reported as itself with a
    ``bare:`` prefix (a user's own module of that name would shadow it)."""
    parts = module.split(".")
    if parts[0] == "secagg" and len(parts) > 1 and parts[1] in LAYERS:
        return parts[1]
    if parts[0] in LAYERS:
        return "bare:" + parts[0]
    return parts[0]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(_layer(a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(_layer(node.module))
            if node.module == "secagg":  # from secagg import fl_core
                names.update(a.name for a in node.names if a.name in LAYERS)
            if node.module == "numpy":
                names.update("numpy.random" for a in node.names if a.name == "random")
    return names


def _sources(package: str) -> list[Path]:
    """The package's own files: secagg/ minus the links to the three upper folders."""
    links = {ROOT / "secagg" / name for name in LAYERS}
    return sorted(p for p in (ROOT / package).rglob("*.py")
                  if not any(link in p.parents for link in links))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_downwards(package: str) -> None:
    bad = {}
    for path in _sources(package):
        hit = _imports(path) & (FORBIDDEN[package] | {"numpy.random"})
        if hit:
            bad[str(path.relative_to(ROOT))] = sorted(hit)
    assert bad == {}


@pytest.mark.parametrize("package", ["secagg", "protocols"])
def test_no_numpy_random_attribute_use(package: str) -> None:
    offenders = [
        str(p.relative_to(ROOT))
        for p in _sources(package)
        if "np.random." in p.read_text() or "numpy.random." in p.read_text()
    ]
    assert offenders == []


@pytest.mark.parametrize("package", ["secagg", *LAYERS, "tests", "benchmarks"])
def test_no_bare_layer_imports(package: str) -> None:
    """Every import of an upper layer goes through ``secagg.``: a bare ``import models`` would
    load the repository folder under a second name, or a user's own ``models.py``."""
    bad = {str(p.relative_to(ROOT)): sorted(n for n in _imports(p) if n.startswith("bare:"))
           for p in _sources(package)}
    assert {k: v for k, v in bad.items() if v} == {}


def test_layers_are_links_into_one_namespace() -> None:
    for name in LAYERS:
        link = ROOT / "secagg" / name
        assert link.is_symlink() and link.resolve() == (ROOT / name).resolve(), name


def test_a_users_own_modules_do_not_shadow_ours(tmp_path: Path) -> None:
    """The issue's repro: in a folder holding a user's models.py and protocols.py, the fine-tuning
    app still imports our layers (and the user's files stay importable under their names)."""
    for name in ("models", "protocols", "fl_core"):
        (tmp_path / f"{name}.py").write_text("raise SystemExit('user module imported')\n")
    code = (
        "import secagg.protocols as p, secagg.fl_core.finetune.app as a, secagg.models as m\n"
        "print(p.SecAggConfig.__module__, a.__name__, m.__name__)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.split() == ["secagg.protocols.config", "secagg.fl_core.finetune.app",
                                   "secagg.models"]


def test_importing_lower_layers_pulls_in_no_torch_or_zmq() -> None:
    code = (
        "import sys, secagg, secagg.protocols\n"
        "import secagg.kex, secagg.prg, secagg.shamir, secagg.fixedpoint, secagg.packing\n"
        "bad = sorted(m for m in ('torch', 'zmq', 'transformers', 'tenseal', 'secagg.fl_core')\n"
        "             if m in sys.modules)\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("package", ["secagg", "protocols", "fl_core", "models"])
def test_every_package_is_typed(package: str) -> None:
    assert (ROOT / package / "py.typed").is_file()
