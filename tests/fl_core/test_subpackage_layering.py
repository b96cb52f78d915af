"""``fl_core``'s subpackages import one way: transport and identity at the bottom, then the
runtime, then the CLI; Flower's package has no import circle.

Every ``import`` in every module counts, function-level and ``TYPE_CHECKING`` ones included:
a lazy import still makes the lower layer depend on the upper one."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

FL_CORE = Path(__file__).resolve().parents[2] / "fl_core"

# subpackage -> the fl_core subpackages it may import (errors.py, dp/ are shared below all).
ALLOWED: dict[str, set[str]] = {
    "identity": {"errors"},
    "transport": {"errors", "identity"},
    # finetune: one type-only import (policy.dp_policy takes a finetune.privacy.ResolvedDp)
    "runtime": {"errors", "identity", "transport", "dp", "finetune"},
    # flower: `secagg flower demo` only, imported inside the command (flwr stays optional)
    "cli": {"errors", "identity", "transport", "runtime", "dp", "finetune", "cli", "flower"},
}


def _fl_core_imports(path: Path) -> set[str]:
    """Dotted ``secagg.fl_core`` submodules that ``path`` imports (without the prefix)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        out.update(n.removeprefix("secagg.fl_core.") for n in names
                   if n.startswith("secagg.fl_core."))
    return out


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_subpackage_imports_flow_down(package: str) -> None:
    bad = []
    for path in sorted((FL_CORE / package).glob("*.py")):
        for mod in _fl_core_imports(path):
            top = mod.split(".")[0]
            if top != package and top not in ALLOWED[package]:
                bad.append(f"{path.name} imports secagg.fl_core.{mod}")
    assert not bad, f"{package} reaches up: {bad}"


def test_no_flat_modules_left_but_the_shared_ones() -> None:
    flat = sorted(p.name for p in FL_CORE.glob("*.py"))
    assert flat == ["__init__.py", "errors.py"]


def _cycles(package: str) -> list[list[str]]:
    mods = {p.stem: p for p in (FL_CORE / package).glob("*.py") if p.stem != "__init__"}
    edges = {m: {i.split(".")[1] for i in _fl_core_imports(p)
                 if i.startswith(package + ".") and i.split(".")[1] in mods} - {m}
             for m, p in mods.items()}
    found: list[list[str]] = []

    def visit(m: str, path: list[str]) -> None:
        for n in edges[m]:
            if n in path:
                found.append([*path[path.index(n):], n])
            elif len(path) < len(mods):
                visit(n, [*path, n])

    for m in mods:
        visit(m, [m])
    return found


@pytest.mark.parametrize("package", ["flower", "runtime", "transport", "identity", "cli"])
def test_no_import_circle_inside(package: str) -> None:
    assert _cycles(package) == []


def test_the_circle_detector_sees_a_circle(tmp_path: Path) -> None:
    """Control: two modules importing each other are reported."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "a.py").write_text("from secagg.fl_core.pkg.b import x\n")
    (pkg / "b.py").write_text("def f():\n    from secagg.fl_core.pkg import a\n")
    globals()["FL_CORE"] = tmp_path
    try:
        assert _cycles("pkg")
    finally:
        globals()["FL_CORE"] = Path(__file__).resolve().parents[2] / "fl_core"
