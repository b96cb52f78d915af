"""Write docs/drift.md from a ``make test-latest`` run: the date, the newest releases it ran on,
and what failed. Run as ``python -m tests.drift_report JUNIT_XML OUT_MD`` inside the venv that ran
the tests (its package versions are the ones reported).

Raises ``FileNotFoundError`` when the JUnit file is missing (pytest did not run).
"""

from __future__ import annotations

import datetime as dt
import sys
import xml.etree.ElementTree as ET
from importlib import metadata
from pathlib import Path

WATCHED = ("torch", "transformers", "peft", "flwr", "ray", "tenseal", "numpy", "cryptography",
           "pyzmq", "dp-accounting", "gguf", "matplotlib", "rich", "scipy")


def _locked(lock: Path) -> dict[str, str]:
    pins = {}
    for line in lock.read_text().splitlines():
        if "==" in line and not line.startswith((" ", "#")):
            name, version = line.split(" ")[0].split("==")
            pins[name.lower()] = version
    return pins


def report(junit: Path, lock: Path) -> str:
    root = ET.parse(junit).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    assert suite is not None
    counts = {k: int(suite.get(k, "0")) for k in ("tests", "failures", "errors", "skipped")}
    failed = [f"{case.get('classname')}::{case.get('name')}"
              for case in suite.iter("testcase")
              if case.find("failure") is not None or case.find("error") is not None]
    pins = _locked(lock)
    rows = []
    for name in WATCHED:
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            have = "-"
        rows.append(f"| {name} | {pins.get(name, '-')} | {have} |")
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    verdict = "green" if not failed else "red"
    lines = [
        "# Drift: the suite on the newest allowed releases",
        "",
        "Written by `make test-latest` (not part of CI): a throwaway venv with the newest",
        "releases that `pyproject.toml`'s ranges allow (torch stays on the lock's CPU build), then",
        "the whole suite. `make` itself installs from the lock, so a red run here is a warning",
        "about the next `make lock`, not a broken install.",
        "",
        f"Last run: {dt.date.today().isoformat()}, Python {sys.version.split()[0]}: **{verdict}**,"
        f" {passed} passed, {counts['failures'] + counts['errors']} failed,"
        f" {counts['skipped']} skipped.",
        "",
        "| package | lock | newest (this run) |",
        "|---|---|---|",
        *rows,
        "",
    ]
    if failed:
        lines += ["Failed:", "", *[f"- `{t}`" for t in failed], ""]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    junit, out = Path(argv[0]), Path(argv[1])
    lock = Path(__file__).resolve().parents[1] / "requirements.lock"
    out.write_text(report(junit, lock))
    print(f"drift report written to {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
