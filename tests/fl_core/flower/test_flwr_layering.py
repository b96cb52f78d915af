"""flwr is imported only by fl_core/flower (and its tests and benchmark): the core stays
usable without the [flower] extra."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
IMPORT = re.compile(r"^\s*(from|import)\s+flwr\b", re.M)
ALLOWED = ("fl_core/flower/", "tests/fl_core/flower/", "benchmarks/flower_")


def test_flwr_only_in_the_flower_package() -> None:
    offenders = []
    for pkg in ("secagg", "protocols", "fl_core", "models", "benchmarks", "tests"):
        for path in (ROOT / pkg).rglob("*.py"):
            parts = path.relative_to(ROOT).parts
            rel = "/".join(parts)
            if rel.startswith(ALLOWED) or any(p.startswith(".") for p in parts):
                continue
            if IMPORT.search(path.read_text(encoding="utf-8")):
                offenders.append(rel)
    assert offenders == []


def test_core_imports_without_loading_flwr() -> None:
    import subprocess
    import sys

    code = ("import sys, secagg, secagg.protocols, secagg.fl_core; "
            "print(any(m == 'flwr' or m.startswith('flwr.') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"
