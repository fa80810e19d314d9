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
    from ruamel.yaml import YAML

    try:
        lock = YAML(typ="safe").load((root / "dvc.lock").read_text(encoding="utf-8"))
        outs = lock["stages"][stage].get("outs", [])
    except (OSError, KeyError, TypeError, AttributeError):
        return ""  # never ran here: nothing was removed
    gone = [out for out in outs if not (root / out["path"]).exists()]
    if not gone:
        return ""
    cache = root / ".dvc" / "cache" / "files" / "md5"
    in_cache = [out["path"] for out in gone if (cache / out["md5"][:2] / out["md5"][2:]).exists()]
    in_git = [
        out["path"]
        for out in gone
        if out["path"] not in in_cache
        and subprocess.run(
            ["git", "-C", str(root), "cat-file", "-e", f"HEAD:{out['path']}"], capture_output=True
        ).returncode
        == 0
    ]
    lost = [out["path"] for out in gone if out["path"] not in in_cache + in_git]
    hints = []
    if in_cache:
        hints.append(f"`dvc checkout {stage}` restores the previous {', '.join(in_cache)}")
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
