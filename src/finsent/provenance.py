"""Which code a stage runs: the package modules its script imports, and one hash of them with it.

dvc.yaml lists each stage's modules as its deps (tests/test_dvc_deps.py checks them against
`package_closure`). The teacher stage lists only its own (dvc.yaml says why), so it records this hash
in its metrics instead, and `finsent-results` compares it with the code in the tree.
"""

import ast
import hashlib
from pathlib import Path

PACKAGE = "finsent"


def module_file(name: str, source: Path) -> Path | None:
    """The file of package module `name` (finsent.x.y) under `source`, or None for a name that is not
    a module (a function or class imported from one)."""
    base = source.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(file: Path, source: Path) -> set[str]:
    """The package modules that `file` imports anywhere in it (inside functions too), and each package
    above them, which Python runs first."""
    names = set()
    for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}  # from pkg import module
    found = set()
    for name in names:
        parts = name.split(".")
        if parts[0] != PACKAGE:
            continue
        for depth in range(1, len(parts) + 1):
            if module_file(".".join(parts[:depth]), source) is not None:
                found.add(".".join(parts[:depth]))
    return found


def package_closure(script: Path, source: Path) -> set[Path]:
    """Every file of the package under `source` that running `script` may import."""
    seen: set[str] = set()
    pending = imported_modules(script, source)
    while pending:
        name = pending.pop()
        if name not in seen:
            seen.add(name)
            pending |= imported_modules(module_file(name, source), source) - seen
    return {module_file(name, source) for name in seen}


def code_sha256(script: Path, root: Path) -> str:
    """SHA-256 of `script` and the package modules it imports (under root/src), each by its path from
    `root` and its bytes: the same code gives the same hash wherever the tree is."""
    files = {
        file.relative_to(root).as_posix(): file for file in [script, *package_closure(script, root / "src")]
    }
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + hashlib.sha256(files[name].read_bytes()).digest())
    return digest.hexdigest()
