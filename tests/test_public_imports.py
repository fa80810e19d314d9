"""The package uses its dependencies through their public interfaces only: no module of src/ imports,
reaches by attribute, or names as a logger a private or implementation module or name of a dependency.
Such doors change without notice between versions; a pinned upgrade then breaks them silently."""

import ast
import sys
from pathlib import Path

from conftest import PROJECT

IMPLEMENTATION_PARTS = ("_impl",)
"""Module names that mark an implementation without an underscore (uvicorn.protocols.http.httptools_impl)."""
DOCUMENTED_ONLY = {"dvc": ("dvc.api", "dvc.exceptions")}
"""Dependencies whose documented Python interface is these modules alone (DVC: `dvc.api`, and the
exceptions it raises); the rest of the package is its internals."""


def private_doors(source: str) -> list[tuple[int, str]]:
    """(line, dotted name) of every private or implementation module or name of a dependency that
    `source` imports, reaches by attribute from an imported module, or names as a logger."""
    found = []
    modules: dict[str, str] = {}  # local name -> the module it is bound to
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append((node.lineno, alias.name))
                top = alias.name.split(".")[0]  # `import a.b` binds a; `import a.b as c` binds c to a.b
                modules[alias.asname or top] = alias.name if alias.asname else top
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
            modules |= {alias.asname or alias.name: f"{node.module}.{alias.name}" for alias in node.names}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and (dotted := _attribute_chain(node, modules)):
            found.append((node.lineno, dotted))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "getLogger"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value))
    return sorted({(line, name) for line, name in found if _is_private(name)})


def _attribute_chain(node: ast.Attribute, modules: dict[str, str]) -> str | None:
    """`torch.ops.mkldnn.f` as a dotted name, when its root is a name bound by an import."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name) or node.id not in modules:
        return None
    return ".".join([modules[node.id], *reversed(parts)])


def _is_private(dotted: str) -> bool:
    parts = dotted.split(".")
    if parts[0] == "finsent" or parts[0] in sys.stdlib_module_names or not parts[0]:
        return False
    dunder = ("__version__", "__name__", "__file__")  # public by convention
    if any(
        (part.startswith("_") and part not in dunder) or part.endswith(IMPLEMENTATION_PARTS) for part in parts
    ):
        return True
    documented = DOCUMENTED_ONLY.get(parts[0])
    return documented is not None and len(parts) > 1 and not dotted.startswith(tuple(documented))


def test_no_module_of_the_package_uses_a_private_door_of_a_dependency():
    found = sorted(
        f"{path.relative_to(PROJECT)}:{line}: {name}"
        for path in sorted((PROJECT / "src").rglob("*.py"))
        for line, name in private_doors(path.read_text(encoding="utf-8"))
    )
    assert not found, "private or implementation doors of dependencies:\n" + "\n".join(found)


def test_the_check_finds_each_kind_of_private_door():
    source = Path(__file__).with_name("support").joinpath("__init__.py").read_text()  # none there
    assert private_doors(source) == []
    source = """
import logging
import torch
import dvc.api
from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from pydantic._internal import _model_construction
from dvc.repo import Repo
from dvc.exceptions import DvcException
import numpy as np
np.random._pickle
torch.ops.mkldnn._is_mkldnn_bf16_supported()
torch.nn.functional.softmax
logging.getLogger("ray.data._internal.progress")
logging.getLogger("uvicorn.error")
import _thread
"""
    assert private_doors(source) == [
        (6, "uvicorn.protocols.http.httptools_impl.HttpToolsProtocol"),
        (7, "pydantic._internal._model_construction"),
        (8, "dvc.repo.Repo"),
        (11, "numpy.random._pickle"),
        (12, "torch.ops.mkldnn._is_mkldnn_bf16_supported"),
        (14, "ray.data._internal.progress"),
    ]
