"""How every command and stage script runs: expected failures as one line, SIGTERM as a clean exit."""

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from finsent.errors import FinsentError


def restore_hint(stage: str, root: Path) -> str:
    """For a stage that failed under DVC: how to get back the outputs DVC removed before running it.

    DVC deletes a stage's outputs before its command runs (unless `persist: true`), so a failed run
    leaves the workspace without them. The previous ones are in the DVC cache where this clone ran the
    stage before (`dvc checkout`), or in git for outputs kept there (`cache: false`).
    """
    from finsent import dvc_access

    gone = [path for path in dvc_access.locked_outputs(stage, root) if not (root / path).exists()]
    if not gone:
        return ""  # never ran here, or nothing was removed
    try:
        in_cache = dvc_access.cached_outputs(gone, root)
    except FinsentError as error:  # the stage's own error comes first; this says why no hint follows
        return f" (and no hint to restore its outputs: {error})"
    in_git = [
        path
        for path in gone
        if path not in in_cache
        and subprocess.run(
            ["git", "-C", str(root), "cat-file", "-e", f"HEAD:{path}"], capture_output=True
        ).returncode
        == 0
    ]
    cached = [path for path in gone if path in in_cache]
    lost = [path for path in gone if path not in in_cache and path not in in_git]
    hints = []
    if cached:
        hints.append(f"`dvc checkout {stage}` restores the previous {', '.join(cached)}")
    if in_git:
        hints.append(f"`git checkout -- {' '.join(in_git)}` restores the committed {', '.join(in_git)}")
    if lost:
        hints.append(f"the previous {', '.join(lost)} is in neither the DVC cache nor git")
    return f" (DVC removed this stage's outputs before running it: {'; '.join(hints)})"


def run_cli(main: Callable[[], None]) -> None:
    """Run a command's main(); a FinsentError becomes `error: <message>` and exit status 1.

    Under `dvc repro` (DVC_STAGE set), the line also says how to restore the outputs DVC removed.
    SIGTERM (as `kill` or a queue worker's stop sends it) exits through Python, so that `finally`
    blocks still run and no staging folder is left behind.
    """
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        main()
    except FinsentError as error:
        stage, root = os.environ.get("DVC_STAGE"), os.environ.get("DVC_ROOT")
        hint = restore_hint(stage, Path(root)) if stage and root else ""
        print(f"error: {error}{hint}", file=sys.stderr)
        raise SystemExit(1) from None
