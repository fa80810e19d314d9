"""Which model a server runs: a hash of the files of the folder its backend reads, taken at startup.

Computed from the files themselves, so that the serve image needs neither dvc.lock nor params.yaml,
and two servers report the same version exactly when they serve the same bytes.
"""

import hashlib
from pathlib import Path

VERSION_HEX_DIGITS = 16


def model_version(folder: Path) -> str:
    """The first 16 hex digits of a SHA-256 over each file's path (relative to `folder`) and SHA-256."""
    folder = Path(folder)
    files = sorted(
        (path.relative_to(folder).as_posix(), path) for path in folder.rglob("*") if path.is_file()
    )
    outer = hashlib.sha256()
    for relative, path in files:
        with path.open("rb") as file:
            digest = hashlib.file_digest(file, "sha256").hexdigest()
        outer.update(f"{relative}\0{digest}\n".encode("utf-8", "surrogateescape"))
    return outer.hexdigest()[:VERSION_HEX_DIGITS]
