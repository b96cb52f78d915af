"""The README's Python examples run and print what their comments say."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)
EXPECT = re.compile(r"^print\(.*\)\s+#\s*(.+)$")


def check_python_blocks(text: str) -> int:
    """Run every python block of a markdown ``text``; each must exit 0 and print exactly the
    ``# expected`` comments of its ``print(...)`` lines. Returns the number of blocks."""
    blocks = BLOCK.findall(text)
    for code in blocks:
        expected = [m.group(1).strip() for line in code.splitlines() if (m := EXPECT.match(line))]
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
        )
        assert proc.returncode == 0, proc.stderr
        got = [" ".join(line.split()) for line in proc.stdout.splitlines()]
        assert got == [" ".join(e.split()) for e in expected]
    return len(blocks)


def test_readme_python_blocks_print_what_they_claim() -> None:
    assert check_python_blocks((ROOT / "README.md").read_text()), "README has no python examples"
