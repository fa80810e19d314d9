"""What the tests and the scripts of scripts/ share: the checkout's commands, a real server on
loopback (`support.server`), counters of bytes and memory (`support.counters`).

Tests import it as `support` (pytest puts tests/ on sys.path); scripts as `tests.support`, run from the
project root with it on PYTHONPATH (`PYTHONPATH=src:. python scripts/...`). It imports nothing of
pytest, so that the scripts run without it.
"""

import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]

SOURCE_ENV = {"PYTHONPATH": str(PROJECT / "src")}
"""Subprocesses import the package from this checkout, wherever it was installed from."""


def finsent_command(module: str) -> list[str]:
    """A command of the package (as its console script runs it), importing this checkout's source."""
    return [sys.executable, "-m", f"finsent.{module}"]
