"""The import rules of the house hold: secagg/ and protocols/ stay free of I/O and upper layers."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "secagg": {
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


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
            if node.module == "numpy":
                names.update("numpy.random" for a in node.names if a.name == "random")
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_downwards(package: str) -> None:
    bad = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        hit = _imports(path) & (FORBIDDEN[package] | {"numpy.random"})
        if hit:
            bad[str(path.relative_to(ROOT))] = sorted(hit)
    assert bad == {}


@pytest.mark.parametrize("package", ["secagg", "protocols"])
def test_no_numpy_random_attribute_use(package: str) -> None:
    offenders = [
        str(p.relative_to(ROOT))
        for p in (ROOT / package).rglob("*.py")
        if "np.random." in p.read_text() or "numpy.random." in p.read_text()
    ]
    assert offenders == []


def test_importing_lower_layers_pulls_in_no_torch_or_zmq() -> None:
    code = (
        "import sys, secagg, protocols\n"
        "import secagg.kex, secagg.prg, secagg.shamir, secagg.fixedpoint, secagg.packing\n"
        "bad = sorted(m for m in ('torch', 'zmq', 'transformers') if m in sys.modules)\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("package", ["secagg", "protocols", "fl_core", "models"])
def test_every_package_is_typed(package: str) -> None:
    assert (ROOT / package / "py.typed").is_file()
