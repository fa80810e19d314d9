"""Outputs appear whole or not at all: written beside their final place, then renamed into it.

A staging name carries its process's id (`.models.<pid>.<random>.tmp`): a process killed outright
(SIGKILL, out of memory) cannot clean up after itself, so the next writer of the same output removes
what dead processes left beside it, and leaves a live one's staging alone.
"""

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's
        return True
    return True


def remove_stale(parent: Path, prefix: str) -> None:
    """Remove the files and folders in `parent` named `<prefix><pid>.*` whose process is gone."""
    for leftover in Path(parent).glob(f"{prefix}*"):
        pid = leftover.name[len(prefix) :].split(".")[0]
        if pid.isdigit() and not process_alive(int(pid)):
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)


@contextmanager
def _output_parent(path: Path) -> Iterator[None]:
    """Make `path`'s missing parent folders; remove those left empty if the block fails."""
    created = [parent for parent in reversed(path.parents) if not parent.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        for parent in reversed(created):
            try:
                parent.rmdir()
            except OSError:  # not empty: something else was written there meanwhile
                break
        raise


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield an empty staging folder that replaces `path` only if the block succeeds."""
    path = Path(path)
    prefix = f".{path.name}."
    with _output_parent(path):
        remove_stale(path.parent, prefix)
        staging = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}.", suffix=".tmp", dir=path.parent))
        staging.chmod(0o755)  # mkdtemp makes it private; the output is an ordinary folder
        try:
            yield staging
            if path.exists():
                # Two renames on one file system: the old output is gone only once the new one is whole.
                retired = staging.with_suffix(".old")
                path.rename(retired)
                staging.rename(path)
                shutil.rmtree(retired)
            else:
                staging.rename(path)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a staging file path that replaces `path` only if the block succeeds."""
    path = Path(path)
    prefix = f".{path.name}."
    with _output_parent(path):
        remove_stale(path.parent, prefix)
        handle, name = tempfile.mkstemp(prefix=f"{prefix}{os.getpid()}.", suffix=".tmp", dir=path.parent)
        staging = Path(name)
        try:
            os.close(handle)
            staging.chmod(0o644)  # mkstemp makes it private; the output is an ordinary file
            yield staging
            staging.replace(path)
        finally:
            staging.unlink(missing_ok=True)
