"""Which model a predictor runs: a hash of the files it reads, taken when it loads.

Computed from the files themselves, so that the serve image needs neither dvc.lock nor params.yaml,
and two servers report the same version exactly when they run the same bytes. Only the files read
are hashed: the export folder holds several models, and hashing them all would add to every start-up.
"""

import hashlib
from collections.abc import Iterable
from pathlib import Path

VERSION_HEX_DIGITS = 16


def model_version(folder: Path, names: Iterable[str] | None = None) -> str:
    """The first 16 hex digits of a SHA-256 over each file's path (relative to `folder`) and SHA-256:
    the files `names` of `folder`, or all its files (and those of its subfolders)."""
    folder = Path(folder)
    if names is None:
        paths = [path for path in folder.rglob("*") if path.is_file()]
    else:
        paths = [folder / name for name in names]
    outer = hashlib.sha256()
    for relative, path in sorted((path.relative_to(folder).as_posix(), path) for path in paths):
        with path.open("rb") as file:
            digest = hashlib.file_digest(file, "sha256").hexdigest()
        outer.update(f"{relative}\0{digest}\n".encode("utf-8", "surrogateescape"))
    return outer.hexdigest()[:VERSION_HEX_DIGITS]
