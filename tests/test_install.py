"""The venv `make` built is exactly the committed lock: every installed distribution is locked at
the version installed, and every locked one is installed. Skipped outside the repository's own
``.venv`` (``make test-latest`` runs the suite on the newest releases on purpose)."""

from __future__ import annotations

import os
import sys
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# pip is the installer the venv was born with; secagg is this checkout, installed editable.
NOT_LOCKED = {"pip", "secagg"}

pytestmark = pytest.mark.skipif(
    os.environ.get("SECAGG_LATEST") == "1" or Path(sys.prefix).resolve() != ROOT / ".venv",
    reason="only the venv that make installs from the lock is checked against it")


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        if "==" in line and not line.startswith((" ", "#")):
            name, version = line.split(" ")[0].split("==")
            pins[_norm(name)] = version
    return pins


def test_every_installed_package_is_the_locked_version() -> None:
    locked = _pins(ROOT / "requirements.lock") | _pins(ROOT / "assets.lock")
    # Only the venv's own site-packages: Ray (Flower's simulation) puts its vendored
    # thirdparty_files on sys.path once a test has imported it.
    site = [p for p in sys.path if p.startswith(sys.prefix) and p.endswith("site-packages")]
    installed = {_norm(d.metadata["Name"]): d.version for d in metadata.distributions(path=site)}
    installed = {k: v for k, v in installed.items() if k not in NOT_LOCKED}
    assert {k: v for k, v in installed.items() if locked.get(k) != v} == {}
    assert sorted(set(locked) - set(installed)) == []


def test_lock_pins_the_cpu_torch_and_hashes_every_package() -> None:
    text = (ROOT / "requirements.lock").read_text()
    assert "\ntorch==2.13.0+cpu " in text
    for path in (ROOT / "requirements.lock", ROOT / "assets.lock"):
        blocks = [b for b in path.read_text().split("\n") if "==" in b and not b.startswith(" ")]
        assert blocks and all(b.endswith("\\") for b in blocks), path  # a --hash line follows
