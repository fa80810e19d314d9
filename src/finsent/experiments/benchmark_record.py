"""A benchmark's results as a file: the figures with the command, commit, date and machine that gave
them, so that a figure quoted in the docs points to where it was measured (benchmarks/ holds those)."""

import json
import shlex
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from finsent.atomic import atomic_file
from finsent.inference.cpu import this_cpu


def commit() -> str:
    """The checked-out commit, with "+changes" when the tree differs from it; "" outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
        )
    except (OSError, subprocess.CalledProcessError):
        return ""
    return head.stdout.strip() + ("+changes" if status.stdout.strip() else "")


def write_record(path: Path, results: dict | list) -> dict:
    """Write `results` to `path` (JSON) with how they were made; the record written."""
    record = {
        "command": shlex.join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "commit": commit(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": this_cpu().describe(),
        "results": results,
    }
    with atomic_file(Path(path)) as staging:
        staging.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record
